"""Action classification from the encoder: end-to-end finetuning and the linear probe.

The protocol of SLIC.md: backbone without projection head -> Dropout(0.9) -> Linear(d, classes);
Adam (lr 1e-3, weight decay 1e-3), batch 32, lr x `lr_gamma` at each of `milestones`. Finetuning
trains every layer, the backbone at lr x `backbone_lr_scale` (1/10); the linear probe trains only
the linear layer, with the backbone frozen including its BatchNorm statistics (eval mode).
The checkpoint is chosen on the validation split's top-1; the test split is predicted once, with
the chosen weights: 16-frame windows every `test_stride` frames, 5 crops x 2 flips each, softmax
averaged over all views.

Robustness: `last.pt` is written atomically after every epoch and resumed when its settings,
data and starting weights match; every random draw derives from (seed, epoch, sample).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from slic.classification import predict_videos, topk_accuracy
from slic.checkpoints import atomic_torch_save
from slic.config import FinetuneConfig, LinearProbeConfig
from slic.data.clips import VideoShard
from slic.data.labelled_clips import LabelledClips, WindowViews, finetune_augmentation
from slic.models import Classifier, build_backbone, to_device
from slic.progress import EpochClock

log = logging.getLogger(__name__)
ClassifierConfig = FinetuneConfig | LinearProbeConfig
# Settings that do not change what is learned: a last.pt made under other values still resumes.
RESUMABLE_ACROSS = ("epochs", "workers", "device", "out", "eval_batch_size", "test_stride", "test_resize")


@dataclass
class ClassifierState:
    """Next epoch, best validation top-1 so far and the per-epoch history (for resuming)."""

    epoch: int = 0
    best_val_top1: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)


def build_classifier(*, init: str, checkpoint: str | Path, classes: int, dropout: float, seed: int) -> Classifier:
    """Backbone of `checkpoint` (init 'pretrained') or the same architecture at random (init 'scratch')."""
    from slic.checkpoints import load_encoder

    encoder, pretrain_cfg = load_encoder(checkpoint, "cpu")
    torch.manual_seed(seed)  # the scratch backbone and the linear layer are seeded
    backbone = encoder.backbone if init == "pretrained" else build_backbone(name=pretrain_cfg["backbone"])
    return Classifier(backbone=backbone.train(), feature_dim=backbone.feature_dim, classes=classes, dropout=dropout)


def freeze_backbone(model: Classifier) -> None:
    """Linear probe: no backbone parameter receives gradients; its BatchNorm stays in eval mode."""
    for parameter in model.backbone.parameters():
        parameter.requires_grad_(False)
    model.backbone.eval()


def set_training(model: Classifier, *, linear_probe: bool) -> None:
    """Train mode for what is trained: the whole net, or (linear probe) only the head."""
    model.train()
    if linear_probe:
        model.backbone.eval()  # running statistics frozen: eval-mode BatchNorm never updates them


def build_optimizer(model: Classifier, cfg: ClassifierConfig, *, linear_probe: bool) -> torch.optim.Adam:
    """Adam with the head at lr and (finetuning) the backbone at lr x backbone_lr_scale."""
    groups: list[dict[str, Any]] = [{"params": list(model.fc.parameters()), "lr": cfg.lr, "name": "head"}]
    if not linear_probe:
        groups.append({"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.backbone_lr_scale,
                       "name": "backbone"})
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ClassifierConfig) -> torch.optim.lr_scheduler.MultiStepLR:
    """Every group's lr x lr_gamma at each milestone epoch (paper: /10 at 60 and 100)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.lr_gamma)


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def train_epoch(model: Classifier, loader: DataLoader, optimizer: torch.optim.Optimizer, *, device: torch.device,
                bf16: bool, linear_probe: bool) -> dict[str, float]:
    """One pass over the training clips; mean cross-entropy, train top-1 (percent), clips/s."""
    set_training(model, linear_probe=linear_probe)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    # summed on the device and read once an epoch: a read every step would make the host wait for each step
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    started = time.perf_counter()
    for clips, labels in loader:
        clips, labels = clips.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if device.type == "cuda":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        with autocast:
            logits = model(clips).float()
        loss = torch.nn.functional.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().double() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
    loss_total, correct_total = torch.stack([loss_sum, correct.double()]).tolist()  # waits for the last step
    seconds = time.perf_counter() - started
    return {"loss": loss_total / max(seen, 1), "train_top1": 100.0 * correct_total / max(seen, 1),
            "clips_per_s": seen / seconds if seconds else 0.0, "epoch_seconds": seconds}


def evaluate(model: Classifier, videos: list[VideoShard], cfg: ClassifierConfig, device: torch.device, *,
             views: str) -> dict[str, float]:
    """top-1/top-5 (percent) over `videos`: softmax averaged over every window's `views`."""
    dataset = WindowViews(videos, clip_len=cfg.clip_len, stride=cfg.test_stride, size=cfg.size,
                          resize=round(cfg.size * cfg.test_resize), views=views)
    scores = predict_videos(model, dataset, device=device, batch_size=cfg.eval_batch_size, workers=cfg.workers,
                            bf16=cfg.bf16)
    return {**topk_accuracy(scores, np.array([v.label for v in videos])), "views": float(len(dataset) * (
        10 if views == "ten" else 1))}


