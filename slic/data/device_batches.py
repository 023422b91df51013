"""Training batches onto the training device: uint8 clips over the bus, normalised there, the next one prefetched.

Why: the first GPU run (reports/bench/gpu.json) fed the model float32 clips, four bytes a pixel, about
300 MB a step at batch 128 in the paper's configuration, copied from pageable memory on the training
stream; end to end reached 45-57% of the model alone while the loader kept up. Now:

* the loader's workers hand over the augmented clips as uint8 (`PretrainClips(normalise=False)`): the
  augmentation already runs on uint8, so only where its last step (scale to [0, 1], subtract the mean,
  divide by the std) happens changes, and the batch crosses the bus at a quarter of the bytes;
* the DataLoader pins them (`pin_memory` on CUDA) and each part (anchors, positives, views) is copied
  `non_blocking` from there and joined on the device;
* with `prefetch` on CUDA the copy, the normalisation and (`gpu_decode`) the JPEG decode and augmentation
  of batch k+1 are issued on a side stream before batch k's step is handed out, so they overlap it.

On the CPU nothing is prefetched and the normalised batch is exactly the one `apply_draw` made in the
workers before (same float operations, element by element: tested), so CPU training is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from slic.data.augment import normalise_clips
from slic.data.gpu_clips import clips_from_jpegs

DeviceBatch = tuple[Tensor, Tensor, Tensor]  # (clips on the training device, labels, video indices on the host)


def prepare_batch(item: Any, *, device: torch.device, size: int, gpu_decode: bool, use_view: bool) -> DeviceBatch:
    """One DataLoader item -> (clips on `device`, labels, videos), the clips normalised float32 (2B or 3B of
    them: anchors, positives and, with `use_view`, the second anchor views), channels_last_3d on CUDA.
    Labels and video indices stay on the host, where the losses read them without waiting for the device
    (the mined triplet finds its pairs there); the losses move them over without blocking.

    `gpu_decode` items carry each clip's JPEG bytes and draws (`collate_encoded`); they are decoded and
    augmented on `device` here. Other items carry uint8 (or float) clips.
    """
    if gpu_decode:
        encoded, labels, videos = item
        batch = torch.cat([clips_from_jpegs(kind, size=size, device=device) for kind in encoded])
    else:
        anchor, positive, view, labels, videos = item
        # Each part crosses from the loader's pinned memory and they are joined on the device: joined on the
        # host they would be a new, pageable tensor (a copy that waits, and a host memcpy of the batch).
        parts = [anchor, positive, view] if use_view else [anchor, positive]
        batch = normalise_clips(torch.cat([part.to(device, non_blocking=True) for part in parts]))
    if device.type == "cuda":
        batch = batch.contiguous(memory_format=torch.channels_last_3d)
    return batch, labels, videos


def device_batches(loader: Iterable[Any], prepare: Callable[[Any], DeviceBatch], device: torch.device, *,
                   prefetch: bool) -> Iterator[DeviceBatch]:
    """`prepare(item)` for every loader item, in order. With `prefetch` on CUDA each batch is prepared on a
    side stream one item ahead (its copy and normalisation overlap the step before it); otherwise in line."""
    if not (prefetch and device.type == "cuda"):
        for item in loader:
            yield prepare(item)
        return
    side = torch.cuda.Stream(device=device)
    items = iter(loader)

    def issue() -> DeviceBatch | None:
        item = next(items, None)
        if item is None:
            return None
        # The side stream first waits for what the training stream has queued so far (the steps before the
        # current one): an item made on the device there (a benchmark's batch) is then written before it is read.
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            return prepare(item)

    upcoming = issue()
    while upcoming is not None:
        compute = torch.cuda.current_stream(device)
        compute.wait_stream(side)  # the step waits for this batch's copy, not for anything issued later
        for tensor in upcoming:
            if tensor.is_cuda:
                tensor.record_stream(compute)  # made on the side stream, freed only after the step used it
        ready, upcoming = upcoming, issue()
        yield ready
