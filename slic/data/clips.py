"""Clip sampling from frame shards: SLIC's training triplets and the evaluation clips.

Training (`PretrainClips`): for video i, the anchor is frames [0, 16) (or a random start), the
second anchor view is the same frames with an independent augmentation, and the positive is a
16-frame window that does not overlap the anchor: from the same video with probability
`p_intra` (or when i's cluster has no other member), otherwise from a random other video with
i's pseudo-label. Augmentation is drawn once per clip and applied to all its frames.

Every random choice of sample i in epoch e comes from a generator seeded by (seed, e, i), so a
run resumed from a checkpoint sees exactly the clips an uninterrupted run would, whatever the
number of loader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from slic.data.augment import Augmentation, ClipDraw, augment_clip, draw_augmentation
from slic.data.clip_transform import IMAGENET_MEAN, IMAGENET_STD, as_clip, eval_transform, iic_starts, sampled_frames
from slic.data.flow import read_flow_u
from slic.data.frames import ShardReader, jpeg_size, read_index

log = logging.getLogger(__name__)

KINETICS_MEAN = (0.4345, 0.4051, 0.3775)
KINETICS_STD = (0.2768, 0.2713, 0.2737)


@dataclass(frozen=True)
class VideoShard:
    """One extracted video: where its shard is, its true label and split, and how clips see it.

    Clips take every `frame_step`-th decoded frame (a temporal stride); `frames` counts the frames
    at that step, (decoded - 1) // frame_step + 1, so every window start and length is in those units.
    `decoded` is the shard's own frame count (0: the same as `frames`, for frame_step 1).
    """

    video_id: str
    shard: str
    frames: int
    label: int
    split: str
    class_name: str = ""
    frame_step: int = 1
    decoded: int = 0

    @property
    def decoded_frames(self) -> int:
        """Frames in the shard, whatever the step: what the data is, not how clips sample it."""
        return self.decoded or self.frames


def short_videos_line(video_ids: Sequence[str], frames: Sequence[int], total: int, splits: Sequence[str],
                      min_frames: int, frame_step: int, shown: int = 5) -> str:
    """One line for the videos `load_videos` leaves out as too short: how many of how many, the first `shown` with
    their decoded frames, and the manifest.min_frames (decoded frames, as the shards hold them) that would have
    excluded them at the manifest stage, where reports/manifest.json names each."""
    needed = (min_frames - 1) * frame_step + 1
    at_step = f" at frame_step {frame_step} ({needed} decoded)" if frame_step > 1 else ""
    named = ", ".join(f"{video_id} ({count} decoded)" for video_id, count in zip(video_ids[:shown], frames[:shown]))
    more = f" and {len(video_ids) - shown} more" if len(video_ids) > shown else ""
    return (f"excluded {len(video_ids)} of {total} {'/'.join(splits)} videos with fewer than {min_frames} frames"
            f"{at_step}: {named}{more}; manifest.min_frames: {needed} would exclude them in the manifest, by name")


def load_videos(manifest_path: str | Path, frames_dir: str | Path, *, splits: Sequence[str],
                min_frames: int = 0, frame_step: int = 1) -> list[VideoShard]:
    """Videos of `splits` that have a shard, ordered by video_id; too-short ones are left out, in one warning that
    names a few and the manifest.min_frames that would have excluded them in the manifest (by name, in its report).

    Joins the validated manifest (split, label) with the extraction index (shard, decoded frames).
    `min_frames` counts frames at `frame_step` (VideoShard.frames).
    """
    if frame_step < 1:
        raise ValueError(f"frame_step = {frame_step}: must be 1 (every frame) or more")
    manifest = pd.read_csv(manifest_path, dtype={"video_id": str}, keep_default_na=False)
    index = read_index(frames_dir)
    table = manifest.merge(index[["video_id", "shard", "frames"]], on="video_id", suffixes=("_probe", ""))
    table = table[table["split"].isin(list(splits))].sort_values("video_id")
    table = table.assign(sampled=[sampled_frames(int(n), frame_step) for n in table["frames"]])
    short = table[table["sampled"] < min_frames]
    if len(short):
        log.warning(short_videos_line(short["video_id"].tolist(), short["frames"].astype(int).tolist(), len(table),
                                      splits, min_frames, frame_step))
    table = table[table["sampled"] >= min_frames]
    root = Path(frames_dir)
    return [VideoShard(v, str(root / s), int(n), int(lab), sp, c, frame_step, int(d))
            for v, s, n, lab, sp, c, d in zip(table["video_id"], table["shard"], table["sampled"], table["label"],
                                              table["split"], table["class"], table["frames"])]


class ShardCache:
    """Per-process access to frame shards: opened headers, and optionally the decoded frames themselves.

    With `max_bytes` > 0, `preload` decodes whole videos (every frame at their frame_step) into memory
    until that budget is spent; `window` then slices them instead of decoding JPEGs again (about
    0.65 ms per 8-frame window of 64 x 85 frames on one core: more than the augmentation). Preload in
    the main process before a DataLoader forks its workers and they share the frames (copy-on-write);
    videos beyond the budget are read from their shards as without a cache.
    """

    def __init__(self, max_bytes: int = 0) -> None:
        self._readers: dict[str, ShardReader] = {}
        self._decoded: dict[tuple[str, int], np.ndarray] = {}
        self.max_bytes, self.cached_bytes = max_bytes, 0

    def _reader(self, shard: str) -> ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = ShardReader.open(shard)
        return reader

    def preload(self, videos: Sequence[VideoShard]) -> int:
        """Decode `videos` in order into memory while the budget lasts; returns how many are cached."""
        cached = 0
        for video in videos:
            key = (video.shard, video.frame_step)
            if key in self._decoded:
                cached += 1
                continue
            if self.cached_bytes >= self.max_bytes:
                break
            frames = self._reader(video.shard).read_window(0, video.frames, video.frame_step)
            if self.cached_bytes + frames.nbytes > self.max_bytes:
                break
            self._decoded[key] = frames
            self.cached_bytes += frames.nbytes
            cached += 1
        return cached

    def jpegs(self, video: VideoShard, start: int, length: int) -> list[bytes]:
        """The encoded frames of `window(video, start, length)`, not decoded (for decoding on a GPU)."""
        step = video.frame_step
        return self._reader(video.shard).read_jpegs(start * step, (length - 1) * step + 1)[::step]

    def window(self, video: VideoShard, start: int, length: int) -> np.ndarray:
        """`length` frames of `video` from `start`, both counted at the video's frame_step."""
        decoded = self._decoded.get((video.shard, video.frame_step))
        if decoded is not None:
            if start < 0 or start + length > len(decoded):
                raise IndexError(f"{video.shard}: frames [{start}, {start + length}) at step {video.frame_step} "
                                 f"outside 0..{len(decoded)}")
            return decoded[start:start + length]
        return self._reader(video.shard).read_window(start * video.frame_step, length, video.frame_step)


