"""Stages `linear_probe` and `finetune`: input checks, the trainings, reports/finetune.json.

`linear_probe` trains a linear classifier on the frozen pretrained backbone and writes
reports/linear_probe.json. `finetune` trains the whole network twice, from the pretrained
backbone and from random initialisation, and writes reports/finetune.json:
{"pretrained": {...}, "scratch": {...}, "linear_probe": {...}}, each with test top1/top5 in percent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from slic.config import FinetuneConfig, LinearProbeConfig, to_dict

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # torch is imported when a stage runs, so `slic --help` stays fast
    import torch

    from slic.data.clips import VideoShard

SPLITS = ("train", "val", "test")
INITS = ("pretrained", "scratch")


class FinetuneError(ValueError):
    """Input the classification stages cannot use; the message names the file or key and the fix."""


def file_digest(path: str | Path) -> str:
    """sha256 (16 hex digits) of a file: which pretrained weights a result came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def resolve_device(name: str, section: str) -> torch.device:
    """'auto' -> CUDA when visible, else CPU; 'cuda' without a GPU is a one-line error naming the key."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FinetuneError(f"{section} runs in one process; start it with `slic`, not torchrun")
    if name == "cuda" and not torch.cuda.is_available():
        raise FinetuneError(f"{section}.device is 'cuda' but no CUDA GPU is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def load_splits(manifest: str | Path, frames_dir: str | Path, *, checkpoint: str,
                section: str, frame_step: int = 1) -> tuple[dict[str, list[VideoShard]], int, list[str]]:
    """Videos per split (every extracted video, none dropped, clips at `frame_step`), the number of
    classes and their names.

    Refuses, in one line naming the file and the fix: a missing checkpoint or manifest, an empty
    split, or a class without train videos.
    """
    from slic.data.clips import load_videos

    if not Path(checkpoint).is_file():
        raise FinetuneError(f"{section}.checkpoint = {checkpoint}: no such file; run the `pretrain` stage "
                            "first (dvc repro pretrain)")
    if not Path(manifest).is_file():
        raise FinetuneError(f"{manifest}: no validated manifest; run the `validate` stage first "
                            "(dvc repro validate)")
    pretrained_step = _pretrained_frame_step(checkpoint)
    if pretrained_step != frame_step:
        log.warning("%s.frame_step is %d but %s was pretrained at frame_step %d: its clips move %s than the "
                    "encoder learnt; set %s.frame_step: %d unless that is the experiment", section, frame_step,
                    checkpoint, pretrained_step, "faster" if frame_step > pretrained_step else "slower", section,
                    pretrained_step)
    splits = {split: load_videos(manifest, frames_dir, splits=[split], min_frames=1, frame_step=frame_step)
              for split in SPLITS}
    for split, videos in splits.items():
        if not videos:
            raise FinetuneError(f"{manifest}: no {split} videos with frame shards in {frames_dir}; classification "
                                "needs train, val and test videos (check manifest.val_fraction and the extract stage)")
    names: dict[int, str] = {}
    for videos in splits.values():
        names.update({v.label: v.class_name for v in videos})
    classes = max(names) + 1
    trained = {v.label for v in splits["train"]}
    missing = [f"{names.get(label, label)!s} (label {label})" for label in range(classes) if label not in trained]
    if missing:
        raise FinetuneError(f"{manifest}: no train videos for class {', '.join(missing[:5])}; every class needs "
                            "train videos (fix the split or drop the class)")
    return splits, classes, [names.get(label, str(label)) for label in range(classes)]


def _pretrained_frame_step(checkpoint: str | Path) -> int:
    """The frame_step the encoder in `checkpoint` was pretrained at (1 for checkpoints from before it)."""
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["config"].get("frame_step", 1))


def _data_fingerprint(splits: dict[str, list[VideoShard]], checkpoint: str) -> str:
    from slic.pretrain import data_fingerprint

    return f"{data_fingerprint(*splits.values())}-{file_digest(checkpoint)}"


def nested_run(run: Any, classifier: str, params: dict[str, Any], within: str = "") -> Any:
    """A run nested under the active stage run `run`, or no run when `run` is None. In the finetune stage it is named
    and staged `classifier` (finetune/pretrained); under another stage `within` (classify@<set>) it is named
    `<within>/<classifier>` with `slic.stage` `within`, so that filtering on a stage never mixes an eval set's
    classifiers with the main stages'. Tag `slic.classifier` names the classifier either way."""
    from contextlib import nullcontext

    from slic.tracking import stage_run

    if run is None:
        return nullcontext(None)
    return stage_run(within or classifier, params, name=f"{within}/{classifier}" if within else classifier,
                     tags={"slic.classifier": classifier})


