"""Clip augmentation as explicit draws: drawn once per clip from a numpy generator, applied to all frames.

Why not torchvision's `v2.Compose` of random transforms: those draw from torch's global generator,
so every clip needed `fork_rng` + `manual_seed` (about 0.8 ms each on the CPU, more than the
augmentation itself), and their per-call dispatch costs as much again. Here a `ClipDraw` holds every
random choice (crop box, flip, colour-jitter factors and order, grey, blur), drawn from the sample's
own seeded generator, and `apply_draw` applies it with torchvision's functional kernels. The same
draw gives the same clip on any device: the training loaders apply it on the CPU in their workers,
and a GPU data path can apply it to frames already on the GPU.

The draws follow torchvision's definitions: RandomResizedCrop (10 tries of area and log-ratio, then
the centre crop with the ratio clamped), RandomHorizontalFlip, ColorJitter (brightness, contrast and
saturation factors in [max(0, 1 - s), 1 + s], hue in [-h, h], applied in a random order),
RandomGrayscale (three equal channels) and GaussianBlur(kernel 15, sigma 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from slic.data.clip_transform import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Augmentation:
    """Strengths of a clip's spatial augmentation; the defaults are SLIC's pretraining values (SLIC.md)."""

    crop_min_scale: float = 0.25  # RandomResizedCrop area scale (crop_min_scale, 1), ratio (3/4, 4/3)
    jitter: float = 0.5           # ColorJitter brightness, contrast, saturation
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.2           # Gaussian blur, kernel 15, sigma 2
    hue: float | None = None      # ColorJitter hue; None: min(jitter, 0.5) (SLIC's pretraining)
    flip_p: float = 0.5

    @property
    def hue_strength(self) -> float:
        """The hue jitter bound: `hue`, or SLIC's min(jitter, 0.5)."""
        return min(self.jitter, 0.5) if self.hue is None else self.hue


@dataclass(frozen=True)
class ClipDraw:
    """Every random choice of one clip's augmentation.

    `crop` is (top, left, height, width) in source pixels; `jitter` holds the (brightness, contrast,
    saturation, hue) factors (None: no jitter), applied in `jitter_order` (0..3 in that same order).
    """

    crop: tuple[int, int, int, int]
    flip: bool
    jitter: tuple[float, float, float, float] | None = None
    jitter_order: tuple[int, ...] = (0, 1, 2, 3)
    grayscale: bool = False
    blur: bool = False


def draw_crop(rng: np.random.Generator, height: int, width: int, scale: tuple[float, float],
              ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box: an area share in `scale` and an aspect in `ratio` (log-uniform), 10 tries,
    else the largest centred box whose aspect is within `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_augmentation(rng: np.random.Generator, height: int, width: int, augmentation: Augmentation) -> ClipDraw:
    """One clip's draws for frames of `height` x `width`, always in the same order (crop, flip, jitter,
    grey, blur), so a clip's draws never depend on its content or on which options are off."""
    a = augmentation
    crop = draw_crop(rng, height, width, (a.crop_min_scale, 1.0))
    flip = bool(rng.random() < a.flip_p)
    apply_jitter = bool(rng.random() < a.jitter_p)
    factors = tuple(float(rng.uniform(max(0.0, 1 - a.jitter), 1 + a.jitter)) for _ in range(3))
    hue = float(rng.uniform(-a.hue_strength, a.hue_strength))
    order = tuple(int(i) for i in rng.permutation(4))
    grayscale = bool(rng.random() < a.grayscale_p)
    blur = bool(rng.random() < a.blur_p)
    jitter = (*factors, hue) if apply_jitter and (a.jitter > 0 or a.hue_strength > 0) else None
    return ClipDraw(crop=crop, flip=flip, jitter=jitter, jitter_order=order, grayscale=grayscale, blur=blur)


def _jitter(video: Tensor, factors: tuple[float, float, float, float], order: Sequence[int]) -> Tensor:
    brightness, contrast, saturation, hue = factors
    for op in order:
        if op == 0 and brightness != 1.0:
            video = TF.adjust_brightness(video, brightness)
        elif op == 1 and contrast != 1.0:
            video = TF.adjust_contrast(video, contrast)
        elif op == 2 and saturation != 1.0:
            video = TF.adjust_saturation(video, saturation)
        elif op == 3 and hue != 0.0:
            video = TF.adjust_hue(video, hue)
    return video


def apply_draw(frames: Tensor, draw: ClipDraw, size: int, mean: Sequence[float] = IMAGENET_MEAN,
               std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(T, H, W, 3) uint8 frames on any device -> the augmented (3, T, size, size) float clip, normalised.

    Crop and resize (bilinear, antialiased) and the colour operations run on uint8, as torchvision's
    transforms do on uint8 videos (`augment_uint8`); then scaling to [0, 1] and normalisation.
    """
    return normalise_clips(augment_uint8(frames, draw, size), mean, std)


def augment_uint8(frames: Tensor, draw: ClipDraw, size: int) -> Tensor:
    """(T, H, W, 3) uint8 frames -> the augmented (3, T, size, size) uint8 clip, not yet normalised: what a
    loader hands the training device, which normalises it there (`slic.data.device_batches`)."""
    video = frames.permute(0, 3, 1, 2)  # (T, 3, H, W)
    top, left, h, w = draw.crop
    video = TF.resized_crop(video, top, left, h, w, [size, size], antialias=True)
    if draw.flip:
        video = video.flip(-1)
    if draw.jitter is not None:
        video = _jitter(video, draw.jitter, draw.jitter_order)
    if draw.grayscale:
        video = TF.rgb_to_grayscale(video, num_output_channels=3)
    if draw.blur:
        video = TF.gaussian_blur(video, kernel_size=[15, 15], sigma=[2.0, 2.0])
    return video.permute(1, 0, 2, 3).contiguous()


def normalise_clips(clips: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(..., 3, T, H, W) uint8 clips -> float32 (x / 255 - mean) / std per channel, where they are: in a
    loader's worker (`apply_draw`) or on the training device (`slic.data.device_batches`), the same values.

    A float batch (already normalised, e.g. a benchmark's in-memory batch) is returned as it is.
    """
    if clips.dtype != torch.uint8:
        return clips
    m, s = _channel_stats(tuple(mean), tuple(std), clips.device)
    return (clips.float() / 255.0 - m) / s


@lru_cache(maxsize=16)
def _channel_stats(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """The (3, 1, 1, 1) mean and std on `device`, made once: making them there is a copy from pageable host
    memory, which on CUDA waits for everything queued on the stream (every batch, before)."""
    return (torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1, 1),
            torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1, 1))


def augment_clip(rng: np.random.Generator, frames: np.ndarray | Tensor, augmentation: Augmentation, size: int,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, *,
                 normalised: bool = True) -> Tensor:
    """Draw one clip's augmentation from `rng` and apply it to (T, H, W, 3) uint8 frames; `normalised=False`
    stops before the normalisation (a uint8 clip)."""
    tensor = torch.from_numpy(frames) if isinstance(frames, np.ndarray) else frames
    draw = draw_augmentation(rng, int(tensor.shape[1]), int(tensor.shape[2]), augmentation)
    return apply_draw(tensor, draw, size, mean, std) if normalised else augment_uint8(tensor, draw, size)
