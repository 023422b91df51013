"""Benchmark on real video: ucf101_6 (six UCF101 classes, split 1), every pretraining mode over seeds.

The judge of what slic learns (the synthetic set is the project's own proxy). The settings are params.yaml
with the preset `ucf101_6_cpu` applied (what `make run-real` runs), the dataset at `--root` used in place.
The manifest, validation carve and frame extraction are made once into the work folder; then, per seed
(`pretrain.seed`, `linear_probe.seed` and `finetune.seed` all = the seed):
- every row of `--rows` is pretrained, embedded with the `embed` protocol and evaluated like the `ablation`
  stage (test queries against the train gallery): the four modes, and `slic_video` (slic with one proxy per
  video, `pretrain.proxy_per: video`, in which the cross-video positive is pulled to its anchor's proxy), and
  two controls: `slic_video_shuffled` (its clusters dealt to the videos at random, sizes kept) and
  `slic_triplet` (the paper's triplet objective);
- the linear probe on the frozen encoder of `--encoder` and of random_init, and finetuning from that encoder
  against from scratch (test top-1, checkpoints chosen on val).

Writes reports/bench/real.json: `seeds`, per row `mean`/`std`/`per_seed` of recall@1/5/10 (fractions), the
clusters' AMI against the classes per round per seed (first and last too), best val recall@1 per seed,
`finetune` (pretrained_mean, scratch_mean, per seed) and `linear_probe` (encoder and random_init, per seed),
and reports/bench/real.png (recall@1 per row, one dot per seed); and logs both to an MLflow run `bench real`.

`--set pretrain.KEY=VALUE` overrides a setting for every row (a variant to compare on val: give it its own
`--work` and `--out`). Each finished (seed, row) is stored under the work folder with its settings, so a
killed run resumes where it stopped (and a killed pretraining from its last.pt).

    python bench/real.py                                   # 5 rows x seeds 7, 8, 9, probe and finetune
    python bench/real.py --seeds 7 --rows slic intra_video --no-classify --set pretrain.size=48 \\
        --work data/bench/real_size48 --out reports/bench/real_size48.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import (cluster_amis, configure, machine, save_figure, shown, spread,  # noqa: E402
                            stored_result)
from slic.config import Config, ConfigError, load, to_dict  # noqa: E402

# Row name -> (pretrain.mode, other pretrain settings of the row).
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "random_init": ("random_init", {}),
    "intra_video": ("intra_video", {}),
    "slic": ("slic", {"proxy_per": "label"}),
    "slic_video": ("slic", {"proxy_per": "video"}),
    "oracle": ("oracle", {}),
    # Controls (issue: what are the clusters worth?): slic_video with each round's clusters dealt to the videos at
    # random (sizes kept), and slic with the paper's triplet objective instead of proxies.
    "slic_video_shuffled": ("slic", {"proxy_per": "video", "shuffle_clusters": True}),
    "slic_triplet": ("slic", {"objective": "triplet"}),
    # NT-Xent over the anchor-positive pairs (issue: an objective in which SLIC's positive acts): both modes, so the
    # objective is compared with itself; slic_supcon makes every clip of the cluster a positive.
    "intra_video_nce": ("intra_video", {"objective": "nce"}),
    "slic_nce": ("slic", {"objective": "nce", "nce_positives": "pair"}),
    "slic_supcon": ("slic", {"objective": "nce", "nce_positives": "label"}),
    # Purer positives (issue item 3): the cross-video positive from the anchor's 3 nearest cluster members.
    "slic_video_nearest": ("slic", {"proxy_per": "video", "positive_pool": "nearest"}),
    # A label-free p_intra schedule (issue item 3): intra-video positives while consecutive rounds disagree.
    "slic_video_agreement": ("slic", {"proxy_per": "video", "p_intra_schedule": "agreement"}),
}
CLUSTERED = ("slic", "oracle")
SEEDS = (7, 8, 9)
REPORTED_KS = (1, 5, 10)
PRESET = "ucf101_6_cpu"
DEFAULT_ROOT = ROOT.parent / "shared" / "real" / "ucf101_6"
DEFAULT_OUT = ROOT / "reports" / "bench" / "real.json"
DATA_SECTIONS = ("manifest", "extract")
TRAIN_SECTIONS = ("manifest", "extract", "pretrain", "embed", "evaluate")
CLASSIFY_SECTIONS = ("manifest", "extract", "pretrain", "linear_probe", "finetune")
NOT_SETTINGS = {"out", "root", "manifest", "checkpoint", "embeddings", "curve", "html", "splits_dir",
                "workers", "device", "data_docs", "frame_cache_mb", "gpu_decode", "linear_probe_report"}


class BenchError(ValueError):
    """Bad arguments or a missing dataset, worded as one line naming the value and the fix."""


def settings(config: Config, sections: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The settings a result depends on (paths and process counts left out), as they read back from json; the
    flow section too when flow is on (pretraining then reads it)."""
    if config.flow.enabled and "pretrain" in sections:
        sections = (*sections, "flow")
    return json.loads(json.dumps({name: {k: v for k, v in to_dict(getattr(config, name)).items()
                                         if k not in NOT_SETTINGS} for name in sections}))


