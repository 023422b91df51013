"""A GPU data path for clips: JPEG frames decoded on the device, the augmentation draws applied there.

The training loaders (slic.data.clips) decode each clip's JPEGs and augment it on the CPU, in worker
processes. On a GPU machine those workers can fall behind the model: a 16-frame clip at short side 240
costs 16 JPEG decodes and a resized crop, colour jitter and blur of 16 frames. Here the CPU only reads the
JPEG bytes of a batch's windows (one seek and one read per clip, `ShardReader.read_jpegs`); every frame of
the batch is decoded in ONE call of torchvision's `decode_jpeg` with `device` (nvJPEG's batched decoder on
CUDA), and each clip's `ClipDraw` is applied with `slic.data.augment.apply_draw` on the device.

Same draws, same clips: on the CPU device this path gives exactly the clips of the CPU path
(`ShardCache.window` + `apply_draw`); on CUDA they differ only by the JPEG decoders (nvJPEG against
libjpeg-turbo: a few grey levels at some pixels) and floating-point order.

Not wired into pretraining (slic.pretrain); bench/gpu.py measures it against the CPU-worker loader.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from slic.data.augment import IMAGENET_MEAN, IMAGENET_STD, ClipDraw, apply_draw
from slic.data.clips import VideoShard
from slic.data.frames import ShardReader

ClipRequest = tuple[VideoShard, int, int, ClipDraw]  # (video, start, length, draws); start and length at its frame_step


class JpegWindows:
    """The JPEG bytes of clip windows, with each shard's header read once (readers are cached by path)."""

    def __init__(self) -> None:
        self._readers: dict[str, ShardReader] = {}

    def read(self, video: VideoShard, start: int, length: int) -> list[bytes]:
        """Encoded frames start, start + step, ... (`length` of them, counted at the video's frame_step)."""
        reader = self._readers.get(video.shard)
        if reader is None:
            reader = self._readers[video.shard] = ShardReader.open(video.shard)
        step = video.frame_step
        return reader.read_jpegs(start * step, (length - 1) * step + 1)[::step]


def decode_on(jpegs: Sequence[bytes], device: str | torch.device) -> list[Tensor]:
    """JPEG frames -> (H, W, 3) uint8 RGB tensors on `device`, all decoded in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; pinned, they work
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=torch.device(device))
    return [image.permute(1, 2, 0) for image in images]


def clip_batch(requests: Sequence[ClipRequest], *, size: int, device: str | torch.device,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               windows: JpegWindows | None = None) -> Tensor:
    """(B, 3, T, size, size) float clips on `device`: read on the CPU, decoded and augmented on `device`.

    Every request is (video, start, length, draw) with start and length counted at the video's
    frame_step, as `ShardCache.window` counts them; all requests need the same length. `windows` keeps
    the shards' headers between batches.
    """
    if not requests:
        raise ValueError("clip_batch needs at least one clip")
    lengths = {length for _, _, length, _ in requests}
    if len(lengths) != 1:
        raise ValueError(f"every clip of a batch needs the same length, got {sorted(lengths)}")
    windows = windows if windows is not None else JpegWindows()
    jpegs = [windows.read(video, start, length) for video, start, length, _ in requests]
    frames = decode_on([j for clip in jpegs for j in clip], device)
    length = lengths.pop()
    clips = []
    for k, (video, _, _, draw) in enumerate(requests):
        shapes = {tuple(f.shape) for f in frames[k * length:(k + 1) * length]}
        if len(shapes) != 1:
            raise ValueError(f"{video.shard}: frames of one clip differ in size: {sorted(shapes)}")
        clip = torch.stack(frames[k * length:(k + 1) * length])  # (T, H, W, 3) uint8 on the device
        clips.append(apply_draw(clip, draw, size, mean, std))
    return torch.stack(clips)
