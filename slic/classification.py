"""Video-level predictions from many views: softmax averaged over every view of every window.

The test protocol of SLIC.md: a video's class scores are the mean of the softmax (not of the
logits) over all its windows x 5 crops x 2 flips; top-k accuracy is over videos.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from slic.data.labelled_clips import WindowViews


def average_softmax(logits: Tensor, video_index: Tensor, videos: int) -> Tensor:
    """Mean softmax per video: logits (N, C) of N views, video_index (N,) -> (videos, C) float64."""
    probs = torch.softmax(logits.double(), dim=-1)
    sums = torch.zeros(videos, logits.shape[1], dtype=torch.float64).index_add_(0, video_index, probs)
    counts = torch.zeros(videos, dtype=torch.float64).index_add_(0, video_index,
                                                                 torch.ones_like(video_index, dtype=torch.float64))
    if bool((counts == 0).any()):
        raise ValueError(f"{int((counts == 0).sum())} video(s) have no view")
    return sums / counts[:, None]


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of videos whose label is among their k highest scores, for each k (k capped at C)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return {f"top{k}": float(100.0 * np.mean([lab in row[:k] for row, lab in zip(order, labels)])) for k in ks}


@torch.no_grad()
def predict_videos(model: torch.nn.Module, dataset: WindowViews, *, device: torch.device, batch_size: int,
                   workers: int, bf16: bool = True) -> np.ndarray:
    """(videos, classes) softmax averaged over every view of every window; the model in eval mode.

    `batch_size` counts clips per forward pass (rounded down to whole windows, at least one).
    """
    per_view = 10 if dataset.views == "ten" else 1
    loader = DataLoader(dataset, batch_size=max(1, batch_size // per_view), num_workers=workers, shuffle=False,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")
    logits, owners = [], []
    for views, video in loader:
        b, v = views.shape[:2]
        clips = views.flatten(0, 1).to(device, non_blocking=True)
        if device.type == "cuda":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        with autocast:
            logits.append(model(clips).float().cpu())
        owners.append(video.repeat_interleave(v))
    model.train(was_training)
    return average_softmax(torch.cat(logits), torch.cat(owners), len(dataset.videos)).numpy()
