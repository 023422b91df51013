"""Videos made searchable without retraining the encoder (`index.add_videos`, read by the `index` stage).

The manifest is pretrain's input, so a video put into the training archive retrains the encoder.  Videos
that arrive after training go into a folder of their own instead (add_to_index/ by default).  The index
stage embeds every video under it (recursively, manifest.extensions) with the index's checkpoint, as
`slic search` embeds a query (IIC protocol, the embed stage's clip count), and indexes them beside the
gallery, as `added/<path in the folder>` with no class.  Under `dvc repro` a change in the folder re-runs
`index` alone.

Each embedding is kept in <index.out>/added.npz under the sha256 of the file's bytes, with the checkpoint's
sha256 and the clip count: a later run embeds only new or changed files (a renamed or moved file is not
embedded again), and another checkpoint embeds them all again.  The file is written every minute while
embedding and when the run stops on an error or Ctrl-C, so an interrupted or killed run keeps what it
embedded.  A video that cannot be decoded stays out of the index and is named in the report with the
reason; the others are added.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slic.data.video import DECODE_ERRORS, decode_error_line, is_video_path, path_problem, segment_id
from slic.file_hash import file_sha256
from slic.index import IndexBuildError

log = logging.getLogger(__name__)
Span = tuple[int, int, float, float]  # a segment of a file: its [start, stop) frames and [start_s, end_s) seconds

CACHE_FILE = "added.npz"
ID_PREFIX = "added/"
SAVE_EVERY_SECONDS = 60.0


@dataclass
class AddedVideos:
    """The added videos that could be embedded (rows as in rows.csv, vectors) and what happened to the rest."""

    rows: pd.DataFrame
    vectors: np.ndarray
    embedded_now: int = 0
    reused: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    noted: list[dict[str, str]] = field(default_factory=list)  # indexed with a warning: shorter than one clip (a
    # still image), decoded past damaged packets; one per file (its first segment's)
    hashes: dict[str, str] = field(default_factory=dict)  # video_id -> sha256 of the file
    folder: str = ""

    def report(self) -> dict[str, Any]:
        """The index report's keys for the added videos."""
        from slic.data.frames import content_fingerprint

        return {"add_videos": self.folder, "added": int(len(self.rows)), "added_embedded_now": self.embedded_now,
                "added_reused": self.reused, "added_failed": self.failed, "added_notes": self.noted,
                "added_fingerprint": content_fingerprint(self.hashes) if self.hashes else "none"}


def added_videos(folder: str, *, manifest_root: str, extensions: tuple[str, ...], checkpoint: str | Path,
                 clips: int, index_dir: str | Path, workers: int = 0,
                 segment_seconds: float = 0.0) -> AddedVideos | None:
    """The `index` stage's added videos: those of `index.add_videos`, embedded (or reused from the index
    folder's added.npz) with `workers` decoding processes, long ones as segments when `segment_seconds` (that of
    the manifest, as the gallery's) is set; None when the key is empty."""
    path = added_folder(folder, manifest_root)
    if path is None:
        return None
    return embed_added(path, extensions, checkpoint=checkpoint, clips=clips, cache_file=Path(index_dir) / CACHE_FILE,
                       workers=workers, segment_seconds=segment_seconds)


def added_folder(folder: str, manifest_root: str) -> Path | None:
    """The `index.add_videos` folder, checked: None when the key is empty; an IndexBuildError when the folder is
    missing, or lies inside the training archive (manifest.root), where its videos would retrain the encoder."""
    if not folder:
        return None
    path = Path(folder)
    if not path.is_dir():
        raise IndexBuildError(f"index.add_videos = {folder!r}: no such folder; create it (it may stay empty) "
                              "or set index.add_videos to the folder of videos to add to the index")
    root = Path(manifest_root).resolve() if manifest_root else None
    if root is not None and (path.resolve() == root or root in path.resolve().parents):
        raise IndexBuildError(f"index.add_videos = {folder!r} lies inside manifest.root {manifest_root!r}: its "
                              "videos would also train the encoder; move the folder out of the archive")
    return path