def non_overlapping_start(rng: np.random.Generator, frames: int, anchor_start: int, length: int) -> int:
    """A window start whose [s, s + length) does not overlap [anchor_start, anchor_start + length)."""
    candidates = [s for s in range(frames - length + 1) if abs(s - anchor_start) >= length]
    if not candidates:
        raise ValueError(f"video of {frames} frames has no {length}-frame window apart from the anchor")
    return int(rng.choice(candidates))


def anchor_start_of(rng: np.random.Generator, frames: int, length: int) -> int:
    """A random anchor start that leaves room for a non-overlapping positive in the same video.

    In a video shorter than 3 * length - 1 frames, the starts in (frames - 2 * length, length) have
    none; they are skipped (elsewhere every start is drawn with equal chance, as rng.integers would).
    """
    starts = [s for s in range(frames - length + 1) if s <= frames - 2 * length or s >= length]
    return starts[int(rng.integers(0, len(starts)))]


@dataclass(frozen=True)
class FlowView:
    """SLIC's flow view: where the `flow` stage's u shards are, and the chance (drawn independently for
    the positive and for the second anchor view) that a clip is replaced by its optical flow."""

    flow_dir: str
    p: float = 0.25


def flow_as_frames(u: np.ndarray) -> np.ndarray:
    """(T, H, W) uint8 horizontal flow -> (T, H, W, 3): the one grey channel copied to three."""
    return np.repeat(u[..., None], 3, axis=-1)


