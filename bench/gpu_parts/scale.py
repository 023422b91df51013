"""Items 3 and 4 of the issue "GPU round two": learning at scale, and the flow stage over many pairs a batch.

* ``learning_at_scale``: the synthetic default (params.yaml's synth section: 10 motions x 24 groups x 3
  clips) made on the GPU machine, then each mode pretrained at `Profile.scale_epochs` (240 on a GPU: 10x
  the CPU default's 24 epochs, the same 13 steps an epoch) and `Profile.scale_size` px (64 on a GPU; the
  CPU default trains at 32), everything else the CPU default; embedded and evaluated as the `embed` and
  `evaluate` stages do (test queries against the train gallery), one seed. Per mode: test recall@k, best
  epoch and val recall, the clusters' AMI against the true classes per round, seconds. Then the modes'
  order by recall@1 beside the CPU default's order (reports/ablation.json, carried with the working tree).
  Why: does slic overtake intra_video once the embedding trains long enough to learn motion?
* ``flow_stage``: the `flow` stage (`slic.data.flow.flow_all`, TV-L1 in torch) on the same set's train
  videos at the stage's settings (params.yaml's flow section) on the device, pairs/s at several
  `batch_pairs` (TV-L1's fixed iterations are launch-bound on small batches).

The GPU machine has no PyAV, so the set is not encoded to video and decoded again: each clip is rendered
by `slic.data.synthetic` (the same scenes, motions and seeds as `slic synth`) and written straight to a
JPEG frame shard, and the manifest's splits are the generator's (split 1's test groups; the val carve of
`manifest.val_fraction` by group, as the `manifest` stage does). Only the video codec's round trip differs.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.gpu_parts.run import ROOT, Bench, BudgetExceeded
from bench.gpu_parts.shards import encode_video

# (mode, pretrain overrides) in the order trained: the cheapest first, so a short budget keeps the comparison.
SCALE_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "random_init": ("random_init", {}), "intra_video": ("intra_video", {}), "slic": ("slic", {}),
    "oracle": ("oracle", {}), "slic_video": ("slic", {"proxy_per": "video"})}


def _render_shard(spec: Any, synth: Any, frames_dir: str, quality: int) -> dict[str, Any]:
    """One clip of the synthetic set rendered and written as a JPEG frame shard; its index entry."""
    from slic.data import synthetic
    from slic.data.frames import ShardReader, write_shard

    frames = synthetic.render_spec(spec, synth)
    video_id = f"{spec.class_name}/{spec.path.stem}"
    shard = Path(frames_dir) / f"{video_id}.shard"
    size = write_shard(shard, encode_video(frames, quality),
                       {"video_id": video_id, "height": synth.height, "width": synth.width, "fps": float(synth.fps)})
    return {"video_id": video_id, "shard": f"{video_id}.shard", "frames": synth.frames, "height": synth.height,
            "width": synth.width, "fps": float(synth.fps), "bytes": size,
            "sha256": ShardReader.open(shard).header["content_sha256"]}


def render_synthetic(config: Any, root: Path, workers: int) -> dict[str, Any]:
    """The synthetic set of `config.synth` as frame shards under root/frames and a validated manifest with
    the generator's train/test groups and the manifest stage's val carve; counts and seconds."""
    import pandas as pd

    from slic.data import synthetic
    from slic.data.datasets import carve_validation
    from slic.data.frames import INDEX_NAME

    started = time.perf_counter()
    synth = config.synth
    specs = synthetic.clip_specs(synth)
    held_out = synthetic.held_out_groups(max(s.group for s in specs), config.manifest.split)
    frames_dir, manifest = root / "frames", root / "validated.csv"
    frames_dir.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        index = list(pool.map(_render_shard, specs, [synth] * len(specs), [str(frames_dir)] * len(specs),
                              [config.extract.quality] * len(specs), chunksize=8))
    table = pd.DataFrame([
        {"video_id": entry["video_id"], "path": str(spec.path), "class": spec.class_name, "label": spec.class_index,
         "split": "test" if spec.group in held_out else "train", "group": f"{spec.class_name}/g{spec.group:02d}",
         "frames": synth.frames, "fps": float(synth.fps), "width": synth.width, "height": synth.height,
         "duration": synth.frames / synth.fps, "excluded": ""}
        for spec, entry in zip(specs, index)])
    table["split"] = carve_validation(table, config.manifest.val_fraction, config.manifest.seed, by_group=True)
    pd.DataFrame(index).to_csv(frames_dir / INDEX_NAME, index=False)
    table.to_csv(manifest, index=False)
    return {"manifest": str(manifest), "frames": str(frames_dir), "videos": len(table),
            "splits": {k: int(v) for k, v in table["split"].value_counts().items()},
            "seconds": round(time.perf_counter() - started, 1)}


def scale_config(bench: Bench) -> Any:
    """params.yaml (the CPU default) with this profile's synthetic set and scale overrides."""
    from slic.config import load

    config = load(ROOT / "params.yaml")
    p = bench.profile
    sections = {name: replace(getattr(config, name), **keys) for name, keys in p.scale_overrides.items()}
    return replace(config, **sections)


