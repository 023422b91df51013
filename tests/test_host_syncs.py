"""The training step queues its work without waiting for the device (no host sync per step).

On a GPU, anything that reads a tensor's value on the host (`.item()`, `float(t)`, `bool(t)`, `nonzero`)
makes the host wait until the device has finished every kernel queued before it; in a loop that does so
each step the host cannot queue step k+1 while the device runs step k. These tests run on the CPU and
catch such reads on the meta device, where reading a value fails: every loss alone, and whole training
epochs (model, batches and losses there, the labels on the host as the loader gives them; reading host
labels is free on a GPU). A classifier epoch, which has no host labels to tell apart, runs under a
dispatch mode that counts the ops a read turns into, and the count must not grow with its steps.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from slic.config import PretrainConfig
from slic.distributed import World
from slic.losses import slic_loss
from slic.pretrain import build_encoder, build_optimizer, train_one_epoch
from slic.proxies import PseudoLabelProxies

# Ops that return data-dependent host values: on CUDA each waits for the device.
SYNCING_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "equal", "is_nonzero", "_unique2", "unique_dim"}
TINY = {"backbone": "r3d_18_narrow", "hidden_dim": 32, "out_dim": 16, "clip_len": 4, "size": 16, "batch_size": 4,
        "epochs": 2, "workers": 0, "seed": 5}


class HostReads(TorchDispatchMode):
    """Counts the syncing ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


META = torch.device("meta")  # tensors with shapes and no values: reading one raises


def meta_batch(rows: int, embedding: int = 16) -> tuple[torch.Tensor, ...]:
    return tuple(torch.empty(rows, embedding, device=META, requires_grad=True) for _ in range(3))


OBJECTIVES = [{"mining": "mined", "generator": "cpu"}, {"mining": "batch_all"}, {"proxies": 3},
              {"nce_positives": "pair"}, {"nce_positives": "label"}]


def loss_options(objective: dict[str, Any]) -> dict[str, Any]:
    options = dict(objective)
    if options.pop("generator", None):
        options["generator"] = torch.Generator().manual_seed(0)  # pretrain's step generator lives on the host
    if "proxies" in options:
        options.update(proxies=torch.empty(options.pop("proxies"), 16, device=META, requires_grad=True))
    return options


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_no_loss_reads_the_device_given_host_labels(objective: dict[str, Any]) -> None:
    """Every objective, loss and gradient, computed on the meta device, where any read of a device value
    (`.item()`, `nonzero`, a copy to the host) fails: with labels on the host, as the loader gives them,
    no loss makes the host wait for the device. Its stats are detached 0-dim tensors on the device."""
    a, p, v = meta_batch(8)
    total, stats = slic_loss(a, p, v, torch.arange(8) % 3, temporal_weight=0.5, **loss_options(objective))
    total.backward()
    assert a.grad is not None and a.grad.device == META
    assert all(value.device == META and value.ndim == 0 and not value.requires_grad for value in stats.values())


@pytest.mark.parametrize("objective", [OBJECTIVES[0], {"proxies": 3}])
def test_the_meta_device_catches_a_read(objective: dict[str, Any]) -> None:
    """The check above is not vacuous: the same losses given labels already on the device read them there
    (mining's pairs, the proxies' label range), and fail."""
    a, p, v = meta_batch(8)
    with pytest.raises(RuntimeError, match="meta"):
        slic_loss(a, p, v, (torch.arange(8) % 3).to(META), **loss_options(objective))




def items(steps: int, cfg: PretrainConfig, videos: int) -> list[tuple[torch.Tensor, ...]]:
    """`steps` loader items as PretrainClips(normalise=False) yields them: uint8 anchors, positives and
    views, pseudo-labels and video indices."""
    generator = torch.Generator().manual_seed(1)
    shape = (cfg.batch_size, 3, cfg.clip_len, cfg.size, cfg.size)
    out = []
    for _ in range(steps):
        clips = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for _ in range(3)]
        chosen = torch.randint(0, videos, (cfg.batch_size,), generator=generator)
        out.append((*clips, chosen % 3, chosen))
    return out


@pytest.mark.parametrize("pretrain", [
    {"objective": "triplet", "mining": "mined"}, {"objective": "triplet", "mining": "batch_all"},
    {"objective": "proxy"}, {"objective": "proxy", "proxy_per": "video", "temporal_weight": 1.0},
    {"objective": "nce"}])