def flow_window(flow_dir: str, video: VideoShard, start: int, length: int) -> np.ndarray:
    """The flow of `video`'s frames start .. start + length - 1 (counted at its frame_step, as
    `ShardCache.window` counts them) as (length, H, W, 3) uint8 frames for the network."""
    return flow_as_frames(read_flow_u(flow_dir, video.video_id, start * video.frame_step, length,
                                      step=video.frame_step))


class PretrainClips(Dataset):
    """(anchor, positive, anchor_view, pseudo_label, index) triplets for SLIC pretraining.

    `anchor_view=False` returns an empty tensor for the view (it only feeds the temporal term).
    `normalise=False` returns the clips as augmented uint8, for the training device to normalise
    (`slic.data.device_batches`: a quarter of the bytes to copy); the values are the same once normalised.

    With `flow`, the positive and the anchor view are each replaced by the TV-L1 u flow of the same
    frames with probability `flow.p` (the anchor never); the replaced clip gets the same augmentation
    draws (crop, flip, jitter, grey, blur) the RGB clip would have had.

    `decode=False` (pretrain.gpu_decode) returns, instead of the three clips, a list of (encoded frames,
    ClipDraw) per clip (anchor, positive, and the view when made) with exactly the draws the decoding
    path applies, for `slic.data.gpu_clips.clips_from_jpegs` to decode and augment on the training
    device; batch them with `collate_encoded`. The flow view needs the decoding path.
    """

    def __init__(self, videos: Sequence[VideoShard], *, clip_len: int = 16, size: int = 128, p_intra: float = 0.2,
                 random_anchor: bool = False, seed: int = 7, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, augmentation: Augmentation = Augmentation(),
                 flow: FlowView | None = None, anchor_view: bool = True, cache: ShardCache | None = None,
                 decode: bool = True, normalise: bool = True, max_partners: int = 0) -> None:
        if not decode and flow is not None:
            raise ValueError("pretrain.gpu_decode cannot make the flow view (flow.enabled: true): its u shards are "
                             "decoded in the loader; set pretrain.gpu_decode: false or flow.enabled: false")
        too_short = [v.video_id for v in videos if v.frames < 2 * clip_len]
        if too_short:
            raise ValueError(f"videos shorter than {2 * clip_len} frames cannot give a non-overlapping positive: "
                             f"{', '.join(too_short[:5])}")
        self.videos = list(videos)
        self.clip_len, self.random_anchor, self.seed = clip_len, random_anchor, seed
        self.flow, self.anchor_view, self.decode, self.normalise = flow, anchor_view, decode, normalise
        self.size, self.mean, self.std, self.augmentation = size, tuple(mean), tuple(std), augmentation
        # What changes between epochs lives in shared memory, so a DataLoader's persistent workers (forked
        # once) see every epoch, p_intra, label and partner the training process sets: [epoch, p_intra,
        # version, partners on]; labels; partners padded with -1. Each process rebuilds its member tables
        # when the version moves.
        n = len(self.videos)
        self._state = torch.tensor([0.0, float(p_intra), 0.0, 0.0], dtype=torch.float64).share_memory_()
        self._labels = torch.zeros(n, dtype=torch.int64).share_memory_()
        self._partner_table = torch.full((n, max_partners), -1, dtype=torch.int64).share_memory_()
        self._seen_version = -1.0
        self.set_labels(np.arange(n))
        self._cache = cache if cache is not None else ShardCache()

    @property
    def epoch(self) -> int:
        """The epoch whose random draws the next samples use."""
        return int(self._state[0])

    @property
    def p_intra(self) -> float:
        """The chance that the positive comes from the anchor's own video."""
        return float(self._state[1])

    @p_intra.setter
    def p_intra(self, value: float) -> None:
        self._state[1] = float(value)

    @property
    def labels(self) -> np.ndarray:
        """Pseudo-label of each video (a copy of the shared labels)."""
        return self._labels.numpy().copy()

    def set_labels(self, labels: np.ndarray) -> None:
        """Pseudo-labels per video (cluster ids, or video ids for the intra-video baseline); clears the partners."""
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(self.videos):
            raise ValueError(f"{len(labels)} labels for {len(self.videos)} videos")
        self._labels.copy_(torch.from_numpy(labels))
        self._state[3] = 0.0
        self._state[2] += 1.0

    def set_partners(self, partners: list[np.ndarray] | None) -> None:
        """Per video, the only other videos its cross-video positive may come from (e.g. its nearest cluster
        members, at most `max_partners` each); None: any member of its cluster. Set after `set_labels`,
        which clears them."""
        if partners is not None:
            if len(partners) != len(self.videos):
                raise ValueError(f"{len(partners)} partner lists for {len(self.videos)} videos")
            widest = max((len(p) for p in partners), default=0)
            if widest > self._partner_table.shape[1]:
                raise ValueError(f"a video has {widest} partners and this dataset holds at most "
                                 f"{self._partner_table.shape[1]} (max_partners)")
            self._partner_table.fill_(-1)
            for k, found in enumerate(partners):
                self._partner_table[k, :len(found)] = torch.as_tensor(np.asarray(found, dtype=np.int64))
        self._state[3] = float(partners is not None)
        self._state[2] += 1.0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the next samples use."""
        self._state[0] = float(epoch)

    def __len__(self) -> int:
        return len(self.videos)

    def _refresh(self) -> None:
        """Rebuild this process's member tables from the shared labels when they changed."""
        version = float(self._state[2])
        if version == self._seen_version:
            return
        labels = self._labels.numpy().copy()
        order = np.argsort(labels, kind="stable")
        cuts = np.flatnonzero(np.diff(labels[order])) + 1
        self._members = {int(labels[g[0]]): g for g in np.split(order, cuts)}
        table = self._partner_table.numpy()
        self._partners = [row[row >= 0].copy() for row in table] if self._state[3] > 0 else None
        self._labels_seen, self._seen_version = labels, version

    def positive_of(self, index: int, rng: np.random.Generator, anchor_start: int) -> tuple[int, int]:
        """(video index, window start) of the positive for `index`."""
        self._refresh()
        members = self._members[int(self._labels_seen[index])]
        if self._partners is not None:
            members = np.concatenate([[index], self._partners[index]]).astype(np.int64)
        video = self.videos[index]
        if len(members) == 1 or rng.random() < self.p_intra:
            return index, non_overlapping_start(rng, video.frames, anchor_start, self.clip_len)
        other = index
        while other == index:  # redrawn until it differs from the anchor's video
            other = int(rng.choice(members))
        return other, int(rng.integers(0, self.videos[other].frames - self.clip_len + 1))

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        self._refresh()
        seed = [self.seed, self.epoch, index]
        rng = np.random.default_rng(seed)
        video = self.videos[index]
        anchor_start = anchor_start_of(rng, video.frames, self.clip_len) if self.random_anchor else 0
        positive_video, positive_start = self.positive_of(index, rng, anchor_start)
        # The clips' augmentation draws come from their own generator, in a fixed order (anchor,
        # positive, view), so they do not depend on the clips' content or on the flow draws.
        augmentation_rng = np.random.default_rng(int(rng.integers(0, 2**62)))
        if not self.decode:
            windows = [(video, anchor_start), (self.videos[positive_video], positive_start)]
            windows += [(video, anchor_start)] if self.anchor_view else []
            return self._encoded(augmentation_rng, windows), int(self._labels_seen[index]), index
        # The flow draws come last and only when the flow view is on: RGB-only runs, and the
        # augmentation of every clip, are exactly what they would be without it.
        flow_positive = self.flow is not None and rng.random() < self.flow.p
        flow_view = self.flow is not None and rng.random() < self.flow.p
        anchor_frames = self._cache.window(video, anchor_start, self.clip_len)
        if flow_positive:
            positive_frames = self._flow(positive_video, positive_start)
        else:
            positive_frames = self._cache.window(self.videos[positive_video], positive_start, self.clip_len)
        view_frames = self._flow(index, anchor_start) if flow_view else anchor_frames
        anchor = self._augment(augmentation_rng, anchor_frames)
        positive = self._augment(augmentation_rng, positive_frames)
        # Last in the draw order: without the view (no temporal term) the others draw the same.
        empty = torch.zeros(0, dtype=torch.float32 if self.normalise else torch.uint8)
        anchor_view = self._augment(augmentation_rng, view_frames) if self.anchor_view else empty
        return anchor, positive, anchor_view, int(self._labels_seen[index]), index

    def _encoded(self, rng: np.random.Generator,
                 windows: list[tuple[VideoShard, int]]) -> list[tuple[list[bytes], ClipDraw]]:
        """Each window's encoded frames with its draws, drawn in the order `_augment` would draw them."""
        out = []
        for video, start in windows:
            jpegs = self._cache.jpegs(video, start, self.clip_len)
            height, width = jpeg_size(jpegs[0])
            out.append((jpegs, draw_augmentation(rng, height, width, self.augmentation)))
        return out

    def _augment(self, rng: np.random.Generator, frames: np.ndarray) -> Tensor:
        return augment_clip(rng, frames, self.augmentation, self.size, self.mean, self.std, normalised=self.normalise)

    def _flow(self, video: int, start: int) -> np.ndarray:
        return flow_window(self.flow.flow_dir if self.flow is not None else "", self.videos[video], start,
                           self.clip_len)