def run_linear_probe(cfg: LinearProbeConfig, *, manifest: str | Path, frames_dir: str | Path,
                     run: Any = None) -> dict[str, Any]:
    """Stage `linear_probe`: a linear layer on the frozen pretrained backbone; its report (percent)."""
    from slic.finetune import train_classifier

    device = resolve_device(cfg.device, "linear_probe")
    splits, classes, _ = load_splits(manifest, frames_dir, checkpoint=cfg.checkpoint, section="linear_probe",
                                   frame_step=cfg.frame_step)
    report = train_classifier(cfg, init="pretrained", linear_probe=True, splits=splits, classes=classes,
                              out=Path(cfg.out), device=device, data=_data_fingerprint(splits, cfg.checkpoint),
                              run=run)
    return {**report, "classes": classes, "device": str(device), "checkpoint_sha256": file_digest(cfg.checkpoint),
            "pretrained_from": cfg.checkpoint, **{f"{s}_videos": len(v) for s, v in splits.items()}}


def read_linear_probe(path: str | Path, checkpoint: str) -> dict[str, Any]:
    """The linear probe's report, refused when missing or made from other pretrained weights."""
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"finetune.linear_probe_report = {path}: no such file; run `slic linear-probe` first "
                            "(dvc repro linear_probe)")
    report = json.loads(path.read_text())
    if report.get("checkpoint_sha256") != file_digest(checkpoint):
        raise FinetuneError(f"{path} was made from other weights than finetune.checkpoint = {checkpoint}; "
                            "re-run `slic linear-probe` (and use the same checkpoint in both sections)")
    return report


def run_finetune(cfg: FinetuneConfig, *, manifest: str | Path, frames_dir: str | Path,
                 run: Any = None, within: str = "") -> dict[str, Any]:
    """Stage `finetune` (or part of stage `within`, see `nested_run`): end-to-end finetuning from the pretrained and
    from random weights.

    Returns {"pretrained": ..., "scratch": ..., "linear_probe": ...}: test top1/top5 in percent and
    how each was obtained (epochs, best epoch on val, seconds, ...).
    """
    from slic.finetune import train_classifier

    device = resolve_device(cfg.device, "finetune")
    splits, classes, _ = load_splits(manifest, frames_dir, checkpoint=cfg.checkpoint, section="finetune",
                                   frame_step=cfg.frame_step)
    probe = read_linear_probe(cfg.linear_probe_report, cfg.checkpoint)
    data = _data_fingerprint(splits, cfg.checkpoint)
    report: dict[str, Any] = {}
    for init in INITS:
        started = time.perf_counter()
        with nested_run(run, f"finetune/{init}", {**to_dict(cfg), "init": init}, within) as child:
            row = train_classifier(cfg, init=init, linear_probe=False,
                                   splits=splits, classes=classes, out=Path(cfg.out) / init, device=device,
                                   data=data, run=child)
            if child is not None:
                row["mlflow_run_id"] = child.run_id
        report[init] = {**row, "classes": classes, "device": str(device),
                        "stage_seconds": round(time.perf_counter() - started, 2)}
    report["linear_probe"] = probe
    if run is not None:
        run.log_metrics({f"{name}_{k}": report[name][k] for name in report for k in ("top1", "top5")})
    return report
