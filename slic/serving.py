"""Embed video files with a pretrained encoder: the code behind the registered pyfunc model.

MLflow loads the model `models:/slic-encoder@champion` through `_load_pyfunc` (this module is its
`loader_module`): the model folder holds the checkpoint (state_dict + config) written by
`pretrain`, so no pickled code travels with the model, only this package.
Each video is decoded with PyAV and embedded with the IIC protocol of the `embed` stage: `clips`
clips of `clip_len` frames (every `frame_step`-th frame) at linspace(8, n - 8), frames resized to
size x size*171/128, centre crop, the projection-head outputs averaged.  FFmpeg's scaler decodes the
frames at short side 2 x size (as the extract stage's default 64 px for size 32), not at the file's own
size: a 1080p clip of 103 frames embeds in 1.0 s with 108 MB more peak memory instead of 8.5 s and
1.25 GB, to the same embedding (cosine 0.9999; bench/serving_decode.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _frames(path: str | Path, short_side: int) -> np.ndarray:
    """Every frame of a video as (T, H, W, 3) uint8, scaled by FFmpeg to `short_side` (rotation applied)."""
    from slic.data.video import decode

    return decode(path, short_side=short_side)


def decode_short_side(size: int) -> int:
    """The short side a video is decoded at for an encoder of crop `size`: twice it, as the extract stage's
    default (64 px for size 32) keeps frames at twice the crop before the transform resizes them to `size`."""
    return 2 * size


@torch.no_grad()
def embed_video(model: torch.nn.Module, frames: np.ndarray, *, clip_len: int, size: int, clips: int = 10,
                frame_step: int = 1) -> np.ndarray:
    """One embedding (d,) of a decoded video: mean of the model outputs over its IIC clips.

    Clips take every `frame_step`-th frame, as the encoder was trained (the checkpoint says which).
    """
    from slic.data.clips import as_clip, eval_transform, iic_starts

    frames = frames[::frame_step]
    if len(frames) < clip_len:  # a very short video: repeat its last frame, as a player would hold it
        frames = np.concatenate([frames, np.repeat(frames[-1:], clip_len - len(frames), axis=0)])
    transform = eval_transform(size, resize=(size, round(size * 171 / 128)))
    batch = torch.stack([as_clip(frames[s:s + clip_len], transform) for s in iic_starts(len(frames), clip_len, clips)])
    device = next(model.parameters()).device
    return model(batch.to(device)).float().mean(dim=0).cpu().numpy()


class VideoEncoder:
    """A pretrained encoder that turns video files into embedding rows."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", clips: int = 10) -> None:
        from slic.checkpoints import load_encoder

        self.model, config = load_encoder(checkpoint, device)
        self.config: dict[str, Any] = dict(config)  # the pretrain settings saved with the weights
        self.clip_len, self.size, self.clips = int(config["clip_len"]), int(config["size"]), clips
        self.frame_step = int(config.get("frame_step", 1))
        self.dim = int(config["out_dim"])

    def get_raw_model(self) -> VideoEncoder:
        """What `PyFuncModel.get_raw_model()` returns for a registered encoder: this object."""
        return self

    def embed_paths(self, paths: Iterable[str | Path]) -> np.ndarray:
        """(n, d) float32 embeddings, one row per video path, in order."""
        short_side = decode_short_side(self.size)
        rows = [embed_video(self.model, _frames(p, short_side), clip_len=self.clip_len, size=self.size,
                            clips=self.clips, frame_step=self.frame_step) for p in paths]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """pyfunc entry: a DataFrame with a `path` column (or a list of paths) -> (n, d) embeddings."""
        paths = model_input["path"].tolist() if hasattr(model_input, "columns") else list(model_input)
        return self.embed_paths(paths)


def encoder_of(model: Any) -> VideoEncoder:
    """The VideoEncoder inside a loaded pyfunc model (e.g. models:/slic-encoder@champion): its torch
    module and settings, to evaluate it like a checkpoint (promotion on equal terms)."""
    encoder = model.get_raw_model() if hasattr(model, "get_raw_model") else model
    if not isinstance(encoder, VideoEncoder):
        raise TypeError(f"{type(encoder).__name__} is not a slic encoder (a model logged by `slic promote`)")
    return encoder


def _load_pyfunc(data_path: str) -> VideoEncoder:
    """MLflow's hook: `data_path` is the checkpoint copied into the model folder."""
    path = Path(data_path)
    if path.is_dir():  # MLflow passes the folder when the data was a folder
        path = next(path.rglob("*.pt"))
    return VideoEncoder(path, "cuda" if torch.cuda.is_available() else "cpu")
