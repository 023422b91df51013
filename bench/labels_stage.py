"""Does `pretrain.mode: labels` pay when run the way a user runs it, through the pipeline's own stages?

bench/retrain_labels.py measured retraining on 100 labels by calling the training code; this runs the stages.
On ucf101_6 (split 1, or `--split`; the `ucf101_6_cpu` preset; the dataset used in place), per seed, in a folder
of its own:
1. `slic manifest`, `validate`, `extract`, `pretrain` (mode slic), `embed`, `evaluate`, `clusters` and
   `spread-labels`, each a `slic` process as `dvc repro` starts it;
2. a simulated user labels, five rounds of 20, the videos reports/label_next.csv suggests, with their true classes
   (appended to labels/given.csv, `spread-labels` after each round): 100 labels;
3. labels/given.csv is copied to labels/train/, `pretrain.mode` set to `labels`, and `pretrain` (from scratch),
   `embed`, `evaluate`, `clusters` and `spread-labels` run again in a second folder on the same frames.
Reported per seed: evaluate's test recall@1 (test queries against the train gallery) for both encoders, how many
labels fell on train videos (the only ones trained on), and the share of test videos not labelled that the same
100 labels name rightly through each encoder (reports/spread_labels.csv against the manifest's classes).

Writes reports/bench/labels_stage.json (per seed, and mean and std of each number and of the paired lead). A seed
whose result is stored in its folder is not run again (remove the folder to run it again).

    python bench/labels_stage.py                       # seeds 7, 8, 9, about 4.6 minutes each on 2 idle cores
    python bench/labels_stage.py --seeds 7 --rounds 2
    python bench/labels_stage.py --split 2 --out reports/bench/labels_stage_split2.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, spread, write_report  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "real" / "ucf101_6"
DEFAULT_WORK = ROOT / "data" / "bench" / "labels_stage"
DEFAULT_OUT = ROOT / "reports" / "bench" / "labels_stage.json"
FIRST = ("manifest", "validate", "extract", "pretrain", "embed", "evaluate", "clusters", "spread-labels")
AGAIN = ("pretrain", "embed", "evaluate", "clusters", "spread-labels")


def stage(folder: Path, name: str, log: Path) -> None:
    """`slic <name>` in `folder` (this checkout's code, the folder's params.yaml and MLflow store); its output
    appended to `log`; a RuntimeError naming the stage and the log when it fails."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    with log.open("a") as out:
        out.write(f"\n$ slic {name}\n")
        out.flush()
        done = subprocess.run([sys.executable, "-m", "slic.cli", name], cwd=folder, env=env, stdout=out,
                              stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"slic {name} failed in {folder}: see {log}")


def write_params(folder: Path, data: Path, split: int, seed: int, frames: Path, manifest: Path | None = None,
                 **pretrain: Any) -> None:
    """The repository's params.yaml with the ucf101_6_cpu preset, the dataset at `data` (UCF101's `split`), `seed`,
    shards in the shared `frames` folder (and another folder's validated `manifest`, when given) and `pretrain`
    overrides, into `folder`."""
    from slic.presets import apply_preset, load_preset

    folder.mkdir(parents=True, exist_ok=True)
    params = folder / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply_preset(load_preset("ucf101_6_cpu"), params)
    values = yaml.safe_load(params.read_text())
    values["manifest"].update(root=str(data / "videos"), splits_dir=str(data / "splits"), split=split)
    values["extract"]["out"] = str(frames)
    if manifest is not None:
        values["extract"]["manifest"] = str(manifest)
    values["pretrain"].update(seed=seed, **pretrain)
    params.write_text(yaml.safe_dump(values, sort_keys=False))


def classes_of(manifest: Path) -> tuple[dict[str, str], dict[str, str]]:
    """video id -> class and video id -> split, from a validated manifest."""
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {r["video_id"]: r["class"] for r in rows}, {r["video_id"]: r["split"] for r in rows}


def label_round(folder: Path, truth: dict[str, str], per_round: int) -> int:
    """The simulated user: the first `per_round` videos of reports/label_next.csv, with their true classes,
    appended to labels/given.csv. Returns the labels given so far."""
    given = folder / "labels" / "given.csv"
    with (folder / "reports" / "label_next.csv").open(newline="") as handle:
        suggested = [row["video_id"] for row in csv.DictReader(handle)][:per_round]
    lines = given.read_text().splitlines() if given.is_file() else ["video_id,class"]
    lines += [f"{video},{truth[video]}" for video in suggested]
    given.parent.mkdir(parents=True, exist_ok=True)
    given.write_text("\n".join(lines) + "\n")
    return len(lines) - 1


