"""FINCH partition 0, k-means and exact k-NN search in torch, for a GPU without faiss-gpu.

slic.clustering runs on FAISS (on the GPU only with faiss-gpu, whose wheels are far larger than what a
borrowed GPU machine can be given). The same computations are plain dense algebra, so torch does them on
any device:

* `topk_inner_product`: exact top-k by inner product, the queries in chunks against the whole database
  (one matmul and one topk per chunk), as faiss.IndexFlatIP does; or on the tensor cores (TF32 or bf16
  blocks, a shortlist per query rescored in float32), for FINCH at a million points in seconds;
* `first_neighbours` / `finch_partition0`: FINCH's first neighbour by cosine (top-2 on L2-normalised rows,
  dropping the point itself), duplicates tie-broken and components numbered exactly as
  slic.clustering does, so both give the same partition on the same vectors;
* `kmeans`: Lloyd's k-means on L2-normalised rows with chunked assignment (best of `n_init` runs by
  inertia), as slic.clustering.kmeans does with faiss.Kmeans (the initialisation differs, so the two agree
  as partitions, not label for label).

Also the cluster comparison measures without scikit-learn or scipy, which a machine given only what the
GPU bench needs lacks: `connected_components` of the first-neighbour graph (union-find in numpy),
`adjusted_rand_index`, and `cluster_agreement` (NMI and AMI with sklearn's defaults: arithmetic mean,
natural log); tests compare each with scipy and sklearn.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slic.clustering import _as_matrix, _canonical_duplicates, _drop_self, _ordered_labels, check_kmeans_arguments

DEFAULT_CHUNK = 1024


def _device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _checked(x: np.ndarray | torch.Tensor, *, min_rows: int) -> np.ndarray | torch.Tensor:
    """x as slic.clustering._as_matrix checks it (2-d, enough rows, finite); a tensor stays where it is."""
    if not isinstance(x, torch.Tensor):
        return _as_matrix(x, min_rows=min_rows)
    if x.dim() != 2:
        raise ValueError(f"expected a 2-d (n, d) array, got shape {tuple(x.shape)}")
    if len(x) < min_rows:
        raise ValueError(f"need at least {min_rows} points, got {len(x)}")
    if x.shape[1] < 1:
        raise ValueError("points need at least one dimension")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("embeddings contain NaN or infinite values")
    return x


def _normalised(x: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows on `device` as float32 scaled to unit length (zero rows stay zero), as l2_normalize does."""
    t = torch.as_tensor(x).to(device=device, dtype=torch.float32)
    return t / t.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_CANDIDATES = 16


