"""A FAISS similarity-search index over the gallery videos' embeddings (stage `index`).

The `embed` stage's rows of one split (the gallery, default train) go into a FAISS index: exact inner product
on L2-normalised vectors (cosine) by default (`flat`), or an approximate one (`ivf_flat`, `ivf_pq`, `hnsw`).
It is built on the GPU when faiss has one (flat and IVF kinds; HNSW has no GPU version) and written as a
CPU index, so any machine can load it.  Beside it: rows.csv maps index row -> video_id, path, class, and
index.json holds what `slic search` needs to embed queries the same way (checkpoint, its sha256, clips,
metric) and the effective parameters (an IVF nlist too large for the gallery is clamped, with a note).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from slic.faiss_backend import faiss_module, gpu_available, l2_normalize
from slic.file_hash import file_sha256
from slic.retrieval import split_mask

log = logging.getLogger(__name__)

KINDS = ("flat", "ivf_flat", "ivf_pq", "hnsw")
IVF_KINDS = ("ivf_flat", "ivf_pq")
MIN_POINTS_PER_LIST = 39  # faiss's k-means wants at least this many training points per centroid
INDEX_FILE, ROWS_FILE, META_FILE = "index.faiss", "rows.csv", "index.json"


class IndexBuildError(ValueError):
    """The index cannot be built or loaded from what is on disk; the message says what to run."""


@dataclass
class BuiltIndex:
    """A faiss index (CPU or GPU) with the parameters it was really built with and notes on any clamping."""

    index: Any
    params: dict[str, Any]
    device: str
    notes: list[str] = field(default_factory=list)
    gpu_resources: Any = None  # faiss.StandardGpuResources, kept alive as long as a GPU index


@dataclass
class LoadedIndex:
    """A saved index read back: the faiss index, its rows (video_id, path, class) and its metadata."""

    index: Any
    rows: pd.DataFrame
    meta: dict[str, Any]


def effective_params(kind: str, n: int, dim: int, *, nlist: int = 1024, nprobe: int = 16, pq_m: int = 16,
                     pq_nbits: int = 8, hnsw_m: int = 32, ef_search: int = 64,
                     ef_construction: int = 80) -> tuple[dict[str, Any], list[str]]:
    """The parameters of `kind` made valid for n vectors of dim; notes say what was changed and why."""
    if kind not in KINDS:
        raise IndexBuildError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    notes: list[str] = []
    if kind == "flat":
        return {}, notes
    if kind == "hnsw":
        return {"hnsw_m": hnsw_m, "ef_search": ef_search, "ef_construction": ef_construction}, notes
    usable = max(1, n // MIN_POINTS_PER_LIST)
    if nlist > usable:
        notes.append(f"nlist {nlist} clamped to {usable}: {n} vectors allow at most {usable} lists "
                     f"of >= {MIN_POINTS_PER_LIST} training points")
        nlist = usable
    if nprobe > nlist:
        notes.append(f"nprobe {nprobe} clamped to nlist {nlist}")
        nprobe = nlist
    params: dict[str, Any] = {"nlist": nlist, "nprobe": nprobe}
    if kind == "ivf_pq":
        if dim % pq_m:
            divisor = max(m for m in range(1, min(pq_m, dim) + 1) if dim % m == 0)
            notes.append(f"pq_m {pq_m} does not divide dimension {dim}; using {divisor}")
            pq_m = divisor
        most_bits = max(1, int(np.log2(max(2, n // MIN_POINTS_PER_LIST))))
        if pq_nbits > most_bits:  # each sub-quantizer trains 2**nbits centroids on the n vectors
            notes.append(f"pq_nbits {pq_nbits} clamped to {most_bits}: {n} vectors train at most 2**{most_bits} "
                         f"centroids of >= {MIN_POINTS_PER_LIST} points per sub-quantizer")
            pq_nbits = most_bits
        params |= {"pq_m": pq_m, "pq_nbits": pq_nbits}
    return params, notes


def _resolve_device(kind: str, device: str) -> str:
    """'cuda' or 'cpu' for this kind: auto picks the GPU when faiss has one, hnsw always stays on CPU."""
    if kind == "hnsw":
        return "cpu"
    if device == "cuda" and not gpu_available():
        raise IndexBuildError("index.device is cuda but faiss sees no GPU (install faiss-gpu, or use auto/cpu)")
    return "cuda" if device == "cuda" or (device == "auto" and gpu_available()) else "cpu"


def build_index(vectors: np.ndarray, *, kind: str = "flat", normalize: bool = True, device: str = "auto",
                **params: int) -> BuiltIndex:
    """An inner-product faiss index of `kind` holding `vectors` (L2-normalised first when normalize: cosine)."""
    faiss = faiss_module()
    x = np.ascontiguousarray(l2_normalize(vectors) if normalize else np.asarray(vectors, np.float32))
    if x.ndim != 2 or len(x) == 0:
        raise IndexBuildError(f"need a non-empty (n, d) array of embeddings, got shape {x.shape}")
    n, dim = x.shape
    used, notes = effective_params(kind, n, dim, **params)
    where = _resolve_device(kind, device)
    if where == "cuda" and kind == "ivf_pq" and used["pq_nbits"] != 8:
        notes.append(f"ivf_pq with pq_nbits {used['pq_nbits']} built on CPU: faiss's GPU IVF-PQ wants 8-bit codes")
        where = "cpu"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, used["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = used["ef_construction"]
        index.hnsw.efSearch = used["ef_search"]
    elif kind == "ivf_flat":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, used["nlist"], faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, used["nlist"], used["pq_m"], used["pq_nbits"],
                                 faiss.METRIC_INNER_PRODUCT)
    if kind in IVF_KINDS:
        index.nprobe = used["nprobe"]
    resources = None
    if where == "cuda":
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    if not index.is_trained:
        index.train(x)
    index.add(x)
    return BuiltIndex(index, used, where, notes, resources)


def search(index: Any, queries: np.ndarray, k: int, *, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, row ids), each (n_queries, k) best first; ids of -1 where fewer than k were found."""
    q = np.ascontiguousarray(l2_normalize(queries) if normalize else np.asarray(queries, np.float32))
    return index.search(q, min(k, index.ntotal))


