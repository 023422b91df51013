"""Checkpoints: atomic writes, shared by every stage that trains, and the pretrained encoder read back.

Sits between the networks (slic.models) and what uses them (pretrain, embed, finetune, serving), so
loading an encoder needs nothing from the training code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from slic.config import PretrainConfig
from slic.models import Encoder


def atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary name, fsync, rename: a kill never leaves a torn checkpoint at `path`."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The payload `pretrain` saved (weights, config, frame_rate, ...); a missing file says which stage makes it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint; run the `pretrain` stage first (dvc repro pretrain)")
    return torch.load(path, map_location=device, weights_only=False)


def load_encoder(path: str | Path, device: torch.device | str = "cpu", *,
                 payload: dict[str, Any] | None = None) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder from a checkpoint written by `pretrain`; returns (model in eval mode, config).
    `payload`: the checkpoint already read (`read_checkpoint`), so that its other entries cost no second read.

    Embedding, finetuning and serving all start from a pretrained encoder; reading it here keeps them
    independent of the training loop.
    """
    payload = read_checkpoint(path, device) if payload is None else payload
    # checkpoints from before these options had none; they were trained with these values
    saved = {"head_output_norm": False, "frame_step": 1, **payload["config"]}
    cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    model = Encoder(backbone=cfg.backbone, hidden_dim=cfg.hidden_dim, out_dim=cfg.out_dim,
                    head_output_norm=cfg.head_output_norm)
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), saved


def frame_rate_of_checkpoint(payload: dict[str, Any]) -> float:
    """The frame rate the encoder's training frames were resampled to by extract (extract.fps), which files must be
    decoded at to embed as its shards did; 0.0 for native frames (and checkpoints from before the setting)."""
    return float(payload.get("frame_rate", 0.0))
