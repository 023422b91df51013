"""Frame shards: every video decoded once into ONE file of JPEG frames with an offset table.

Shard layout (little-endian):
    b"SLICJPG1" | uint32 header length | header JSON | uint64[frames + 1] offsets | JPEG bytes
Frame i is data[offsets[i]:offsets[i + 1]]. Reading a 16-frame window is one seek and one read
of contiguous bytes, then 16 JPEG decodes; JPEG keeps shards about the size of the reference's
folder of JPEG files while a training loader touches one file per clip instead of sixteen.

The header's `content_sha256` is the sha256 of everything after the header (offset table and JPEG
bytes), computed from the bytes being written; index.csv repeats it per video, and the stages' data
fingerprints are made from these content hashes.

Why JPEG in one file rather than raw uint8 or a re-encoded video: raw frames are 10-20x larger,
and an inter-coded video cannot be entered at an arbitrary frame without decoding from a
keyframe. bench/extract.py measures these trade-offs against the reference's JPEG folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import struct
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing.context import BaseContext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

MAGIC = b"SLICJPG1"
SUFFIX = ".shard"
INDEX_NAME = "index.csv"
RANGE_COLUMNS = ("start_frame", "stop_frame")  # a segment row's frames of its file (datasets.SEGMENT_COLUMNS)
THROUGHPUT_NAME = "throughput.json"  # the last extraction's throughput, for runs that reuse every shard
T = TypeVar("T")


class ExtractError(RuntimeError):
    """Extraction stopped (fail_fast) on a video that could not be decoded."""


def shard_path(out_dir: str | Path, video_id: str) -> Path:
    """Where the shard of `video_id` lives: <out>/<video_id>.shard (class folders kept)."""
    return Path(out_dir) / f"{video_id}{SUFFIX}"


def content_sha256(offsets: bytes, jpegs: Sequence[bytes]) -> str:
    """Hex sha256 of a shard's content: its offset table, then its JPEG bytes (what follows the header)."""
    digest = hashlib.sha256(offsets)
    for jpeg in jpegs:
        digest.update(jpeg)
    return digest.hexdigest()


def write_shard(path: str | Path, jpegs: Sequence[bytes], header: dict[str, Any]) -> int:
    """Write a shard atomically (temporary name, then rename); returns its size in bytes.

    The header gets `content_sha256`, hashed from the in-memory bytes as they are written (never by
    reading the file back). A run killed mid-write leaves only a temporary file, which the next run deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sizes = np.fromiter((len(j) for j in jpegs), dtype=np.uint64, count=len(jpegs))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype("<u8")
    digest = content_sha256(offsets.tobytes(), jpegs)
    meta = json.dumps({**header, "frames": len(jpegs), "content_sha256": digest}, sort_keys=True).encode()
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(MAGIC + struct.pack("<I", len(meta)) + meta + offsets.tobytes())
        for jpeg in jpegs:
            handle.write(jpeg)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


@dataclass(frozen=True)
class ShardReader:
    """Random access to the frames of one shard; cheap to create (reads the header only)."""

    path: Path
    header: dict[str, Any]
    offsets: np.ndarray
    data_start: int

    @classmethod
    def open(cls, path: str | Path) -> ShardReader:
        """Read a shard's header and offset table; `ValueError` naming the file if malformed."""
        path = Path(path)
        with open(path, "rb") as handle:
            head = handle.read(12)
            if len(head) < 12 or head[:8] != MAGIC:
                raise ValueError(f"{path}: not a slic frame shard (bad magic); delete it and re-run extract")
            (meta_len,) = struct.unpack("<I", head[8:])
            try:
                header = json.loads(handle.read(meta_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"{path}: corrupt shard header; delete it and re-run extract") from exc
            count = int(header.get("frames", -1)) + 1
            offsets = np.frombuffer(handle.read(8 * count), dtype="<u8")
            if count < 2 or len(offsets) != count:
                raise ValueError(f"{path}: truncated shard offset table; delete it and re-run extract")
        return cls(path, header, offsets, 12 + meta_len + 8 * count)

    @property
    def frames(self) -> int:
        return len(self.offsets) - 1

    def read_jpegs(self, start: int, count: int) -> list[bytes]:
        """The encoded frames [start, start + count) with one seek and one read."""
        if start < 0 or count < 1 or start + count > self.frames:
            raise IndexError(f"{self.path}: frames [{start}, {start + count}) outside 0..{self.frames}")
        lo, hi = int(self.offsets[start]), int(self.offsets[start + count])
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start + lo)
            blob = handle.read(hi - lo)
        cuts = (self.offsets[start:start + count + 1] - lo).astype(np.int64)
        return [blob[cuts[i]:cuts[i + 1]] for i in range(count)]

    def read_window(self, start: int, count: int, step: int = 1) -> np.ndarray:
        """Decoded frames start, start + step, ... (`count` of them) as (count, H, W, 3) uint8 RGB.

        One read covers the span; only the frames kept are decoded.
        """
        return decode_jpegs(self.read_jpegs(start, (count - 1) * step + 1)[::step])

    def content_sha256(self) -> str:
        """The content hash recorded in the header; a shard from before the hash existed is hashed once here."""
        recorded = self.header.get("content_sha256")
        if recorded:
            return str(recorded)
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            handle.seek(self.data_start - 8 * len(self.offsets))
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