def with_overrides(config: Config, assignments: list[str]) -> Config:
    """`config` with `section.key=value` assignments (YAML values) applied and checked like params.yaml."""
    import yaml

    from slic.config_check import build_section

    raw = {section.name: to_dict(getattr(config, section.name)) for section in fields(Config)}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        section, _, name = key.partition(".")
        if not sep or not name or section not in raw:
            raise BenchError(f"--set {assignment!r}: expected section.key=value, e.g. pretrain.size=48")
        if name not in raw[section]:
            raise BenchError(f"--set {assignment!r}: {section} has no key {name!r}")
        raw[section][name] = yaml.safe_load(value)
    try:
        return build_section(Config, raw, "", "--set")
    except ConfigError as exc:
        raise BenchError(str(exc)) from exc


def real_config(params: Path, root: Path, work: Path, preset: str = PRESET) -> Config:
    """params.yaml with the preset applied, the dataset at `root` and every output path inside `work`."""
    from slic.presets import apply_preset, load_preset

    if not (root / "videos").is_dir() or not (root / "splits").is_dir():
        raise BenchError(f"--root {root}: expected videos/ and splits/ (UCF101 layout) there; pass the ucf101_6 folder")
    with tempfile.TemporaryDirectory(prefix="slic-bench-real-") as tmp:
        copy = Path(tmp) / "params.yaml"
        copy.write_text(params.read_text())
        apply_preset(load_preset(preset), copy)
        config = load(copy)
    data = work / "data"
    return replace(
        config,
        manifest=replace(config.manifest, root=str(root / "videos"), splits_dir=str(root / "splits"),
                         out=str(data / "manifest.csv")),
        extract=replace(config.extract, manifest=str(data / "validated.csv"), out=str(data / "frames")),
    )


def seed_config(config: Config, seed: int, folder: Path) -> Config:
    """`config` with every training seed = `seed` and the classifiers' outputs inside `folder`."""
    return replace(config, pretrain=replace(config.pretrain, seed=seed),
                   linear_probe=replace(config.linear_probe, seed=seed, out=str(folder / "linear_probe")),
                   finetune=replace(config.finetune, seed=seed, out=str(folder / "finetune")))


def prepare_data(config: Config, work: Path) -> dict[str, Any]:
    """Manifest (usable rows as validated.csv) and frame shards, once per work folder and data settings."""
    from slic.data.datasets import build_manifest
    from slic.data.frames import extract_as_configured

    marker = work / "data" / "data.json"
    expected = settings(config, DATA_SECTIONS)
    found = stored_result(marker, expected)
    if found is not None:
        return found
    started = time.perf_counter()
    table = build_manifest(config.manifest, target_fps=config.extract.fps)
    marker.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(config.manifest.out, index=False)
    usable = table[(table["excluded"] == "") & (table["split"] != "unused")]
    usable.to_csv(config.extract.manifest, index=False)
    extract = extract_as_configured(usable, config.extract)
    if extract["failed"]:
        raise BenchError(f"{config.manifest.root}: {len(extract['failed'])} videos failed to extract, e.g. "
                         f"{extract['failed'][0]}")
    report = {"videos": len(table), "usable": len(usable),
              "splits": {k: int(v) for k, v in usable["split"].value_counts().items()},
              "seconds": round(time.perf_counter() - started, 2), "settings": expected}
    marker.write_text(json.dumps(report, indent=1))
    return report