def gallery_rows(embeddings: str | Path, manifest: str | Path, split: str) -> tuple[pd.DataFrame, np.ndarray]:
    """The `split` rows ('train+val': either's; 'all': every row) of the embed stage's npz joined with the manifest:
    (video_id, path, class, label, and the manifest's group as `recording`: the clips of one recording, a long
    file's segments), vectors."""
    embeddings, manifest = Path(embeddings), Path(manifest)
    if not embeddings.is_file():
        raise FileNotFoundError(f"{embeddings}: no embeddings; run the `embed` stage first (dvc repro embed)")
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: no validated manifest; run `dvc repro validate` first")
    data = np.load(embeddings)
    keep = split_mask(data["split"], split)
    if not keep.any():
        raise IndexBuildError(f"{embeddings} has no {split!r} videos to index (splits there: "
                              f"{', '.join(sorted(set(data['split'].tolist())))})")
    rows = pd.DataFrame({"video_id": data["video_id"][keep], "label": data["label"][keep]})
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    columns = ["video_id", "path", "class"]
    from slic.data.datasets import is_segmented, segment_spans

    if is_segmented(table):  # segments of long videos: where in the file (by its timestamps when its rate varies)
        start_s, end_s = segment_spans(table)
        table["start_s"], table["end_s"] = start_s.round(2), end_s.round(2)
        columns += ["start_s", "end_s"]
    if "group" in table.columns:  # a manifest from before groups has none: search counts each file a recording
        table["recording"] = table["group"]
        columns.append("recording")
    rows = rows.merge(table[columns], on="video_id", how="left", validate="one_to_one")
    missing = rows[rows["path"].isna()]["video_id"].tolist()
    if missing:
        raise IndexBuildError(f"{len(missing)} embedded video(s) are not in {manifest}, e.g. {missing[0]}; "
                              f"re-run `dvc repro index` so embed and validate agree")
    return rows[[*columns[:3], "label", *columns[3:]]], data["embedding"][keep]


