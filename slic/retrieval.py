"""Video retrieval metrics (the IIC protocol): cosine similarity, hit@k if any neighbour shares the class."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50)
PROTOCOL_GALLERY = "train+val"  # the IIC protocol's gallery: the whole official train list (our val is a carve)


def mean_pairwise_cosine(unit: np.ndarray) -> float:
    """The mean cosine similarity over every pair of distinct rows of `unit` (rows of norm 1, `normalize_rows`):
    near 1 when the embeddings barely tell videos apart (ALIKE_COSINE), near 0 for a trained encoder's; in O(n d),
    without the n x n matrix."""
    n = len(unit)
    if n < 2:
        return 0.0
    total = unit.sum(axis=0, dtype=np.float64)
    return float((total @ total - np.square(unit).sum(dtype=np.float64)) / (n * (n - 1)))
# Above this mean pairwise cosine the embeddings barely tell videos apart: an untrained r3d_18_tiny gives 0.97 on
# ucf101_6, every trained encoder there <= 0.08 (bench/label_free.py).
ALIKE_COSINE = 0.5
# Similarities held at once by the exact search (a block of query rows x the gallery), with their negation and
# argpartition's int64 indices about 0.4 GB whatever the archive's size (bench/neighbours.py). Galleries up to
# 4,096 videos keep 4,096 query rows a block.
BLOCK_ELEMENTS = 2**24


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def nearest_gallery(queries: np.ndarray, gallery: np.ndarray, k: int, *, block: int = 4096) -> np.ndarray:
    """Indices (n_queries, k) of the k most cosine-similar gallery rows, best first (exact)."""
    return _top_k(normalize_rows(queries), normalize_rows(gallery), k, block=block)[0]


def _top_k(q: np.ndarray, g: np.ndarray, k: int, *, block: int, exclude: np.ndarray | None = None,
           groups: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(indices, similarities) of the k largest dot products of each unit row of `q` with `g`, best first;
    query row i never finds gallery row exclude[i] (itself, when the queries are gallery rows), nor, with
    `groups` (the queries' and the gallery's group numbers), a gallery row of its own group."""
    largest = 0 if groups is None else int(np.unique(groups[1], return_counts=True)[1].max())
    k = min(k, len(g) - max(int(exclude is not None), largest))
    block = max(1, min(block, BLOCK_ELEMENTS // max(len(g), 1)))  # a Kinetics-size gallery: fewer rows a block
    indices = np.empty((len(q), k), dtype=np.int64)
    best = np.empty((len(q), k), dtype=np.float32)
    for start in range(0, len(q), block):
        sims = q[start:start + block] @ g.T
        if exclude is not None:
            sims[np.arange(len(sims)), exclude[start:start + block]] = -np.inf
        if groups is not None:
            sims[groups[0][start:start + block, None] == groups[1][None, :]] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(sims, part, axis=1).argsort(axis=1, kind="stable")[:, ::-1]
        indices[start:start + block] = np.take_along_axis(part, order, axis=1)
        best[start:start + block] = np.take_along_axis(sims, indices[start:start + block], axis=1)
    return indices, best


def hits_at_k(query_labels: np.ndarray, gallery_labels: np.ndarray, neighbours: np.ndarray,
              ks: Sequence[int] = DEFAULT_KS) -> dict[int, np.ndarray]:
    """Per query and k: True when any of its k nearest gallery videos has the query's class."""
    same = np.asarray(gallery_labels)[neighbours] == np.asarray(query_labels)[:, None]
    return {k: same[:, :k].any(axis=1) for k in ks}


def recall_at_k(queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """{'recall@k': share of queries with a same-class video among their k nearest gallery videos}."""
    if len(queries) == 0 or len(gallery) == 0:
        raise ValueError(f"retrieval needs queries and a gallery; got {len(queries)} and {len(gallery)}")
    neighbours = nearest_gallery(queries, gallery, max(ks))
    return {f"recall@{k}": float(hit.mean()) for k, hit in hits_at_k(query_labels, gallery_labels, neighbours,
                                                                      ks).items()}


def evaluate_embeddings(path: str | Path, *, query_split: str = "test", gallery_split: str = "train",
                        ks: Sequence[int] = DEFAULT_KS) -> dict[str, Any]:
    """Recall@k of `query_split` videos against `gallery_split` ones, overall and per class.

    Every video is evaluated (no batch is dropped). Reads the .npz written by the `embed` stage.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no embeddings; run the `embed` stage first (dvc repro embed)")
    data = np.load(path)
    split, labels, names = data["split"], data["label"], data["class_name"]
    queries, gallery = split_mask(split, query_split), split_mask(split, gallery_split)
    if not queries.any() or not gallery.any():
        raise ValueError(f"{path}: needs {query_split!r} queries and a {gallery_split!r} gallery; "
                         f"found {int(queries.sum())} and {int(gallery.sum())}")
    neighbours = nearest_gallery(data["embedding"][queries], data["embedding"][gallery], max(ks))
    hits = hits_at_k(labels[queries], labels[gallery], neighbours, ks)
    query_names = names[queries]
    per_class = {
        str(name): {f"recall@{k}": float(hits[k][query_names == name].mean()) for k in ks[:2]}
        | {"queries": int((query_names == name).sum())}
        for name in sorted(set(query_names.tolist()))
    }
    return {"queries": int(queries.sum()), "gallery": int(gallery.sum()), "query_split": query_split,
            "gallery_split": gallery_split, **{f"recall@{k}": float(hits[k].mean()) for k in ks},
            "per_class": per_class}


def write_recall_curve(report: dict[str, Any], path: str | Path) -> None:
    """recall@k as a two-column CSV (k, recall) for `dvc plots`."""
    rows = sorted((int(key.split("@")[1]), value) for key, value in report.items()
                  if key.startswith("recall@"))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("k,recall\n" + "".join(f"{k},{v:.6f}\n" for k, v in rows))


def nearest_others(vectors: np.ndarray, k: int, *, rows: np.ndarray | None = None, files: np.ndarray | None = None,
                   block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out neighbours: (indices, cosine similarities), each (len(rows), k) best first, of each of
    `rows` (default every row) among the other rows (a row never finds itself, even beside an identical one).
    With `files` (each row's source file), among the rows of other files only: leave-one-file-out, for the
    segments of long videos, whose nearest rows would otherwise be their own recording's next segments."""
    unit = normalize_rows(vectors)
    rows = np.arange(len(unit)) if rows is None else np.asarray(rows, dtype=np.int64)
    groups = None
    if files is not None:
        numbers = np.unique(np.asarray(files), return_inverse=True)[1].astype(np.int64)
        groups = (numbers[rows], numbers)
    return _top_k(unit[rows], unit, k, block=block, exclude=rows, groups=groups)


def source_units(manifest: str | Path) -> tuple[dict[str, str], str]:
    """(video_id -> what a query leaves out with itself, "file" or "recording"), from a manifest CSV (empty when
    the file is absent): the file it was cut from (the segments of one long video, manifest.segment_seconds, share
    it), or its recording (the manifest's group) once some recording holds several files (an unlabelled folder's
    recordings named by manifest.group_pattern): a clip's nearest would otherwise be its sibling clips."""
    import csv

    manifest = Path(manifest)
    if not manifest.is_file():
        return {}, "file"
    with manifest.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("video_id")]
    files = {row["video_id"]: row["path"] for row in rows}
    recordings = {row["video_id"]: row.get("group") or row["path"] for row in rows}
    files_of_recording: dict[str, set[str]] = {}
    for video_id, recording in recordings.items():
        files_of_recording.setdefault(recording, set()).add(files[video_id])
    if any(len(held) > 1 for held in files_of_recording.values()):
        return recordings, "recording"
    return files, "file"


def files_of(ids: np.ndarray, files: dict[str, str]) -> np.ndarray | None:
    """Each id's source file (or recording: `source_units`) when some file holds several of the ids (segments) and
    more than one file is among them, else None (every row its own file, or nothing else to compare with: plain
    leave-one-out)."""
    if not files or any(str(i) not in files for i in ids):
        return None
    named = np.array([files[str(i)] for i in ids])
    distinct = len(np.unique(named))
    return named if 1 < distinct < len(named) else None


def gallery_note(gallery_split: str, val_videos: int) -> str:
    """What a `train` gallery is when val was carved from the train list (`val_videos` > 0): fewer videos than the
    IIC protocol's gallery, which is the whole list, so a reader comparing with published numbers knows; '' else."""
    if gallery_split != "train" or val_videos <= 0:
        return ""
    return (f"the train list less the {val_videos} val videos carved from it to choose the checkpoint; the protocol's "
            f"gallery is the whole list, evaluate.gallery_split: {PROTOCOL_GALLERY}")


def split_mask(splits: np.ndarray, split: str | None) -> np.ndarray:
    """The rows of `split` (None or 'all': every row; 'train+val': the rows of either, the official train list our
    val is carved from)."""
    if split is None or split == "all":
        return np.ones(len(splits), dtype=bool)
    return np.isin(np.asarray(splits), split.split("+"))


def effective_rank(vectors: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values (RankMe, Garrido et al. 2023): about d for embeddings
    spread over d directions, 1 for a collapsed one. Computed on the unit rows retrieval compares."""
    singular = np.linalg.svd(normalize_rows(vectors).astype(np.float64), compute_uv=False)
    share = singular / max(singular.sum(), 1e-12) + 1e-7
    return float(np.exp(-(share * np.log(share)).sum()))


def unlabelled_neighbours(path: str | Path, *, split: str | None = "train", ks: Sequence[int] = DEFAULT_KS,
                          hub_k: int = 10, files: dict[str, str] | None = None, unit: str = "file") -> dict[str, Any]:
    """What can be measured without classes: each `split` video (None: every video) queries all the others
    (leave-one-out; with `files`, video_id -> source file, a segment queries the other files' rows only; `unit`
    "recording" when `files` maps to recordings, `source_units`: a clip queries the other recordings' videos).

    Mean cosine similarity of the k-th neighbour for each k, the mean over all pairs, the effective rank
    (near 1: the embedding collapsed), and hubness: the videos that appear in the most top-`hub_k` lists
    (a black or static video often does) and the share that appears in none. `warning` when the videos are
    nearly all alike (mean pairwise cosine >= ALIKE_COSINE).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no embeddings; run the `embed` stage first (dvc repro embed)")
    data = np.load(path)
    mask = split_mask(data["split"], split)
    vectors, ids = normalize_rows(data["embedding"][mask]), data["video_id"][mask]
    n = len(vectors)
    if n < 2:
        raise ValueError(f"{path}: needs at least 2 {split or 'any'!r} videos to compare; found {n}")
    sources = files_of(ids, files or {})
    others = n - 1 if sources is None else n - int(np.unique(sources, return_counts=True)[1].max())
    ks = sorted(k for k in set(ks) if k <= others) or [others]
    neighbours, sims = nearest_others(vectors, max(max(ks), hub_k), files=sources)
    hub_k = min(hub_k, others)
    counts = np.bincount(neighbours[:, :hub_k].ravel(), minlength=n)
    hubs = [{"video_id": str(ids[i]), f"in_top{hub_k}_of": int(counts[i]), "share_of_queries": round(counts[i] / n, 4)}
            for i in np.argsort(-counts, kind="stable")[:5]]
    pairwise = mean_pairwise_cosine(vectors)
    alike = {} if pairwise < ALIKE_COSINE else {"warning": (
        f"the videos' embeddings are nearly all alike (mean pairwise cosine {pairwise:.3f} >= {ALIKE_COSINE}), as an "
        "untrained or collapsed encoder's are: check that pretrain trained (its loss, epochs) and that the videos "
        "differ (not one scene, not black frames)")}
    which = f"{split} video" if split else "video"
    part = "a segment" if unit == "file" else "a clip"
    protocol = (f"leave-one-out: each {which} queries the {n - 1} others" if sources is None else
                f"leave-one-{unit}-out: each {which} ({part} of one of {len(np.unique(sources))} {unit}s) queries "
                f"the others of the other {unit}s, its own {unit}'s {part.split()[1]}s left out")
    return {"labelled": False, "protocol": protocol, "leave_out": "video" if sources is None else unit,
            "queries": n, "gallery": n, "query_split": split, "gallery_split": split,
            **{f"neighbour_cosine@{k}": float(sims[:, k - 1].mean()) for k in ks},
            "mean_pairwise_cosine": pairwise,
            "effective_rank": round(effective_rank(vectors), 3), "embedding_dim": int(vectors.shape[1]),
            "hub_k": hub_k, f"never_in_top{hub_k}": round(float((counts == 0).mean()), 4), "hubs": hubs, **alike}
