"""The ablation (stage `ablation`): SLIC against its baselines, trained and evaluated the same way.

Every mode in `ablation.modes` gets the `pretrain` section's settings with only `mode` changed,
then the `embed` stage's protocol and the `evaluate` stage's retrieval. The mode the main
pipeline trained (`pretrain.mode`) is not trained twice: its embeddings from the `embed` stage
are evaluated. The others are trained into `ablation.out/<mode>/` (resumable like `pretrain`).
`oracle` (the true classes as pseudo-labels) is the ceiling that perfect clustering would give.
The report holds recall@k per mode and the project's bars checked on this data: SLIC's recall@1
at least `min_gain_over_random_init` points above the untrained network and
`min_gain_over_intra_video` points above intra-video positives. The bars are ours (the paper
compares SLIC with other published methods and has no intra-video mode), the gains that would
show the clusters paying for themselves here.

Stage `ablation_flow` does the same for SLIC's optical-flow view: the `pretrain` settings RGB-only
against the same with the flow view on (reports/ablation_flow.json).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from slic.config import Config, PretrainConfig, to_dict
from slic.data.clips import FlowView
from slic.distributed import World

log = logging.getLogger(__name__)


def _evaluate(embeddings: str | Path, config: Config) -> dict[str, Any]:
    from slic.retrieval import evaluate_embeddings

    cfg = config.evaluate
    report = evaluate_embeddings(embeddings, query_split=cfg.query_split, gallery_split=cfg.gallery_split,
                                 ks=cfg.ks)
    return {k: v for k, v in report.items() if k.startswith("recall@")}


def flow_view(config: Config) -> FlowView | None:
    """The flow view `pretrain` uses: on when `flow.enabled`, reading the `flow` stage's shards."""
    return FlowView(flow_dir=config.flow.out, p=config.flow.p) if config.flow.enabled else None


def compute_flow(config: Config, out_dir: str | Path) -> dict[str, Any]:
    """TV-L1 flow shards of `flow.splits` into `out_dir` with the `flow` settings, at `pretrain.frame_step` (the
    pairs the clips read); intact shards are reused. The flow stage's report."""
    from slic.data.datasets import read_manifest
    from slic.data.flow import flow_all

    cfg = config.flow
    return flow_all(read_manifest(cfg.manifest), frames_dir=cfg.frames, out_dir=out_dir, splits=cfg.splits,
                    method=cfg.method, device=cfg.device, bound=cfg.bound, quality=cfg.quality, params=cfg.tvl1(),
                    batch_pairs=cfg.batch_pairs, workers=cfg.workers, fail_fast=cfg.fail_fast,
                    frame_step=config.pretrain.frame_step)


def bench_flow_view(config: Config, out_dir: str | Path) -> FlowView | None:
    """For a bench's own dataset: with `flow.enabled`, the flow of `config.extract`'s manifest and frames computed
    into `out_dir` (intact shards reused) and its view; None without. A video whose flow fails stops the bench
    with its name."""
    if not config.flow.enabled:
        return None
    flow_cfg = replace(config.flow, manifest=config.extract.manifest, frames=config.extract.out)
    report = compute_flow(replace(config, flow=flow_cfg), out_dir)
    if report["failed"]:
        first = report["failed"][0]
        raise RuntimeError(f"flow failed for {len(report['failed'])} videos, e.g. {first['video_id']}: "
                           f"{first['error']}")
    return FlowView(flow_dir=str(out_dir), p=config.flow.p)


def skipped_flow(out_dir: str | Path) -> dict[str, Any]:
    """The `flow` stage with `flow.enabled` false: no pairs computed (shards of an earlier run stay, for when it is
    turned on again); an empty index so the stage's output exists. Its report says why."""
    import pandas as pd

    from slic.data.frames import INDEX_NAME

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(columns=["video_id", "shard", "frames", "bytes", "sha256"]).to_csv(out / INDEX_NAME, index=False)
    return {"enabled": False, "videos": 0, "computed": 0, "reused": 0, "failed": [], "pairs_computed": 0,
            "note": "flow.enabled is false: pretrain reads no flow, so none is computed here "
                    "(ablation_flow computes its own under ablation_flow.out)"}