def share_named_rightly(folder: Path, truth: dict[str, str], split: dict[str, str]) -> float:
    """The share of test videos not labelled that reports/spread_labels.csv names with their true class."""
    with (folder / "reports" / "spread_labels.csv").open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if split[r["video_id"]] == "test" and r["source"] != "given"]
    return sum(r["class"] == truth[r["video_id"]] for r in rows) / len(rows)


def run_seed(seed: int, args: argparse.Namespace, frames: Path) -> dict[str, Any]:
    """Steps 1 to 3 of the module's docstring for one seed; the stored result when the seed has one."""
    folder = Path(args.work) / (f"seed{seed}" if args.split == 1 else f"split{args.split}_seed{seed}")
    stored = folder / "result.json"
    if stored.is_file():
        return json.loads(stored.read_text())
    started = time.perf_counter()
    first, second = folder / "slic", folder / "labels"
    log = folder / "stages.log"
    write_params(first, Path(args.data), args.split, seed, frames, mode="slic")
    for name in FIRST:
        stage(first, name, log)
    truth, split = classes_of(first / "data" / "manifests" / "validated.csv")
    for _ in range(args.rounds):
        labelled = label_round(first, truth, args.per_round)
        stage(first, "spread-labels", log)
    write_params(second, Path(args.data), args.split, seed, frames,
                 manifest=first / "data" / "manifests" / "validated.csv", mode="labels")  # the same videos
    for copy in ("labels/given.csv", "labels/train/given.csv"):
        (second / copy).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(first / "labels" / "given.csv", second / copy)
    for name in AGAIN:
        stage(second, name, log)
    retrieval = {name: json.loads((where / "reports" / "retrieval.json").read_text())["recall@1"]
                 for name, where in (("slic", first), ("labels", second))}
    trained = json.loads((second / "reports" / "pretrain.json").read_text())
    result = {"seed": seed, "labels": labelled, "labelled_train_videos": trained["labelled_train_videos"],
              "labelled_outside_train": trained["labelled_outside_train"],
              "test_recall_at_1": retrieval,
              "test_named_rightly": {name: share_named_rightly(where, truth, split)
                                     for name, where in (("slic", first), ("labels", second))},
              "pretrain_seconds": {"slic": json.loads((first / "reports" / "pretrain.json").read_text())["seconds"],
                                   "labels": trained["seconds"]},
              "seconds": round(time.perf_counter() - started, 1)}
    stored.write_text(json.dumps(result, indent=2) + "\n")
    return result


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of each encoder's numbers and of the paired lead of labels over slic (points)."""
    out: dict[str, Any] = {}
    for key in ("test_recall_at_1", "test_named_rightly"):
        out[key] = {name: spread([100 * r[key][name] for r in results]) for name in ("slic", "labels")}
        lead = [100 * (r[key]["labels"] - r[key]["slic"]) for r in results]
        out[key]["labels_minus_slic"] = {**spread(lead), "seeds_ahead": sum(v > 0 for v in lead)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="ucf101_6 (videos/ and splits/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="UCF101's split")
    parser.add_argument("--rounds", type=int, default=5, help="labelling rounds")
    parser.add_argument("--per-round", type=int, default=20, help="videos labelled a round")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="work folders (resumed)")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    if not (Path(args.data) / "videos").is_dir():
        parser.error(f"{args.data}/videos not found: the six-class UCF101 set lies beside the checkout")
    frames = Path(args.work) / "frames"  # extracted once, every folder (and split) reads them
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args, frames))
        print(f"seed {seed}: test recall@1 slic {results[-1]['test_recall_at_1']['slic']:.3f} -> labels "
              f"{results[-1]['test_recall_at_1']['labels']:.3f}; test named rightly "
              f"{results[-1]['test_named_rightly']['slic']:.3f} -> {results[-1]['test_named_rightly']['labels']:.3f}",
              flush=True)
    import torch

    report = {"bench": "labels_stage", "data": Path(args.data).name, "split": args.split, "seeds": args.seeds,
              "rounds": args.rounds,
              "per_round": args.per_round, "machine": machine(torch.device("cpu")), "per_seed": results,
              **summary(results)}
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