def run_row(config: Config, row: str, folder: Path, world: Any, tracked: bool) -> dict[str, Any]:
    """Pretrain one row, embed, evaluate (the `ablation` stage's `train_and_evaluate`); its result."""
    from slic.ablation import bench_flow_view, train_and_evaluate

    mode, overrides = ROWS[row]
    out = folder / row
    pretrain_cfg = replace(config.pretrain, mode=mode, out=str(out), **overrides)
    flow = bench_flow_view(config, Path(config.extract.out).parent / "flow")  # shared by the seeds
    result = train_and_evaluate(f"bench_real/{row}", pretrain_cfg, config, world, flow=flow, tracked=tracked)
    amis = cluster_amis(out / "history.json") if mode in CLUSTERED else []
    kept = ("best_epoch", "best_val_recall_at_1", "seconds")
    return {"row": row, "mode": mode, **{k: v for k, v in result.items() if k.startswith("recall@") or k in kept},
            "cluster_ami": amis, "val_recall_at_1": val_curve(out / "history.json")}


def val_curve(history: Path) -> list[float]:
    """Validation recall@1 at each evaluation epoch, from pretrain's history.json."""
    if not history.is_file():
        return []
    return [float(h["val_recall_at_1"]) for h in json.loads(history.read_text()) if "val_recall_at_1" in h]


def row_config(config: Config, row: str) -> Config:
    """`config` with the row's pretrain settings (mode and overrides), for its stored settings."""
    mode, overrides = ROWS[row]
    return replace(config, pretrain=replace(config.pretrain, mode=mode, **overrides))


def classify(config: Config, encoder: str, folder: Path) -> dict[str, Any]:
    """Linear probes on the frozen `encoder` and random_init, finetuning from `encoder` and from scratch."""
    from slic.finetune_stages import run_finetune, run_linear_probe

    result: dict[str, Any] = {}
    for source in (encoder, "random_init"):
        checkpoint = str(folder / source / "best.pt")
        probe_cfg = replace(config.linear_probe, checkpoint=checkpoint,
                            out=str(folder / "linear_probe" / source))
        probe = run_linear_probe(probe_cfg, manifest=config.extract.manifest, frames_dir=config.extract.out)
        report = folder / "linear_probe" / source / "report.json"
        report.write_text(json.dumps(probe, indent=1))
        result[f"linear_probe_{source}"] = {k: probe[k] for k in ("top1", "top5", "best_epoch", "best_val_top1")}
        if source == encoder:
            tuned = run_finetune(replace(config.finetune, checkpoint=checkpoint, linear_probe_report=str(report)),
                                 manifest=config.extract.manifest, frames_dir=config.extract.out)
            for init in ("pretrained", "scratch"):
                result[f"finetune_{init}"] = {k: tuned[init][k] for k in ("top1", "top5", "best_epoch")}
    return result


