"""Item b of bench/gpu.py: JPEG decode and augmentation on the device against CPU loader workers."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from bench.gpu_parts.run import Bench
from bench.gpu_parts.shards import throughput_videos
from bench.gpu_parts.throughput import paper_pretrain_cfg


class CpuClips(Dataset):
    """One augmented clip per item, decoded and augmented on the CPU: PretrainClips' per-clip work."""

    def __init__(self, requests: list[Any], size: int) -> None:
        from slic.data.clips import ShardCache

        self.requests, self.size, self.cache = requests, size, ShardCache(0)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int) -> torch.Tensor:
        from slic.data.augment import apply_draw

        video, start, length, draw = self.requests[index]
        return apply_draw(torch.from_numpy(self.cache.window(video, start, length)), draw, self.size)


def clip_requests(videos: list[Any], count: int, clip_len: int, hw: tuple[int, int], seed: int) -> list[Any]:
    """`count` (video, start, length, draw) requests with the paper's augmentation draws."""
    from slic.data.augment import Augmentation, draw_augmentation

    rng = np.random.default_rng(seed)
    requests = []
    for k in range(count):
        video = videos[k % len(videos)]
        start = int(rng.integers(0, video.frames - clip_len + 1))
        requests.append((video, start, clip_len, draw_augmentation(rng, hw[0], hw[1], Augmentation())))
    return requests


def gpu_data_path(bench: Bench, out: dict[str, Any]) -> None:
    """Item b: JPEG decode + augmentation on the device against CPU loader workers, at the same batch."""
    from torch.utils.data import DataLoader

    from slic.data.augment import apply_draw
    from slic.data.clips import ShardCache
    from slic.data.gpu_clips import clip_batch, decode_on

    p, device = bench.profile, bench.device
    cfg = paper_pretrain_cfg(bench)
    videos = throughput_videos(bench, cfg, 1)
    out.update(clip={"frames": cfg.clip_len, "size": cfg.size, "source_height_width": list(p.frame_hw),
                     "augmentation": "paper strengths (slic.data.augment.Augmentation())"},
               cpu_workers=p.workers, rows=[])
    # Same draws, both paths: how far apart the clips are (nvJPEG vs libjpeg-turbo; identical on the CPU).
    check = clip_requests(videos, 4, cfg.clip_len, p.frame_hw, seed=1)
    on_device = clip_batch(check, size=cfg.size, device=device).float().cpu()
    cache = ShardCache(0)
    on_cpu = torch.stack([apply_draw(torch.from_numpy(cache.window(v, s, n)), d, cfg.size) for v, s, n, d in check])
    difference = (on_device - on_cpu).abs()
    raw_device = torch.stack(decode_on(ShardCache().jpegs(check[0][0], check[0][1], check[0][2]), device)).cpu()
    raw_cpu = torch.from_numpy(cache.window(check[0][0], check[0][1], check[0][2]))
    out["same_draws_difference"] = {
        "normalised_max_abs": round(float(difference.max()), 4),
        "normalised_mean_abs": round(float(difference.mean()), 5),
        "decoded_uint8_max_abs": int((raw_device.int() - raw_cpu.int()).abs().max()),
        "decoded_uint8_mean_abs": round(float((raw_device.int() - raw_cpu.int()).abs().float().mean()), 4),
        "decoded_identical": bool(torch.equal(raw_device, raw_cpu))}
    bench.save()
    for batch in p.data_batches:
        if bench.left() < 15:
            out["rows"].append({"batch": batch, "status": "skipped", "reason": "time budget"})
            continue
        rounds = max(p.data_min_rounds, -(-p.data_clips // batch))
        warm = max(1, p.workers) + 1
        requests = clip_requests(videos, batch * (warm + rounds + 2 * max(1, p.workers)), cfg.clip_len, p.frame_hw,
                                 seed=batch)
        windows = ShardCache()
        row: dict[str, Any] = {"batch": batch, "batches_timed": rounds}
        clip_batch(requests[:batch], size=cfg.size, device=device, windows=windows)  # warm-up: decoder, kernels
        bench.sync()
        started = time.perf_counter()
        for r in range(1, rounds + 1):
            clips = clip_batch(requests[r * batch:(r + 1) * batch], size=cfg.size, device=device, windows=windows)
        bench.sync()
        seconds = time.perf_counter() - started
        # Where the time goes, on a few of the same batches: file reads (main process), decode, augmentation.
        phases, timed = {"read": 0.0, "decode": 0.0, "augment": 0.0}, min(rounds, 4)
        for r in range(1, timed + 1):
            part = requests[r * batch:(r + 1) * batch]
            tick = time.perf_counter()
            jpegs = [j for v, s, n, _ in part for j in windows.jpegs(v, s, n)]
            phases["read"] += time.perf_counter() - tick
            tick = time.perf_counter()
            frames = decode_on(jpegs, device)
            bench.sync()
            phases["decode"] += time.perf_counter() - tick
            tick = time.perf_counter()
            for k, (_, _, _, draw) in enumerate(part):
                apply_draw(torch.stack(frames[k * cfg.clip_len:(k + 1) * cfg.clip_len]), draw, cfg.size)
            bench.sync()
            phases["augment"] += time.perf_counter() - tick
        row["gpu_path"] = {"clips_per_s": round(batch * rounds / seconds, 1),
                           **{f"{k}_ms_per_batch": round(v / timed * 1000, 2) for k, v in phases.items()},
                           "output_shape": list(clips.shape), "device": str(clips.device),
                           "how": "slic.data.gpu_clips.clip_batch in the main process, one batch after another "
                                  "(file reads not overlapped with the device work)"}
        loader = DataLoader(CpuClips(requests, cfg.size), batch_size=batch, num_workers=p.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            timeout=300 if p.workers > 0 else 0)
        iterator = iter(loader)
        for _ in range(warm):  # every worker's first batch: start-up is not throughput
            next(iterator)
        started = time.perf_counter()
        for _ in range(rounds):
            next(iterator).to(device, non_blocking=True)
        bench.sync()
        seconds = time.perf_counter() - started
        del iterator, loader
        row["cpu_workers"] = {"clips_per_s": round(batch * rounds / seconds, 1), "workers": p.workers}
        row["gpu_over_cpu"] = round(row["gpu_path"]["clips_per_s"] / row["cpu_workers"]["clips_per_s"], 2)
        out["rows"].append(row)
        bench.save()
