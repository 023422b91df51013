"""Embed video files with a pretrained encoder: the code behind the registered pyfunc model.

MLflow loads the model `models:/slic-encoder@champion` through `_load_pyfunc` (this module is its
`loader_module`): the model folder holds the checkpoint (state_dict + config) written by
`pretrain`, so no pickled code travels with the model, only this package.
Each video is decoded with PyAV and embedded with the IIC protocol of the `embed` stage: `clips`
clips of `clip_len` frames (every `frame_step`-th frame) at linspace(8, n - 8), frames resized to
size x size*171/128, centre crop, the projection-head outputs averaged.  FFmpeg's scaler decodes the
frames at short side 2 x size (as the extract stage's default 64 px for size 32), not at the file's own
size, and only the clips' frames are kept, so memory does not grow with the video's length: a minute of
960x540 embeds in 1.0 s with 93 MB more peak memory, against 25 s and 5.4 GB for every frame at full size,
to the same embedding (cosine 0.9998; bench/serving_decode.py).  A far clip is reached by seeking to its
keyframe (slic.data.video.decode_frames_at), so ten minutes of 640x360 H.264 embed in 0.8 s, not 3.4 s.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from slic.data.video import Damage

log = logging.getLogger(__name__)


def decode_short_side(size: int) -> int:
    """The short side a video is decoded at for an encoder of crop `size`: twice it, as the extract stage's
    default (64 px for size 32) keeps frames at twice the crop before the transform resizes them to `size`."""
    return 2 * size


def iic_windows(frames: int, *, clip_len: int, clips: int = 10, frame_step: int = 1) -> list[list[int]]:
    """The frame indices of each IIC clip of a video of `frames` frames: `clip_len` frames, every `frame_step`-th,
    at iic_starts; a video shorter than one clip repeats its last frame, as a player would hold it."""
    from slic.data.clip_transform import iic_starts, sampled_frames

    stepped = sampled_frames(frames, frame_step)
    return [[min(start + i, stepped - 1) * frame_step for i in range(clip_len)]
            for start in iic_starts(max(stepped, clip_len), clip_len, clips)]


@torch.no_grad()
def embed_windows(model: torch.nn.Module, windows: list[np.ndarray], *, size: int) -> np.ndarray:
    """One embedding (d,): the mean of the model outputs over the clips (each (T, H, W, 3) uint8)."""
    from slic.data.clip_transform import as_clip, eval_transform

    transform = eval_transform(size, resize=(size, round(size * 171 / 128)))
    batch = torch.stack([as_clip(window, transform) for window in windows])
    device = next(model.parameters()).device
    return model(batch.to(device)).float().mean(dim=0).cpu().numpy()


def embed_video(model: torch.nn.Module, frames: np.ndarray, *, clip_len: int, size: int, clips: int = 10,
                frame_step: int = 1) -> np.ndarray:
    """One embedding (d,) of a decoded video (every frame): mean of the model outputs over its IIC clips.

    Clips take every `frame_step`-th frame, as the encoder was trained (the checkpoint says which).
    """
    windows = iic_windows(len(frames), clip_len=clip_len, clips=clips, frame_step=frame_step)
    return embed_windows(model, [frames[w] for w in windows], size=size)


def decode_windows(path: str | Path, *, short_side: int, clip_len: int, clips: int, frame_step: int,
                   span: tuple[int, int] | None = None, frame_rate: float = 0.0,
                   damage: Damage | None = None) -> list[np.ndarray]:
    """The IIC clips of a video file, or of its frames [start, stop) (`span`: a segment of a long video), decoded
    keeping only their frames (at most clips x clip_len, whatever the video's length), the same clips as
    `embed_video` on those frames.  `frame_rate` > 0 (an encoder trained on frames extract resampled to that
    rate) takes the clips from the frames resampled alike (slic.data.video.resampled_frames), as its shard holds
    them.  The frame count, timestamps and keyframes come from demuxing (slic.data.video.file_timeline, once per
    file for all its segments), so a long video is decoded only from the keyframe before each clip; a stream
    whose last packet holds no picture decodes one frame fewer than that count, and is then decoded a second time
    at its true length. Damaged packets passed over by the decode that gave the clips are counted in `damage`
    when one is given (else logged, `decode_frames_at`)."""
    from slic.data.video import Damage, VideoDecodeError, decode_frames_at, file_timeline, resampled_frames

    frames_of = file_timeline(path)
    first, stop = (0, frames_of.frames) if span is None else (span[0], min(span[1], frames_of.frames))
    while True:
        shown = resampled_frames(first, stop, frames_of.fps, frame_rate,
                                 frames_of.frame_times() if frame_rate > 0 else None)  # times: only to resample
        if not shown:
            raise VideoDecodeError(path, "no video frame in the file" if span is None else
                                   f"no video frame in frames [{span[0]}, {span[1]})")
        windows = [[shown[i] for i in window]
                   for window in iic_windows(len(shown), clip_len=clip_len, clips=clips, frame_step=frame_step)]
        wanted = sorted({i for w in windows for i in w})
        this_decode = Damage() if damage is not None else None
        frames, decoded = decode_frames_at(path, wanted, short_side=short_side, frames_of=frames_of,
                                           damage=this_decode)
        if decoded > wanted[-1]:
            if damage is not None and this_decode is not None:
                vars(damage).update(vars(this_decode))
            return [np.stack([frames[i] for i in w]) for w in windows]
        stop = decoded  # the video ended before the last wanted frame: its true length is known now


def _as_is(sample: Any) -> Any:
    """The loader's collate for one sample: numpy arrays stay arrays (the default would make tensors)."""
    return sample


def shorter_than_a_clip(path: str | Path, *, clip_len: int, frame_step: int = 1, span: tuple[int, int] | None = None,
                        frame_rate: float = 0.0) -> str:
    """A warning when the video (or its span) has fewer frames than one clip of the encoder: its clips then repeat
    its last frame, so what it shows counts and how it moves hardly does (a photo saved as a video matches by scene
    alone); '' otherwise. The count comes from demuxing (the timeline decode_windows has just read)."""
    from slic.data.clip_transform import sampled_frames
    from slic.data.video import file_timeline, resampled_count

    frames_of = file_timeline(path)
    first, stop = (0, frames_of.frames) if span is None else (span[0], min(span[1], frames_of.frames))
    frames = resampled_count(first, stop, frames_of.fps, frame_rate)
    if sampled_frames(frames, frame_step) >= clip_len:
        return ""
    what = "1 frame (a still image)" if frames == 1 else f"only {frames} frames"
    clip = f"{clip_len} frames" + (f" every {frame_step}" if frame_step > 1 else "")
    return (f"{what}, fewer than one clip of the encoder ({clip}): its clips repeat its last frame, so its hits "
            "match what it shows more than how it moves")


def damage_warning(damage: Damage) -> str:
    """The warning of a query or added video decoded past damaged packets: how many, where the first was and why
    ('' when none); its lost frames hold the frame before, so its clips (and hits) may show less motion."""
    note = damage.note()
    return f"decoded past damaged packets: {note}" if note else ""


class ClipWindows(torch.utils.data.Dataset):
    """Video files (or their frame spans) -> (position, their decoded IIC clips or None, why not): decoding for
    loader workers, a file that cannot be decoded answers with its reason instead of stopping the others. A file
    decoded with something to tell answers with its clips and its warnings in the third place, joined by '; ':
    shorter than one clip (`shorter_than_a_clip`), decoded past damaged packets (`damage_warning`)."""

    def __init__(self, paths: list[Path], *, short_side: int, clip_len: int, clips: int, frame_step: int,
                 spans: list[tuple[int, int] | None] | None = None, frame_rate: float = 0.0) -> None:
        self.paths, self.short_side, self.clip_len, self.clips, self.frame_step = (
            paths, short_side, clip_len, clips, frame_step)
        self.spans = spans if spans is not None else [None] * len(paths)
        self.frame_rate = frame_rate

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, position: int) -> tuple[int, list[np.ndarray] | None, str]:
        from slic.data.video import DECODE_ERRORS, Damage, decode_error_line, path_problem

        path = self.paths[position]
        if problem := path_problem(path):  # a broken link, a folder, nothing there: said as such
            return position, None, problem
        damage = Damage()
        try:
            clips = decode_windows(path, short_side=self.short_side, clip_len=self.clip_len, clips=self.clips,
                                   frame_step=self.frame_step, span=self.spans[position], frame_rate=self.frame_rate,
                                   damage=damage)
            short = shorter_than_a_clip(path, clip_len=self.clip_len, frame_step=self.frame_step,
                                        span=self.spans[position], frame_rate=self.frame_rate)
            return position, clips, "; ".join(w for w in (short, damage_warning(damage)) if w)
        except DECODE_ERRORS as exc:
            return position, None, decode_error_line(path, exc)