def synthetic_default(bench: Bench) -> dict[str, Any]:
    """The rendered set, made once per run and shared by learning_at_scale and flow_stage."""
    if "synthetic_default" not in bench.data:
        config = scale_config(bench)
        data = render_synthetic(config, bench.work / "synthetic_default", workers=os.cpu_count() or 1)
        bench.data["synthetic_default"] = {**data, "config": config}
    return bench.data["synthetic_default"]


def cpu_order(bias: float) -> dict[str, Any] | None:
    """The CPU default's test recall@1 per mode at `bias` from the committed reports/ablation.json, if carried."""
    path = ROOT / "reports" / "ablation.json"
    if not path.is_file():
        return None
    modes = json.loads(path.read_text()).get("modes", {})
    rows = {k: v for k, v in modes.items() if isinstance(v, dict) and "recall@1" in v}
    if not rows:
        return None
    ranked = sorted(rows, key=lambda k: -rows[k]["recall@1"])
    return {"order": ranked, "recall@1": {k: round(100 * rows[k]["recall@1"], 1) for k in ranked},
            "source": "reports/ablation.json (make run's ablation stage: CPU default, one seed)", "bias": bias}


class EpochLog:
    """Stands in for pretrain's MLflow run: keeps each epoch's val recall and cluster AMI as they come, so a
    mode the time budget cuts short still reports how far it got."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []

    def start(self, resume_run_id: str | None = None, digest: str = "") -> None:
        """Nothing to open: the bench records no MLflow run."""

    def log_history(self, history: list[dict[str, float]]) -> None:
        """A resumed run's epochs (none here: each mode trains afresh in its own folder)."""
        for entry in history:
            self.log_metrics(entry, int(entry.get("epoch", 0)))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        kept = {k: round(float(v), 4) for k, v in metrics.items() if k in ("val_recall_at_1", "cluster_ami", "loss")}
        self.epochs.append({"epoch": step, **kept})

    def log_artifact(self, path: Any, folder: str) -> None:
        """Checkpoints stay in the work folder."""

    def partial(self) -> dict[str, Any]:
        """The epochs done: their count, val recall@1 (%) and AMI where measured."""
        return {"epochs_done": len(self.epochs),
                "val_recall_at_1": [[e["epoch"], round(100 * e["val_recall_at_1"], 1)] for e in self.epochs
                                    if "val_recall_at_1" in e],
                "cluster_ami": [round(e["cluster_ami"], 3) for e in self.epochs if "cluster_ami" in e]}