@torch.no_grad()
def topk_inner_product(queries: torch.Tensor, database: torch.Tensor, k: int, *, chunk: int = DEFAULT_CHUNK,
                       precision: str = "fp32",
                       candidates: int = DEFAULT_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ids), each (n_queries, k), of the k largest inner products per query, best first.

    Queries go `chunk` at a time (the (chunk, n) score block bounds the memory). `precision` fp32: float32
    with TF32 off, the ranking of an exact float32 search. tf32 / bf16: the block on the tensor cores
    (TF32, or bfloat16 inputs and scores: half the bytes to write and rank), its `candidates` best per
    query kept and rescored in float32 (TF32 off), so the result is the exact search's unless the true
    neighbour falls outside a low-precision top-`candidates` (bench/gpu.py checks the partition on 100k).
    """
    if queries.shape[1] != database.shape[1]:
        raise ValueError(f"queries are {queries.shape[1]}-d, the database {database.shape[1]}-d")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    k = min(k, database.shape[0])
    shortlist = min(max(candidates, k), database.shape[0])
    scores = torch.empty((queries.shape[0], k), dtype=torch.float32, device=queries.device)
    ids = torch.empty((queries.shape[0], k), dtype=torch.int64, device=queries.device)
    exact_db = database.float()
    low_db = database.to(torch.bfloat16) if precision == "bf16" else exact_db
    tf32 = torch.backends.cuda.matmul.allow_tf32
    try:
        for start in range(0, queries.shape[0], chunk):
            rows = queries[start:start + chunk].float()
            if precision == "fp32":
                torch.backends.cuda.matmul.allow_tf32 = False
                scores[start:start + chunk], ids[start:start + chunk] = (rows @ exact_db.T).topk(k, dim=1)
                continue
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            block = rows.to(low_db.dtype) @ low_db.T
            shortlisted = block.topk(shortlist, dim=1).indices  # (chunk, shortlist)
            del block
            torch.backends.cuda.matmul.allow_tf32 = False
            exact = (exact_db[shortlisted] * rows[:, None, :]).sum(dim=2)  # float32 rescoring of the shortlist
            best, order = exact.topk(k, dim=1)
            scores[start:start + chunk], ids[start:start + chunk] = best, shortlisted.gather(1, order)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return scores, ids


def first_neighbours(x: np.ndarray | torch.Tensor, *, device: str | torch.device | None = None,
                     chunk: int = DEFAULT_CHUNK, precision: str = "fp32") -> np.ndarray:
    """Index of each point's nearest other point by cosine similarity; slic.clustering.first_neighbours in torch.

    Top-2 on `device` (None: CUDA when present) at `precision` (topk_inner_product), the point itself
    dropped, exact duplicates pointed at their smallest-index copy.
    """
    x = _checked(x, min_rows=2)
    xn = _normalised(x, _device(device))
    _, top2 = topk_inner_product(xn, xn, 2, chunk=chunk, precision=precision)
    top2 = top2.cpu().numpy()
    unit = xn.cpu().numpy()
    return _canonical_duplicates(unit, _drop_self(top2), batch=1 << 16)


def connected_components(neighbours: np.ndarray) -> np.ndarray:
    """Components of the undirected graph i -- neighbours[i], numbered by smallest member (numpy only).

    The same labels as slic.clustering.components_of_neighbour_graph (scipy): union-find by hooking the
    larger root under the smaller one along every edge, with full path compression each round.
    """
    neighbours = np.asarray(neighbours, dtype=np.int64)
    n = len(neighbours)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if neighbours.min() < 0 or neighbours.max() >= n:
        raise ValueError("neighbour ids must lie in [0, n)")
    source = np.arange(n)
    parent = np.arange(n)
    while True:
        a, b = parent[source], parent[neighbours]
        low, high = np.minimum(a, b), np.maximum(a, b)
        moving = low != high
        if not moving.any():
            break
        np.minimum.at(parent, high[moving], low[moving])  # roots only ever point to smaller ids: no cycles
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return _ordered_labels(parent)


def finch_partition0(x: np.ndarray | torch.Tensor, *, device: str | torch.device | None = None,
                     chunk: int = DEFAULT_CHUNK, precision: str = "fp32") -> np.ndarray:
    """FINCH partition 0 (int64 ids 0..C-1, ordered by smallest member), as slic.clustering computes it;
    `precision` tf32 / bf16 finds the first neighbours on the tensor cores (topk_inner_product)."""
    x = _checked(x, min_rows=0)
    if len(x) < 2:
        return np.zeros(len(x), dtype=np.int64)
    return connected_components(first_neighbours(x, device=device, chunk=chunk, precision=precision))


@torch.no_grad()
def _assign(xn: torch.Tensor, centroids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid (Euclidean) of every row and the summed squared distances, `chunk` rows at a time."""
    half_norms = 0.5 * (centroids * centroids).sum(dim=1)
    labels = torch.empty(xn.shape[0], dtype=torch.int64, device=xn.device)
    inertia = torch.zeros((), dtype=torch.float64, device=xn.device)
    for start in range(0, xn.shape[0], chunk):
        rows = xn[start:start + chunk]
        score = rows @ centroids.T - half_norms  # argmax of x.c - |c|^2/2 = argmin |x - c|^2
        best, labels[start:start + chunk] = score.max(dim=1)
        inertia += ((rows * rows).sum(dim=1) - 2 * best).double().sum()
    return labels, inertia


@torch.no_grad()
def kmeans(x: np.ndarray | torch.Tensor, k: int, *, n_init: int = 1, iterations: int = 20, seed: int = 7,
           device: str | torch.device | None = None, chunk: int = 4 * DEFAULT_CHUNK) -> np.ndarray:
    """k-means cluster ids (int64 in [0, k)) of the L2-normalised rows: Lloyd's iterations in torch.

    Each run starts from `k` distinct rows drawn with a generator seeded by (seed, run); an emptied
    cluster keeps its centroid. The run with the lowest inertia wins. Centroids are not re-normalised
    (as in slic.clustering.kmeans).
    """
    x = _checked(x, min_rows=1)
    n = len(x)
    check_kmeans_arguments(n, k, n_init, iterations)
    dev = _device(device)
    xn = _normalised(x, dev)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    best_labels, best_inertia = None, math.inf
    try:
        for run in range(n_init):
            start = np.random.default_rng([seed, run]).choice(n, size=k, replace=False)
            centroids = xn[torch.as_tensor(np.sort(start), device=dev)].clone()
            for _ in range(iterations):
                labels, _ = _assign(xn, centroids, chunk)
                sums = torch.zeros_like(centroids).index_add_(0, labels, xn)
                counts = torch.bincount(labels, minlength=k).to(xn.dtype)
                filled = counts > 0
                centroids[filled] = sums[filled] / counts[filled, None]
            labels, inertia = _assign(xn, centroids, chunk)
            if float(inertia) < best_inertia:
                best_labels, best_inertia = labels, float(inertia)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert best_labels is not None
    return best_labels.cpu().numpy().astype(np.int64)