def jpeg_size(jpeg: bytes) -> tuple[int, int]:
    """(height, width) of an encoded JPEG frame, read from its header (nothing is decoded)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        width, height = image.size
    return height, width


def decode_jpegs(jpegs: Sequence[bytes]) -> np.ndarray:
    """Decode JPEG frames into (T, H, W, 3) uint8 RGB with libjpeg-turbo (torchvision)."""
    import warnings

    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; pinned, they work
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(tensors, mode=ImageReadMode.RGB)
    return torch.stack(images).permute(0, 2, 3, 1).numpy()


def shard_is_intact(path: str | Path, expected: dict[str, Any]) -> bool:
    """True when the shard parses, every frame is a complete JPEG, and its header matches `expected`.

    Used to skip videos already extracted with the same settings from the same source file. A header's
    `target_fps` (extract.fps) must match even when `expected` leaves it out: a resampled shard is not the native
    frames a run at extract.fps 0 asks for.
    """
    try:
        reader = ShardReader.open(path)
    except (OSError, ValueError):
        return False
    if any(reader.header.get(k) != v for k, v in expected.items()):
        return False
    if float(reader.header.get("target_fps", 0.0)) != float(expected.get("target_fps", 0.0)):
        return False
    size = Path(path).stat().st_size - reader.data_start
    if int(reader.offsets[-1]) != size or np.any(np.diff(reader.offsets.astype(np.int64)) <= 0):
        return False
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=reader.data_start, shape=(size,))
    starts, ends = reader.offsets[:-1].astype(np.int64), reader.offsets[1:].astype(np.int64)
    return bool(np.all(data[starts] == 0xFF) and np.all(data[starts + 1] == 0xD8)
                and np.all(data[ends - 2] == 0xFF) and np.all(data[ends - 1] == 0xD9))


def _expected_header(row: dict[str, Any], short_side: int, quality: int, target_fps: float = 0.0) -> dict[str, Any]:
    """What a shard's header must say to be reused: its video, settings and source file (and, for a segment of a
    file, its frame range; for frames resampled by extract.fps, that rate: a native shard's header is as before
    the setting existed, so upgrading re-extracts nothing)."""
    source = os.stat(row["path"])
    segment = {k: int(row[k]) for k in RANGE_COLUMNS if k in row}
    resampled = {"target_fps": float(target_fps)} if target_fps > 0 else {}
    return {"video_id": row["video_id"], "short_side": short_side, "quality": quality,
            "source_bytes": source.st_size, "source_mtime_ns": source.st_mtime_ns, **segment, **resampled}


def extract_one(row: dict[str, Any], out_dir: str, short_side: int, quality: int,
                target_fps: float = 0.0) -> dict[str, Any]:
    """Extract one video to its shard unless an intact one exists; never raises for bad videos.

    `target_fps` > 0 stores the frames resampled to that rate (extract.fps), 0 every decoded frame.
    Returns {video_id, status: extracted|reused|failed, frames, bytes, sha256, height, width, fps, error, damaged};
    sha256 is the shard's content hash (written into its header when it was extracted); `damaged` says which
    undecodable packets were passed over (their frames are missing from the shard; also in its header, so a reused
    shard says it again), '' for a whole video.
    """
    from slic.data.video import VideoDecodeError, encode_jpeg_sequence

    target = shard_path(out_dir, row["video_id"])
    result: dict[str, Any] = {"video_id": row["video_id"], "path": row["path"], "shard": str(target)}
    try:
        expected = _expected_header(row, short_side, quality, target_fps)
        if shard_is_intact(target, expected):
            reader = ShardReader.open(target)
            return {**result, "status": "reused", "frames": reader.frames, "bytes": target.stat().st_size,
                    "sha256": reader.content_sha256(), "damaged": reader.header.get("damaged", ""),
                    **{k: reader.header[k] for k in ("height", "width", "fps")}}
        sequence = encode_jpeg_sequence(row["path"], short_side=short_side, quality=quality,
                                        start=int(row.get("start_frame", 0)),
                                        stop=int(row["stop_frame"]) if "stop_frame" in row else None,
                                        target_fps=target_fps)
        size_fps = {"height": sequence.height, "width": sequence.width, "fps": round(sequence.fps, 4)}
        damaged = {"damaged": sequence.damaged} if sequence.damaged else {}  # a whole video's header is as before
        size = write_shard(target, sequence.jpegs, {**expected, **size_fps, **damaged})
        return {**result, "status": "extracted", "frames": len(sequence.jpegs), "bytes": size,
                "sha256": ShardReader.open(target).header["content_sha256"], "damaged": sequence.damaged, **size_fps}
    except VideoDecodeError as exc:
        return {**result, "status": "failed", "error": exc.cause}
    except Exception as exc:  # noqa: BLE001 - one bad file must not take the run down; it is reported
        return {**result, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}


def _remove_leftovers(out_dir: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    leftovers = [p for p in out_dir.rglob(f"*{SUFFIX}.tmp-*") if p.is_file()]
    for path in leftovers:
        path.unlink()
    return len(leftovers)


def run_tasks(task: Callable[..., T], calls: Sequence[tuple[Any, ...]], *, workers: int,
              on_result: Callable[[T], None], mp_context: BaseContext | None = None, **kwargs: Any) -> None:
    """Run task(*call, **kwargs) for every call, here (workers == 1) or on a pool of `workers` processes.

    Each result goes to `on_result` as soon as it is ready. An exception from `on_result` (a stage's
    fail-fast) or from a task cancels the calls not yet started and propagates; results already
    handed over (shards written) stay.
    """
    if workers == 1:
        for call in calls:
            on_result(task(*call, **kwargs))
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp_context) as pool:
        pending: set[Future] = {pool.submit(task, *call, **kwargs) for call in calls}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    on_result(future.result())
        except Exception:
            for future in pending:
                future.cancel()
            raise


def process_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (a pool's workers, once shut down)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def extract_all(manifest: pd.DataFrame, *, out_dir: str | Path, short_side: int, quality: int,
                workers: int, fail_fast: bool = False, target_fps: float = 0.0) -> dict[str, Any]:
    """Extract every manifest video to a shard on a process pool; write <out>/index.csv.

    `target_fps` > 0 resamples every video to that frame rate (extract.fps; index.csv then has a target_fps
    column, which pretraining records in the checkpoint so that serving decodes files alike). Failures are
    collected by name (or, with `fail_fast`, stop the run with `ExtractError` after the shards already written
    are safely in place). Returns the stage report.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    removed = _remove_leftovers(out)
    rows = manifest[["video_id", "path", *(c for c in RANGE_COLUMNS if c in manifest.columns)]].to_dict("records")
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), desc="extract", unit="video", disable=not sys.stderr.isatty())

    def collect(result: dict[str, Any]) -> None:
        results.append(result)
        bar.update(1)
        if fail_fast and result["status"] == "failed":
            raise ExtractError(f"{result['path']}: {result['error']} (extract.fail_fast is on; "
                               "set it to false to skip and report failed videos)")

    try:
        run_tasks(extract_one, [(row, str(out), short_side, quality, target_fps) for row in rows], workers=workers,
                  on_result=collect)
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    ok = sorted((r for r in results if r["status"] != "failed"), key=lambda r: r["video_id"])
    failed = sorted((r for r in results if r["status"] == "failed"), key=lambda r: r["video_id"])
    index = pd.DataFrame(ok, columns=["video_id", "shard", "frames", "height", "width", "fps", "bytes", "sha256"])
    index["shard"] = [str(Path(s).relative_to(out)) for s in index["shard"]]
    if target_fps > 0:
        index["target_fps"] = float(target_fps)
    index.to_csv(out / INDEX_NAME, index=False)
    new = [r for r in ok if r["status"] == "extracted"]
    report = {
        "videos": len(rows), "extracted": len(new), "reused": len(ok) - len(new),
        "failed": [{"video_id": r["video_id"], "path": r["path"], "error": r["error"]} for r in failed],
        # extracted, but damaged packets were passed over: their frames are missing (a few, or the shard is not kept)
        "damaged": [{"video_id": r["video_id"], "path": r["path"], "note": r["damaged"]} for r in ok
                    if r.get("damaged")],
        "frames": int(sum(r["frames"] for r in ok)), "seconds": round(seconds, 3),
        "bytes": int(sum(r["bytes"] for r in ok)), "short_side": short_side, "quality": quality,
        "fps": float(target_fps) or "native",
        "workers": workers, "leftovers_removed": removed,
        "content_fingerprint": content_fingerprint({r["video_id"]: r["sha256"] for r in ok}),
    }
    return report | throughput(out, new_frames=sum(r["frames"] for r in new), new_videos=len(new),
                               reused=len(ok) - len(new), seconds=seconds, workers=workers)


