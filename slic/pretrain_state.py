"""What a pretraining run carries across a kill: its state, the fingerprint a checkpoint must share, and the resume.

A checkpoint records the settings that change what is learned and the content fingerprint of the videos
(`data_fingerprint`); `resume_state` continues only a checkpoint made from the same of both, and says
what differed otherwise. `save_checkpoint` writes atomically, so a kill never leaves a torn file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from slic.checkpoints import atomic_torch_save
from slic.config import PretrainConfig, changed_settings
from slic.data.clips import FlowView, VideoShard
from slic.proxies import PseudoLabelProxies

log = logging.getLogger(__name__)
# Settings that do not change what is learned: a checkpoint made under other values resumes.
RESUMABLE_ACROSS = ("epochs", "workers", "frame_cache_mb", "eval_interval", "device", "compile", "prefetch",
                    "cudnn_benchmark", "out", "labels")  # labels: its content is in the data fingerprint


@dataclass
class TrainState:
    """What, besides weights, a resumed run needs: next epoch, pseudo-labels, best so far, history."""

    epoch: int = 0
    labels: list[int] = field(default_factory=list)
    best_metric: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    p_intra: float = -1.0  # the chance in force (p_intra_schedule agreement); -1: pretrain.p_intra
    seconds: float = 0.0  # wall time spent training this run, over every call (a resume adds its own)


def data_fingerprint(*splits: list[VideoShard], frames_dir: str | Path | None = None,
                     flow: FlowView | None = None) -> str:
    """Content fingerprint (16 hex chars) of the videos trained and validated on.

    Per video: id, decoded frame count, label, split and the content sha256 of its frame shard (from
    `frames_dir`'s index.csv, else the shard's header); with the flow view, also its flow shard's
    content hash and the view's p. Part of the resume fingerprint and carried by best.pt, index.json
    and every registered version: new pixels under the same ids (regenerated videos, another
    `extract.short_side`) or a new validation carve must not resume (or, past the last epoch,
    silently reuse) a checkpoint trained on other data.
    """
    import hashlib

    from slic.data.frames import content_hashes

    ids = [v.video_id for videos in splits for v in videos]
    frames = content_hashes(frames_dir, ids) if frames_dir is not None else {}
    flows = content_hashes(flow.flow_dir, ids, missing="-") if flow is not None else {}
    digest = hashlib.sha256()
    for videos in splits:
        for v in videos:
            content = frames.get(v.video_id) or _shard_sha256(v.shard)
            line = f"{v.video_id}\t{v.decoded_frames}\t{v.label}\t{v.split}\t{content}"
            digest.update((line + (f"\tflow:{flows[v.video_id]}" if flow is not None else "") + "\n").encode())
    if flow is not None:
        digest.update(f"flow view p={flow.p}\n".encode())
    return digest.hexdigest()[:16]


def given_labels_fingerprint(data: str, given: Mapping[str, int]) -> str:
    """`data` (a data_fingerprint) folded with the given labels (video id -> class number) trained on: 16 hex chars,
    so that a run on other labels never resumes this one."""
    import hashlib

    text = data + "".join(f"\n{video}\t{label}" for video, label in sorted(given.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shard_sha256(shard: str | Path) -> str:
    from slic.data.frames import ShardReader

    return ShardReader.open(shard).content_sha256()


def fingerprint(cfg: PretrainConfig, data: str = "") -> dict[str, Any]:
    """The settings (and the data fingerprint) a checkpoint must share with the run to be resumed."""
    return {**{k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_ACROSS}, "data": data}


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: TrainState, cfg: PretrainConfig, data: str = "",
                    proxies: PseudoLabelProxies | None = None, *, frame_rate: float = 0.0,
                    trained_labels: Mapping[str, int] | None = None) -> None:
    """torch.save to a temporary name, fsync, rename: a kill never leaves a torn checkpoint.

    Also records the MLflow run open in this process (the stage's run), which a resumed stage continues,
    `frame_rate`, the rate extract resampled the training frames to (0.0: native), which serving decodes at, and
    `trained_labels` (video id -> class number), the given classes the weights trained on, which travel with them
    to the embeddings (spread_labels leaves those videos out of its leave-one-out share).
    """
    from slic.tracking import active_run_id

    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
               "state": asdict(state), "config": asdict(cfg), "fingerprint": fingerprint(cfg, data),
               "mlflow_run_id": active_run_id(), "proxies": proxies.state_dict() if proxies is not None else None,
               "frame_rate": float(frame_rate), "trained_labels": dict(trained_labels or {})}
    atomic_torch_save(payload, path)


def same_fingerprint(stored: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether a checkpoint's fingerprint is this run's. A setting slic gained after the checkpoint was written
    matches when this run leaves it at its default (`slic.config.changed_settings`), so upgrading slic does
    not throw away a long run."""
    return not changed_settings(stored, now, asdict(PretrainConfig()))


def _what_changed(was: dict[str, Any], now: dict[str, Any]) -> str:
    """The settings (by key, first few) and/or data that differ between two checkpoint fingerprints."""
    parts = []
    keys = [k for k in changed_settings(was, now, asdict(PretrainConfig())) if k != "data"]
    if keys:
        shown = ", ".join(f"{k} {was.get(k, 'unset')!r} (now {now.get(k, 'unset')!r})" for k in keys[:4])
        parts.append(f"other settings: {shown}" + (f" and {len(keys) - 4} more" if len(keys) > 4 else ""))
    if was.get("data") != now.get("data"):
        what = "other data or labels" if now.get("mode") == "labels" else "other data"  # labels: in its fingerprint
        parts.append(f"{what} (content fingerprint {was.get('data') or 'unknown'}, now {now.get('data')})")
    return " and ".join(parts) or "another fingerprint format"


def resume_state(last: Path, cfg: PretrainConfig, data: str, model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, run: Any = None,
            proxies: PseudoLabelProxies | None = None) -> TrainState:
    """Load `last` when it has this run's settings and content fingerprint `data`; else a fresh state.

    `run` (a tracking.StageRun, or None) is started here: a resume continues the MLflow run the
    checkpoint recorded and logs the epochs it trained but had not logged when it was killed.
    """
    payload = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    if payload is not None and not same_fingerprint(payload.get("fingerprint") or {}, fingerprint(cfg, data)):
        log.warning("%s was trained with %s; starting afresh", last,
                    _what_changed(payload.get("fingerprint") or {}, fingerprint(cfg, data)))
        payload = None
    if run is not None:
        run.start(resume_run_id=payload.get("mlflow_run_id") if payload else None, digest=data)
    if payload is None:
        return TrainState()
    model.load_state_dict(payload["model"])
    if payload["optimizer"]:
        optimizer.load_state_dict(payload["optimizer"])
    if proxies is not None:
        proxies.load_state_dict(payload.get("proxies"))
    state = TrainState(**payload["state"])
    log.info("resuming from %s at epoch %d", last, state.epoch)
    if run is not None:
        run.log_history(state.history)
    return state
