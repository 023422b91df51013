"""Stage `flow`: TV-L1 optical flow of every video of the chosen splits, one shard per video.

Input: the RGB frame shards of stage `extract` (frames.py), converted to greyscale. Output:
``<out>/<video_id>.shard`` in the same shard format (offset table + JPEG frames), one greyscale
JPEG per frame holding the horizontal component u only (what SLIC's flow view uses), and
``<out>/index.csv`` (with each shard's content sha256, as for frame shards).

Only what the clips read is computed: clips take every `frame_step`-th decoded frame (pretrain.frame_step)
from frame 0, so a flow shard holds the frames 0, s, 2s, ... of its video (s = frame_step, recorded in
the shard's header): flow frame k is the flow from decoded frame k*s to (k+1)*s, the motion between two
consecutive frames of a clip, and the last frame repeats the one before it. At frame_step 1 that is every
pair (t, t+1) and the shard has as many frames as its RGB shard; at 2 it is half the pairs.

Quantisation (as the TV-L1 toolkits that feed two-stream networks do): u is clipped to
[-bound, bound] pixels and mapped linearly to 0..255, ``q = round((u + bound) * 255 / (2 bound))``;
`dequantize` inverts it (one step is 2 bound / 255 px, 0.157 px at bound 20).

Like `extract`: videos run in parallel on a process pool (chunks of videos, batched pairs for the
torch method), shards are written atomically, an intact shard made from the same frame shard with
the same settings is kept, and a video whose frame shard is missing or corrupt is reported by name
(or stops the stage with fail_fast).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from slic.data.frames import (INDEX_NAME, SUFFIX, ShardReader, _remove_leftovers, content_fingerprint,
                               process_cpu_seconds, read_index, run_tasks, shard_is_intact, shard_path, write_shard)

if TYPE_CHECKING:
    from slic.tvl1 import TVL1Params

FLOW_KIND = "tvl1_u"
TASK_PAIRS = 256  # frame pairs per process-pool task (several torch batches on a CPU)


class FlowError(RuntimeError):
    """The flow stage stopped (fail_fast) on a video whose frame shard could not be used, or flow is missing."""


def quantize(u: np.ndarray, bound: float) -> np.ndarray:
    """Flow in pixels -> uint8: clip to [-bound, bound], then linearly to 0..255 (0 px -> 127.5)."""
    scaled = (np.clip(u, -bound, bound) + bound) * (255.0 / (2.0 * bound))
    return np.rint(scaled).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float) -> np.ndarray:
    """uint8 -> flow in pixels (float32), the inverse of `quantize` up to one step."""
    return (q.astype(np.float32) * (2.0 * bound / 255.0) - bound).astype(np.float32)


def encode_frames(q: np.ndarray, quality: int) -> list[bytes]:
    """(T, H, W) uint8 -> greyscale JPEGs (libjpeg-turbo via torchvision) at `quality` (1..100)."""
    import torch
    from torchvision.io import encode_jpeg

    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; pinned, they work
        warnings.simplefilter("ignore", DeprecationWarning)
        return [encode_jpeg(torch.from_numpy(np.ascontiguousarray(f))[None], quality=quality).numpy().tobytes()
                for f in q]


def decode_frames(jpegs: list[bytes]) -> np.ndarray:
    """Greyscale JPEGs -> (T, H, W) uint8."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        images = decode_jpeg(tensors, mode=ImageReadMode.GRAY)
    return torch.stack(images)[:, 0].numpy()


