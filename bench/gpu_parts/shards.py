"""Synthetic frame shards for bench/gpu.py (the setup section) and the paper preset as a slic Config."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.gpu_parts.run import PRESET, Bench


def synthetic_video(rng: np.random.Generator, label: int, classes: int, frames: int, height: int,
                    width: int) -> np.ndarray:
    """(frames, H, W, 3) uint8: a smooth random backdrop and a striped square moving in its class's direction."""
    coarse = rng.uniform(40, 200, size=(4, 5, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 3, height, dtype=np.float32), np.linspace(0, 4, width, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), 2), np.minimum(xs.astype(int), 3)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    backdrop = top * (1 - fy) + bottom * fy
    angle = 2 * np.pi * label / classes + rng.normal(0, 0.1)
    speed = rng.uniform(0.6, 1.2) * max(1.0, min(height, width) / 48)
    side = max(4, min(height, width) // 4)
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    noise = rng.normal(0, 3, (3, height, width, 3)).astype(np.float32)  # cycled: the grain changes every frame
    rows, cols = np.arange(height), np.arange(width)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        py, px = (cy + t * speed * np.sin(angle)) % height, (cx + t * speed * np.cos(angle)) % width
        dy = (rows - py + height / 2) % height - height / 2
        dx = (cols - px + width / 2) % width - width / 2
        inside = (np.abs(dy) < side / 2)[:, None] & (np.abs(dx) < side / 2)[None, :]
        stripes = (dy[:, None] + dx[None, :]) // 3 % 2 == 0
        image = backdrop + noise[t % 3]
        image[inside] = colours[stripes[inside].astype(int)]
        video[t] = np.clip(image, 0, 255).astype(np.uint8)
    return video


def encode_video(frames: np.ndarray, quality: int = 90) -> list[bytes]:
    """(T, H, W, 3) uint8 -> baseline JPEG bytes per frame (Pillow, which torchvision brings; torchvision's own
    encoder as the fallback)."""
    import io

    try:
        from PIL import Image
    except ImportError:
        import warnings

        from torchvision.io import encode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return [encode_jpeg(torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).contiguous(),
                                quality=quality).numpy().tobytes() for f in frames]
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def write_dataset(root: Path, *, classes: int, per_class: int, frames: int, hw: tuple[int, int], seed: int,
                  splits: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Frame shards of a synthetic dataset as `extract` leaves them: <root>/frames/<class>/<video>.shard,
    frames/index.csv and a validated manifest (manifests/validated.csv) with train / val / test splits.

    `splits` = videos per class in (train, val, test); default: all train.
    """
    import pandas as pd

    from slic.data.frames import INDEX_NAME, ShardReader, write_shard

    from concurrent.futures import ThreadPoolExecutor

    frames_dir, manifest = root / "frames", root / "manifests" / "validated.csv"
    train, val, test = splits or (per_class, 0, 0)

    def one(label: int, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
        name = f"Motion{label}"
        split = "train" if k < train else "val" if k < train + val else "test"
        video_id = f"{name}/v_{name}_g{k + 1:02d}_c01"
        jpegs = encode_video(synthetic_video(np.random.default_rng([seed, label, k]), label, classes, frames, *hw))
        shard = frames_dir / f"{video_id}.shard"
        size = write_shard(shard, jpegs, {"video_id": video_id, "height": hw[0], "width": hw[1], "fps": 25.0})
        entry = {"video_id": video_id, "shard": f"{video_id}.shard", "frames": frames, "height": hw[0],
                 "width": hw[1], "fps": 25.0, "bytes": size, "sha256": ShardReader.open(shard).header["content_sha256"]}
        row = {"video_id": video_id, "path": f"{video_id}.avi", "class": name, "label": label, "split": split,
               "group": f"{k + 1:02d}", "frames": frames, "fps": 25.0, "width": hw[1], "height": hw[0],
               "duration": frames / 25.0, "excluded": ""}
        return entry, row

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        done = list(pool.map(lambda lk: one(*lk), [(label, k) for label in range(classes) for k in range(per_class)]))
    index, rows = [d[0] for d in done], [d[1] for d in done]
    pd.DataFrame(index).to_csv(frames_dir / INDEX_NAME, index=False)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return {"root": root, "frames": frames_dir, "manifest": manifest, "videos": len(rows),
            "bytes": int(sum(r["bytes"] for r in index))}


def setup(bench: Bench, out: dict[str, Any]) -> None:
    """Write the two synthetic datasets: large frames for the loaders, a split dataset for the stage smoke."""
    p = bench.profile
    started = time.perf_counter()
    shards = write_dataset(bench.work / "throughput", classes=8, per_class=p.shard_videos // 8, frames=p.shard_frames,
                           hw=p.frame_hw, seed=11)
    out["throughput_data"] = {"videos": shards["videos"], "frames": p.shard_frames, "height_width": list(p.frame_hw),
                              "mib": round(shards["bytes"] / 2**20, 1),
                              "seconds": round(time.perf_counter() - started, 1)}
    bench.data["throughput"] = shards
    n_val = n_test = max(1, p.smoke_per_class // 7)
    smoke = write_dataset(bench.work / "smoke", classes=p.smoke_classes, per_class=p.smoke_per_class,
                          frames=p.smoke_frames, hw=p.smoke_hw, seed=5,
                          splits=(p.smoke_per_class - n_val - n_test, n_val, n_test))
    out["smoke_data"] = {"videos": smoke["videos"], "classes": p.smoke_classes, "frames": p.smoke_frames,
                         "height_width": list(p.smoke_hw),
                         "per_class_train_val_test": [p.smoke_per_class - n_val - n_test, n_val, n_test]}
    bench.data["smoke"] = smoke


def preset_config(bench: Bench, overrides: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """slic.config.Config: the paper preset over slic's defaults, then `overrides`, checked by slic.config.load."""
    import yaml

    from slic.config import load
    from slic.presets import load_preset

    values = {section: dict(keys) for section, keys in load_preset(PRESET).items()}
    for section, keys in overrides.items():
        values.setdefault(section, {}).update(keys)
    path = bench.work / f"params-{len(list(bench.work.glob('params-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return load(path), values


def throughput_videos(bench: Bench, cfg: Any, entries: int) -> list[Any]:
    """`entries` training samples over the throughput shards (each shard listed several times, own ids)."""
    from slic.data.clips import load_videos

    data = bench.data["throughput"]
    base = load_videos(data["manifest"], data["frames"], splits=["train"], min_frames=2 * cfg.clip_len,
                       frame_step=cfg.frame_step)
    return [replace(base[i % len(base)], video_id=f"{base[i % len(base)].video_id}#{i // len(base)}")
            for i in range(max(entries, len(base)))]
