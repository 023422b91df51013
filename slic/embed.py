"""Embed every video with a pretrained encoder, IIC protocol (stage `embed`).

Each video gives `clips` 16-frame clips centred at linspace(8, n - 8, clips), frames resized to a
fixed size x size*171/128 and centre-cropped; the projection-head outputs are averaged. The result
is one .npz with video_id, label, split and embedding rows, in manifest order, and `trained_on`: the videos whose
given class (pretrain.mode labels) the encoder trained on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from slic.checkpoints import load_encoder, read_checkpoint
from slic.config import EmbedConfig, PretrainConfig
from slic.data.clips import EvalClips, VideoShard, load_videos
from slic.distributed import World, gather_objects


@torch.no_grad()
def embed_clips(model: torch.nn.Module, dataset: EvalClips, *, world: World, batch_size: int, workers: int,
                bf16: bool = True) -> np.ndarray:
    """(n, d) embeddings of a dataset of per-video clip stacks, averaged over clips, in dataset order.

    Each rank embeds every world.size-th video; the parts are gathered and put back in order.
    """
    mine = Subset(dataset, list(range(world.rank, len(dataset), world.size)))
    loader = DataLoader(mine, batch_size=batch_size, num_workers=workers, shuffle=False,
                        pin_memory=world.device.type == "cuda")
    was_training = model.training
    model.eval()
    indices, vectors = [np.zeros(0, np.int64)], []
    autocast = torch.autocast(device_type=world.device.type, dtype=torch.bfloat16,
                              enabled=bf16 and world.device.type == "cuda")
    for clips, index in loader:
        b, k = clips.shape[:2]
        clips = clips.flatten(0, 1).to(world.device, non_blocking=True)
        if world.device.type == "cuda":
            clips = clips.contiguous(memory_format=torch.channels_last_3d)
        with autocast:
            out = model(clips).float()
        vectors.append(out.view(b, k, -1).mean(dim=1).cpu().numpy())
        indices.append(index.numpy())
    model.train(was_training)
    local = (np.concatenate(indices), np.concatenate(vectors) if vectors else None)
    parts = [p for p in gather_objects(local) if p[1] is not None]
    result = np.empty((len(dataset), parts[0][1].shape[1]), dtype=np.float32)
    result[np.concatenate([p[0] for p in parts])] = np.concatenate([p[1] for p in parts])
    return result


def embed_dataset(cfg: EmbedConfig, *, manifest: str | Path, frames_dir: str | Path, world: World) -> dict[str, Any]:
    """Embed train, val and test videos with cfg.checkpoint; write cfg.out; return the stage report."""
    started = time.perf_counter()
    payload = read_checkpoint(cfg.checkpoint, world.device)
    model, train_cfg = load_encoder(cfg.checkpoint, world.device, payload=payload)
    trained_on = sorted(payload.get("trained_labels") or {})  # videos whose given class the encoder trained on
    pretrain_cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in train_cfg.items()})
    videos: list[VideoShard] = load_videos(manifest, frames_dir, splits=["train", "val", "test"],
                                           min_frames=pretrain_cfg.clip_len, frame_step=pretrain_cfg.frame_step)
    dataset = EvalClips(videos, protocol="iic", clip_len=pretrain_cfg.clip_len, size=pretrain_cfg.size,
                        clips=cfg.clips)
    embeddings = embed_clips(model, dataset, world=world, batch_size=cfg.batch_size, workers=cfg.workers,
                             bf16=pretrain_cfg.bf16)
    out = Path(cfg.out)
    if world.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp.npz")
        np.savez(tmp, video_id=np.array([v.video_id for v in videos]), label=np.array([v.label for v in videos]),
                 class_name=np.array([v.class_name for v in videos]),
                 split=np.array([v.split for v in videos]), embedding=embeddings,
                 trained_on=np.array(trained_on, dtype=str))
        tmp.replace(out)
    seconds = time.perf_counter() - started
    return {"videos": len(videos), "dim": int(embeddings.shape[1]), "clips_per_video": cfg.clips,
            "seconds": round(seconds, 2), "videos_per_s": round(len(videos) / seconds, 2),
            "checkpoint": cfg.checkpoint, "mode": pretrain_cfg.mode}