def learning_at_scale(bench: Bench, out: dict[str, Any]) -> None:
    """Item 3: the modes at many times the CPU default's steps on the synthetic default made here."""
    from slic.distributed import World
    from slic.embed import embed_dataset
    from slic.pretrain import pretrain
    from slic.retrieval import evaluate_embeddings

    from bench.gpu_parts.smoke import substitutes

    p, device = bench.profile, bench.device
    data = synthetic_default(bench)
    config = data["config"]
    dev = "cuda" if device.type == "cuda" else "cpu"
    workers = p.scale_workers
    base = replace(config.pretrain, epochs=p.scale_epochs, size=p.scale_size, device=dev, workers=workers,
                   **p.scale_pretrain)
    steps_per_epoch = data["splits"].get("train", 0) // base.batch_size
    used: list[str] = []
    out.update(data={k: data[k] for k in ("videos", "splits", "seconds")},
               settings={"epochs": base.epochs, "size": base.size, "clip_len": base.clip_len,
                         "cluster_interval": base.cluster_interval, "eval_interval": base.eval_interval,
                         "batch_size": base.batch_size, "steps": base.epochs * steps_per_epoch,
                         "cpu_default_steps": config.pretrain.epochs * steps_per_epoch, "backbone": base.backbone,
                         "objective": base.objective, "seed": base.seed,
                         "appearance_bias": config.synth.appearance_bias},
               substitutes=used, rows={})
    world = World(0, 1, 0, device)
    needs = p.scale_mode_s  # seconds a trained mode needs; then 1.1x what the last one took
    for row, (mode, overrides) in SCALE_ROWS.items():
        if row not in p.scale_rows:
            continue
        if bench.left() < needs and mode != "random_init":
            out["rows"][row] = {"status": "skipped", "reason": f"time budget ({bench.left():.0f} s left, "
                                                               f"a mode took {needs / 1.1:.0f} s)"}
            continue
        started = time.perf_counter()
        folder = bench.work / "scale" / row
        cfg = replace(base, mode=mode, out=str(folder), **overrides)
        progress = EpochLog()
        try:
            with substitutes(used):
                trained = pretrain(cfg, manifest=data["manifest"], frames_dir=data["frames"], world=world,
                                   run=progress)
            embed_cfg = replace(config.embed, checkpoint=str(folder / "best.pt"), out=str(folder / "embeddings.npz"),
                                device=dev, workers=workers)
            embed_dataset(embed_cfg, manifest=data["manifest"], frames_dir=data["frames"], world=world)
            recalls = evaluate_embeddings(embed_cfg.out, query_split="test", gallery_split="train", ks=[1, 5, 10])
        except BudgetExceeded:
            out["rows"][row] = {"status": "budget", "reason": "the time budget ran out while this mode trained",
                                **progress.partial(), "seconds": round(time.perf_counter() - started, 1)}
            raise
        except Exception as exc:  # noqa: BLE001 - the next mode still runs
            out["rows"][row] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:1000]}
            bench.save()
            continue
        history = folder / "history.json"
        rounds = json.loads(history.read_text()) if history.is_file() else []
        out["rows"][row] = {
            "status": "ok", **{k: round(100 * recalls[k], 1) for k in ("recall@1", "recall@5", "recall@10")},
            "best_epoch": trained.get("best_epoch"),
            "best_val_recall_at_1": round(100 * float(trained.get("best_val_recall_at_1") or 0.0), 1),
            "cluster_ami": [round(float(h["cluster_ami"]), 3) for h in rounds if "cluster_ami" in h],
            "clips_per_s": round(float(trained.get("final_clips_per_s") or 0.0), 1),
            "seconds": round(time.perf_counter() - started, 1)}
        if mode != "random_init":
            needs = 1.1 * (time.perf_counter() - started)
        bench.save()
    done = {k: v["recall@1"] for k, v in out["rows"].items() if v.get("status") == "ok"}
    out["order"] = sorted(done, key=lambda k: -done[k])
    out["cpu_default"] = cpu_order(config.synth.appearance_bias)
    if out["cpu_default"] and {"slic", "intra_video"} <= set(done):
        cpu = out["cpu_default"]["recall@1"]
        out["slic_minus_intra_video"] = {"here": round(done["slic"] - done["intra_video"], 1),
                                         "cpu_default": round(cpu.get("slic", 0.0) - cpu.get("intra_video", 0.0), 1)}


def flow_stage(bench: Bench, out: dict[str, Any]) -> None:
    """Item 4: the flow stage on the device over the synthetic default's train videos, pairs/s per batch_pairs."""
    from slic.data.datasets import read_manifest
    from slic.data.flow import flow_all

    p, device = bench.profile, bench.device
    data = synthetic_default(bench)
    config = data["config"]
    flow = config.flow
    dev = "cuda" if device.type == "cuda" else "cpu"
    out.update(settings={"tvl1": {k: v for k, v in vars(flow.tvl1()).items()}, "method": "torch", "device": dev,
                         "frame_step": config.pretrain.frame_step, "splits": ["train"],
                         "frame_size": [config.synth.height, config.synth.width]}, rows=[])
    table = read_manifest(data["manifest"])
    for batch_pairs in p.flow_stage_batches:
        if bench.left() < 15:
            out["rows"].append({"batch_pairs": batch_pairs, "status": "skipped", "reason": "time budget"})
            continue
        report = flow_all(table, frames_dir=data["frames"], out_dir=bench.work / "flow_stage" / str(batch_pairs),
                          splits=("train",), method="torch", device=dev, bound=flow.bound, quality=flow.quality,
                          params=flow.tvl1(), batch_pairs=batch_pairs, workers=1 if dev == "cuda" else flow.workers,
                          fail_fast=True, frame_step=config.pretrain.frame_step)
        out["rows"].append({"batch_pairs": batch_pairs, "videos": report["videos"],
                            "pairs": report["pairs_computed"], "pairs_per_s": report["pairs_per_s"],
                            "seconds": report.get("seconds")})
        bench.save()
    rates = [r["pairs_per_s"] for r in out["rows"] if "pairs_per_s" in r]
    if rates:
        out["best_pairs_per_s"] = max(rates)
