"""Long, untrimmed videos as segments (manifest.segment_seconds): does search find the right part of a long video?

ucf101_6's train clips (the UCF101 split 1 train list: 529 clips, 170x128) but 3 held-out group numbers (the
same in every class, seeded) are shuffled with a seed and put back to back into `--videos` long videos
(re-encoded in UCF101's MPEG-4 part 2 at 25 fps, several minutes each), with the class of every frame written
down. That folder is an unlabelled archive: the `slic` stages run on it as a user runs them (`slic manifest`,
`validate`, `extract`, `pretrain`, `embed`, `index`, in a workspace of their own, with
presets/ucf101_6_cpu.yaml and `manifest.segment_seconds`), so pretraining sees segments and never a class.
Clips then query the index with `slic.search` as `slic search` does: the held-out groups' clips (val), which
choose the segment length, and the 202 test clips, reported at the length val chose. A hit is a segment whose
frames are mostly of the query's class (`recall@k_majority`), or hold any of its frames (`recall@k_any`). The
same for the same network untrained (`pretrain.mode: random_init`), and the chance of a hit (the share of
segments whose majority class is the query's).

Writes reports/bench/segments.json.

    python bench/segments.py                          # 6 long videos, segments of 4, 8, 16 s, seeds 7, 8, 9
    python bench/segments.py --segment-seconds 8 --videos 3 --seeds 7
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, write_report  # noqa: E402
from bench.serving_decode import write_video_stream  # noqa: E402

DEFAULT_ROOT = ROOT.parent / "shared" / "real" / "ucf101_6"
DEFAULT_OUT = ROOT / "reports" / "bench" / "segments.json"
STAGES = ("manifest", "validate", "extract", "pretrain", "embed", "index")
WIDTH, HEIGHT, FPS = 170, 128, 25
VAL_GROUPS = 3  # of the 18 train group numbers (g08-g25): held out of the archive, they choose segment_seconds


def class_list(splits: Path, name: str) -> list[tuple[str, str]]:
    """(clip path under videos/, class) of a UCF101 split list."""
    return [(line.split()[0], line.split("/")[0]) for line in (splits / name).read_text().splitlines() if line.strip()]


def held_out(clips: list[tuple[str, str]], seed: int, groups: int = VAL_GROUPS) -> tuple[list, list]:
    """(archive clips, val clips): `groups` seeded group numbers of the train list, the same in every class, are
    held out of the archive as validation queries (as the manifest carves val: a group is one source video)."""
    def group(name: str) -> str:
        return name.rsplit("_g", 1)[1][:2]

    numbers = sorted({group(name) for name, _ in clips})
    chosen = set(np.random.default_rng([seed, 2]).choice(numbers, size=groups, replace=False).tolist())
    return [c for c in clips if group(c[0]) not in chosen], [c for c in clips if group(c[0]) in chosen]


def make_archive(root: Path, folder: Path, clips: list[tuple[str, str]], videos: int, seed: int) -> pd.DataFrame:
    """`clips` shuffled into `videos` long files under `folder`; the class timeline (file, class, start, stop
    frame), reused with the files when present."""
    from slic.data.video import decode

    timeline = folder / "timeline.csv"
    if timeline.is_file():
        return pd.read_csv(timeline)
    order = np.random.default_rng(seed).permutation(len(clips))
    rows: list[dict[str, Any]] = []
    archive = folder / "archive"
    archive.mkdir(parents=True, exist_ok=True)
    for number, part in enumerate(np.array_split(order, videos)):
        path = archive / f"long_{number}.avi"
        spans: list[dict[str, Any]] = []

        def frames_of(part: np.ndarray = part, spans: list[dict[str, Any]] = spans,
                      path: Path = path) -> Any:
            made = 0
            for index in part:
                name, label = clips[int(index)]
                frames = decode(root / "videos" / name)
                spans.append({"file": path.name, "class": label, "clip": name, "start": made,
                              "stop": made + len(frames)})
                made += len(frames)
                yield from frames

        write_video_stream(path, frames_of(), width=WIDTH, height=HEIGHT, fps=FPS, codec="mpeg4")
        rows += spans
    table = pd.DataFrame(rows)
    table.to_csv(timeline, index=False)
    return table


def workspace_params(work: Path, archive: Path, seconds: float, mode: str, seed: int) -> tuple[Path, str]:
    """params.yaml of the checkout with the CPU preset, the archive as unlabelled videos cut into segments, and
    every output inside `work` (each (mode, seed) run's model, embeddings and index apart); and the run's name."""
    from slic.presets import apply_preset, load_preset

    run = f"{mode}_seed{seed}"
    path = work / f"params_{run}.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    apply_preset(load_preset("ucf101_6_cpu"), path)
    params = yaml.safe_load(path.read_text())
    params["manifest"].update(root=str(archive), layout="unlabelled", splits_dir="", segment_seconds=seconds)
    params["eval_sets"] = {}
    params["pretrain"].update(mode=mode, seed=seed, out=f"data/models/{run}")
    params["embed"].update(checkpoint=f"data/models/{run}/best.pt", out=f"data/embeddings/{run}.npz")
    params["index"].update(out=f"data/index/{run}", add_videos="")
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path, run


def run_stages(work: Path, params: Path, stages: tuple[str, ...]) -> dict[str, float]:
    """`slic --params PARAMS STAGE` for each stage, in `work`: seconds per stage."""
    from slic.cli import main

    previous, seconds = Path.cwd(), {}
    os.chdir(work)
    try:
        for stage in stages:
            started = time.perf_counter()
            if main(["--params", str(params), stage]) != 0:
                raise SystemExit(f"bench/segments.py: slic {stage} failed in {work}")
            seconds[stage] = round(time.perf_counter() - started, 2)
    finally:
        os.chdir(previous)
    return seconds


def segment_classes(rows: pd.DataFrame, timeline: pd.DataFrame) -> tuple[list[str], list[set[str]]]:
    """Per index row (a segment of a long file): its majority class by frames, and every class in it."""
    majority, present = [], []
    for path, start, end in zip(rows["path"], rows["start_frame"], rows["stop_frame"]):
        spans = timeline[timeline["file"] == Path(path).name]
        overlap = (np.minimum(spans["stop"], end) - np.maximum(spans["start"], start)).clip(lower=0)
        by_class = overlap.groupby(spans["class"]).sum()
        majority.append(str(by_class.idxmax()))
        present.append(set(by_class[by_class > 0].index))
    return majority, present


def measure(work: Path, run: str, queries: list[tuple[Path, str]], timeline: pd.DataFrame,
            ks: tuple[int, ...]) -> dict[str, Any]:
    """Every query clip against the `run` index: recall@k (majority and any overlap), chance, seconds."""
    from slic.index import load_index
    from slic.search import index_encoder, search_videos

    loaded = load_index(work / "data" / "index" / run)
    manifest = pd.read_csv(work / "data" / "manifests" / "validated.csv", keep_default_na=False)
    rows = loaded.rows.merge(manifest[["video_id", "start_frame", "stop_frame"]], on="video_id", how="left")
    majority, present = segment_classes(rows, timeline)
    encoder = index_encoder(loaded, print)
    started = time.perf_counter()
    answers, errors = search_videos([q for q, _ in queries], encoder, loaded, max(ks), workers=2)
    seconds = time.perf_counter() - started
    if errors:
        raise SystemExit(f"bench/segments.py: {len(errors)} queries failed, e.g. {errors[0]}")
    position = {video_id: i for i, video_id in enumerate(rows["video_id"])}
    label = dict((str(q), c) for q, c in queries)
    result: dict[str, Any] = {"segments": len(rows), "queries": len(answers)}
    for k in ks:
        tops = [[position[h["video_id"]] for h in a["results"][:k]] for a in answers]
        result[f"recall@{k}_majority"] = round(float(np.mean([any(majority[i] == label[a["query"]] for i in top)
                                                              for a, top in zip(answers, tops)])), 4)
        result[f"recall@{k}_any"] = round(float(np.mean([any(label[a["query"]] in present[i] for i in top)
                                                         for a, top in zip(answers, tops)])), 4)
    shares = pd.Series(majority).value_counts(normalize=True)
    result["chance@1_majority"] = round(float(np.mean([shares.get(c, 0.0) for _, c in queries])), 4)
    result["search_seconds"] = round(seconds, 2)
    result["top1_example"] = {"query": Path(answers[0]["query"]).name, **{
        key: answers[0]["results"][0][key] for key in ("video_id", "start_s", "end_s", "similarity")}}
    return result


def mean_std(runs: list[dict[str, Any]], seeds: int) -> dict[str, dict[str, str]]:
    """Per mode, each recall and chance over the seeds' runs, in %, as "mean ± std"."""
    keys = [k for k in runs[0] if "recall@" in k or "chance@" in k]
    spread = 1 if seeds > 1 else 0
    return {mode: {k: f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=spread):.1f}"
                   for k in keys for values in [[r[k] for r in runs if r["mode"] == mode]]}
            for mode in ("slic", "random_init")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the ucf101_6 folder (videos/, splits/)")
    parser.add_argument("--videos", type=int, default=6, help="long videos the train clips are put into")
    parser.add_argument("--segment-seconds", type=float, nargs="+", default=[4.0, 8.0, 16.0],
                        help="segment lengths to compare on the val queries")
    parser.add_argument("--seed", type=int, default=7, help="the clips' order in the long videos")
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9], help="pretraining seeds")
    parser.add_argument("--work", default=str(ROOT / "data" / "bench" / "segments"))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    root, work = Path(args.root), Path(args.work)
    if not (root / "splits" / "trainlist01.txt").is_file():
        sys.exit(f"bench/segments.py: error: --root {root}: no splits/trainlist01.txt; pass the ucf101_6 folder")
    started = time.perf_counter()
    kept, val = held_out(class_list(root / "splits", "trainlist01.txt"), args.seed)
    folder = work / f"videos{args.videos}_seed{args.seed}_heldout{VAL_GROUPS}"
    timeline = make_archive(root, folder, kept, args.videos, args.seed)
    queries = {"val": [(root / "videos" / name, label) for name, label in val],
               "test": [(root / "videos" / name, label) for name, label in class_list(root / "splits",
                                                                                   "testlist01.txt")]}
    by_length: dict[str, Any] = {}
    for seconds in args.segment_seconds:
        space = work / f"heldout{VAL_GROUPS}_segments{seconds:g}"
        space.mkdir(parents=True, exist_ok=True)
        runs: list[dict[str, Any]] = []
        for seed in args.seeds:
            for mode in ("slic", "random_init"):
                params, run = workspace_params(space, folder / "archive", seconds, mode, seed)
                stages = STAGES if not runs else ("pretrain", "embed", "index")  # the data once
                stage_seconds, previous = run_stages(space, params, stages), Path.cwd()
                os.chdir(space)  # the index names its checkpoint relative to the workspace
                try:
                    measured = {f"{split}_{k}": v for split in ("val", "test")
                                for k, v in measure(space, run, queries[split], timeline, (1, 5, 10)).items()}
                finally:
                    os.chdir(previous)
                runs.append({"mode": mode, "seed": seed, "stage_seconds": stage_seconds, **measured})
                print(f"  {seconds:g} s {run}: " + json.dumps({k: v for k, v in measured.items()
                                                             if "recall@1_" in k or "segments" in k}), flush=True)
        by_length[f"{seconds:g}"] = {"mean_std_percent": mean_std(runs, len(args.seeds)), "runs": runs}
    chosen = max(by_length, key=lambda length: np.mean([r["val_recall@1_majority"] for r in
                                                        by_length[length]["runs"] if r["mode"] == "slic"]))
    files = timeline.groupby("file")["stop"].max()
    report = {
        "question": "with manifest.segment_seconds, does slic search find the part of a long video that holds the "
                    "query's action?",
        "archive": {"videos": int(len(files)), "clips": int(len(timeline)), "minutes": round(files.sum() / FPS / 60, 1),
                    "seed": args.seed, "built_from": f"ucf101_6 trainlist01 clips but {VAL_GROUPS} held-out groups, "
                                                     "shuffled, back to back"},
        "queries": {"val": f"ucf101_6 trainlist01 groups held out of the archive ({len(val)} clips): choose "
                           "segment_seconds", "test": "ucf101_6 testlist01 (202 clips, never in the archive)"},
        "hit": "majority: the segment's frames are mostly of the query's class; any: it holds some",
        "seeds": args.seeds, "chosen_on_val": {"segment_seconds": float(chosen), "rule": "slic's mean val recall@1"},
        "test_at_chosen": by_length[chosen]["mean_std_percent"], "by_segment_seconds": by_length,
        "machine": machine("cpu"), "work": shown(work),
        "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