def run_seed(config: Config, seed: int, rows: list[str], encoder: str | None, work: Path, world: Any,
             tracked: bool) -> dict[str, dict[str, Any]]:
    """Every row (and the classifiers) at one seed: stored results reused, the others computed and stored."""
    folder = work / f"seed{seed}"
    cfg = seed_config(config, seed, folder)
    results: dict[str, dict[str, Any]] = {}
    needed = list(rows) + [r for r in (encoder, "random_init") if encoder and r not in rows]
    for row in needed:
        path = folder / "results" / f"{row}.json"
        expected = settings(row_config(cfg, row), TRAIN_SECTIONS)
        found = stored_result(path, expected)
        classified_from = encoder is not None and row in (encoder, "random_init")
        if found is None or (classified_from and not (folder / row / "best.pt").is_file()):
            found = {**run_row(cfg, row, folder, world, tracked), "settings": expected}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(found, indent=1))
            found["reused"] = False
        else:
            found["reused"] = True
        results[row] = found
        print(f"  seed {seed} {row:12s} {recalls(found)}{' (stored)' if found['reused'] else ''}", flush=True)
    if encoder:
        path = folder / "results" / f"classify_{encoder}.json"
        expected = settings(row_config(cfg, encoder), CLASSIFY_SECTIONS)
        found = stored_result(path, expected)
        if found is None:
            found = {**classify(cfg, encoder, folder), "settings": expected}
            path.write_text(json.dumps(found, indent=1))
        results["classify"] = found
        print(f"  seed {seed} classify: " + ", ".join(f"{k} {v['top1']:.1f}" for k, v in found.items()
                                                       if isinstance(v, dict) and "top1" in v), flush=True)
    return results


def recalls(result: dict[str, Any]) -> str:
    """'recall@1=0.412 ... AMI 0.08..0.12' for a progress line."""
    text = " ".join(f"recall@{k}={result[f'recall@{k}']:.3f}" for k in REPORTED_KS)
    amis = result.get("cluster_ami")
    return text + (f" AMI {amis[0]:.3f}..{amis[-1]:.3f}" if amis else "")


def aggregate(by_seed: dict[int, dict[str, dict[str, Any]]], rows: list[str], encoder: str | None,
              seeds: list[int]) -> dict[str, Any]:
    """The report's statistics: per row mean/std/per_seed of recall@k, AMI, val curves; the classifiers."""
    mean = {row: {f"recall@{k}": spread([by_seed[s][row][f"recall@{k}"] for s in seeds])["mean"]
                  for k in REPORTED_KS} for row in rows}
    std = {row: {f"recall@{k}": spread([by_seed[s][row][f"recall@{k}"] for s in seeds])["std"]
                 for k in REPORTED_KS} for row in rows}
    per_seed = {row: {str(s): {**{f"recall@{k}": by_seed[s][row][f"recall@{k}"] for k in REPORTED_KS},
                               "best_epoch": by_seed[s][row]["best_epoch"],
                               "best_val_recall_at_1": by_seed[s][row]["best_val_recall_at_1"],
                               "val_recall_at_1": by_seed[s][row]["val_recall_at_1"],
                               "seconds": by_seed[s][row]["seconds"]} for s in seeds} for row in rows}
    clusters = {row: {str(s): {"per_round": by_seed[s][row]["cluster_ami"],
                               "first": by_seed[s][row]["cluster_ami"][0],
                               "last": by_seed[s][row]["cluster_ami"][-1]}
                      for s in seeds if by_seed[s][row]["cluster_ami"]}
                for row in rows if ROWS[row][0] in CLUSTERED}
    report: dict[str, Any] = {"mean": mean, "std": std, "per_seed": per_seed, "cluster_ami": clusters}
    if encoder:
        classified = {s: by_seed[s]["classify"] for s in seeds}

        def stats(key: str) -> dict[str, Any]:
            return spread([classified[s][key]["top1"] for s in seeds])

        pretrained, scratch = stats("finetune_pretrained"), stats("finetune_scratch")
        report["finetune"] = {"encoder": encoder, "metric": "test top-1 (%)", "pretrained_mean": pretrained["mean"],
                              "pretrained_std": pretrained["std"], "scratch_mean": scratch["mean"],
                              "scratch_std": scratch["std"],
                              "per_seed": {str(s): {"pretrained": classified[s]["finetune_pretrained"]["top1"],
                                                    "scratch": classified[s]["finetune_scratch"]["top1"]}
                                           for s in seeds}}
        report["linear_probe"] = {"metric": "test top-1 (%)", **{
            source: stats(f"linear_probe_{source}") for source in (encoder, "random_init")}}
    return report


