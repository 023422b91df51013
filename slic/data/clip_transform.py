"""The evaluation clip: which frames (IIC windows) and how they become the network's input, with torch alone.

Embedding a video for retrieval (the embed stage, `slic search`, `slic embed-video`, the served model) needs
the clips' windows and a deterministic transform: resize (the short side to `size`, or a fixed (H, W)), centre
crop, scale to [0, 1], normalise. This module computes them exactly as torchvision's v2 `Resize(antialias=True)`,
`CenterCrop`, `ToDtype(float32, scale=True)` and `Normalize` do (tests/data/test_clip_transform.py compares the
two on videos of many shapes), without importing torchvision: its import pulls in torch._dynamo, 1.6 s of the
4.4 s `slic search` took to answer one query on 2 cores. Training's random augmentation stays in
slic.data.augment (torchvision's kernels).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sampled_frames(decoded: int, frame_step: int) -> int:
    """Frames a video of `decoded` frames offers at a temporal stride of `frame_step`."""
    return (decoded - 1) // frame_step + 1 if decoded > 0 else 0


def iic_starts(frames: int, clip_len: int = 16, clips: int = 10) -> list[int]:
    """Starts of the IIC protocol's clips: centred at linspace(8, n - 8, clips), kept inside the video."""
    centres = np.linspace(clip_len // 2, frames - clip_len // 2, clips)
    return [int(min(max(0, round(c) - clip_len // 2), frames - clip_len)) for c in centres]


def resized_size(height: int, width: int, size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) after resizing: a fixed (H, W), or the short side to `size` and the long side in proportion
    (truncated, as torchvision computes it)."""
    if not isinstance(size, int):
        return int(size[0]), int(size[1])
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def _native_uint8_resize(device: torch.device) -> bool:
    """Whether torch resizes uint8 itself (bilinear, antialiased): on CPUs with AVX2 or AVX-512 and on ARM, as
    torchvision decides; elsewhere the frames go through float32 and are rounded back."""
    return device.type == "cpu" and (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
                                     or platform.machine() in ("aarch64", "arm64"))


def resize_frames(frames: Tensor, size: int | tuple[int, int]) -> Tensor:
    """(..., C, H, W) frames resized bilinearly with antialiasing, in their dtype (uint8 stays uint8)."""
    height, width = frames.shape[-2:]
    new_height, new_width = resized_size(height, width, size)
    if (new_height, new_width) == (height, width) or frames.numel() == 0:
        return frames
    batch = frames.reshape(-1, *frames.shape[-3:])
    cast = batch.dtype == torch.uint8 and not _native_uint8_resize(batch.device)
    out = F.interpolate(batch.float() if cast else batch, size=[new_height, new_width], mode="bilinear",
                        align_corners=False, antialias=True)
    if cast:
        out = out.round_().to(torch.uint8)
    return out.reshape(*frames.shape[:-2], new_height, new_width)


def centre_crop(frames: Tensor, size: int) -> Tensor:
    """The centre size x size of (..., H, W) frames (the offset rounded as torchvision rounds it); a frame smaller
    than the crop is an error here (the evaluation resize never makes one)."""
    height, width = frames.shape[-2:]
    if size > height or size > width:
        raise ValueError(f"a {height}x{width} frame is smaller than its {size}x{size} centre crop")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return frames[..., top:top + size, left:left + size]


class EvalTransform:
    """(T, C, H, W) uint8 frames -> (T, C, size, size) float32: resize, centre crop, scale to [0, 1], normalise."""

    def __init__(self, size: int, *, resize: tuple[int, int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD) -> None:
        self.size, self.resize = size, resize
        self.mean, self.std = list(mean), list(std)

    def __call__(self, frames: Tensor) -> Tensor:
        cropped = centre_crop(resize_frames(frames, self.resize if self.resize else self.size), self.size)
        scaled = cropped.to(torch.float32).mul_(1.0 / 255) if cropped.dtype == torch.uint8 else cropped.float()
        mean = torch.as_tensor(self.mean, dtype=scaled.dtype, device=scaled.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=scaled.dtype, device=scaled.device).view(-1, 1, 1)
        return scaled.sub(mean).div_(std)


def eval_transform(size: int, *, resize: tuple[int, int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> EvalTransform:
    """Deterministic evaluation transform: resize (short side `size`, or a fixed (H, W)), centre crop."""
    return EvalTransform(size, resize=resize, mean=mean, std=std)


def as_clip(frames: np.ndarray, transform: Callable[[Tensor], Tensor]) -> Tensor:
    """(T, H, W, 3) uint8 frames -> transformed (3, T, size, size) float clip."""
    return transform(torch.from_numpy(frames).permute(0, 3, 1, 2)).permute(1, 0, 2, 3).contiguous()