def collate_encoded(samples: list[tuple[Any, ...]]) -> tuple[list[list[tuple[list[bytes], ClipDraw]]], Tensor, Tensor]:
    """Batch `PretrainClips(decode=False)` samples: per clip kind (anchor, positive, view) the batch's
    (encoded frames, draws), the pseudo-labels and the indices."""
    kinds = len(samples[0][0])
    clips = [[sample[0][k] for sample in samples] for k in range(kinds)]
    return (clips, torch.tensor([s[1] for s in samples], dtype=torch.int64),
            torch.tensor([s[2] for s in samples], dtype=torch.int64))


def centre_start(frames: int, clip_len: int) -> int:
    """Start of the window centred in a video of `frames` frames."""
    return max(0, (frames - clip_len) // 2)


class EvalClips(Dataset):
    """Deterministic clips per video for embedding: (clips (K, 3, T, S, S), index).

    `protocol="centre"`: one centre clip, short side resized to `size` (used for clustering).
    `protocol="iic"`: 10 clips at `iic_starts`, frames resized to a fixed size x (size * 171/128)
    (aspect distorted, as the IIC protocol does), centre crop (used for retrieval).
    With `flow_dir` the clips are the same windows of each video's flow (`pretrain.cluster_views: rgb_flow`).
    """

    def __init__(self, videos: Sequence[VideoShard], *, protocol: str = "centre", clip_len: int = 16,
                 size: int = 128, clips: int = 10, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 cache: ShardCache | None = None, flow_dir: str | None = None) -> None:
        if protocol not in ("centre", "iic"):
            raise ValueError(f"unknown evaluation protocol {protocol!r}; use 'centre' or 'iic'")
        self.videos, self.protocol, self.clip_len, self.clips = list(videos), protocol, clip_len, clips
        resize = (size, round(size * 171 / 128)) if protocol == "iic" else None
        self.transform = eval_transform(size, resize=resize, mean=mean, std=std)
        self._cache = cache if cache is not None else ShardCache()
        self.flow_dir = flow_dir

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        video = self.videos[index]
        length = min(self.clip_len, video.frames)
        starts = ([centre_start(video.frames, length)] if self.protocol == "centre"
                  else iic_starts(video.frames, length, self.clips))
        first, last = min(starts), max(starts) + length
        if self.flow_dir is not None:  # the same windows of the video's TV-L1 u flow, as a 3-channel image
            frames = flow_window(self.flow_dir, video, first, last - first)
        else:
            frames = self._cache.window(video, first, last - first)  # one read covers every clip
        clips = [as_clip(frames[s - first:s - first + length], self.transform) for s in starts]
        return torch.stack(clips), index