LOCK_FILE = ".lock"


@contextlib.contextmanager
def _index_lock(folder: Path, *, exclusive: bool) -> Iterator[None]:
    """An advisory lock on the index folder: readers share it while they read its three files, the writer holds
    it alone while it swaps a new build's files in, so a search that runs while `index` rebuilds (the Prefect
    deployment every 15 minutes) never pairs one build's vectors with another's rows. Where locks cannot be
    taken (no fcntl, a folder the reader may not write), it reads without one."""
    try:
        import fcntl
        handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def save_index(folder: str | Path, built: BuiltIndex, rows: pd.DataFrame, meta: dict[str, Any]) -> Path:
    """Write index.faiss (a CPU copy), rows.csv and index.json into folder; return the folder.  Each is written
    under a temporary name first, then the three are renamed into place together under the folder's lock, so a
    reader sees the old build or the new one, whole."""
    faiss = faiss_module()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cpu = faiss.index_gpu_to_cpu(built.index) if built.device == "cuda" else built.index
    staged = {name: folder / f".{name}.new" for name in (INDEX_FILE, ROWS_FILE, META_FILE)}
    faiss.write_index(cpu, str(staged[INDEX_FILE]))
    rows.rename_axis("row").to_csv(staged[ROWS_FILE])
    staged[META_FILE].write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    with _index_lock(folder, exclusive=True):
        for name, path in staged.items():
            os.replace(path, folder / name)
    return folder


def load_index(folder: str | Path) -> LoadedIndex:
    """Read a folder written by save_index (under its shared lock: one build, whole); a missing piece raises
    IndexBuildError saying to run the stage."""
    folder = Path(folder)
    missing = [name for name in (INDEX_FILE, ROWS_FILE, META_FILE) if not (folder / name).is_file()]
    if missing:
        where = "" if folder.is_absolute() else f" under {Path.cwd()}"
        raise IndexBuildError(f"no index at {folder}{where} ({', '.join(missing)} missing); run `dvc repro index` "
                              "first, or run this in the checkout that built it (or pass --index)")
    with _index_lock(folder, exclusive=False):
        index = faiss_module().read_index(str(folder / INDEX_FILE))
        rows = pd.read_csv(folder / ROWS_FILE, index_col="row", keep_default_na=False,  # "" stays "" (no class),
                           dtype={"video_id": str, "path": str, "class": str, "recording": str})  # and "NA" stays
        meta = json.loads((folder / META_FILE).read_text())
    if index.ntotal != len(rows):
        raise IndexBuildError(f"{folder}: index has {index.ntotal} vectors but rows.csv {len(rows)}; "
                              "run `dvc repro index` again")
    return LoadedIndex(index, *_rebased(rows, meta))


