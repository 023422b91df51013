"""uint8 clips to the training device, normalised there: the numbers the workers used to send; prefetch in order."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from slic.data.augment import Augmentation, normalise_clips
from slic.data.clips import PretrainClips, VideoShard, collate_encoded
from slic.data.device_batches import device_batches, prepare_batch
from tests.data.test_clips import shards  # noqa: F401 (the module's fixture)

PAPER = Augmentation()  # jitter, grey and blur on: every colour operation takes part


@pytest.mark.parametrize("anchor_view", [True, False])
def test_uint8_clips_normalised_on_the_device_equal_the_workers_float_clips(
        shards: list[VideoShard], anchor_view: bool) -> None:  # noqa: F811
    common = dict(clip_len=8, size=24, p_intra=0.5, random_anchor=True, seed=5, augmentation=PAPER,
                  anchor_view=anchor_view)
    floats, uint8 = PretrainClips(shards, **common), PretrainClips(shards, **common, normalise=False)
    for data in (floats, uint8):
        data.set_labels(np.array([0, 0, 1, 1, 2, 2]))
        data.set_epoch(3)
    for index in range(len(shards)):
        expected, raw = floats[index], uint8[index]
        assert raw[0].dtype == torch.uint8 and raw[1].dtype == torch.uint8 and raw[3:] == expected[3:]
        assert raw[2].numel() == expected[2].numel() == (expected[0].numel() if anchor_view else 0)
        for want, got in zip(expected[:3] if anchor_view else expected[:2], raw[:3]):
            assert got.dtype == torch.uint8 and got.shape == want.shape
            assert torch.equal(normalise_clips(got), want)  # bit for bit: the same float operations
    loader = partial(DataLoader, batch_size=3, shuffle=False)
    prepare = partial(prepare_batch, device=torch.device("cpu"), size=24, gpu_decode=False, use_view=anchor_view)
    for (batch, labels, videos), old in zip(device_batches(loader(uint8), prepare, torch.device("cpu"), prefetch=True),
                                            loader(floats)):
        parts = [old[0], old[1], old[2]] if anchor_view else [old[0], old[1]]
        assert torch.equal(batch, torch.cat(parts)) and batch.dtype == torch.float32
        assert torch.equal(labels, old[3]) and torch.equal(videos, old[4])


def test_prepare_batch_decodes_gpu_decode_items_and_passes_float_batches(
        shards: list[VideoShard]) -> None:  # noqa: F811
    floats = PretrainClips(shards[:2], clip_len=4, size=16, seed=3, augmentation=PAPER)
    encoded = PretrainClips(shards[:2], clip_len=4, size=16, seed=3, augmentation=PAPER, decode=False)
    cpu = torch.device("cpu")
    batch, labels, videos = prepare_batch(collate_encoded([encoded[0], encoded[1]]), device=cpu, size=16,
                                          gpu_decode=True, use_view=True)
    expected = torch.cat([torch.stack([floats[i][k] for i in (0, 1)]) for k in range(3)])
    assert torch.equal(batch, expected) and labels.tolist() == [0, 1] and videos.tolist() == [0, 1]
    already = torch.randn(2, 3, 4, 16, 16)
    assert normalise_clips(already) is already  # a float batch is taken as normalised


def test_device_batches_keep_the_loader_order_and_end_with_it() -> None:
    items = [torch.full((1,), float(k)) for k in range(5)]
    seen: list[float] = []

    def prepare(item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        seen.append(float(item))
        return item, item, item

    for prefetch in (False, True):
        seen.clear()
        out = [float(b[0]) for b in device_batches(items, prepare, torch.device("cpu"), prefetch=prefetch)]
        assert out == seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert list(device_batches([], prepare, torch.device("cpu"), prefetch=True)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the side stream needs CUDA")
def test_prefetched_cuda_batches_equal_the_ones_prepared_in_line(shards: list[VideoShard]) -> None:  # noqa: F811
    data = PretrainClips(shards, clip_len=8, size=24, seed=5, augmentation=PAPER, normalise=False)
    loader = DataLoader(data, batch_size=2, pin_memory=True)
    cuda = torch.device("cuda")
    prepare = partial(prepare_batch, device=cuda, size=24, gpu_decode=False, use_view=True)
    inline = [tuple(t.clone() for t in b) for b in device_batches(loader, prepare, cuda, prefetch=False)]
    ahead = []
    for batch in device_batches(loader, prepare, cuda, prefetch=True):
        ahead.append(tuple(t.clone() for t in batch))
        torch.cuda._sleep(1_000_000)  # a slow step: the next copy must still wait for nothing it overwrites
    assert len(ahead) == len(inline) == 3
    for got, want in zip(ahead, inline):
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert got[0].is_contiguous(memory_format=torch.channels_last_3d)


def test_persistent_workers_see_every_epoch_label_p_intra_and_partner_change(
        shards: list[VideoShard]) -> None:  # noqa: F811
    """pretrain keeps one loader with persistent workers: what the training process sets between epochs (the
    epoch's draws, new pseudo-labels, p_intra, nearest partners) must reach the forked workers, so each epoch's
    batches equal those of a loader made afresh, in one process, for that epoch."""
    common = dict(clip_len=8, size=16, p_intra=0.5, random_anchor=True, seed=5, augmentation=PAPER, normalise=False,
                  max_partners=2)
    persistent = PretrainClips(shards, **common)
    loader = DataLoader(persistent, batch_size=3, num_workers=2, persistent_workers=True, shuffle=False)
    changes = [
        lambda d: d.set_labels(np.array([0, 0, 1, 1, 2, 2])),
        lambda d: (d.set_labels(np.array([0, 1, 0, 1, 0, 1])), setattr(d, "p_intra", 0.0)),
        lambda d: d.set_partners([np.array([2]), np.array([3, 5]), np.array([0]), np.array([1]), np.array([0]),
                                  np.array([1])]),
        lambda d: d.set_labels(np.array([0, 0, 0, 1, 1, 1])),  # clears the partners again
    ]
    for epoch, change in enumerate(changes):
        fresh = PretrainClips(shards, **common)
        for dataset in (persistent, fresh):
            for earlier in changes[:epoch + 1]:
                earlier(dataset)
            dataset.set_epoch(epoch)
        got = list(loader)
        want = list(DataLoader(fresh, batch_size=3, num_workers=0, shuffle=False))
        assert len(got) == len(want) == 2
        for a, b in zip(got, want):
            assert all(torch.equal(x, y) for x, y in zip(a, b)), f"epoch {epoch} differs"
    assert persistent.labels.tolist() == [0, 0, 0, 1, 1, 1] and persistent.p_intra == 0.0
    with pytest.raises(ValueError, match="max_partners"):
        persistent.set_partners([np.array([1, 2, 3])] + [np.array([0])] * 5)
