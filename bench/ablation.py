"""Benchmark: when do clustering positives help? SLIC against its baselines across appearance bias and seeds.

The sweep: modes slic, intra_video, random_init and oracle x `synth.appearance_bias` {0, 0.25, 0.5, 0.75}
x 3 seeds. For each (bias, seed) a synthetic set is generated with that bias and seed, its manifest built
and its frames extracted; then each mode is pretrained (`pretrain.seed` = the seed too), embedded with
the `embed` protocol and evaluated like the `ablation` stage (test queries against the train gallery).
Every other setting comes from params.yaml. At bias 0 appearance says nothing about the class, so
only motion can help; as the bias grows, SLIC's first clusters can start from the scene family.

Writes reports/bench/ablation.json (per (mode, bias) cell: mean, std over seeds and per-seed test
recall@1/5/10, the clusters' AMI against the true classes per clustering round for slic and oracle,
wall seconds) and reports/bench/ablation.png (recall@1 against appearance bias, one line per mode,
error bars: std over seeds), and logs both to one MLflow run `bench ablation` with a metric per cell.

Each finished (bias, seed, mode) is stored as json under the work folder, so with ``--work DIR`` a
killed sweep resumes where it stopped (and a killed pretraining resumes from its last.pt).

    python bench/ablation.py --work data/bench/ablation         # the full sweep: 12 datasets x 4 trainings
    python bench/ablation.py --quick                            # tiny sizes, 1 seed, 2 biases: seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from slic.config import Config, changed_settings, load, to_dict  # noqa: E402

MODES = ("slic", "intra_video", "random_init", "oracle")
CLUSTERED = ("slic", "oracle")  # modes whose pretraining runs clustering rounds (AMI per round)
BIASES = (0.0, 0.25, 0.5, 0.75)
SEEDS = (7, 8, 9)
REPORTED_KS = (1, 5, 10)
QUICK_BIASES = (0.0, 0.75)
QUICK_SEEDS = (7,)
# Settings that only say where files go, how many processes run or where the work is done (the frame cache
# and the decoding device give the same clips): not part of a result's identity.
NOT_SETTINGS = {"out", "root", "manifest", "checkpoint", "embeddings", "curve", "html", "splits_dir",
                "workers", "device", "data_docs", "frame_cache_mb", "gpu_decode"}
DEFAULT_OUT = ROOT / "reports" / "bench" / "ablation.json"


def quick_config(config: Config) -> Config:
    """Tiny sizes for a smoke run: 3 classes x 4 groups x 2 clips of 32 frames at 64x48, 1 epoch."""
    return replace(
        config,
        synth=replace(config.synth, classes=3, groups=4, clips_per_group=2, scale=1.0, frames=32, width=64,
                      height=48, workers=1),
        manifest=replace(config.manifest, workers=1),
        extract=replace(config.extract, short_side=24, workers=1),
        pretrain=replace(config.pretrain, backbone="r3d_18_tiny", hidden_dim=32, out_dim=16, clip_len=8, size=16,
                         batch_size=4, epochs=1, cluster_interval=1, eval_interval=1, workers=0),
        embed=replace(config.embed, clips=2, workers=0),
    )


def cell_config(config: Config, bias: float, seed: int, folder: Path) -> Config:
    """`config` with the dataset (bias, seed) and every path inside `folder`; pretrain.seed = seed."""
    raw, manifest, validated = folder / "raw", folder / "manifest.csv", folder / "validated.csv"
    return replace(
        config,
        synth=replace(config.synth, out=str(raw), appearance_bias=bias, seed=seed),
        manifest=replace(config.manifest, root=str(raw), splits_dir="", out=str(manifest)),
        extract=replace(config.extract, manifest=str(validated), out=str(folder / "frames")),
        pretrain=replace(config.pretrain, seed=seed),
    )


def settings(config: Config) -> dict[str, dict[str, Any]]:
    """The settings a result depends on (paths and process counts left out), to tell a stale stored result."""
    sections = ("synth", "manifest", "extract", "pretrain", "embed", "evaluate") + (("flow",) if config.flow.enabled
                                                                                     else ())
    return {name: {k: v for k, v in to_dict(getattr(config, name)).items() if k not in NOT_SETTINGS}
            for name in sections}


def prepare_data(config: Config, folder: Path) -> dict[str, Any]:
    """Generate the synthetic set, build its manifest (usable rows as validated.csv), extract frames.

    Done once per (bias, seed): `data.json` marks a finished preparation and holds its report.
    """
    from slic.data import synthetic
    from slic.data.datasets import build_manifest
    from slic.data.frames import extract_as_configured

    marker = folder / "data.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    started = time.perf_counter()
    synth = synthetic.generate(config.synth)
    table = build_manifest(config.manifest, target_fps=config.extract.fps)
    Path(config.manifest.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(config.manifest.out, index=False)
    usable = table[(table["excluded"] == "") & (table["split"] != "unused")]
    usable.to_csv(config.extract.manifest, index=False)
    extract = extract_as_configured(usable, config.extract)
    report = {"videos": synth["videos"], "splits": {k: int(v) for k, v in usable["split"].value_counts().items()},
              "extract_failed": len(extract["failed"]), "seconds": round(time.perf_counter() - started, 2)}
    marker.write_text(json.dumps(report, indent=1))
    return report


def cluster_amis(history_path: Path) -> list[float]:
    """AMI of each clustering round against the true classes, from pretrain's history.json."""
    if not history_path.is_file():
        return []
    return [float(h["cluster_ami"]) for h in json.loads(history_path.read_text()) if "cluster_ami" in h]


