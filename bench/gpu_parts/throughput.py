"""Item a of bench/gpu.py: pretraining throughput in the paper's configuration (model alone, end to end, MFU)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from bench.gpu_parts.run import Bench, BudgetExceeded, SectionSkipped
from bench.gpu_parts.shards import preset_config, throughput_videos


def flops_per_clip(cfg: Any) -> dict[str, float]:
    """FLOPs of one clip through the encoder, forward and forward + backward, counted by FlopCounterMode
    on the meta device (shapes only, nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from slic.models import to_device
    from slic.pretrain import build_encoder

    meta = torch.device("meta")
    model = to_device(build_encoder(cfg), meta)
    clips = torch.zeros(2, 3, cfg.clip_len, cfg.size, cfg.size, device=meta)
    with FlopCounterMode(display=False) as counter:
        model(clips).float().pow(2).mean().backward()
    both = counter.get_total_flops() / 2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clips)
    return {"forward_backward": float(both), "forward": float(counter.get_total_flops() / 2)}


def paper_pretrain_cfg(bench: Bench, **changes: Any) -> Any:
    """The preset's pretrain section at this profile's model and clip size."""
    config, _ = preset_config(bench, {})
    p = bench.profile
    return replace(config.pretrain, backbone=p.backbone, clip_len=p.clip_len, size=p.size, frame_cache_mb=0,
                   **changes)


def waiting_each_step(items: Iterable[Any], device: torch.device) -> Iterator[Any]:
    """`items`, the host waiting for the device before handing out each one: the step as it ran when it read
    its loss terms as floats every step (the obvious alternative to reading them once an epoch)."""
    for item in items:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        yield item