def test_a_whole_epoch_queues_on_the_device_without_reading_it(pretrain: dict[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """train_one_epoch, model and batches on the meta device (there any read of a device value fails), as
    one process runs it on a GPU, gather_embeddings on (the default): every step is queued without a read.
    Only the epoch's one read of its loss terms is left out. Before, one process still moved the labels to
    the device "to gather" them, so the losses read them there (the label range, the mined pairs)."""
    import contextlib

    import slic.pretrain

    cfg = PretrainConfig(**{**TINY, **pretrain, "gather_embeddings": True})
    monkeypatch.setattr(slic.pretrain, "_autocast", lambda *_: contextlib.nullcontext())  # no meta autocast
    monkeypatch.setattr(slic.pretrain, "epoch_means", lambda sums, steps: {"loss": 0.0})  # the epoch's one read
    torch.manual_seed(0)
    model = build_encoder(cfg).to(META)
    proxies = None
    if cfg.objective == "proxy":
        proxies = PseudoLabelProxies(cfg, META)
        owners = np.arange(12) if cfg.proxy_per == "video" else np.arange(12) % 3
        proxies.reset(np.zeros((12, cfg.out_dim), dtype=np.float32), owners)
    metrics = train_one_epoch(model, items(3, cfg, 12), build_optimizer(model, cfg), cfg,
                              World(0, 1, 0, META), epoch=0, proxies=proxies)
    assert metrics["steps"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pretrain", [{"objective": "triplet", "mining": "mined"}, {"objective": "proxy"}])
def test_on_cuda_an_epoch_calls_no_synchronising_function_but_its_one_read(
        pretrain: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA's own check (set_sync_debug_mode "error" raises at any synchronising call) over a whole epoch of
    pinned uint8 batches with the side-stream prefetch: no blocking copy (the normalisation's constants, a
    host-joined batch), no read of labels or losses; the epoch's one read of its loss terms runs outside."""
    import slic.pretrain

    device = torch.device("cuda")
    cfg = PretrainConfig(**{**TINY, **pretrain, "gather_embeddings": True, "prefetch": True})
    model = build_encoder(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    proxies = None
    if cfg.objective == "proxy":
        proxies = PseudoLabelProxies(cfg, device)
        proxies.reset(np.zeros((12, cfg.out_dim), dtype=np.float32), np.arange(12) % 3)
    batches = [tuple(t.pin_memory() for t in item) for item in items(3, cfg, 12)]
    world = World(0, 1, 0, device)
    train_one_epoch(model, batches, optimizer, cfg, world, epoch=0, proxies=proxies)  # warm-up
    read_once = slic.pretrain.epoch_means

    def allowed_read(sums: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
        torch.cuda.set_sync_debug_mode(0)
        return read_once(sums, steps)

    monkeypatch.setattr(slic.pretrain, "epoch_means", allowed_read)
    torch.cuda.set_sync_debug_mode("error")
    try:
        metrics = train_one_epoch(model, batches, optimizer, cfg, world, epoch=1, proxies=proxies)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert metrics["steps"] == 3 and np.isfinite(metrics["loss"])


def test_proxy_labels_out_of_range_are_refused_in_the_training_loop() -> None:
    """The proxies' label range is checked on the host labels, so the loop checks it too (it waits on no
    device): a batch labelled past the proxies gets a ValueError that names the range."""
    cfg = PretrainConfig(**{**TINY, "objective": "proxy"})
    model = build_encoder(cfg)
    proxies = PseudoLabelProxies(cfg, torch.device("cpu"))
    proxies.reset(np.zeros((12, cfg.out_dim), dtype=np.float32), np.arange(12) % 2)  # two proxies
    batch = [(*item[:3], torch.tensor([0, 1, 2, 1]), item[4]) for item in items(1, cfg, 12)]
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1 \(one proxy each\), got 0\.\.2"):
        train_one_epoch(model, batch, build_optimizer(model, cfg), cfg, World(0, 1, 0, torch.device("cpu")), epoch=0,
                        proxies=proxies)


def test_epoch_metrics_are_the_means_of_the_steps_stats() -> None:
    """Summing on the device keeps the reported means: a three-step epoch's loss is the mean of the losses
    its steps computed (recomputed here step by step with the same weights)."""
    cfg = PretrainConfig(**{**TINY, "objective": "nce", "lr": 0.0})
    torch.manual_seed(0)
    model = build_encoder(cfg)
    world = World(0, 1, 0, torch.device("cpu"))
    loader = items(3, cfg, 12)
    metrics = train_one_epoch(model, loader, build_optimizer(model, cfg), cfg, world, epoch=0)
    one_by_one = [train_one_epoch(model, [item], build_optimizer(model, cfg), cfg, world, epoch=0)["loss"]
                  for item in loader]
    assert metrics["loss"] == pytest.approx(float(np.mean(one_by_one)), rel=1e-6)


def test_a_classifier_epoch_reads_its_loss_and_accuracy_once() -> None:
    """finetune.train_epoch (finetuning and the linear probe) also sums on the device; its reported loss and
    top-1 are still those of its steps (lr 0: each step sees the same weights)."""
    from slic.finetune import train_epoch
    from slic.models import Classifier, build_backbone

    torch.manual_seed(0)
    model = Classifier(backbone=build_backbone(name="r3d_18_narrow"), feature_dim=128, classes=3, dropout=0.0)
    generator = torch.Generator().manual_seed(2)
    loader = [(torch.randn(4, 3, 4, 16, 16, generator=generator), torch.tensor([0, 1, 2, 1])) for _ in range(3)]

    def epoch(steps: int) -> tuple[Counter[str], dict[str, float]]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        with HostReads() as mode:
            metrics = train_epoch(model, loader[:steps], optimizer, device=torch.device("cpu"), bf16=False,
                                  linear_probe=True)
        return mode.reads, metrics

    (one, _), (three, metrics) = epoch(1), epoch(3)
    assert one == three
    model.eval()
    with torch.no_grad():
        logits = [model(clips) for clips, _ in loader]
    expected_loss = np.mean([torch.nn.functional.cross_entropy(x, y).item() for x, (_, y) in zip(logits, loader)])
    expected_top1 = 100.0 * np.mean([(x.argmax(1) == y).float().mean().item() for x, (_, y) in zip(logits, loader)])
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert metrics["train_top1"] == pytest.approx(expected_top1)
