"""Near twins across the split: test videos whose frames look nearly identical to a train video's.

A test clip cut from the same recording as a train clip (a class folder split per video), or a copy of a train
video, is found by its scene, person and light, so test recall then measures the leak, not the encoder. This
check needs no names and no model: each extracted video gets a signature (3 frames spread over it, each
grayscale at 16 x 16, standardised; their mean, unit length), and a test video has a twin when its signature's
cosine with some train video's is 0.98 or more.

Calibrated on real video (ucf101_6, the extract stage's shards at short side 64): read as a class folder split per
video, 53 of 220 test videos have a twin (24%); split by recording (manifest.group_pattern), 1 of 236 (0.4%);
UCF101's official split 1, 5 of 202 (2.5%: BasketballDunk g01_c02 and g10_c02 at cosine 0.999, a source filed
under two group numbers); the synthetic default (split by group), 0 of 210. So the extract stage warns when 5% or
more of the test videos have one, and its report counts them whatever their share.

An unlabelled archive has no split: there a video's twin is one of another recording (`archive_twins`: a copy,
or a clip of a recording no manifest.group_pattern names), which search returns as its first hit. ucf101_6 read
as an unlabelled folder: 200 of 731 videos (27%) have one when each file is its own recording, 13 (1.8%) with the
recordings named (BasketballDunk g01_c02 and g10_c02 again, at 0.999); the same 5% warning.

An eval set (the transfer protocol) is checked against the videos the encoder trained on (`pretraining_twins`):
ucf101_6 as a class folder with its own test draw, against an encoder pretrained on its official split 1, has 151
of 236 test videos that pretraining trained on (all at cosine 1.0), and none among the 85 of the official test.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SIGNATURE_FRAMES = 3
SIGNATURE_SIDE = 16
TWIN_COSINE = 0.98
WARN_SHARE = 0.05
EXAMPLES = 5
SIGNATURES_PER_TASK = 64  # shards a worker process takes at a time
BLOCK_CELLS = 64_000_000  # query x gallery similarities computed at once (float32: 256 MB)


def frame_signature(shard: str | Path, frames: int = SIGNATURE_FRAMES, side: int = SIGNATURE_SIDE) -> np.ndarray:
    """A video's signature from its frame shard: `frames` frames spread over it, each grayscale at side x side and
    standardised (brightness and contrast left out), averaged and scaled to unit length."""
    from PIL import Image

    from slic.data.frames import ShardReader

    reader = ShardReader.open(shard)
    picks = np.linspace(0, reader.frames - 1, min(frames, reader.frames)).round().astype(int)
    rows = []
    for pick in picks:
        image = Image.open(io.BytesIO(reader.read_jpegs(int(pick), 1)[0]))
        image.draft("L", (side * 2, side * 2))  # let the JPEG decoder scale down: most of the cost saved
        gray = np.asarray(image.convert("L").resize((side, side), Image.BILINEAR), dtype=np.float32).ravel()
        rows.append((gray - gray.mean()) / (gray.std() + 1e-6))
    mean = np.mean(rows, axis=0)
    return mean / (np.linalg.norm(mean) + 1e-12)


def signatures(shards: list[Path], workers: int = 1) -> list[np.ndarray]:
    """`frame_signature` of each shard, in order; `workers` > 1 processes share them (ucf101_6's 731 shards, in the
    page cache: 0.45 s on one core, 0.25 s on two; a collection read from disk waits on its reads more)."""
    if workers <= 1 or len(shards) < 2 * SIGNATURES_PER_TASK:
        return [frame_signature(shard) for shard in shards]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(frame_signature, shards, chunksize=SIGNATURES_PER_TASK))


def near_twins(videos: pd.DataFrame, frames_dir: str | Path, *, query: str = "test",
               gallery: Sequence[str] = ("train",), threshold: float = TWIN_COSINE, workers: int = 1) -> dict[str, Any]:
    """How many `query`-split videos (rows with video_id, split) have a `gallery`-split twin among the shards in
    `frames_dir`: the count, the share, and the closest pairs as examples. Videos without a shard are left out
    (extract names them); with no query or gallery video there is nothing to compare. `workers` processes compute
    the signatures (the same answer at any number)."""
    from slic.data.frames import shard_path

    on_disk = videos[[shard_path(frames_dir, v).is_file() for v in videos["video_id"]]]
    queries = on_disk[on_disk["split"] == query]["video_id"].tolist()
    others = on_disk[on_disk["split"].isin(gallery)]["video_id"].tolist()
    report: dict[str, Any] = {"query_split": query, "gallery_splits": list(gallery), "threshold": threshold}
    return {**report, **_twins_between([(v, shard_path(frames_dir, v)) for v in queries],
                                       [(v, shard_path(frames_dir, v)) for v in others], threshold, workers)}


def pretraining_twins(eval_videos: pd.DataFrame, eval_frames: str | Path, pretraining_videos: pd.DataFrame,
                      pretraining_frames: str | Path, *, threshold: float = TWIN_COSINE,
                      workers: int = 1) -> dict[str, Any]:
    """An eval set's test videos (rows with video_id, split) against the videos the encoder trained on (the main
    manifest's train and val rows, whose shards are in `pretraining_frames`): the transfer protocol's leak, a test
    video that the pretraining data holds too (Kinetics and UCF101 share YouTube sources). Counted as
    `near_twins` counts; videos without a shard are left out."""
    from slic.data.frames import shard_path

    def shards(videos: pd.DataFrame, splits: Sequence[str], folder: str | Path) -> list[tuple[str, Path]]:
        chosen = videos[videos["split"].isin(splits)]["video_id"]
        return [(v, shard_path(folder, v)) for v in chosen if shard_path(folder, v).is_file()]

    report: dict[str, Any] = {"query_split": "test", "gallery_splits": ["pretraining train", "pretraining val"],
                              "threshold": threshold}
    return {**report, **_twins_between(shards(eval_videos, ("test",), eval_frames),
                                       shards(pretraining_videos, ("train", "val"), pretraining_frames),
                                       threshold, workers)}


def _twins_between(queries: list[tuple[str, Path]], gallery: list[tuple[str, Path]], threshold: float,
                   workers: int) -> dict[str, Any]:
    """How many of the (name, shard) `queries` have a twin among `gallery`: queries, with_twin, share, and the
    closest pairs as examples (ties by name); nothing to compare when either is empty."""
    counted: dict[str, Any] = {"queries": len(queries), "with_twin": 0, "share": 0.0, "examples": [], "all_pairs": []}
    if not queries or not gallery:
        return counted
    computed = signatures([shard for _, shard in [*queries, *gallery]], workers)
    best, nearest = _closest(np.stack(computed[:len(queries)]), np.stack(computed[len(queries):]))
    twins = np.flatnonzero(best >= threshold)
    closest = sorted(twins, key=lambda i: (-round(float(best[i]), 4), queries[i][0]))  # ties by name
    pairs = [{"query": queries[i][0], "twin": gallery[nearest[i]][0], "cosine": round(float(best[i]), 4)}
             for i in closest]
    counted.update(with_twin=int(len(twins)), share=round(len(twins) / len(queries), 4), examples=pairs[:EXAMPLES],
                   all_pairs=pairs)
    return counted


def archive_twins(videos: pd.DataFrame, frames_dir: str | Path, *, threshold: float = TWIN_COSINE,
                  workers: int = 1) -> dict[str, Any]:
    """Near twins within an unlabelled archive (rows with video_id and group), where there is no split: how many
    videos have one of another recording (group: manifest.group_pattern's, else each file), and the closest pairs
    (each pair once). A recording's own clips and a long file's segments are never each other's twins. Copies and
    re-encodes come back from `slic search` as each other's first hit; clips of one recording without a
    group_pattern do too. Videos without a shard are left out."""
    from slic.data.frames import shard_path

    on_disk = videos[[shard_path(frames_dir, v).is_file() for v in videos["video_id"]]]
    ids = on_disk["video_id"].tolist()
    report: dict[str, Any] = {"scope": "archive", "threshold": threshold, "videos": len(ids), "with_twin": 0,
                              "share": 0.0, "examples": [], "all_pairs": []}
    if len(ids) < 2:
        return report
    matrix = np.stack(signatures([shard_path(frames_dir, v) for v in ids], workers))
    recording = np.unique(on_disk["group"].astype(str).to_numpy(), return_inverse=True)[1]
    best, nearest = _closest(matrix, matrix, recording)  # never itself, nor its own recording
    twins = np.flatnonzero(best >= threshold)
    pairs = {tuple(sorted((int(i), int(nearest[i])))): float(best[i]) for i in twins}
    closest = sorted(pairs, key=lambda pair: (-round(pairs[pair], 4), ids[pair[0]], ids[pair[1]]))
    listed = [{"query": ids[a], "twin": ids[b], "cosine": round(pairs[(a, b)], 4)} for a, b in closest]
    report.update(with_twin=int(len(twins)), share=round(len(twins) / len(ids), 4), examples=listed[:EXAMPLES],
                  all_pairs=listed)
    return report


def write_twin_pairs(report: dict[str, Any], path: str | Path, paths: Mapping[str, str],
                     twin_paths: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every pair a twins check found (its report's `all_pairs`, closest first) as a CSV at `path`: video_id, twin,
    cosine, and each one's file from `paths` (video_id -> path; the twins' from `twin_paths` when they come from
    another manifest), so a user can open, compare and remove them; the report has only the closest few. The file
    is written when no pair is found too (a header), so it never describes an earlier run. Returns the report
    without the list, naming the file as `pairs_file`."""
    twin_paths = paths if twin_paths is None else twin_paths
    rows = [{"video_id": pair["query"], "twin": pair["twin"], "cosine": pair["cosine"],
             "path": paths.get(pair["query"], ""), "twin_path": twin_paths.get(pair["twin"], "")}
            for pair in report.get("all_pairs", [])]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["video_id", "twin", "cosine", "path", "twin_path"]).to_csv(path, index=False)
    return {**{key: value for key, value in report.items() if key != "all_pairs"}, "pairs_file": str(path)}