def run_mode(config: Config, mode: str, folder: Path, world: Any, tracked: bool) -> dict[str, Any]:
    """Pretrain `mode`, embed every video with the `embed` protocol, evaluate: the `ablation` stage's own
    `train_and_evaluate` (an MLflow run per mode when `tracked`)."""
    from slic.ablation import bench_flow_view, train_and_evaluate

    out = folder / "models" / mode
    flow = bench_flow_view(config, folder / "flow")
    row = train_and_evaluate(f"bench_ablation/{mode}", replace(config.pretrain, mode=mode, out=str(out)), config,
                             world, flow=flow, tracked=tracked)
    kept = ("best_epoch", "best_val_recall_at_1", "seconds")
    return {"mode": mode, **{k: v for k, v in row.items() if k.startswith("recall@") or k in kept},
            "cluster_ami": cluster_amis(out / "history.json") if mode in CLUSTERED else None}


def same_settings(stored: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Whether a stored result's settings are `expected`, section by section; a setting added to slic after
    the result was stored counts as equal at its default (`slic.config.changed_settings`)."""
    defaults = json.loads(json.dumps(settings(Config())))
    return set(stored) == set(expected) and not any(
        changed_settings(stored[section], values, defaults.get(section, {})) for section, values in expected.items())


def stored_result(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """A finished result stored at `path` when it was made with the `expected` settings, else None."""
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    return stored if same_settings(stored.get("settings") or {}, expected) else None


def run_seed(config: Config, bias: float, seed: int, modes: list[str], work: Path, world: Any,
             keep_data: bool, tracked: bool = True) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """Every mode at one (bias, seed): stored results reused, the others computed and stored.

    Returns ({mode: result}, the data preparation report or None when every result was reused).
    """
    folder = work / f"bias{bias:g}_seed{seed}"
    cfg = cell_config(config, bias, seed, folder)
    expected = json.loads(json.dumps(settings(cfg)))  # as it reads back from json (tuples -> lists)
    results: dict[str, dict[str, Any]] = {}
    data = None
    for mode in modes:
        path = folder / "results" / f"{mode}.json"
        found = stored_result(path, expected)
        if found is not None:
            results[mode] = {**found, "reused": True}
            print(f"  bias {bias:g} seed {seed} {mode:11s} reused: {recalls(found)}", flush=True)
            continue
        if data is None:
            print(f"  bias {bias:g} seed {seed}: generating, manifest, extracting ...", flush=True)
            data = prepare_data(cfg, folder)
        result = {**run_mode(cfg, mode, folder, world, tracked), "settings": expected}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        results[mode] = {**result, "reused": False}
        print(f"  bias {bias:g} seed {seed} {mode:11s} {recalls(result)} ({result['seconds']} s)", flush=True)
    if not keep_data:
        for name in ("raw", "frames", "flow", "models"):
            shutil.rmtree(folder / name, ignore_errors=True)
        (folder / "data.json").unlink(missing_ok=True)
    return results, data


def recalls(result: dict[str, Any]) -> str:
    """'recall@1=0.412 recall@5=... AMI 0.08..0.12' for a progress line."""
    text = " ".join(f"recall@{k}={result[f'recall@{k}']:.3f}" for k in REPORTED_KS)
    amis = result.get("cluster_ami")
    return text + (f" AMI {amis[0]:.3f}..{amis[-1]:.3f}" if amis else "")


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "per_seed": [float(v) for v in array]}


def aggregate(results: dict[tuple[float, int], dict[str, dict[str, Any]]], modes: list[str],
              biases: list[float], seeds: list[int]) -> list[dict[str, Any]]:
    """One cell per (mode, bias): recall@1/5/10 over seeds, AMI per round per seed, seconds per seed."""
    cells = []
    for mode in modes:
        for bias in biases:
            rows = [results[(bias, seed)][mode] for seed in seeds]
            cells.append({
                "mode": mode, "appearance_bias": bias, "seeds": list(seeds),
                **{f"recall@{k}": spread([row[f"recall@{k}"] for row in rows]) for k in REPORTED_KS},
                "cluster_ami_per_round": [row["cluster_ami"] for row in rows] if mode in CLUSTERED else None,
                "best_val_recall_at_1": [row["best_val_recall_at_1"] for row in rows],
                "seconds_per_seed": [row["seconds"] for row in rows],
                "reused_per_seed": [row["reused"] for row in rows],
            })
    return cells


def plot(cells: list[dict[str, Any]], chance: float, out: Path) -> Path:
    """recall@1 (%) against appearance bias, one line per mode, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    modes = list(dict.fromkeys(cell["mode"] for cell in cells))
    for index, mode in enumerate(modes):
        mine = sorted((c for c in cells if c["mode"] == mode), key=lambda c: c["appearance_bias"])
        dodge = 0.008 * (index - (len(modes) - 1) / 2)  # equal values stay visible side by side
        ax.errorbar([c["appearance_bias"] + dodge for c in mine], [100 * c["recall@1"]["mean"] for c in mine],
                    yerr=[100 * c["recall@1"]["std"] for c in mine], marker="o", capsize=4, label=mode)
    ax.axhline(100 * chance, color="grey", linestyle="--", linewidth=1, label="chance")
    seeds = len(cells[0]["seeds"]) if cells else 0
    ax.set(xlabel="synth.appearance_bias", ylabel="test recall@1 (%)", ylim=(0, 100),
           title=f"retrieval by pretraining mode ({seeds} seed{'s' if seeds != 1 else ''}, error bars: std)")
    return save_figure(fig, ax, out)


def save_figure(fig: Any, ax: Any, out: Path) -> Path:
    """The legend, a tight layout and the PNG at `out` (its folder made); the figure closed."""
    import matplotlib.pyplot as plt

    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def log_to_mlflow(report: dict[str, Any], json_path: Path, png_path: Path) -> str:
    """One run `bench ablation`: the sweep as params, mean and std of recall@k per cell as metrics, both files."""
    from slic.tracking import stage_run

    sweep = report["sweep"]
    params = {"modes": sweep["modes"], "appearance_biases": sweep["appearance_biases"], "seeds": sweep["seeds"],
              "quick": sweep["quick"]}
    with stage_run("bench_ablation", params, name="bench ablation") as run:
        for cell in report["cells"]:
            prefix = f"{cell['mode']}/bias_{cell['appearance_bias']:g}"
            run.log_metrics({f"{prefix}/recall_at_{k}_{stat}": cell[f"recall@{k}"][stat]
                             for k in REPORTED_KS for stat in ("mean", "std")})
        run.log_artifact(json_path)
        run.log_artifact(png_path)
        return run.run_id


def machine(device: Any) -> dict[str, Any]:
    """Where the sweep ran: CPU model and count, torch / oneDNN versions and threads, the device (GPU name on
    CUDA): a comparison holds inside one machine, so the report says which."""
    from slic.machine import machine_info

    return {"gpu": None, **machine_info(device), "device": str(device), "platform": platform.platform()}


def write_report(report: dict[str, Any], out: str | Path) -> Path:
    """A bench's report as indented JSON at `out` (its folder made); the path, for the bench's last line."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return out


def shown(path: Path) -> str:
    """A path for the report: relative to the repository when inside it, else only its name (no machine paths)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--biases", type=float, nargs="+", help=f"appearance biases (default {BIASES})")
    parser.add_argument("--seeds", type=int, nargs="+", help=f"dataset and pretrain seeds (default {SEEDS})")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--work", help="folder for datasets, checkpoints and finished results, kept so that a "
                                       "re-run resumes (default: a temporary folder, removed at the end)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep each (bias, seed)'s videos, frames and checkpoints (default: only results)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the json; the png is written beside it")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--quick", action="store_true",
                        help=f"tiny sizes, 1 epoch; seeds {QUICK_SEEDS}, biases {QUICK_BIASES} unless given")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 with --quick, "
                                                    "where threads only wait on each other over tiny tensors)")
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only")
    parser.add_argument("--verbose", action="store_true", help="slic's log lines (epochs, clustering)")
    args = parser.parse_args(argv)
    args.biases = args.biases or list(QUICK_BIASES if args.quick else BIASES)
    args.seeds = args.seeds or list(QUICK_SEEDS if args.quick else SEEDS)
    args.threads = args.threads or (1 if args.quick else None)
    if not all(0.0 <= b <= 1.0 for b in args.biases):
        parser.error("--biases: every value must be in [0, 1]")
    return args