def read_flow_u(flow_dir: str | Path, video: str, start: int, length: int, step: int = 1) -> np.ndarray:
    """Quantised u at decoded frames start, start + step, ... (`length` of them) of `video`, (length, H, W) uint8.

    `video` is the video's id as in the manifest and the frame index ("Class/v_Class_g01_c01";
    a trailing ".shard" is accepted). The flow at decoded frame t is the flow t -> t + step, so the
    shard must have been made at this `step` (its header's frame_step): another step is refused with
    the fix. `dequantize(..., bound)` gives pixels; as an image for the network, replicate the one
    channel to three.
    """
    video_id = video[: -len(SUFFIX)] if video.endswith(SUFFIX) else video
    path = shard_path(flow_dir, video_id)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no flow shard for {video_id}; run the `flow` stage (dvc repro flow)")
    reader = ShardReader.open(path)
    made_at = int(reader.header.get("frame_step", 1))
    if made_at != step or start % step:
        raise FlowError(f"{path}: flow made at frame_step {made_at}, read at frame_step {step} from frame {start}; "
                        "the flow stage follows pretrain.frame_step: re-run it (dvc repro flow)")
    return decode_frames(reader.read_jpegs(start // step, length))


def require_flow(flow_dir: str | Path, video_ids: list[str], frame_step: int = 1) -> None:
    """Stop before training when a video has no flow shard, or one made at another frame_step: one line naming
    the folder, the videos and the fix."""
    missing = [v for v in video_ids if not shard_path(flow_dir, v).is_file()]
    if missing:
        raise FlowError(f"{flow_dir}: no flow shard for {len(missing)} of {len(video_ids)} training videos "
                        f"(e.g. {', '.join(missing[:3])}); flow.enabled needs the `flow` stage first "
                        "(dvc repro flow, with train in flow.splits)")
    other = [v for v in video_ids if int(ShardReader.open(shard_path(flow_dir, v)).header.get("frame_step", 1))
             != frame_step]
    if other:
        raise FlowError(f"{flow_dir}: {len(other)} of {len(video_ids)} flow shards were made at another frame_step "
                        f"than pretrain.frame_step {frame_step} (e.g. {', '.join(other[:3])}); re-run the `flow` "
                        "stage (dvc repro flow)")


def _source_stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"source_bytes": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def expected_header(video_id: str, frame_shard: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Header fields a reusable flow shard must have: same video, frame shard and settings."""
    return {"video_id": video_id, "kind": FLOW_KIND, **_source_stamp(frame_shard), **settings}


def _settings(method: str, bound: float, quality: int, params: TVL1Params, frame_step: int) -> dict[str, Any]:
    return {"method": method, "bound": bound, "quality": quality, "tvl1": asdict(params), "frame_step": frame_step}


def _read_grey(frame_shard: Path, frame_step: int = 1) -> np.ndarray:
    """Frames 0, frame_step, 2 frame_step, ... of an RGB shard as (T, H, W) uint8 grey; errors name the shard."""
    if not frame_shard.is_file():
        raise FileNotFoundError(f"{frame_shard}: frame shard missing; re-run the `extract` stage")
    reader = ShardReader.open(frame_shard)
    try:
        rgb = reader.read_window(0, (reader.frames - 1) // frame_step + 1, frame_step)
    except (RuntimeError, ValueError, IndexError) as exc:
        raise ValueError(f"{frame_shard}: corrupt frame shard ({type(exc).__name__}: {exc}); "
                         "re-run the `extract` stage") from exc
    if len(rgb) < 2:
        raise ValueError(f"{frame_shard}: {len(rgb)} frame(s) at frame_step {frame_step}; flow needs at least 2")
    from slic.tvl1 import to_grey  # torch: imported by the stages that compute flow, not by every stage

    return to_grey(rgb)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise FlowError("flow.device = 'cuda' but torch sees no CUDA device; use auto or cpu")
    return device


def flow_chunk(rows: list[dict[str, Any]], out_dir: str, method: str, device: str, bound: float, quality: int,
               params: TVL1Params, batch_pairs: int, frame_step: int, threads: int) -> list[dict[str, Any]]:
    """Flow shards for a chunk of videos (rows: video_id, frame_shard); never raises for bad inputs.

    The pairs are (k s, (k+1) s) for s = `frame_step` (see the module's docstring).
    The torch method computes the pairs of all videos of one frame size in batches of up to
    `batch_pairs`. Returns one result per row: status computed|reused|failed, frames, bytes, sha256 (the
    content hash written into the shard's header), error.
    """
    import torch

    from slic.tvl1 import tvl1_opencv, tvl1_torch

    if threads > 0:
        torch.set_num_threads(threads)
        if method == "opencv":  # OpenCV only for its own method: a CUDA machine may have no cv2 at all
            import cv2

            cv2.setNumThreads(threads)
    settings = _settings(method, bound, quality, params, frame_step)
    results: dict[str, dict[str, Any]] = {}
    todo: list[tuple[dict[str, Any], np.ndarray, dict[str, Any]]] = []
    for row in rows:
        source, target = Path(row["frame_shard"]), shard_path(out_dir, row["video_id"])
        result = {"video_id": row["video_id"], "frame_shard": str(source), "shard": str(target)}
        try:
            if not source.is_file():
                raise FileNotFoundError(f"{source}: frame shard missing; re-run the `extract` stage")
            expected = expected_header(row["video_id"], source, settings)
            if shard_is_intact(target, expected):
                reader = ShardReader.open(target)
                results[row["video_id"]] = {**result, "status": "reused", "frames": reader.frames,
                                            "bytes": target.stat().st_size, "sha256": reader.content_sha256()}
                continue
            todo.append((result, _read_grey(source, frame_step), expected))
        except Exception as exc:  # noqa: BLE001 - one bad shard must not take the run down; it is reported
            results[row["video_id"]] = {**result, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, (_, grey, _) in enumerate(todo):
        by_size.setdefault(grey.shape[1:], []).append(k)
    flows: dict[int, np.ndarray] = {}
    for members in by_size.values():
        batch: list[int] = []
        for k in members + [-1]:
            pending = sum(len(todo[m][1]) - 1 for m in batch)
            if batch and (k < 0 or pending + len(todo[k][1]) - 1 > batch_pairs):
                first = np.concatenate([todo[m][1][:-1] for m in batch])
                second = np.concatenate([todo[m][1][1:] for m in batch])
                if method == "opencv":
                    uv = tvl1_opencv(first, second, params)
                else:
                    uv = tvl1_torch(first, second, params, device=device)
                cuts = np.cumsum([0] + [len(todo[m][1]) - 1 for m in batch])
                for m, lo, hi in zip(batch, cuts[:-1], cuts[1:]):
                    flows[m] = uv[lo:hi, ..., 0]
                batch = []
            if k >= 0:
                batch.append(k)
    for k, (result, grey, expected) in enumerate(todo):
        try:
            u = flows[k]
            q = quantize(np.concatenate([u, u[-1:]]), bound)  # the last frame repeats the previous flow
            size = write_shard(result["shard"], encode_frames(q, quality),
                               {**expected, "height": int(q.shape[1]), "width": int(q.shape[2])})
            results[result["video_id"]] = {**result, "status": "computed", "frames": len(q), "bytes": size,
                                           "sha256": ShardReader.open(result["shard"]).header["content_sha256"]}
        except Exception as exc:  # noqa: BLE001
            results[result["video_id"]] = {**result, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return [results[row["video_id"]] for row in rows]


def select_videos(manifest: pd.DataFrame, frames_dir: str | Path, splits: tuple[str, ...]) -> list[dict[str, Any]]:
    """Rows (video_id, frame_shard, frames) of the manifest's videos in `splits`.

    A video without a row in the frame index (its extraction failed) still gets its expected shard
    path, so it is reported by name as missing rather than silently dropped.
    """
    index = read_index(frames_dir)
    shards = dict(zip(index["video_id"], index["shard"]))
    frames = dict(zip(index["video_id"], index["frames"].astype(int)))
    chosen = manifest[manifest["split"].isin(splits)]["video_id"].astype(str).tolist()
    return [{"video_id": v, "frames": frames.get(v, 1),
             "frame_shard": str(Path(frames_dir) / shards[v]) if v in shards else str(shard_path(frames_dir, v))}
            for v in sorted(chosen)]


def flow_all(manifest: pd.DataFrame, *, frames_dir: str | Path, out_dir: str | Path, splits: tuple[str, ...],
             method: str, device: str, bound: float, quality: int, params: TVL1Params, batch_pairs: int,
             workers: int, fail_fast: bool = False, frame_step: int = 1) -> dict[str, Any]:
    """Flow shards for every video of `splits` at `frame_step`; write <out>/index.csv; return the stage report.

    CPU: chunks of videos on a process pool of `workers` (one thread each). CUDA (torch method):
    chunks in this process, one batch of up to `batch_pairs` pairs at a time on the GPU.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    removed = _remove_leftovers(out)
    rows = select_videos(manifest, frames_dir, splits)
    device = _resolve_device(device) if method == "torch" else "cpu"
    task_pairs = max(batch_pairs, TASK_PAIRS)
    chunks: list[list[dict[str, Any]]] = [[]]

    def pairs(row: dict[str, Any]) -> int:
        return max(row["frames"] - 1, 0) // frame_step

    for row in rows:  # tasks of about task_pairs frame pairs each
        if chunks[-1] and sum(pairs(r) for r in chunks[-1]) + pairs(row) > task_pairs:
            chunks.append([])
        chunks[-1].append(row)
    chunks = [c for c in chunks if c]
    started, cpu_started = time.perf_counter(), process_cpu_seconds()
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), desc="flow", unit="video", disable=not sys.stderr.isatty())
    args = (str(out), method, device, bound, quality, params, batch_pairs, frame_step)

    def collect(done: list[dict[str, Any]]) -> None:
        results.extend(done)
        bar.update(len(done))
        bad = next((r for r in done if r["status"] == "failed"), None)
        if fail_fast and bad:
            raise FlowError(f"{bad['video_id']}: {bad['error']} (flow.fail_fast is on; set it to false to skip "
                            "and report failed videos)")

    try:
        # CUDA: one process. CPU: spawn, not fork: a forked child of a process whose torch thread pool
        # has run deadlocks.
        run_tasks(flow_chunk, [(part, *args) for part in chunks], workers=1 if device == "cuda" else workers,
                  on_result=collect, mp_context=multiprocessing.get_context("spawn"),
                  threads=0 if device == "cuda" else 1)
    finally:
        bar.close()
    seconds, cpu_seconds = time.perf_counter() - started, process_cpu_seconds() - cpu_started
    ok = sorted((r for r in results if r["status"] != "failed"), key=lambda r: r["video_id"])
    failed = sorted((r for r in results if r["status"] == "failed"), key=lambda r: r["video_id"])
    index = pd.DataFrame(ok, columns=["video_id", "shard", "frames", "bytes", "sha256"])
    index["shard"] = [str(Path(s).relative_to(out)) for s in index["shard"]]
    index.to_csv(out / INDEX_NAME, index=False)
    new = [r for r in ok if r["status"] == "computed"]
    new_pairs = sum(r["frames"] - 1 for r in new)
    return {
        "videos": len(rows), "computed": len(new), "reused": len(ok) - len(new),
        "failed": [{"video_id": r["video_id"], "frame_shard": r["frame_shard"], "error": r["error"]} for r in failed],
        "frames": int(sum(r["frames"] for r in ok)), "pairs_computed": int(new_pairs), "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3), "pairs_per_s": round(new_pairs / seconds, 1) if seconds > 0 and new_pairs else 0.0,
        "bytes": int(sum(r["bytes"] for r in ok)), "splits": list(splits), "method": method, "device": device,
        "bound": bound, "quality": quality, "tvl1": asdict(params), "batch_pairs": batch_pairs, "frame_step": frame_step,
        "workers": workers, "leftovers_removed": removed, "cpu_count": os.cpu_count(),
        "content_fingerprint": content_fingerprint({r["video_id"]: r["sha256"] for r in ok}),
    }
