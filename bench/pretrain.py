"""Pretraining throughput: the model alone against the data loader alone, so it is clear which one limits.

* MODEL: forward + backward + SGD step of the encoder on random clips already in memory (no data
  loading), batch = 3 x batch_size clips (anchor, positive, second view, as one training step sees).
* LOADER: `slic.data.clips.PretrainClips` read through a DataLoader with `workers` processes
  (shard reads, JPEG decoding, the per-clip augmentation, collation), no model.
* LOADER with the frame cache: the same after decoding every video once into memory
  (`pretrain.frame_cache_mb`), against decoding each clip's JPEGs as it is drawn.
* TRAINING: clips/s of `slic.pretrain.train_one_epoch` with the real loader (params.yaml's pretrain
  settings at each clip size, batch 32), with 0 and `workers` loader processes, with and without
  the frame cache: what a run gets on this machine.
* AUGMENTATION: milliseconds per clip of SLIC's augmentation (paper strengths) on one clip of
  decoded frames, one thread: `slic.data.augment` (draws from the sample's numpy generator, applied
  with torchvision's functional kernels) against the obvious alternative, torchvision's `v2.Compose`
  of random transforms, which needs the global torch generator forked and seeded for every clip.

Both are clips/s; training runs at roughly the smaller of the two when the loader has its own cores,
and below both when they share them (the 2-core CPU case). The model side is measured in both memory
layouts, NCDHW (PyTorch's default) and channels_last_3d (NDHWC, what `slic pretrain` uses on every
device); on CUDA with bf16 autocast as `slic pretrain` does.

Run: ``python bench/pretrain.py`` after `dvc repro extract` (it reads data/frames); writes
reports/bench/pretrain.json. ``--configs r3d_18_tiny:16:32 r3d_18:16:128`` picks backbone:clip_len:size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from slic.data.clips import PretrainClips, ShardCache, load_videos
from slic.models import Encoder, to_device

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("r3d_18_tiny:8:32", "r3d_18_tiny:16:32", "r3d_18_narrow:16:32")
GPU_CONFIGS = ("r3d_18:16:128", "r3d_18_reference:16:128", "r2plus1d_18:16:128")


def model_clips_per_s(backbone: str, clip_len: int, size: int, batch_size: int, device: torch.device,
                      steps: int, channels_last: bool = True) -> dict[str, Any]:
    """Training steps per second of the encoder alone, on random clips, reported as clips/s.

    `channels_last`: the layout `to_device` gives (NDHWC); False keeps PyTorch's default NCDHW.
    """
    torch.manual_seed(0)
    model = Encoder(backbone=backbone, hidden_dim=2048 if device.type == "cuda" else 512)
    model = to_device(model, device) if channels_last else model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    clips = torch.randn(3 * batch_size, 3, clip_len, size, size, device=device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss = model(clips).float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, cuDNN algorithm choice
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"clips_per_s": round(3 * batch_size * steps / seconds, 1), "steps": steps, "seconds": round(seconds, 2)}


def loader_clips_per_s(clip_len: int, size: int, batch_size: int, workers: int, batches: int,
                       cache_mb: int = 0) -> dict[str, Any]:
    """Clips/s that the training DataLoader delivers with `workers` processes and no model.

    `cache_mb` > 0: the frames are decoded once into memory first (`pretrain.frame_cache_mb`), as
    `slic pretrain` does; its one-off cost is reported apart as `preload_seconds`.
    """
    videos = load_videos(ROOT / "data/manifests/validated.csv", ROOT / "data/frames", splits=["train"],
                         min_frames=2 * clip_len)
    cache = ShardCache(cache_mb * 2**20)
    preload_started = time.perf_counter()
    cached = cache.preload(videos) if cache_mb else 0
    preload_seconds = time.perf_counter() - preload_started
    dataset = PretrainClips(videos, clip_len=clip_len, size=size, cache=cache, normalise=False)  # pretrain's uint8
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    iterator = iter(loader)
    next(iterator)  # worker start-up is not throughput
    started, seen = time.perf_counter(), 0
    while seen < batches:
        try:
            anchor, _, _, _, _ = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        seen += 1
    seconds = time.perf_counter() - started
    return {"clips_per_s": round(3 * batch_size * seen / seconds, 1), "batches": seen, "seconds": round(seconds, 2),
            "workers": workers, "cached_videos": cached, "preload_seconds": round(preload_seconds, 2)}


def training_clips_per_s(backbone: str, clip_len: int, size: int, batch_size: int, workers: int, cache_mb: int,
                         epochs: int = 2) -> dict[str, Any]:
    """Clips/s of `slic.pretrain.train_one_epoch` itself (loader and model sharing the machine), params.yaml's
    pretrain settings at this clip size; the mean of `epochs` epochs after a warm-up one."""
    import numpy as np

    from slic.config import load
    from slic.distributed import World
    from slic.pretrain import augmentation_of, build_encoder, build_optimizer, train_one_epoch
    from slic.proxies import PseudoLabelProxies

    base = load(ROOT / "params.yaml").pretrain
    # params.yaml's frame_step at its clip length; other lengths (16 frames: the paper's) take consecutive frames
    frame_step = base.frame_step if clip_len == base.clip_len else 1
    cfg = replace(base, backbone=backbone, clip_len=clip_len, size=size, batch_size=batch_size, workers=workers,
                  frame_cache_mb=cache_mb, frame_step=frame_step)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = World(0, 1, 0, device)
    videos = load_videos(ROOT / "data/manifests/validated.csv", ROOT / "data/frames", splits=["train"],
                         min_frames=2 * clip_len, frame_step=cfg.frame_step)
    if len(videos) < batch_size:
        raise ValueError(f"{len(videos)} training videos of >= {2 * clip_len} frames at frame_step {frame_step} "
                         f"in data/frames: too few for a batch of {batch_size}; run `dvc repro extract` first")
    cache = ShardCache(cache_mb * 2**20)
    cache.preload(videos)
    dataset = PretrainClips(videos, clip_len=clip_len, size=size, p_intra=cfg.p_intra, random_anchor=cfg.random_anchor,
                            augmentation=augmentation_of(cfg), anchor_view=cfg.temporal_weight > 0, cache=cache,
                            normalise=False)  # as `slic pretrain`: uint8 clips, normalised in the training step
    labels = np.array([v.label for v in videos]) % 10
    dataset.set_labels(labels)
    model = to_device(build_encoder(cfg), device)
    optimizer = build_optimizer(model, cfg)
    proxies = None
    if cfg.objective == "proxy":
        proxies = PseudoLabelProxies(cfg, device)
        proxies.reset(np.random.default_rng(0).normal(size=(len(videos), cfg.out_dim)), dataset.labels)
    rows = []
    for epoch in range(epochs + 1):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
                            pin_memory=device.type == "cuda")
        rows.append(train_one_epoch(model, loader, optimizer, cfg, world, epoch, proxies))
    rows = rows[1:]
    return {"clips_per_s": round(sum(r["clips_per_s"] for r in rows) / len(rows), 1),
            "data_wait_fraction": round(sum(r["data_wait_fraction"] for r in rows) / len(rows), 3),
            "steps_per_epoch": int(rows[0]["steps"]), "workers": workers, "frame_cache_mb": cache_mb,
            "frame_step": frame_step}


def augmentation_ms_per_clip(clip_len: int, size: int, a: Any, clips: int = 200) -> dict[str, float]:
    """ms per clip of augmentation `a`: slic's explicit draws vs torchvision's random v2 transforms
    (seeded per clip, as the loaders had to), one thread."""
    import numpy as np
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from slic.data.augment import augment_clip

    reference = v2.Compose([
        v2.RandomResizedCrop(size, scale=(a.crop_min_scale, 1.0), antialias=True), v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(a.jitter, a.jitter, a.jitter, a.hue_strength)], p=a.jitter_p),
        v2.RandomGrayscale(a.grayscale_p), v2.RandomApply([v2.GaussianBlur(15, sigma=2.0)], p=a.blur_p),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    frames = torch.randint(0, 256, (clip_len, 64, 85, 3), dtype=torch.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a loader worker
    rng = np.random.default_rng(0)

    def ours() -> None:
        augment_clip(rng, frames, a, size)

    def torchvision_seeded() -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**62)))
            reference(tv_tensors.Video(frames.permute(0, 3, 1, 2)))

    result = {}
    for name, run in (("slic_draws", ours), ("torchvision_v2_seeded", torchvision_seeded)):
        run()
        started = time.perf_counter()
        for _ in range(clips):
            run()
        result[f"{name}_ms"] = round((time.perf_counter() - started) / clips * 1000, 3)
    torch.set_num_threads(threads)
    result["speedup"] = round(result["torchvision_v2_seeded_ms"] / result["slic_draws_ms"], 2)
    return result


def augmentation_settings() -> dict[str, Any]:
    """The paper's augmentation strengths and the CPU default of params.yaml (crop and flip only)."""
    from slic.config import load
    from slic.data.augment import Augmentation
    from slic.pretrain import augmentation_of

    return {"paper": Augmentation(), "params_yaml": augmentation_of(load(ROOT / "params.yaml").pretrain)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", help="backbone:clip_len:size (default: CPU or GPU set)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default=str(ROOT / "reports/bench/pretrain.json"))
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configs = args.configs or (GPU_CONFIGS if device.type == "cuda" else DEFAULT_CONFIGS)
    rows = []
    for item in configs:
        backbone, clip_len, size = item.split(":")
        clip_len, size = int(clip_len), int(size)
        model = model_clips_per_s(backbone, clip_len, size, args.batch_size, device, args.steps)
        ncdhw = model_clips_per_s(backbone, clip_len, size, args.batch_size, device, args.steps, channels_last=False)
        loader = loader_clips_per_s(clip_len, size, args.batch_size, args.workers, batches=2 * args.steps)
        cached = loader_clips_per_s(clip_len, size, args.batch_size, args.workers, batches=2 * args.steps,
                                    cache_mb=1024)
        limit = "model" if model["clips_per_s"] < loader["clips_per_s"] else "loader"
        training = {f"workers{w}_cache{'on' if mb else 'off'}": training_clips_per_s(backbone, clip_len, size, 32, w, mb)
                    for w in (0, args.workers) for mb in (0, 1024)}
        augmentation = {name: augmentation_ms_per_clip(clip_len, size, strengths)
                        for name, strengths in augmentation_settings().items()}
        rows.append({"backbone": backbone, "clip_len": clip_len, "size": size, "batch_size": args.batch_size,
                     "device": str(device), "model_clips_per_s": model["clips_per_s"],
                     "model_clips_per_s_ncdhw": ncdhw["clips_per_s"],
                     "channels_last_speedup": round(model["clips_per_s"] / ncdhw["clips_per_s"], 2),
                     "loader_clips_per_s": loader["clips_per_s"], "loader_workers": loader["workers"],
                     "loader_clips_per_s_frame_cache": cached["clips_per_s"],
                     "frame_cache_preload_seconds": cached["preload_seconds"],
                     "limited_by": limit, "augmentation": augmentation, "training_step": training})
        print(f"{backbone:18s} {clip_len:2d}x{size:3d}: model {model['clips_per_s']:8.1f} clips/s "
              f"(NCDHW {ncdhw['clips_per_s']:.1f}), "
              f"loader {loader['clips_per_s']:8.1f} clips/s ({loader['workers']} workers; frame cache "
              f"{cached['clips_per_s']:.1f}) -> {limit}-bound; "
              "augmentation ms/clip (torchvision v2 seeded per clip): " + ", ".join(
                  f"{k} {v['slic_draws_ms']:.2f} ({v['torchvision_v2_seeded_ms']:.2f})" for k, v in augmentation.items()),
              flush=True)
    machine = {"cpu_cores": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
               "torch_threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