def sweep(config: Config, args: argparse.Namespace, work: Path, world: Any) -> dict[str, Any]:
    """Run (or reuse) every (bias, seed, mode); the report without MLflow's run id."""
    started = time.perf_counter()
    results: dict[tuple[float, int], dict[str, dict[str, Any]]] = {}
    datasets = []
    total = len(args.biases) * len(args.seeds)
    for index, (bias, seed) in enumerate(((b, s) for b in args.biases for s in args.seeds), start=1):
        print(f"[{index}/{total}] appearance_bias {bias:g}, seed {seed}", flush=True)
        results[(bias, seed)], data = run_seed(config, bias, seed, args.modes, work, world, args.keep_data,
                                                    tracked=not args.no_mlflow)
        if data is not None:
            datasets.append({"appearance_bias": bias, "seed": seed, **data})
    cells = aggregate(results, args.modes, args.biases, args.seeds)
    runs = [row for by_mode in results.values() for row in by_mode.values()]
    return {
        "sweep": {"modes": args.modes, "appearance_biases": args.biases, "seeds": args.seeds, "quick": args.quick,
                  "query_split": config.evaluate.query_split, "gallery_split": config.evaluate.gallery_split,
                  "std": "sample standard deviation over seeds (ddof 1; 0 with one seed)",
                  "work": shown(work) if args.work else "temporary"},
        "chance_recall_at_1": 1.0 / config.synth.classes,
        "cells": cells, "datasets_prepared": datasets,
        "computed": sum(not row["reused"] for row in runs), "reused": sum(row["reused"] for row in runs),
        "settings": settings(config), "machine": machine(world.device),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def configure(verbose: bool, threads: int | None) -> None:
    """A bench run's logging (slic's INFO lines with `verbose`) and torch CPU threads (torch's choice when None)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if threads:
        import torch

        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    configure(args.verbose, args.threads)
    from slic.distributed import World, resolve_device

    config = load(args.params)
    config = quick_config(config) if args.quick else config
    world = World(0, 1, 0, resolve_device(config.pretrain.device))
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="slic-bench-ablation-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        report = sweep(config, args, work, world)
    png = out.with_suffix(".png")
    plot(report["cells"], report["chance_recall_at_1"], png)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_mlflow:
        report["mlflow_run_id"] = log_to_mlflow(report, out, png)
        out.write_text(json.dumps(report, indent=2) + "\n")
    for cell in report["cells"]:
        r1 = cell["recall@1"]
        print(f"{cell['mode']:11s} bias {cell['appearance_bias']:<5g} recall@1 {100 * r1['mean']:5.1f} "
              f"+- {100 * r1['std']:4.1f}", flush=True)
    print(f"-> {out}, {png} ({report['computed']} computed, {report['reused']} reused, "
          f"{report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