def save_checkpoint(path: Path, model: Classifier, optimizer: torch.optim.Optimizer | None, scheduler: Any,
                    state: ClassifierState, fingerprint: dict[str, Any]) -> None:
    """torch.save to a temporary name, fsync, rename: a kill never leaves a torn checkpoint."""
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
               "scheduler": scheduler.state_dict() if scheduler else None, "state": asdict(state),
               "fingerprint": fingerprint}
    atomic_torch_save(payload, path)


def _resume(last: Path, fingerprint: dict[str, Any], model: Classifier, optimizer: torch.optim.Optimizer,
            scheduler: Any) -> ClassifierState:
    if not last.is_file():
        return ClassifierState()
    payload = torch.load(last, map_location="cpu", weights_only=False)
    if payload.get("fingerprint") != fingerprint:
        log.warning("%s was trained with other settings, data or weights; starting afresh", last)
        return ClassifierState()
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    log.info("resuming %s at epoch %d", last, payload["state"]["epoch"])
    return ClassifierState(**payload["state"])


def train_classifier(cfg: ClassifierConfig, *, init: str, linear_probe: bool, splits: dict[str, list[VideoShard]],
                     classes: int, out: Path, device: torch.device, data: str, run: Any = None) -> dict[str, Any]:
    """Train one classifier, keep the best epoch on val, report its test top-1/top-5 (percent)."""
    out.mkdir(parents=True, exist_ok=True)
    last, best = out / "last.pt", out / "best.pt"
    model = build_classifier(init=init, checkpoint=cfg.checkpoint, classes=classes, dropout=cfg.dropout,
                             seed=cfg.seed)
    if linear_probe:
        freeze_backbone(model)
    model = to_device(model, device)
    optimizer, fingerprint = build_optimizer(model, cfg, linear_probe=linear_probe), {
        **{k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_ACROSS}, "init": init, "data": data,
        "classes": classes, "linear_probe": linear_probe}
    scheduler = build_scheduler(optimizer, cfg)
    state = _resume(last, fingerprint, model, optimizer, scheduler)
    if state.epoch == 0 and best.is_file():
        best.unlink()  # from another run: never let it pass for this run's best
    resumed_from = state.epoch
    augmentation = finetune_augmentation(crop_min_scale=cfg.crop_min_scale, jitter_p=cfg.color_jitter_p,
                                         jitter=(cfg.color_jitter,) * 3 + (cfg.hue,), flip_p=cfg.flip_p)
    dataset = LabelledClips(splits["train"], clip_len=cfg.clip_len, size=cfg.size, augmentation=augmentation,
                            seed=cfg.seed)
    started, clock = time.perf_counter(), EpochClock()
    for epoch in range(state.epoch, cfg.epochs):
        dataset.set_epoch(epoch)
        torch.manual_seed(_seed_of(cfg.seed, epoch, 1))  # dropout masks
        loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                            generator=torch.Generator().manual_seed(_seed_of(cfg.seed, epoch)),
                            drop_last=len(dataset) > cfg.batch_size, pin_memory=device.type == "cuda")
        lrs = {f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}
        metrics = {**train_epoch(model, loader, optimizer, device=device, bf16=cfg.bf16, linear_probe=linear_probe),
                   **lrs}
        scheduler.step()
        val = evaluate(model, splits["val"], cfg, device, views=cfg.val_views)
        metrics.update(val_top1=val["top1"], val_top5=val["top5"])
        state.epoch = epoch + 1
        if val["top1"] > state.best_val_top1:
            state.best_val_top1, state.best_epoch = val["top1"], state.epoch
            save_checkpoint(best, model, None, None, state, fingerprint)
        state.history.append({"epoch": float(state.epoch), **metrics})
        save_checkpoint(last, model, optimizer, scheduler, state, fingerprint)
        if run is not None:
            run.log_metrics(metrics, step=state.epoch)
        log.info("%s epoch %d/%d eta=%s %s", out.name, state.epoch, cfg.epochs,
                 clock.epoch_done(cfg.epochs - state.epoch),
                 " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    if not best.is_file():  # zero epochs: the starting weights are the best there is
        save_checkpoint(best, model, None, None, state, fingerprint)
    model.load_state_dict(torch.load(best, map_location=device, weights_only=False)["model"])
    test = evaluate(model, splits["test"], cfg, device, views="ten")
    (out / "history.json").write_text(json.dumps(state.history, indent=1))
    final = state.history[-1] if state.history else {}
    report = {"top1": test["top1"], "top5": test["top5"], "init": init, "epochs": cfg.epochs,
              "resumed_from_epoch": resumed_from, "best_epoch": state.best_epoch,
              "best_val_top1": state.best_val_top1, "test_views": int(test["views"]),
              "final_loss": final.get("loss"), "final_train_top1": final.get("train_top1"),
              "seconds": round(time.perf_counter() - started, 2), "checkpoint": str(best)}
    if run is not None:
        run.log_metrics({"test_top1": test["top1"], "test_top5": test["top5"], "best_epoch": state.best_epoch,
                         "best_val_top1": state.best_val_top1})
        run.log_artifact(best, "checkpoints")
    return report