def plot(report: dict[str, Any], out: Path) -> Path:
    """Test recall@1 (%) per row: a bar at the mean, one dot per seed, chance as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report["mean"])
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for index, row in enumerate(rows):
        values = [100 * v["recall@1"] for v in report["per_seed"][row].values()]
        ax.bar(index, np.mean(values), color=f"C{index}", alpha=0.55)
        ax.errorbar(index, np.mean(values), yerr=100 * report["std"][row]["recall@1"], color="black", capsize=4)
        ax.scatter([index] * len(values), values, color="black", s=12, zorder=3)
    ax.axhline(100 * report["chance_recall_at_1"], color="grey", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(rows)), rows, fontsize=8, rotation=20, ha="right")
    ax.set(ylabel="test recall@1 (%)", ylim=(0, 100),
           title=f"ucf101_6 split 1: retrieval by pretraining mode (seeds {', '.join(map(str, report['seeds']))})")
    ax.title.set_fontsize(9)
    return save_figure(fig, ax, out)


def log_to_mlflow(report: dict[str, Any], json_path: Path, png_path: Path) -> str:
    """One run `bench real`: mean and std of recall@k per row and the classifiers' means as metrics, both files."""
    from slic.tracking import stage_run

    params = {"rows": list(report["mean"]), "seeds": report["seeds"], "preset": report["preset"],
              "overrides": report["overrides"]}
    with stage_run("bench_real", params, name="bench real") as run:
        for row in report["mean"]:
            run.log_metrics({f"{row}/recall_at_{k}_{stat}": report[stat][row][f"recall@{k}"]
                             for k in REPORTED_KS for stat in ("mean", "std")})
        if "finetune" in report:
            run.log_metrics({f"finetune/{k}": report["finetune"][k] for k in ("pretrained_mean", "scratch_mean")})
            run.log_metrics({f"linear_probe/{source}_mean": stats["mean"]
                             for source, stats in report["linear_probe"].items() if isinstance(stats, dict)})
        run.log_artifact(json_path)
        run.log_artifact(png_path)
        return run.run_id


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the ucf101_6 folder (videos/, splits/)")
    parser.add_argument("--preset", default=PRESET, help="preset applied over params.yaml")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--encoder", default="slic", choices=list(ROWS),
                        help="the encoder probed and finetuned (default slic)")
    parser.add_argument("--no-classify", action="store_true", help="retrieval only: no linear probe, no finetune")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting for every row, e.g. pretrain.size=48 (repeatable)")
    parser.add_argument("--work", default=str(ROOT / "data" / "bench" / "real"),
                        help="folder for the frames, checkpoints and finished results (a re-run resumes)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the json; the png is written beside it")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-mlflow", action="store_true", help="write the files only")
    parser.add_argument("--verbose", action="store_true", help="slic's log lines (epochs, clustering)")
    return parser.parse_args(argv)


def each_stored_cell(config: Config, world: Any, work: Path, seeds: list[int],
                     rows: list[str]) -> Iterator[tuple[int, str, Path, dict[str, Any]]]:
    """(seed, row, the cell's folder, its result) for every cell, in order: the data prepared once, stored cells
    reused, missing ones trained (untracked); what bench/label_free.py and bench/added_videos.py measure."""
    prepare_data(config, work)
    for seed in seeds:
        results = run_seed(config, seed, rows, None, work, world, tracked=False)
        for row in rows:
            yield seed, row, work / f"seed{seed}" / row, results[row]