# ------------------------------------------------------------------------------- comparing partitions


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dense contingency table of two 1-d label arrays (rows: classes of a, columns: classes of b)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-d label arrays of equal length, got shapes {a.shape} and {b.shape}")
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max(initial=-1) + 1, ib.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(table, (ia.ravel(), ib.ravel()), 1)
    return table


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two partitions (1.0: identical up to renaming), as sklearn's adjusted_rand_score."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two 1-d label arrays of equal length, got shapes {a.shape} and {b.shape}")
    n = len(a)
    if n < 2:
        return 1.0
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    _, pair_counts = np.unique(ia.ravel().astype(np.int64) * (ib.max() + 1) + ib.ravel(), return_counts=True)

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    index = pairs(pair_counts)
    row, col = pairs(np.bincount(ia.ravel())), pairs(np.bincount(ib.ravel()))
    total = n * (n - 1) / 2
    expected = row * col / total
    maximum = (row + col) / 2
    if maximum == expected:  # both trivial (one cluster each, or all singletons): a perfect match
        return 1.0
    return float((index - expected) / (maximum - expected))


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _expected_mutual_information(a_sums: np.ndarray, b_sums: np.ndarray, n: int) -> float:
    """E[MI] of two random partitions with these cluster sizes (Vinh, Epps and Bailey 2010), natural log."""
    lg = np.vectorize(math.lgamma, otypes=[float])
    total = 0.0
    log_n_fact = math.lgamma(n + 1)
    for ai in a_sums:
        for bj in b_sums:
            low, high = max(1, ai + bj - n), min(ai, bj)
            if low > high:
                continue
            nij = np.arange(low, high + 1, dtype=np.float64)
            term = nij / n * (np.log(n * nij) - math.log(ai * bj))
            log_p = (math.lgamma(ai + 1) + math.lgamma(bj + 1) + math.lgamma(n - ai + 1) + math.lgamma(n - bj + 1)
                     - log_n_fact - lg(nij + 1) - lg(ai - nij + 1) - lg(bj - nij + 1) - lg(n - ai - bj + nij + 1))
            total += float((term * np.exp(log_p)).sum())
    return total


def cluster_agreement(true_labels: np.ndarray, cluster_labels: np.ndarray) -> dict[str, float]:
    """{'nmi', 'ami'} of two partitions, as slic.clustering.cluster_agreement gives them with scikit-learn.

    Arithmetic-mean normalisation and natural logarithms, sklearn's defaults and special cases (two
    single-cluster labellings agree perfectly). AMI's expectation is summed exactly, O(classes x clusters x
    overlap): meant for the pseudo-labels of a training set, not millions of points in thousands of clusters.
    """
    table = _contingency(true_labels, cluster_labels)
    n = int(table.sum())
    if table.shape[0] == table.shape[1] <= 1:  # neither splits the data: a perfect match
        return {"nmi": 1.0, "ami": 1.0}
    a_sums, b_sums = table.sum(axis=1), table.sum(axis=0)
    nz = table > 0
    nij = table[nz].astype(np.float64)
    outer = np.outer(a_sums, b_sums)[nz].astype(np.float64)
    mi = max(0.0, float((nij / n * (np.log(nij) + math.log(n) - np.log(outer))).sum()))
    normaliser = (_entropy(a_sums) + _entropy(b_sums)) / 2
    nmi = 0.0 if mi == 0 else mi / normaliser
    if 1 in table.shape:  # one side has a single cluster, the other more
        return {"nmi": float(nmi), "ami": 0.0}
    emi = _expected_mutual_information(a_sums, b_sums, n)
    eps = float(np.finfo(np.float64).eps)

    def away_from_zero(value: float) -> float:
        return min(value, -eps) if value < 0 else max(value, eps)

    return {"nmi": float(nmi), "ami": float(away_from_zero(mi - emi) / away_from_zero(normaliser - emi))}