def find_added(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Every file under `folder` (recursively) whose extension is a video one, sorted (README.md is not); a link whose
    target is gone too, so that `embed_added` names it among the videos not added."""
    wanted = {e.lower() for e in extensions}
    return sorted(p for p in folder.rglob("*") if is_video_path(p, wanted))


def added_video_id(folder: Path, video: Path) -> str:
    """`added/<path under the folder>`: unique among the added videos, apart from the manifest's ids."""
    return ID_PREFIX + video.relative_to(folder).as_posix()


class EmbeddingCache:
    """Embeddings of added videos by the sha256 of the file, valid for one checkpoint and clip count.

    It also remembers each path's size and mtime with its sha256, so an unchanged file is not read again.
    """

    def __init__(self, path: Path, checkpoint_sha256: str, clips: int, segment_seconds: float = 0.0) -> None:
        self.path, self.checkpoint_sha256, self.clips = path, checkpoint_sha256, clips
        self.segment_seconds = segment_seconds
        self.vectors: dict[str, np.ndarray] = {}  # by item: the file's sha256, or sha256@start-stop for a segment
        self.notes: dict[str, str] = {}  # by item: the warnings its embedding came with (short, damaged packets)
        self.stat_hash: dict[tuple[str, int, int], str] = {}
        self.segments: dict[str, list[Span]] = {}  # sha256 -> its segments: frames and times
        self.dirty, self.saved_at = False, time.monotonic()
        if not path.is_file():
            return
        try:
            data = np.load(path)
            same = str(data["checkpoint_sha256"]) == checkpoint_sha256 and int(data["clips"]) == clips
            if same:
                self.vectors = dict(zip(data["sha256"].tolist(), data["embedding"]))
                if "note_item" in data.files:
                    self.notes = dict(zip(data["note_item"].tolist(), data["note_text"].tolist()))
            self.stat_hash = {(p, int(s), int(m)): h for p, s, m, h in
                              zip(data["stat_path"].tolist(), data["stat_size"], data["stat_mtime"],
                                  data["stat_sha256"].tolist())}
            # segments cached before their times were (a variable-rate file was cut by frames then) are demuxed
            # again: the embeddings of the segments that stay the same are kept
            if "segment_start_s" in data.files and float(data["segment_seconds"]) == segment_seconds:
                for sha, start, stop, start_s, end_s in zip(data["segment_sha256"].tolist(), data["segment_start"],
                                                             data["segment_stop"], data["segment_start_s"],
                                                             data["segment_end_s"]):
                    self.segments.setdefault(sha, []).append((int(start), int(stop), float(start_s), float(end_s)))
        except Exception as exc:  # noqa: BLE001 - a damaged cache costs a re-embedding, never the stage
            log.warning("%s: unreadable (%s); the added videos are embedded again", path, exc)
            self.vectors, self.notes, self.stat_hash, self.segments = {}, {}, {}, {}

    def sha256(self, video: Path) -> str:
        """The file's sha256, read again only when its size or mtime changed since the last run."""
        stat = video.stat()
        key = (str(video), stat.st_size, stat.st_mtime_ns)
        if key not in self.stat_hash:
            self.stat_hash[key] = file_sha256(video)
            self.dirty = True
        return self.stat_hash[key]

    def segments_of(self, video: Path, sha256: str) -> list[Span]:
        """The segments of a long file: [start, stop) frames (slic.data.video.segment_bounds) and their
        [start_s, end_s) in it, by its timestamps when its rate varies; demuxed once per file content (the timeline
        its segments' decoding then reuses); [] when segments are off."""
        from slic.data.video import clock_of, file_timeline, segment_bounds

        if not self.segment_seconds:
            return []
        if sha256 not in self.segments:
            info = file_timeline(video)
            clock = clock_of(info)
            self.segments[sha256] = [(start, stop, clock.seconds(start), clock.seconds(stop))
                                     for start, stop in segment_bounds(info.frames, info.fps, self.segment_seconds,
                                                                       clock)]
            self.dirty = True
        return self.segments[sha256]

    def put(self, sha256: str, vector: np.ndarray, note: str = "") -> None:
        """Keep one new embedding (and the warning it came with, said again when it is reused); the file is written
        when a minute has passed since the last write."""
        self.vectors[sha256] = np.asarray(vector, np.float32)
        if note:
            self.notes[sha256] = note
        self.dirty = True
        if time.monotonic() - self.saved_at >= SAVE_EVERY_SECONDS:
            self.save()

    def save(self, keep: set[str] | None = None, videos: list[Path] | None = None) -> None:
        """Write the cache atomically; `keep` (items) and `videos` drop the entries of files no longer in the
        folder."""
        if keep is not None and set(self.vectors) - keep:
            self.vectors = {h: v for h, v in self.vectors.items() if h in keep}
            self.dirty = True
        files = None if keep is None else {item.partition("@")[0] for item in keep}  # a segment's item: sha@frames
        if files is not None and set(self.segments) - files:
            self.segments = {h: b for h, b in self.segments.items() if h in files}
            self.dirty = True
        if videos is not None:
            present = {str(v) for v in videos}
            if any(k[0] not in present for k in self.stat_hash):
                self.stat_hash = {k: h for k, h in self.stat_hash.items() if k[0] in present}
                self.dirty = True
        if not self.dirty:  # unchanged: the file keeps its bytes (and DVC its hash)
            return
        shas = sorted(self.vectors)
        noted = [item for item in shas if item in self.notes]
        stats = sorted(self.stat_hash)
        segment_rows = [(h, *span) for h, spans in sorted(self.segments.items()) for span in spans]
        dim = next(iter(self.vectors.values())).shape[0] if self.vectors else 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial.npz")
        np.savez(partial, checkpoint_sha256=np.array(self.checkpoint_sha256), clips=np.array(self.clips),
                 sha256=np.array(shas, dtype=str),
                 embedding=np.stack([self.vectors[h] for h in shas]) if shas else np.zeros((0, dim), np.float32),
                 stat_path=np.array([k[0] for k in stats], dtype=str),
                 stat_size=np.array([k[1] for k in stats], np.int64),
                 stat_mtime=np.array([k[2] for k in stats], np.int64),
                 stat_sha256=np.array([self.stat_hash[k] for k in stats], dtype=str),
                 segment_seconds=np.array(self.segment_seconds),
                 note_item=np.array(noted, dtype=str), note_text=np.array([self.notes[h] for h in noted], dtype=str),
                 **{f"segment_{name}": np.array(values, dtype) for name, values, dtype in zip(
                     ("sha256", "start", "stop", "start_s", "end_s"), zip(*segment_rows) if segment_rows else ([],) * 5,
                     (str, np.int64, np.int64, np.float64, np.float64))})
        os.replace(partial, self.path)
        self.dirty, self.saved_at = False, time.monotonic()


def embed_added(folder: Path, extensions: tuple[str, ...], *, checkpoint: str | Path, clips: int,
                cache_file: Path, workers: int = 0, segment_seconds: float = 0.0) -> AddedVideos:
    """Embed the videos under `folder` with `checkpoint`, reusing `cache_file`; `workers` loader processes
    decode while the model embeds. With `segment_seconds`, a long video is embedded as segments, a row each
    (`added/<path>@<start>s`, with its start_s and end_s), as the manifest cuts the gallery's."""
    videos = find_added(folder, extensions)
    columns = ["video_id", "path", "class", "label", *(["start_s", "end_s"] if segment_seconds else [])]
    result = AddedVideos(pd.DataFrame(columns=columns), np.zeros((0, 0), np.float32), folder=str(folder))
    if not videos:
        cache_file.unlink(missing_ok=True)  # the cache holds the folder's files only
        return result
    if not Path(checkpoint).is_file():
        raise IndexBuildError(f"{checkpoint}: no checkpoint to embed the {len(videos)} video(s) in {folder} "
                              "with; run `dvc repro pretrain` first")
    cache = EmbeddingCache(cache_file, file_sha256(checkpoint), clips, segment_seconds)
    items: list[tuple[Path, str, tuple[int, int] | None]] = []  # (video, cache key, its frames or the whole)
    times_of: dict[tuple[Path, int], tuple[float, float]] = {}  # (video, first frame) -> a segment's seconds
    for video in videos:
        if problem := path_problem(video):
            result.failed.append({"path": str(video), "error": problem})
            continue
        try:
            sha = cache.sha256(video)
        except OSError as exc:  # unreadable (permissions, vanished): named, the others go on
            result.failed.append({"path": str(video), "error": f"cannot read the file: {exc.strerror or exc}"})
            continue
        try:
            spans = cache.segments_of(video, sha)
        except DECODE_ERRORS as exc:  # segments asked for, and the file cannot be demuxed
            result.failed.append({"path": str(video), "error": decode_error_line(video, exc)})
            continue
        items += [(video, sha, None)] if len(spans) < 2 else [(video, f"{sha}@{a}-{b}", (a, b)) for a, b, *_ in spans]
        times_of.update({(video, a): (start_s, end_s) for a, _, start_s, end_s in spans})
    todo = [item for item in items if item[1] not in cache.vectors]
    result.reused = len({video for video, key, _ in items if key in cache.vectors} -
                        {video for video, _, _ in todo})
    try:
        embedded = checkpoint_encoder(Path(checkpoint), clips).embed_files(
            [video for video, _, _ in todo], workers, [span for _, _, span in todo]) if todo else iter(())
        failed: set[Path] = set()
        for position, vector, error in embedded:
            video, key, _ = todo[position]
            if vector is None:
                if video not in failed:  # a file's segments fail together: named once (the stage prints it)
                    result.failed.append({"path": str(video), "error": error})
                    failed.add(video)
                continue
            cache.put(key, vector, error)  # with its warnings: shorter than one clip, damaged packets
        result.embedded_now = len({video for video, key, _ in todo if key in cache.vectors})
    except BaseException:
        cache.save()  # interrupted (Ctrl-C, an error of the encoder): what was embedded stays
        raise
    rows, vectors = [], []
    noted_paths: set[str] = set()
    for video, key, span in items:
        if key not in cache.vectors:
            continue
        video_id = added_video_id(folder, video)
        result.hashes[video_id] = key.partition("@")[0]
        row = {"video_id": video_id, "path": str(video), "class": "", "label": -1}
        if span is not None:  # a segment, named and timed as the manifest names the gallery's
            start_s, end_s = times_of[(video, span[0])]
            row = {**row, "video_id": segment_id(video_id, start_s), "start_s": round(start_s, 2),
                   "end_s": round(end_s, 2)}
        rows.append(row)
        vectors.append(cache.vectors[key])
        if key in cache.notes and str(video) not in noted_paths:  # indexed, said (also when reused), once a file
            noted_paths.add(str(video))
            result.noted.append({"path": str(video), "note": cache.notes[key]})
    cache.save(keep={key for _, key, _ in items if key in cache.vectors}, videos=videos)
    result.failed.sort(key=lambda failure: failure["path"])
    if rows:
        result.rows, result.vectors = pd.DataFrame(rows, columns=columns), np.stack(vectors).astype(np.float32)
    return result


def checkpoint_encoder(checkpoint: Path, clips: int) -> Any:
    """The pretrain checkpoint as a slic.serving.VideoEncoder, on the GPU when there is one (as `slic search`)."""
    from slic.serving import VideoEncoder

    return VideoEncoder.on_best_device(checkpoint, clips)