def _closest(queries: np.ndarray, gallery: np.ndarray,
             groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each query signature's best cosine in `gallery` and where it is, computed in blocks of at most BLOCK_CELLS
    similarities (256 MB at any size); with `groups` (queries and gallery the same rows), a row's own group is
    left out."""
    best = np.empty(len(queries), dtype=np.float32)
    nearest = np.empty(len(queries), dtype=np.int64)
    rows = max(1, BLOCK_CELLS // len(gallery))
    for start in range(0, len(queries), rows):
        block = queries[start:start + rows] @ gallery.T
        if groups is not None:
            block[groups[start:start + rows, None] == groups[None, :]] = -np.inf
        best[start:start + len(block)] = block.max(axis=1)
        nearest[start:start + len(block)] = block.argmax(axis=1)
    return best, nearest


def archive_twins_warning(report: dict[str, Any]) -> str:
    """One line when WARN_SHARE or more of an archive's videos have a twin of another recording (empty otherwise):
    what they are likely to be and what to do."""
    return _warning(report, "videos", "videos", "have a video of another file or recording whose frames look nearly "
                    "the same", "clips of one recording, or copies; `slic search` returns them as each other's first "
                    "hits. If they are clips of one recording set manifest.group_pattern (the manifest stage suggests "
                    "one when names form families) and search with --other-recordings; remove copies")


def pretraining_twins_warning(report: dict[str, Any]) -> str:
    """One line when WARN_SHARE or more of an eval set's test videos look like a video the encoder trained on
    (`pretraining_twins`; empty otherwise)."""
    return _warning(report, "queries", "test videos", "look nearly the same as a video the encoder trained on",
                    "the transfer recall measures them, not transfer; take them out of the eval set or out of the "
                    "pretraining data")


def twins_warning(report: dict[str, Any], advice: str) -> str:
    """One line when WARN_SHARE or more of the query videos have a twin (empty otherwise), with `advice`: what to
    change in this stage's data (e.g. manifest.group_pattern)."""
    split = report.get("query_split", "")
    return _warning(report, "queries", f"{split} videos", f"have a {'/'.join(report.get('gallery_splits', []))} video "
                    "whose frames look nearly the same", "clips of one recording or copies on both sides of the split, "
                    f"so {split} recall measures them, not the encoder; {advice}")


def _warning(report: dict[str, Any], counted: str, subject: str, alike: str, meaning: str) -> str:
    """'<with_twin> of <report[counted]> <subject> (<share>%) <alike> (e.g. <the closest pair>, cosine c): <meaning>'
    when the share is WARN_SHARE or more, else empty."""
    if not report.get(counted) or report["share"] < WARN_SHARE:
        return ""
    first = report["examples"][0]
    listed = f"; every pair: {report['pairs_file']}" if report.get("pairs_file") else ""
    return (f"{report['with_twin']} of {report[counted]} {subject} ({100 * report['share']:.0f}%) {alike} (e.g. "
            f"{first['query']} and {first['twin']}, cosine {first['cosine']:.3f}): {meaning}{listed}")