def ablation_flow_view(config: Config) -> tuple[FlowView, dict[str, Any] | None]:
    """The flow view of `ablation_flow`'s rgb_flow variant and, when computed here, the flow report.

    With `flow.enabled` the flow stage's shards (pretrain reads them too); otherwise the flow is computed
    here into `ablation_flow.out`/flow (intact shards reused), so that the pipeline before this stage never
    waits for flow it does not read.
    """
    if config.flow.enabled:
        return FlowView(flow_dir=config.flow.out, p=config.flow.p), None
    flow_dir = Path(config.ablation_flow.out) / "flow"
    report = compute_flow(config, flow_dir)
    if report["failed"]:
        first = report["failed"][0]
        log.warning("ablation_flow: flow failed for %d videos (e.g. %s: %s)", len(report["failed"]),
                    first["video_id"], first["error"])
    return FlowView(flow_dir=str(flow_dir), p=config.flow.p), report


def _main_run_row(config: Config, started: float) -> dict[str, Any]:
    """The row of the model the `pretrain` stage trained, evaluated from the `embed` stage's output."""
    embeddings = Path(config.embed.out)
    if not embeddings.is_file():
        raise FileNotFoundError(f"{embeddings}: no embeddings of the main `pretrain` run; run `dvc repro embed`")
    row: dict[str, Any] = {"trained_by": "pretrain stage", "checkpoint": config.embed.checkpoint}
    row.update(_evaluate(embeddings, config))
    return row | {"seconds": round(time.perf_counter() - started, 2)}


