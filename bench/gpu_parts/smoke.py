"""Item f of bench/gpu.py: every GPU stage once (flow, pretrain, embed, evaluate, linear_probe, finetune)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu_parts.clustering_search import faiss_or_none
from bench.gpu_parts.run import PRESET, Bench, BudgetExceeded
from bench.gpu_parts.shards import preset_config


@contextlib.contextmanager
def substitutes(record: list[str]) -> Iterator[None]:
    """Stand-ins from slic.torch_clustering for what this machine cannot import (scipy, sklearn, faiss),
    put into slic.clustering for the smoke and taken out after; each one used is named in `record`."""
    import slic.clustering as clustering
    from slic import torch_clustering as tc

    saved = {name: getattr(clustering, name) for name in
             ("components_of_neighbour_graph", "cluster_agreement", "cluster_pseudo_labels")}
    if importlib.util.find_spec("scipy") is None:
        clustering.components_of_neighbour_graph = tc.connected_components
        record.append("slic.clustering.components_of_neighbour_graph -> slic.torch_clustering.connected_components "
                      "(no scipy)")
    if importlib.util.find_spec("sklearn") is None:
        clustering.cluster_agreement = tc.cluster_agreement
        record.append("slic.clustering.cluster_agreement -> slic.torch_clustering.cluster_agreement (no scikit-learn)")
    if faiss_or_none() is None:
        def pseudo_labels(embeddings: np.ndarray, *, method: str, k: int = 1000, seed: int = 7, **_: Any) -> np.ndarray:
            if method == "finch":
                return tc.finch_partition0(embeddings)
            return tc.kmeans(embeddings, k, seed=seed)

        clustering.cluster_pseudo_labels = pseudo_labels
        record.append("slic.clustering.cluster_pseudo_labels -> slic.torch_clustering (no faiss)")
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(clustering, name, value)


def stage_smoke(bench: Bench, out: dict[str, Any]) -> None:
    """Item f: flow, pretrain, embed, evaluate, linear_probe and finetune once each on the device."""
    from slic.ablation import compute_flow, flow_view
    from slic.distributed import World
    from slic.embed import embed_dataset
    from slic.finetune_stages import run_finetune, run_linear_probe
    from slic.pretrain import pretrain
    from slic.retrieval import evaluate_embeddings

    p, device = bench.profile, bench.device
    data, work = bench.data["smoke"], bench.work / "smoke"
    manifest, frames = str(data["manifest"]), str(data["frames"])
    dev = "cuda" if device.type == "cuda" else "cpu"
    scaled = {
        "extract": {"manifest": manifest, "out": frames},
        "flow": {"manifest": manifest, "frames": frames, "out": str(work / "flow"), "device": dev, "batch_pairs": 4096,
                 "workers": 1},
        "pretrain": {"epochs": 2, "out": str(work / "models/pretrain"), "device": dev, "workers": min(8, p.workers)},
        "embed": {"checkpoint": str(work / "models/pretrain/best.pt"), "out": str(work / "embeddings.npz"),
                  "device": dev, "workers": min(8, p.workers)},
        "linear_probe": {"checkpoint": str(work / "models/pretrain/best.pt"), "epochs": 1, "device": dev,
                         "out": str(work / "models/linear_probe"), "workers": min(8, p.workers)},
        "finetune": {"checkpoint": str(work / "models/pretrain/best.pt"), "epochs": 1, "device": dev,
                     "out": str(work / "models/finetune"), "linear_probe_report": str(work / "linear_probe.json"),
                     "workers": min(8, p.workers)},
    }
    overrides = {s: {**scaled.get(s, {}), **p.smoke_overrides.get(s, {})} for s in {*scaled, *p.smoke_overrides}}
    config, values = preset_config(bench, overrides)
    world = World(0, 1, 0, device)
    used: list[str] = []
    out.update(preset=PRESET, scaled_keys={s: sorted(k for k in keys if k not in ("manifest", "out", "frames",
                                                                                   "checkpoint", "linear_probe_report"))
                                           for s, keys in overrides.items()},
               quick_overrides=p.smoke_overrides or None,
               effective={"pretrain": {k: v for k, v in values["pretrain"].items() if k != "out"}},
               substitutes=used, stages={})
    stages = out["stages"]

    def stage(name: str, run: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        try:
            stages[name] = {"status": "ok", **run()}
        except BudgetExceeded:
            stages[name] = {"status": "error", "error": "time budget ran out"}
            raise
        except Exception as exc:  # noqa: BLE001 - the next stages still run (those needing this one fail too)
            stages[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                            "traceback": traceback.format_exc()[-2000:]}
        stages[name]["seconds"] = round(time.perf_counter() - started, 2)
        bench.save()

    def flow() -> dict[str, Any]:
        report = compute_flow(replace(config, flow=replace(config.flow, fail_fast=True)), config.flow.out)
        return {k: report[k] for k in ("videos", "computed", "pairs_computed", "pairs_per_s", "device", "method")}

    def pretrain_stage() -> dict[str, Any]:
        with substitutes(used):
            report = pretrain(config.pretrain, manifest=manifest, frames_dir=frames, world=world, run=None,
                              flow=flow_view(config))
        keep = ("epochs", "best_epoch", "best_val_recall_at_1", "device", "cluster_rounds", "cluster_ami_first",
                "final_loss", "final_clips_per_s", "final_data_wait_fraction", "final_cluster_n_clusters",
                "flow_view_p", "objective", "mining", "train_videos")
        return {k: report[k] for k in keep if k in report}

    def pretrain_gpu_decode() -> dict[str, Any]:
        """pretrain.gpu_decode: the clips decoded (nvJPEG) and augmented in the training step; RGB only."""
        from dataclasses import replace

        cfg = replace(config.pretrain, gpu_decode=True, epochs=1, out=str(work / "models/pretrain_gpu_decode"))
        with substitutes(used):
            report = pretrain(cfg, manifest=manifest, frames_dir=frames, world=world, run=None, flow=None)
        keep = ("epochs", "device", "final_loss", "final_clips_per_s", "final_data_wait_fraction")
        return {k: report[k] for k in keep if k in report}

    def embed() -> dict[str, Any]:
        report = embed_dataset(config.embed, manifest=manifest, frames_dir=frames, world=world)
        return {k: report[k] for k in ("videos", "dim", "clips_per_video", "videos_per_s")}

    def evaluate() -> dict[str, Any]:
        cfg = config.evaluate
        report = evaluate_embeddings(config.embed.out, query_split=cfg.query_split, gallery_split=cfg.gallery_split,
                                     ks=cfg.ks)
        return {k: v for k, v in report.items() if k.startswith("recall@") or k in ("queries", "gallery")}

    def linear_probe() -> dict[str, Any]:
        report = run_linear_probe(config.linear_probe, manifest=manifest, frames_dir=frames)
        Path(config.finetune.linear_probe_report).write_text(json.dumps(report, default=str))
        return {k: report[k] for k in ("top1", "top5", "epochs", "device", "seconds", "test_views")}

    def finetune() -> dict[str, Any]:
        report = run_finetune(config.finetune, manifest=manifest, frames_dir=frames)
        return {init: {k: report[init][k] for k in ("top1", "top5", "epochs", "device", "seconds")}
                for init in ("pretrained", "scratch")}

    for name, run in (("flow", flow), ("pretrain", pretrain_stage), ("pretrain_gpu_decode", pretrain_gpu_decode),
                      ("embed", embed), ("evaluate", evaluate),
                      ("linear_probe", linear_probe), ("finetune", finetune)):
        stage(name, run)
    failed = [name for name, row in stages.items() if row["status"] != "ok"]
    if failed:
        raise RuntimeError(f"stage(s) failed: {', '.join(failed)}")