def model_rate(bench: Bench, cfg: Any, batch: int, compiled: bool, compile_mode: str | None = None, *,
               wait_each_step: bool = False) -> dict[str, Any]:
    """clips/s of train_one_epoch on in-memory batches: the training step without data loading (with
    `wait_each_step`, as if it still read a value from the device every step)."""
    from slic.distributed import World
    from slic.models import to_device
    from slic.pretrain import build_encoder, build_optimizer, train_one_epoch

    device = bench.device
    world = World(0, 1, 0, device)
    model = to_device(build_encoder(cfg), device)
    optimizer = build_optimizer(model, cfg)
    if compiled:
        torch._dynamo.reset()  # else a new batch size recompiles the cached graph with a dynamic batch dimension
    trained = torch.compile(model, mode=compile_mode, dynamic=False) if compiled else model
    shape = (batch, 3, cfg.clip_len, cfg.size, cfg.size)
    generator = torch.Generator(device=device).manual_seed(0)
    views = [torch.randn(shape, device=device, generator=generator).contiguous(memory_format=torch.channels_last_3d)
             for _ in range(3)]
    # on the host, as the loader gives them: the mined triplet finds its pairs there without waiting for the GPU
    labels = torch.randint(0, max(2, batch // 4), (batch,), generator=torch.Generator().manual_seed(0))
    batch_tuple = (views[0], views[1], views[2], labels, torch.arange(batch))
    started = time.perf_counter()
    train_one_epoch(trained, [batch_tuple] * bench.profile.warmup_steps, optimizer, cfg, world, 0)
    bench.sync()
    warm = time.perf_counter() - started
    items = [batch_tuple] * bench.profile.model_steps
    metrics = train_one_epoch(trained, waiting_each_step(items, device) if wait_each_step else items, optimizer,
                              cfg, world, 1)
    bench.sync()
    del model, trained, optimizer, views
    return {"clips_per_s": round(metrics["clips_per_s"], 1), "steps": bench.profile.model_steps,
            "warmup_s": round(warm, 2), "loss": round(float(metrics.get("loss", float("nan"))), 4)}


def sync_check(bench: Bench, cfg: Any, batch: int = 8) -> dict[str, Any]:
    """Synchronising CUDA calls in whole training epochs of 1 and of 3 steps (torch.cuda.set_sync_debug_mode
    warns at each): equal counts mean the step itself waits for nothing; the epoch's one read of its loss
    terms is the one left. Batches as the loader hands them over (pinned uint8 clips, host labels)."""
    import warnings

    from slic.distributed import World
    from slic.models import to_device
    from slic.pretrain import build_encoder, build_optimizer, train_one_epoch

    device = bench.device
    if device.type != "cuda":
        return {"status": "skipped", "reason": "CUDA only (torch.cuda.set_sync_debug_mode)"}
    model = to_device(build_encoder(cfg), device)
    optimizer = build_optimizer(model, cfg)
    world = World(0, 1, 0, device)
    generator = torch.Generator().manual_seed(0)
    shape = (batch, 3, cfg.clip_len, cfg.size, cfg.size)
    item = (*[torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator).pin_memory() for _ in range(3)],
            torch.randint(0, max(2, batch // 4), (batch,), generator=generator), torch.arange(batch))
    train_one_epoch(model, [item] * 2, optimizer, cfg, world, 0)  # warm-up: cuDNN, cached constants, allocator
    counts, first = {}, None
    for steps in (1, 3):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                train_one_epoch(model, [item] * steps, optimizer, cfg, world, 1)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        counts[steps] = len(syncs)
        first = first or (syncs[0][:300] if syncs else None)
    del model, optimizer
    return {"batch": batch, "syncs_epoch_of_1_step": counts[1], "syncs_epoch_of_3_steps": counts[3],
            "step_waits_for_nothing": counts[1] == counts[3], "first_sync": first}


def end_to_end_rate(bench: Bench, cfg: Any, batch: int, *, loader: str = "uint8", prefetch: bool = True,
                    workers: int | None = None) -> dict[str, Any]:
    """clips/s and data-wait fraction of train_one_epoch fed by the real loader (PretrainClips on shards).

    `loader`: float32, the workers normalise and send float32 clips (the first GPU run's path); uint8, they
    send augmented uint8 clips, normalised on the device (pretrain's path now); gpu_decode, they send JPEG
    bytes and draws, decoded and augmented on the device. `prefetch`: the next batch prepared on a side
    stream during the step (slic.data.device_batches). Steady state: the steps after every worker has
    delivered its first batch, from one long epoch, so all workers stay busy.
    """
    import itertools

    from torch.utils.data import DataLoader

    from slic.data.clips import PretrainClips, ShardCache, collate_encoded
    from slic.distributed import World
    from slic.models import to_device
    from slic.pretrain import augmentation_of, build_encoder, build_optimizer, train_one_epoch

    p, device = bench.profile, bench.device
    workers = p.workers if workers is None else workers
    cfg = replace(cfg, prefetch=prefetch, gpu_decode=loader == "gpu_decode")
    warm = max(1, workers) + 1
    steps = max(p.e2e_min_steps, -(-p.e2e_samples // batch))
    videos = throughput_videos(bench, cfg, batch * (warm + steps + 2 * max(1, workers) + 1))
    dataset = PretrainClips(videos, clip_len=cfg.clip_len, size=cfg.size, p_intra=cfg.p_intra,
                            random_anchor=cfg.random_anchor, seed=cfg.seed, augmentation=augmentation_of(cfg),
                            anchor_view=cfg.temporal_weight > 0, cache=ShardCache(0), decode=not cfg.gpu_decode,
                            normalise=loader == "float32")
    dataset.set_labels(np.arange(len(videos)) % 16)
    model = to_device(build_encoder(cfg), device)
    optimizer = build_optimizer(model, cfg)
    world = World(0, 1, 0, device)
    batches = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                         pin_memory=device.type == "cuda" and not cfg.gpu_decode,
                         collate_fn=collate_encoded if cfg.gpu_decode else None,
                         generator=torch.Generator().manual_seed(0), timeout=300 if workers > 0 else 0)
    iterator = iter(batches)
    warmup = train_one_epoch(model, itertools.islice(iterator, warm), optimizer, cfg, world, 0)
    measured = train_one_epoch(model, itertools.islice(iterator, steps), optimizer, cfg, world, 1)
    bench.sync()
    del iterator, batches
    return {"loader": loader, "prefetch": prefetch, "workers": workers, "batch": batch,
            "clips_per_s": round(measured["clips_per_s"], 1),
            "data_wait_fraction": round(measured["data_wait_fraction"], 3),
            "steps": int(measured["steps"]), "warmup_steps": int(warmup["steps"]),
            "warmup_s": round(warmup["epoch_seconds"], 1)}


def pretrain_throughput(bench: Bench, out: dict[str, Any], *, compiled: bool = False) -> None:
    """Item a: model-alone and end-to-end clips/s and MFU at each batch size (compile on or off)."""
    cfg = paper_pretrain_cfg(bench)
    flops = flops_per_clip(cfg)
    peak = bench.report.get("peak_bf16_tflops")
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # fixed shapes here: let cuDNN pick its fastest 3-D convolutions
    try:
        _throughput_rows(bench, out, cfg, flops, peak, compiled)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _throughput_rows(bench: Bench, out: dict[str, Any], cfg: Any, flops: dict[str, float], peak: float | None,
                     compiled: bool) -> None:
    p = bench.profile
    out.update(config={"backbone": cfg.backbone, "clip_len": cfg.clip_len, "size": cfg.size,
                       "hidden_dim": cfg.hidden_dim,
                       "optimizer": cfg.optimizer, "objective": cfg.objective, "mining": cfg.mining,
                       "temporal_weight": cfg.temporal_weight, "bf16_autocast": bench.device.type == "cuda",
                       "channels_last_3d": True, "compile": compiled, "cudnn_benchmark": True,
                       "compile_dynamic": False if compiled else None,
                       "clips_per_triplet": 3 if cfg.temporal_weight > 0 else 2},
               flops_per_clip=flops, gflop_per_clip_forward_backward=round(flops["forward_backward"] / 1e9, 1),
               peak_bf16_tflops=peak,
               note=("batch = triplets per step; each step forwards anchor, positive and second view (3 clips per "
                     f"triplet), clips/s counts all of them. end_to_end: PretrainClips over the setup's "
                     f"{p.frame_hw[0]}x{p.frame_hw[1]} JPEG shards, no frame cache, flow view off (RGB clips), "
                     f"{p.workers} DataLoader workers."), rows=[])
    for batch in p.batches:
        if bench.left() < (90 if compiled else 20):
            out["rows"].append({"batch": batch, "status": "skipped", "reason": "time budget"})
            continue
        row: dict[str, Any] = {"batch": batch}
        out["rows"].append(row)
        row["model"] = _measured(bench, lambda: model_rate(bench, cfg, batch, compiled), flops, peak)
    if compiled:
        # Other compile modes at the largest batch: CUDA graphs (reduce-overhead) and autotuned kernels.
        out["modes"] = []
        for mode in p.compile_modes:
            if bench.left() < 120:
                out["modes"].append({"mode": mode, "batch": p.batches[-1], "status": "skipped",
                                     "reason": "time budget"})
                continue
            row = _measured(bench, lambda: model_rate(bench, cfg, p.batches[-1], True, mode), flops, peak)
            out["modes"].append({"mode": mode, "batch": p.batches[-1], **row})
        return
    if bench.left() >= 15:  # does the step wait for anything? (CUDA's own count of synchronising calls)
        out["sync_check"] = _measured(bench, lambda: sync_check(bench, cfg), flops, None)
    model = {r["batch"]: r.get("model", {}).get("clips_per_s") for r in out["rows"]}
    if bench.left() >= 20:  # the same step with the host waiting for the device every step, as before
        largest = p.batches[-1]
        row = _measured(bench, lambda: model_rate(bench, cfg, largest, False, wait_each_step=True), flops, peak)
        if "clips_per_s" in row and model.get(largest):
            row["share_of_sync_free"] = round(row["clips_per_s"] / model[largest], 3)
        out["host_wait_each_step"] = {"batch": largest, **row}
    out["end_to_end"] = []
    needs = 45.0  # seconds a variant needs: then 1.2x what the last one took (warm-up and all)
    for loader, prefetch, workers in p.e2e_variants:
        if bench.left() < needs:
            out["end_to_end"].append({"loader": loader, "prefetch": prefetch, "workers": workers,
                                      "status": "skipped", "reason": f"time budget ({bench.left():.0f} s left, "
                                                                    f"a variant needs about {needs:.0f} s)"})
            continue
        started = time.perf_counter()
        row = _measured(bench, lambda: end_to_end_rate(bench, cfg, p.e2e_batch, loader=loader, prefetch=prefetch,
                                                       workers=workers), flops, peak)
        needs = max(needs, 1.2 * (time.perf_counter() - started))
        row.update(loader=loader, prefetch=prefetch, workers=workers, batch=p.e2e_batch)
        if "clips_per_s" in row and model.get(p.e2e_batch):
            row["share_of_model"] = round(row["clips_per_s"] / model[p.e2e_batch], 3)
        out["end_to_end"].append(row)
        bench.save()


def _measured(bench: Bench, measure: Callable[[], dict[str, Any]], flops: dict[str, float],
              peak: float | None) -> dict[str, Any]:
    """One measurement with its MFU on CUDA; an error (e.g. out of memory at the largest batch) is recorded and
    the next measurement runs."""
    try:
        row = measure()
        if peak and bench.device.type == "cuda":
            row["mfu"] = round(row["clips_per_s"] * flops["forward_backward"] / (peak * 1e12), 4)
    except BudgetExceeded:
        raise
    except Exception as exc:  # noqa: BLE001
        row = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
    finally:
        if bench.device.type == "cuda":
            torch.cuda.empty_cache()
    bench.save()
    return row


def pretrain_throughput_compiled(bench: Bench, out: dict[str, Any]) -> None:
    if not bench.profile.compile:
        raise SectionSkipped("torch.compile is measured on CUDA only (the full profile)")
    pretrain_throughput(bench, out, compiled=True)