def _rebased(rows: pd.DataFrame, meta: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """rows.csv's and index.json's relative paths (videos, checkpoint: relative to the checkout that built the
    index) made absolute under it when read from another directory, so `slic search --index` works from
    anywhere; unchanged in that checkout, or for an index from before base_dir was recorded."""
    base = meta.get("base_dir")
    if not base or Path(base) == Path.cwd().resolve():
        return rows, meta

    def under(path: str) -> str:
        return path if not path or os.path.isabs(path) else str(Path(base) / path)

    rows = rows.assign(path=[under(p) for p in rows["path"]])
    return rows, {**meta, **{key: under(str(meta[key])) for key in ("checkpoint", "embeddings", "manifest")
                             if key in meta}}


def gallery_fingerprint(rows: pd.DataFrame, frames_dir: str | Path | None) -> tuple[str, str]:
    """(content fingerprint of the indexed videos, what was hashed: "frames", "videos" or "unknown").

    The extract stage's frame shards when every gallery video has one (the same fingerprint pretrain
    records); else, for a gallery embedded straight from video files, the sha256 of those files, so
    the index still names the exact bytes it was built from; else ("unknown", "unknown"): the index
    needs only the embeddings, so a gallery whose sources are gone is indexed, with a warning.
    """
    from slic.data.frames import content_fingerprint, content_hashes

    ids = rows["video_id"].tolist()
    if frames_dir is not None:
        hashes = content_hashes(frames_dir, ids, missing="")
        if all(hashes.values()):
            return content_fingerprint(hashes), "frames"
    missing = [path for path in rows["path"] if not Path(path).is_file()]
    if missing:
        log.warning("%s: gallery video not found and no frame shard for it in %s: the index's gallery "
                    "fingerprint is unknown (fix the manifest's path or run `dvc repro extract`)",
                    missing[0], frames_dir)
        return "unknown", "unknown"
    hashed = {path: file_sha256(path) for path in set(rows["path"])}  # once per file, however many segments
    return content_fingerprint({v: hashed[path] for v, path in zip(ids, rows["path"])}), "videos"


class ExtraVideos(Protocol):
    """Videos indexed beside the gallery (slic.added_videos.AddedVideos): rows as in rows.csv, their vectors, and
    the keys they add to the report."""

    rows: pd.DataFrame
    vectors: np.ndarray

    def report(self) -> dict[str, Any]:
        """The index report's keys for these videos."""
        ...


def build_stage(cfg: Any, *, embeddings: str, checkpoint: str, clips: int, frames_dir: str | None = None,
                added: ExtraVideos | None = None) -> dict[str, Any]:
    """Stage `index`: index the gallery split of `embeddings` and the `added` videos (cfg.add_videos, embedded
    by slic.added_videos), save it to cfg.out, return reports/index.json.

    index.json records lineage: `data_fingerprint`, the content fingerprint of the data the checkpoint
    was trained on, and `gallery_fingerprint`, that of the gallery's videos (see `gallery_fingerprint`);
    the added videos' report keys name theirs.
    """
    import torch

    gallery, vectors = gallery_rows(embeddings, cfg.manifest, cfg.gallery_split)
    rows = gallery
    if added is not None and len(added.rows):
        clash = sorted(set(added.rows["video_id"]) & set(gallery["video_id"]))
        if clash:
            raise IndexBuildError(f"added video id {clash[0]!r} is also a gallery video's id in {cfg.manifest}; "
                                  f"rename the folder {cfg.add_videos!r}")
        rows = pd.concat([gallery, added.rows], ignore_index=True)
        vectors = np.concatenate([vectors, added.vectors.astype(vectors.dtype)])
    normalize = cfg.metric == "cosine"
    started = time.perf_counter()
    built = build_index(vectors, kind=cfg.kind, normalize=normalize, device=cfg.device, nlist=cfg.nlist,
                        nprobe=cfg.nprobe, pq_m=cfg.pq_m, pq_nbits=cfg.pq_nbits, hnsw_m=cfg.hnsw_m,
                        ef_search=cfg.ef_search, ef_construction=cfg.ef_construction)
    seconds = time.perf_counter() - started
    report = {"kind": cfg.kind, "vectors": int(len(rows)), "dim": int(vectors.shape[1]), "metric": cfg.metric,
              "gallery_split": cfg.gallery_split, "gallery_videos": int(len(gallery)),
              **(added.report() if added is not None else {"add_videos": "", "added": 0}),
              "params": built.params, "notes": built.notes,
              "build_seconds": round(seconds, 4), "device": built.device, "out": cfg.out}
    try:  # the content fingerprint of the data the checkpoint was trained on (pretrain records it)
        trained = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True).get("fingerprint") or {}
    except Exception:  # noqa: BLE001 - no checkpoint, or not one of pretrain's: the lineage is unknown, not fatal
        trained = {}
    report["data_fingerprint"] = trained.get("data") or "unknown"
    report["gallery_fingerprint"], report["gallery_fingerprint_of"] = gallery_fingerprint(gallery, frames_dir)
    meta = {**report, "embeddings": str(embeddings), "checkpoint": str(checkpoint),
            "checkpoint_sha256": file_sha256(checkpoint) if Path(checkpoint).is_file() else "",
            "clips": clips, "manifest": cfg.manifest,
            "base_dir": str(Path.cwd().resolve())}  # what the relative paths above and in rows.csv are under
    save_index(cfg.out, built, rows, meta)
    return report