class VideoEncoder:
    """A pretrained encoder that turns video files into embedding rows."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", clips: int = 10) -> None:
        from slic.checkpoints import frame_rate_of_checkpoint, load_encoder, read_checkpoint

        payload = read_checkpoint(checkpoint, device)  # read once: the weights, the config and the frame rate
        self.checkpoint = Path(checkpoint)  # the file of its weights (a registered model's: its copy in the store)
        self.model, config = load_encoder(checkpoint, device, payload=payload)
        self.config: dict[str, Any] = dict(config)  # the pretrain settings saved with the weights
        self.clip_len, self.size, self.clips = int(config["clip_len"]), int(config["size"]), clips
        self.frame_step = int(config.get("frame_step", 1))
        self.frame_rate = frame_rate_of_checkpoint(payload)  # extract.fps of its training frames; 0.0 native
        self.dim = int(config["out_dim"])
        # video id -> class of the given labels the weights trained on (pretrain.mode labels): never judge it on them
        self.trained_labels: dict[str, int] = dict(payload.get("trained_labels") or {})

    @classmethod
    def on_best_device(cls, checkpoint: str | Path, clips: int = 10) -> VideoEncoder:
        """The checkpoint's encoder on the GPU when there is one, else on the CPU (search, serving, added videos)."""
        return cls(checkpoint, "cuda" if torch.cuda.is_available() else "cpu", clips=clips)

    def get_raw_model(self) -> VideoEncoder:
        """What `PyFuncModel.get_raw_model()` returns for a registered encoder: this object."""
        return self

    def embed_paths(self, paths: Iterable[str | Path]) -> np.ndarray:
        """(n, d) float32 embeddings, one row per video path, in order."""
        short_side = decode_short_side(self.size)
        rows = [embed_windows(self.model, decode_windows(p, short_side=short_side, clip_len=self.clip_len,
                                                         clips=self.clips, frame_step=self.frame_step,
                                                         frame_rate=self.frame_rate),
                              size=self.size) for p in paths]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)

    def embed_files(self, paths: list[Path], workers: int = 0, spans: list[tuple[int, int] | None] | None = None,
                    ) -> Iterator[tuple[int, np.ndarray | None, str]]:
        """(position, embedding or None, why it could not be decoded, or the warnings with an embedding: shorter than
        one clip, decoded past damaged packets; `ClipWindows`) for each path (or its frames [start, stop) of `spans`:
        segments of long videos), in order; `workers` loader processes decode the next videos while the model embeds
        this one (0: decode here, one at a time).
        On the CPU the model then leaves the workers their cores: it runs on cpu_count - workers threads (at
        least 1), which on 2 cores with 2 workers takes a ucf101_6 video from 33 to 26 ms.  One file is decoded
        here: starting a worker would only add its start-up."""
        workers = workers if len(paths) > 1 else 0
        windows = ClipWindows(list(paths), short_side=decode_short_side(self.size), clip_len=self.clip_len,
                              clips=self.clips, frame_step=self.frame_step, spans=spans,
                              frame_rate=self.frame_rate)
        loader = torch.utils.data.DataLoader(windows, batch_size=None, num_workers=workers, collate_fn=_as_is)
        threads = torch.get_num_threads()
        on_cpu = next(self.model.parameters()).device.type == "cpu"
        if workers and on_cpu:
            torch.set_num_threads(max(1, min(threads, (os.cpu_count() or 1) - workers)))
        try:
            for position, clips, error in loader:
                vector = embed_windows(self.model, clips, size=self.size) if clips is not None else None
                yield position, vector, error
        finally:
            torch.set_num_threads(threads)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """pyfunc entry: a DataFrame with a `path` column (or a list of paths) -> (n, d) embeddings.  A file that
        cannot be decoded stops the request with an MlflowException naming it and why, which `mlflow models
        serve` answers as a 400 with that line (any other error there reads only "unexpected error")."""
        paths = model_input["path"].tolist() if hasattr(model_input, "columns") else list(model_input)
        rows = []
        for position, vector, error in self.embed_files([Path(p) for p in paths]):
            if vector is not None and error:  # embedded, with a warning the answer (an array) cannot carry
                log.warning("%s: %s", paths[position], error)
            if vector is None:
                from mlflow.exceptions import MlflowException
                from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

                raise MlflowException(f"{paths[position]}: {error}; the request's other files were not embedded",
                                      error_code=INVALID_PARAMETER_VALUE)
            rows.append(vector)
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), np.float32)


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
    return VideoEncoder.on_best_device(path)