def extract_as_configured(manifest: pd.DataFrame, cfg: Any, out_dir: str | Path | None = None) -> dict[str, Any]:
    """`extract_all` with every setting of the `extract` section `cfg` (slic.config.ExtractConfig), into `out_dir`
    (default cfg.out): the stage, the eval sets and the benches extract alike, frame rate included."""
    return extract_all(manifest, out_dir=cfg.out if out_dir is None else out_dir, short_side=cfg.short_side,
                       quality=cfg.quality, workers=cfg.workers, fail_fast=cfg.fail_fast, target_fps=cfg.fps)


def content_fingerprint(hashes: dict[str, str]) -> str:
    """16 hex chars naming a set of shards by content: sha256 over the sorted 'video_id<TAB>sha256' lines."""
    digest = hashlib.sha256()
    for video_id in sorted(hashes):
        digest.update(f"{video_id}\t{hashes[video_id]}\n".encode())
    return digest.hexdigest()[:16]


def throughput(out_dir: str | Path, *, new_frames: int, new_videos: int, reused: int, seconds: float,
               workers: int | str) -> dict[str, Any]:
    """The report's throughput: this run's, kept in <out>/throughput.json; or, when every shard was reused,
    the one recorded by the run that extracted them (a reused shard costs no decoding, so 0 would mislead).
    """
    path = Path(out_dir) / THROUGHPUT_NAME
    if new_frames:
        record = {"frames_per_s": round(new_frames / seconds, 1) if seconds > 0 else 0.0, "frames": new_frames,
                  "videos": new_videos, "seconds": round(seconds, 3), "workers": workers,
                  "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)
        return {"frames_per_s": record["frames_per_s"], "throughput_from": "this run", "all_reused": False}
    if not reused:
        return {"frames_per_s": 0.0, "throughput_from": "this run", "all_reused": False}
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    if "frames_per_s" not in record:
        return {"frames_per_s": 0.0, "throughput_from": "unknown", "all_reused": True,
                "note": f"every shard was reused (none extracted in this run); the run that extracted them "
                        f"recorded no throughput ({path} missing)"}
    return {"frames_per_s": record["frames_per_s"], "throughput_from": record["measured_at"], "all_reused": True,
            "note": f"every shard was reused (none extracted in this run); frames_per_s is the throughput of the "
                    f"run that extracted them ({record['videos']} videos, {record['frames']} frames, "
                    f"{record['workers']} workers, {record['measured_at']})"}


def read_index(out_dir: str | Path) -> pd.DataFrame:
    """The shard index written by `extract_all` (video_id, shard, frames, height, width, fps, bytes, sha256)."""
    path = Path(out_dir) / INDEX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no frame index; run the `extract` stage first (dvc repro extract)")
    return pd.read_csv(path, dtype={"video_id": str, "shard": str, "sha256": str},
                       keep_default_na=False)  # a video named NA or null keeps its name


def frame_rate_of(out_dir: str | Path) -> float:
    """The frame rate extract resampled the shards of <out> to (extract.fps), 0.0 when they hold every decoded
    frame: pretraining records it in the checkpoint, so that search and serving decode a file as its shard was."""
    index = read_index(out_dir)
    rates = sorted(set(index["target_fps"].astype(float))) if "target_fps" in index and len(index) else [0.0]
    if len(rates) > 1:
        raise ValueError(f"{Path(out_dir) / INDEX_NAME}: shards at several frame rates {rates}; re-run the "
                         "`extract` stage (dvc repro extract)")
    return rates[0]


def content_hashes(out_dir: str | Path, video_ids: Sequence[str] | None = None, *,
                   missing: str | None = None) -> dict[str, str]:
    """{video_id: content sha256} of the shards in <out>/index.csv (the flow stage's index works too).

    An index from before the hashes existed, or a video missing from it, falls back to the shard's own
    header (hashing its bytes once for a shard older than the hash). A video without a shard gets
    `missing`, or raises naming the file when `missing` is None.
    """
    out = Path(out_dir)
    if (out / INDEX_NAME).is_file() or video_ids is None:
        index = read_index(out)
        recorded = dict(zip(index["video_id"], index["sha256"])) if "sha256" in index else {}
        wanted = list(index["video_id"]) if video_ids is None else list(video_ids)
    else:
        recorded, wanted = {}, list(video_ids)
    hashes = {}
    for video_id in wanted:
        value = recorded.get(video_id)
        if not isinstance(value, str) or not value:
            path = shard_path(out, video_id)
            if not path.is_file():
                if missing is None:
                    raise FileNotFoundError(f"{path}: no shard for {video_id}; re-run the stage that writes {out}")
                hashes[video_id] = missing
                continue
            value = ShardReader.open(path).content_sha256()
        hashes[video_id] = value
    return hashes
