"""Labelled clips for action classification: training clips and the test-time views.

Training (`LabelledClips`): one random `clip_len`-frame window per video and epoch, with the
finetuning augmentation of SLIC.md drawn per sample: random-area crop (scale 0.2-1), horizontal
flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.3. Every draw of sample i in epoch e comes from a
generator seeded by (seed, e, i), so the clips do not depend on the number of loader workers.

Testing (`WindowViews`): windows at `window_starts` over the whole video; each window gives
5 crops (centre and four corners) x 2 flips = 10 views, or one centre view (`views="centre"`, the
cheap validation protocol). No colour jitter at test time. Videos shorter than a window repeat
their last frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from slic.data.augment import Augmentation, augment_clip
from slic.data.clip_transform import IMAGENET_MEAN, IMAGENET_STD
from slic.data.clips import ShardCache, VideoShard

VIEW_MODES = ("ten", "centre")


def finetune_augmentation(*, crop_min_scale: float = 0.2, jitter: Sequence[float] = (0.4, 0.4, 0.4, 0.1),
                          jitter_p: float = 0.3, flip_p: float = 0.5) -> Augmentation:
    """SLIC's finetuning augmentation (no grey, no blur); drawn once per clip (all its frames alike), anew per sample.

    The brightness, contrast and saturation strengths must be equal (one `color_jitter` key sets them).
    """
    brightness, contrast, saturation, hue = jitter
    if not brightness == contrast == saturation:
        raise ValueError(f"jitter {tuple(jitter)}: brightness, contrast and saturation must be equal")
    return Augmentation(crop_min_scale=crop_min_scale, jitter=brightness, jitter_p=jitter_p, grayscale_p=0.0,
                        blur_p=0.0, hue=hue, flip_p=flip_p)


def padded_window(cache: ShardCache, video: VideoShard, start: int, length: int) -> np.ndarray:
    """Frames [start, start + length) of `video`; past its end the last frame repeats."""
    count = min(length, video.frames - start)
    frames = cache.window(video, start, count)
    if count < length:
        frames = np.concatenate([frames, np.repeat(frames[-1:], length - count, axis=0)])
    return frames


def window_starts(frames: int, clip_len: int, stride: int) -> list[int]:
    """Starts of the test windows: every `stride` frames, plus one ending on the last frame.

    Together the windows cover every frame of the video; a video shorter than a window has one.
    """
    if frames <= clip_len:
        return [0]
    starts = list(range(0, frames - clip_len + 1, stride))
    if starts[-1] != frames - clip_len:
        starts.append(frames - clip_len)
    return starts


def crop_boxes(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of the five crops: centre, top-left, top-right, bottom-left, bottom-right."""
    bottom, right = height - size, width - size
    return [(bottom // 2, right // 2), (0, 0), (0, right), (bottom, 0), (bottom, right)]


def ten_views(frames: np.ndarray, *, size: int, resize: int, views: str = "ten",
              mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """(T, H, W, 3) uint8 frames -> (V, 3, T, size, size) views: 5 crops x 2 flips (V=10) or the centre (V=1).

    Frames are resized to short side `resize` (>= size); view 2k is crop k, view 2k+1 its mirror.
    """
    if views not in VIEW_MODES:
        raise ValueError(f"unknown views {views!r}; use one of {', '.join(VIEW_MODES)}")
    video = v2.Resize(resize, antialias=True)(tv_tensors.Video(torch.from_numpy(frames).permute(0, 3, 1, 2)))
    normalise = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    boxes = crop_boxes(video.shape[-2], video.shape[-1], size)
    out = []
    for top, left in boxes[:1] if views == "centre" else boxes:
        crop = normalise(video[..., top:top + size, left:left + size])
        out.append(crop)
        if views == "ten":
            out.append(crop.flip(-1))
    return torch.stack(out).permute(0, 2, 1, 3, 4).contiguous()  # (V, T, 3, S, S) -> (V, 3, T, S, S)


class LabelledClips(Dataset):
    """(clip (3, T, S, S), label) with one random window and augmentation per video and epoch."""

    def __init__(self, videos: Sequence[VideoShard], *, clip_len: int, size: int, augmentation: Augmentation,
                 seed: int = 7, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.videos, self.clip_len, self.size, self.seed = list(videos), clip_len, size, seed
        self.augmentation, self.mean, self.std = augmentation, tuple(mean), tuple(std)
        self.epoch = 0
        self._cache = ShardCache()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next samples use."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        video = self.videos[index]
        start = int(rng.integers(0, max(1, video.frames - self.clip_len + 1)))
        frames = padded_window(self._cache, video, start, self.clip_len)
        return augment_clip(rng, frames, self.augmentation, self.size, self.mean, self.std), video.label


class WindowViews(Dataset):
    """Every (video, window) pair of a split: (views (V, 3, T, S, S), video index)."""

    def __init__(self, videos: Sequence[VideoShard], *, clip_len: int, stride: int, size: int, resize: int,
                 views: str = "ten") -> None:
        if resize < size:
            raise ValueError(f"test frames resized to {resize} cannot give {size}-pixel crops")
        self.videos, self.clip_len, self.size, self.resize, self.views = list(videos), clip_len, size, resize, views
        self.items = [(i, s) for i, v in enumerate(self.videos) for s in window_starts(v.frames, clip_len, stride)]
        self._cache = ShardCache()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        video_index, start = self.items[index]
        frames = padded_window(self._cache, self.videos[video_index], start, self.clip_len)
        return ten_views(frames, size=self.size, resize=self.resize, views=self.views), video_index
