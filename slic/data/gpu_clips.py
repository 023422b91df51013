"""A GPU data path for clips: JPEG frames decoded on the device, the augmentation draws applied there.

The training loaders (slic.data.clips) decode each clip's JPEGs and augment it on the CPU, in worker
processes. On a GPU machine those workers can fall behind the model: a 16-frame clip at short side 240
costs 16 JPEG decodes and a resized crop, colour jitter and blur of 16 frames. Here the CPU only reads the
JPEG bytes of a batch's windows (one seek and one read per clip, `ShardCache.jpegs`); every frame of
the batch is decoded in ONE call of torchvision's `decode_jpeg` with `device` (nvJPEG's batched decoder on
CUDA), and each clip's `ClipDraw` is applied with `slic.data.augment.apply_draw` on the device.

Same draws, same clips: on the CPU device this path gives exactly the clips of the CPU path
(`ShardCache.window` + `apply_draw`); on CUDA they differ only by the JPEG decoders (nvJPEG against
libjpeg-turbo: a few grey levels at some pixels) and floating-point order.

In pretraining behind `pretrain.gpu_decode`: the loader's workers then only read each clip's JPEG bytes
and draw its augmentation (`PretrainClips(decode=False)`), and the training step decodes and augments
the batch on its device (`clips_from_jpegs`). bench/gpu.py measures it against the CPU-worker loader.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from slic.data.augment import ClipDraw, apply_draw
from slic.data.clip_transform import IMAGENET_MEAN, IMAGENET_STD
from slic.data.clips import ShardCache, VideoShard

ClipRequest = tuple[VideoShard, int, int, ClipDraw]  # (video, start, length, draws); start and length at its frame_step


def decode_on(jpegs: Sequence[bytes], device: str | torch.device) -> list[Tensor]:
    """JPEG frames -> (H, W, 3) uint8 RGB tensors on `device`, all decoded in one batched call."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    target = torch.device(device)
    if target.type == "cuda":
        # torchvision's nvJPEG decoder writes on a stream of its own into memory taken from the current
        # stream's pool without waiting for that stream: memory freed there by work still queued (the last
        # batch's stack and augmentation, on the prefetch side stream) could be written before that work ran.
        torch.cuda.current_stream(target).synchronize()
    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; pinned, they work
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=target)
    return [image.permute(1, 2, 0) for image in images]


def clip_batch(requests: Sequence[ClipRequest], *, size: int, device: str | torch.device,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               windows: ShardCache | None = None) -> Tensor:
    """(B, 3, T, size, size) float clips on `device`: read on the CPU, decoded and augmented on `device`.

    Every request is (video, start, length, draw) with start and length counted at the video's
    frame_step, as `ShardCache.window` counts them; all requests need the same length. `windows` (a
    ShardCache) keeps the shards' headers between batches.
    """
    if not requests:
        raise ValueError("clip_batch needs at least one clip")
    windows = windows if windows is not None else ShardCache()
    items = [(windows.jpegs(video, start, length), draw) for video, start, length, draw in requests]
    return clips_from_jpegs(items, size=size, device=device, mean=mean, std=std,
                            names=[video.shard for video, _, _, _ in requests])


def clips_from_jpegs(items: Sequence[tuple[Sequence[bytes], ClipDraw]], *, size: int, device: str | torch.device,
                     mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                     names: Sequence[str] | None = None) -> Tensor:
    """(B, 3, T, size, size) float clips on `device` from each clip's encoded frames and draws.

    Every frame of the batch is decoded in one call on `device`; each clip's draws are applied there.
    All clips need the same number of frames. `names` (one per clip) label errors.
    """
    if not items:
        raise ValueError("a clip batch needs at least one clip")
    lengths = {len(jpegs) for jpegs, _ in items}
    if len(lengths) != 1:
        raise ValueError(f"every clip of a batch needs the same length, got {sorted(lengths)}")
    length = lengths.pop()
    frames = decode_on([j for jpegs, _ in items for j in jpegs], device)
    clips = []
    for k, (_, draw) in enumerate(items):
        shapes = {tuple(f.shape) for f in frames[k * length:(k + 1) * length]}
        if len(shapes) != 1:
            name = names[k] if names else f"clip {k}"
            raise ValueError(f"{name}: frames of one clip differ in size: {sorted(shapes)}")
        clip = torch.stack(frames[k * length:(k + 1) * length])  # (T, H, W, 3) uint8 on the device
        clips.append(apply_draw(clip, draw, size, mean, std))
    return torch.stack(clips)