def cells_parser(description: str, rows: list[str], out: Path, markdown: str = "") -> argparse.ArgumentParser:
    """The arguments of a bench that measures this bench's stored cells (bench/label_free.py,
    bench/added_videos.py): --root, --params, --seeds, --rows (default `rows`), --work, --out, --threads, --verbose;
    with `markdown` (what its docs show, e.g. "table"), --markdown too (see `printed_markdown`)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--root", default=str(DEFAULT_ROOT), help="the ucf101_6 folder (videos/, splits/)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(rows))
    parser.add_argument("--split", type=int, choices=(1, 2, 3), default=1,
                        help="UCF101's official split (train/test lists); 2 and 3 have work folders of their own")
    parser.add_argument("--work", help="bench/real.py's folder: its stored cells are reused, missing ones trained "
                                       "there (default: data/bench/real, data/bench/real_split2 for split 2, ...)")
    parser.add_argument("--out", default=str(out))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--verbose", action="store_true", help="slic's log lines (epochs, clustering)")
    if markdown:
        parser.add_argument("--markdown", action="store_true",
                            help=f"print the docs' {markdown} from the report at --out, and stop")
    return parser


def printed_markdown(args: argparse.Namespace, render: Callable[[dict[str, Any]], str]) -> bool:
    """With --markdown: print `render` of the stored report at --out (the docs' tables, no rerun) and say so."""
    if args.markdown:
        print(render(json.loads(Path(args.out).read_text())))
    return bool(args.markdown)


def split_work(split: int) -> Path:
    """The default work folder of a split: data/bench/real for split 1 (bench/real.py's), data/bench/real_splitN
    for the others, so cells of one split are never retrained over another's."""
    return ROOT / "data" / "bench" / ("real" if split == 1 else f"real_split{split}")


def open_bench(args: argparse.Namespace, prog: str, preset: str = PRESET,
               overrides: list[str] | None = None) -> tuple[Config, Any, Path]:
    """A real-video bench's start: logging and threads, the config of `args` (params, root, work) with `preset`
    and `overrides`, and the world of its device; a bad argument exits with one line naming it."""
    configure(args.verbose, args.threads)
    from slic.distributed import World, resolve_device

    split = getattr(args, "split", 1)
    work = Path(args.work) if args.work else split_work(split)
    try:
        config = with_overrides(real_config(Path(args.params), Path(args.root), work, preset),
                                [f"manifest.split={split}", *(overrides or [])])
    except BenchError as exc:
        sys.exit(f"{prog}: error: {exc}")
    return config, World(0, 1, 0, resolve_device(config.pretrain.device)), work


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config, world, work = open_bench(args, "bench/real.py", args.preset, args.overrides)
    encoder = None if args.no_classify else args.encoder
    started = time.perf_counter()
    data = prepare_data(config, work)
    print(f"ucf101_6 split {config.manifest.split}: {data['splits']}", flush=True)
    by_seed = {}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        by_seed[seed] = run_seed(config, seed, args.rows, encoder, work, world, tracked=not args.no_mlflow)
    classes = len({int(line.split()[0]) for line in (Path(args.root) / "splits" / "classInd.txt").read_text().split("\n")
                   if line.strip()})
    report = {"dataset": "ucf101_6", "split": config.manifest.split, "seeds": list(args.seeds),
              "preset": args.preset, "overrides": args.overrides, "rows": {r: {"mode": ROWS[r][0], **ROWS[r][1]}
                                                                            for r in args.rows},
              "chance_recall_at_1": 1.0 / classes, "data": {k: v for k, v in data.items() if k != "settings"},
              **aggregate(by_seed, args.rows, encoder, args.seeds),
              "std_is": "sample standard deviation over seeds (ddof 1; 0 with one seed)",
              "query_split": config.evaluate.query_split, "gallery_split": config.evaluate.gallery_split,
              "settings": settings(config, ("manifest", "extract", "pretrain", "embed", "linear_probe", "finetune")),
              "machine": machine(world.device), "work": shown(work),
              "wall_seconds": round(time.perf_counter() - started, 2)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(report, out.with_suffix(".png"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    if not args.no_mlflow:
        report["mlflow_run_id"] = log_to_mlflow(report, out, png)
        out.write_text(json.dumps(report, indent=2) + "\n")
    for row in args.rows:
        print(f"{row:12s} recall@1 {100 * report['mean'][row]['recall@1']:5.1f} +- "
              f"{100 * report['std'][row]['recall@1']:4.1f}", flush=True)
    if encoder:
        ft = report["finetune"]
        print(f"finetune pretrained {ft['pretrained_mean']:.1f} vs scratch {ft['scratch_mean']:.1f}; linear probe "
              + ", ".join(f"{k} {v['mean']:.1f}" for k, v in report["linear_probe"].items() if isinstance(v, dict)))
    print(f"-> {out}, {png} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