def train_and_evaluate(name: str, pretrain_cfg: PretrainConfig, config: Config, world: World,
                       flow: FlowView | None = None, tracked: bool = True,
                       given_labels: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Train `pretrain_cfg` (resumable, into its own `out`; `given_labels` as `pretrain` takes them), embed with
    the `embed` protocol, evaluate.

    With `tracked`, inside an MLflow run `name` that gets the training's metrics and the recalls.
    """
    from slic.embed import embed_dataset
    from slic.pretrain import pretrain
    from slic.tracking import stage_run

    started = time.perf_counter()
    out = Path(pretrain_cfg.out)
    embed_cfg = replace(config.embed, checkpoint=str(out / "best.pt"), out=str(out / "embeddings.npz"))
    params = {**to_dict(pretrain_cfg), "flow.enabled": flow is not None, "flow.p": flow.p if flow else 0.0}
    with stage_run(name, params) if tracked else nullcontext(None) as run:
        trained = pretrain(pretrain_cfg, manifest=config.extract.manifest, frames_dir=config.extract.out,
                           world=world, run=run, flow=flow, given_labels=given_labels)
        embed_dataset(embed_cfg, manifest=config.extract.manifest, frames_dir=config.extract.out, world=world)
        row = {"trained_by": f"{name.split('/')[0]} stage", "checkpoint": embed_cfg.checkpoint,
               "best_epoch": trained["best_epoch"], "best_val_recall_at_1": trained["best_val_recall_at_1"]}
        row.update(_evaluate(embed_cfg.out, config))
        if run is not None:
            run.log_metrics({k: v for k, v in row.items() if k.startswith("recall@")})
    return row | {"seconds": round(time.perf_counter() - started, 2)}


def run_mode(mode: str, config: Config, world: World) -> dict[str, Any]:
    """Train (unless it is the main pipeline's mode), embed and evaluate one mode; its report row."""
    if mode == config.pretrain.mode and not config.flow.enabled:
        return _main_run_row(config, time.perf_counter())
    pretrain_cfg = replace(config.pretrain, mode=mode, out=str(Path(config.ablation.out) / mode))
    return train_and_evaluate(f"ablation/{mode}", pretrain_cfg, config, world)


def findings(rows: dict[str, dict[str, Any]], *, min_gain_over_random_init: float,
             min_gain_over_intra_video: float) -> dict[str, Any]:
    """SLIC's recall@1 gains (in points) over each baseline present, and whether each meets its bar."""
    if "slic" not in rows:
        return {}
    slic = 100 * rows["slic"]["recall@1"]
    result: dict[str, Any] = {}
    for baseline, bar in (("random_init", min_gain_over_random_init), ("intra_video", min_gain_over_intra_video)):
        if baseline in rows:
            gain = round(slic - 100 * rows[baseline]["recall@1"], 2)
            result[f"slic_minus_{baseline}_points"] = gain
            result[f"slic_beats_{baseline}_by_{bar:g}"] = gain >= bar
    result["bars_met"] = all(v for k, v in result.items() if k.startswith("slic_beats_"))
    if "oracle" in rows and "random_init" in rows:
        # The ceiling: what perfect clusters would give, and how much of its gain SLIC's own clusters reach.
        oracle, floor = 100 * rows["oracle"]["recall@1"], 100 * rows["random_init"]["recall@1"]
        result["oracle_minus_random_init_points"] = round(oracle - floor, 2)
        if oracle > floor:
            result["slic_share_of_oracle_gain"] = round((slic - floor) / (oracle - floor), 3)
    return result


def run_ablation(config: Config, world: World) -> dict[str, Any]:
    """Every mode of `ablation.modes`, main mode first; the report of reports/ablation.json."""
    from slic.tracking import stage_run

    cfg = config.ablation
    modes = sorted(cfg.modes, key=lambda m: m != config.pretrain.mode)
    rows: dict[str, dict[str, Any]] = {}
    with stage_run("ablation", {**to_dict(cfg), "pretrain.mode": config.pretrain.mode}) as parent:
        for mode in modes:
            log.info("ablation: %s", mode)
            rows[mode] = run_mode(mode, config, world)
            parent.log_metrics({f"{mode}.{k}": v for k, v in rows[mode].items() if k.startswith("recall@")})
        result = findings(rows, min_gain_over_random_init=cfg.min_gain_over_random_init,
                          min_gain_over_intra_video=cfg.min_gain_over_intra_video)
        parent.set_tags({"bars_met": result.get("bars_met", "n/a")})
        run_id = parent.run_id
    return {"modes": rows, "findings": result, "query_split": config.evaluate.query_split,
            "gallery_split": config.evaluate.gallery_split, "mlflow_run_id": run_id}


def run_flow_ablation(config: Config, world: World) -> dict[str, Any]:
    """SLIC RGB-only (`rgb`) against SLIC with the flow view (`rgb_flow`), trained and evaluated alike.

    Both take the `pretrain` section as it is (mode included) and `flow.p`; a variant the `pretrain`
    stage already trained (the same flow setting) is evaluated from its embeddings, not retrained.
    """
    from slic.tracking import stage_run

    view, flow_report = ablation_flow_view(config)
    variants = {"rgb": None, "rgb_flow": view}
    rows: dict[str, dict[str, Any]] = {}
    with stage_run("ablation_flow", {**to_dict(config.ablation_flow), "flow.p": config.flow.p,
                                     "pretrain.mode": config.pretrain.mode}) as parent:
        for name, flow in variants.items():
            log.info("ablation_flow: %s", name)
            if (flow is not None) == config.flow.enabled:
                rows[name] = _main_run_row(config, time.perf_counter())
            else:
                pretrain_cfg = replace(config.pretrain, out=str(Path(config.ablation_flow.out) / name))
                rows[name] = train_and_evaluate(f"ablation_flow/{name}", pretrain_cfg, config, world, flow=flow)
            parent.log_metrics({f"{name}.{k}": v for k, v in rows[name].items() if k.startswith("recall@")})
        gain = round(100 * (rows["rgb_flow"]["recall@1"] - rows["rgb"]["recall@1"]), 2)
        parent.set_tags({"flow_gain_recall_at_1_points": gain})
        run_id = parent.run_id
    flow_summary = None if flow_report is None else {k: flow_report[k] for k in (
        "videos", "computed", "reused", "pairs_computed", "pairs_per_s", "seconds", "frame_step")}
    return {**rows, "flow_minus_rgb_recall_at_1_points": gain, "flow_p": config.flow.p,
            "flow_computed_here": flow_summary, "mode": config.pretrain.mode, "query_split": config.evaluate.query_split,
            "gallery_split": config.evaluate.gallery_split, "mlflow_run_id": run_id}
