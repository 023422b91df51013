"""Pseudo-labels for SLIC: cluster the video embeddings with FINCH partition 0 or k-means, both on FAISS.

Every few epochs SLIC embeds every training video and turns cluster ids into pseudo-labels.  The reference
configs use FINCH's first partition: link each point to its first (nearest, cosine) neighbour and take the
connected components, so the data decide the number of clusters.  Only the first neighbours are needed, i.e.
one exact FAISS k=2 search on L2-normalised vectors (inner product = cosine similarity) instead of the
reference's dense (n, n) distance matrix and full hierarchy.  k-means (faiss.Kmeans on L2-normalised
vectors) is the alternative.  Both run on GPU where faiss has one (faiss-gpu), on CPU otherwise.

faiss is imported lazily through slic.faiss_backend (it is an optional extra: ``slic[cpu]`` or ``slic[gpu]``)
and no global state is changed at import; a ``threads`` option sets faiss's OpenMP threads for one call and
restores them after.
"""

from __future__ import annotations

import numpy as np

from slic.faiss_backend import faiss_module, faiss_threads, l2_normalize, resolve_gpu

METHODS = ("finch", "kmeans")
DEFAULT_BATCH = 1 << 16


# ----------------------------------------------------------------------------------------------- helpers


def _as_matrix(x: np.ndarray, *, min_rows: int) -> np.ndarray:
    """x as a finite 2-d array with at least `min_rows` rows (clear errors instead of faiss asserts)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d (n, d) array, got shape {x.shape}")
    if len(x) < min_rows:
        raise ValueError(f"need at least {min_rows} points, got {len(x)}")
    if x.shape[1] < 1:
        raise ValueError("points need at least one dimension")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    return x


# ------------------------------------------------------------------------------------- first neighbours


def _flat_ip_index(d: int, gpu: bool) -> tuple[object, object | None]:
    """An exact inner-product index, on GPU 0 when asked; returns (index, gpu resources to keep alive)."""
    faiss = faiss_module()
    index = faiss.IndexFlatIP(d)
    if not gpu:
        return index, None
    resources = faiss.StandardGpuResources()
    return faiss.index_cpu_to_gpu(resources, 0, index), resources


def _search_top2(xn: np.ndarray, *, gpu: bool, batch: int) -> np.ndarray:
    """(n, 2) ids of each row's two most similar rows (itself usually first), searched `batch` rows at a time."""
    index, _resources = _flat_ip_index(xn.shape[1], gpu)
    index.add(xn)
    ids = np.empty((len(xn), 2), dtype=np.int64)
    for start in range(0, len(xn), batch):
        _, ids[start:start + batch] = index.search(xn[start:start + batch], 2)
    return ids


def _drop_self(top2: np.ndarray) -> np.ndarray:
    """First of the two results that is not the point itself (an exact duplicate can rank before self)."""
    own = np.arange(len(top2))
    neighbours = np.where(top2[:, 0] != own, top2[:, 0], top2[:, 1])
    if (neighbours < 0).any() or (neighbours == own).any():
        raise RuntimeError("faiss returned no neighbour other than the point itself")
    return neighbours


def _is_exact_copy(xn: np.ndarray, neighbours: np.ndarray, *, batch: int) -> np.ndarray:
    """True where a point's neighbour is a bit-identical normalised vector (compared in bounded chunks)."""
    return np.concatenate([(xn[neighbours[start:start + batch]] == xn[start:start + batch]).all(axis=1)
                           for start in range(0, len(xn), batch)])


def _canonical_duplicates(xn: np.ndarray, neighbours: np.ndarray, *, batch: int) -> np.ndarray:
    """Point exact duplicates at the smallest-index copy (the second smallest, for that copy itself).

    Which copy of a tied duplicate faiss returns is arbitrary; left alone, four identical points could pair
    up as a<->b, c<->d and split into two clusters.  Breaking the tie by lowest index (as argmin over a
    distance matrix does) puts all copies in one component.  Only rows whose neighbour is an exact copy change.
    """
    is_copy = _is_exact_copy(xn, neighbours, batch=batch)
    if not is_copy.any():
        return neighbours
    n = len(xn)
    own = np.arange(n)
    group = np.unique(xn, axis=0, return_inverse=True)[1].ravel()
    smallest = np.full(group.max() + 1, n)
    np.minimum.at(smallest, group, own)
    rest = own != smallest[group]
    second = np.full_like(smallest, n)
    np.minimum.at(second, group[rest], own[rest])
    target = np.where(rest, smallest[group], second[group])
    return np.where(is_copy, target, neighbours)


def first_neighbours(x: np.ndarray, *, use_gpu: bool | None = None, batch: int = DEFAULT_BATCH,
                     threads: int | None = None) -> np.ndarray:
    """Index of each point's nearest other point by cosine similarity (exact faiss.IndexFlatIP, k=2).

    This is FINCH's "first integer neighbour".  Exact duplicates never pair a point with itself and are
    tie-broken towards the smallest index.  `use_gpu=None`: GPU if faiss has one; `batch` bounds the
    queries per search call; `threads`: faiss OpenMP threads for this call (None: faiss's default).
    """
    x = _as_matrix(x, min_rows=2)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    xn = l2_normalize(x)
    with faiss_threads(threads):
        top2 = _search_top2(xn, gpu=resolve_gpu(use_gpu), batch=batch)
    return _canonical_duplicates(xn, _drop_self(top2), batch=batch)


# ------------------------------------------------------------------------------------------------ FINCH


def _ordered_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel so cluster ids 0..C-1 follow the smallest member index (deterministic, int64)."""
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first_index), dtype=np.int64)
    rank[np.argsort(first_index, kind="stable")] = np.arange(len(first_index))
    return rank[inverse.ravel()]


def components_of_neighbour_graph(neighbours: np.ndarray) -> np.ndarray:
    """Connected components of the undirected graph i -- neighbours[i], ids ordered by smallest member."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    neighbours = np.asarray(neighbours, dtype=np.int64)
    n = len(neighbours)
    graph = csr_matrix((np.ones(n, dtype=np.int8), (np.arange(n), neighbours)), shape=(n, n))
    _, labels = connected_components(graph, directed=True, connection="weak")
    return _ordered_labels(labels)


def finch_partition0(x: np.ndarray, *, use_gpu: bool | None = None, batch: int = DEFAULT_BATCH,
                     threads: int | None = None) -> np.ndarray:
    """FINCH partition 0: int64 ids 0..C-1 of the components of the cosine first-neighbour graph.

    Parameter-free (the data set the number of clusters), as in SLIC's reference configs; only the first
    partition is computed because only it is used.  Ids are ordered by each cluster's smallest member index.
    """
    x = _as_matrix(x, min_rows=0)
    if len(x) < 2:
        return np.zeros(len(x), dtype=np.int64)
    return components_of_neighbour_graph(first_neighbours(x, use_gpu=use_gpu, batch=batch, threads=threads))


def cluster_sums(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The float64 sum of each cluster's rows of `x`, cluster ids 0..C-1 all present (one sort and
    np.add.reduceat: about 20x faster than np.add.at, which dominated FINCH's levels)."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(int(labels.max()) + 1))
    return np.add.reduceat(np.asarray(x, dtype=np.float64)[order], starts, axis=0)


def finch_levels(x: np.ndarray, *, use_gpu: bool | None = None, threads: int | None = None) -> list[np.ndarray]:
    """FINCH's whole hierarchy: partition 0, then each coarser level links every cluster to its nearest cluster
    (cosine of the mean of its members' unit vectors) and takes the components, until one cluster is left or a
    level merges nothing. Each partition labels every point (int64, ids ordered by smallest member), finest first.

    Pretraining needs only partition 0 (`finch_partition0`); the `clusters` stage picks a coarser level for
    people to browse, so an archive of thousands of videos becomes tens of groups without choosing k up front.
    """
    x = _as_matrix(x, min_rows=0)
    if len(x) < 2:
        return [np.zeros(len(x), dtype=np.int64)]
    unit = l2_normalize(x)
    labels = finch_partition0(unit, use_gpu=use_gpu, threads=threads)
    levels = [labels]
    while (count := int(labels.max()) + 1) > 1:
        merged = finch_partition0(cluster_sums(unit, labels), use_gpu=use_gpu, threads=threads)[labels]
        if int(merged.max()) + 1 == count:
            break
        labels = _ordered_labels(merged)
        levels.append(labels)
    return levels


def merge_closest_pairs(x: np.ndarray, labels: np.ndarray, groups: int) -> np.ndarray:
    """`labels` coarsened to `groups` clusters by merging, one pair at a time, the two clusters whose mean
    directions (of the members' unit vectors) have the highest cosine similarity, as FINCH does to reach a
    required number of clusters from the level above it. Ids ordered by smallest member; ties go to the
    lowest cluster ids."""
    unit = l2_normalize(_as_matrix(x, min_rows=1))
    labels = _ordered_labels(np.asarray(labels))
    count = int(labels.max()) + 1
    if not 1 <= groups <= count:
        raise ValueError(f"can merge {count} clusters into 1 to {count}, not {groups}")
    sums = cluster_sums(unit, labels)
    directions = l2_normalize(sums).astype(np.float64)
    similarity = directions @ directions.T
    np.fill_diagonal(similarity, -np.inf)
    best = similarity.argmax(axis=1)  # each cluster's most similar other cluster (the lowest id on a tie)
    alive = np.ones(count, dtype=bool)
    into = np.arange(count)
    rows = np.arange(count)
    for _ in range(count - groups):
        row = int(np.argmax(np.where(alive, similarity[rows, best], -np.inf)))
        keep, gone = sorted((row, int(best[row])))
        sums[keep] += sums[gone]
        into[into == gone] = keep
        alive[gone] = False
        directions[keep] = l2_normalize(sums[keep][None])[0]
        updated = np.where(alive, directions @ directions[keep], -np.inf)
        updated[keep] = -np.inf
        similarity[gone, :] = similarity[:, gone] = -np.inf
        similarity[keep, :] = similarity[:, keep] = updated
        best[keep] = int(updated.argmax())
        for other in np.flatnonzero(alive & ((best == keep) | (best == gone)) & (rows != keep)):
            best[other] = int(similarity[other].argmax())  # its nearest changed or is gone: look again
        closer = alive & (updated > similarity[rows, best])
        best[closer] = keep
    return _ordered_labels(into[labels])


def finch_groups(x: np.ndarray, groups: int, *, use_gpu: bool | None = None,
                 threads: int | None = None) -> tuple[np.ndarray, list[int], int]:
    """`groups` clusters the FINCH way: the coarsest level of `finch_levels` with at least that many, merged one
    closest pair at a time down to `groups` (FINCH's own way to a required number; its levels jump, e.g. from 11
    to 4). Fewer points or first-partition clusters than `groups`: the first partition as it is. Returns the
    labels, every level's cluster count and the level merged from."""
    levels = finch_levels(x, use_gpu=use_gpu, threads=threads)
    counts = [int(labels.max()) + 1 for labels in levels]
    start = max((i for i, count in enumerate(counts) if count >= groups), default=0)
    if counts[start] <= groups:
        return levels[start], counts, start
    return merge_closest_pairs(x, levels[start], groups), counts, start


# ---------------------------------------------------------------------------------------------- k-means


def check_kmeans_arguments(n: int, k: int, n_init: int, iterations: int) -> None:
    """Raise ValueError unless 1 <= k <= n points and n_init, iterations >= 1 (every k-means backend)."""
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= n points; got k={k}, n={n}")
    if n_init < 1 or iterations < 1:
        raise ValueError(f"n_init and iterations must be >= 1, got {n_init} and {iterations}")


def kmeans(x: np.ndarray, k: int, *, n_init: int = 10, iterations: int = 20, seed: int = 7,
           use_gpu: bool | None = None, threads: int | None = None) -> np.ndarray:
    """k-means cluster ids (int64 in [0, k)) of the L2-normalised points, best of `n_init` faiss runs.

    The alternative to FINCH in SLIC (the reference: K=1000, n_init=10, Euclidean k-means on normalised
    embeddings; centroids are not re-normalised).  Trains on every point (no faiss subsampling) and is
    deterministic for a given seed.  Raises ValueError if k > n.
    """
    x = _as_matrix(x, min_rows=1)
    n = len(x)
    check_kmeans_arguments(n, k, n_init, iterations)
    faiss = faiss_module()
    xn = l2_normalize(x)
    gpu = resolve_gpu(use_gpu)
    model = faiss.Kmeans(xn.shape[1], int(k), niter=int(iterations), nredo=int(n_init), seed=int(seed),
                         gpu=gpu, spherical=False, verbose=False, min_points_per_centroid=1,
                         max_points_per_centroid=max(256, -(-n // int(k))))
    with faiss_threads(threads):
        model.train(xn)
        _, labels = model.assign(xn)
    return labels.astype(np.int64)


# --------------------------------------------------------------------------------------------- dispatch


def cluster_pseudo_labels(embeddings: np.ndarray, *, method: str, k: int = 1000, seed: int = 7,
                          use_gpu: bool | None = None, threads: int | None = None) -> np.ndarray:
    """Pseudo-labels (int64) for the training videos: 'finch' (partition 0, k unused) or 'kmeans' (k, seed)."""
    if method == "finch":
        return finch_partition0(embeddings, use_gpu=use_gpu, threads=threads)
    if method == "kmeans":
        return kmeans(embeddings, k, seed=seed, use_gpu=use_gpu, threads=threads)
    raise ValueError(f"unknown clustering method {method!r}; expected one of {', '.join(METHODS)}")


# ---------------------------------------------------------------------------------------------- monitoring


def rounds_agreement(previous: np.ndarray | None, current: np.ndarray) -> float:
    """AMI between two consecutive clustering rounds of the same videos: label-free (no class is read); 0 with no
    previous round. How settled the clusters are, for `pretrain.p_intra_schedule: agreement`."""
    from sklearn.metrics import adjusted_mutual_info_score

    if previous is None or len(previous) != len(current):
        return 0.0
    return float(max(0.0, adjusted_mutual_info_score(previous, current)))


def cluster_agreement(true_labels: np.ndarray, cluster_labels: np.ndarray) -> dict[str, float]:
    """{'nmi', 'ami'} of the clusters against the true classes: for monitoring only (never used to train)."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    true_labels, cluster_labels = np.asarray(true_labels), np.asarray(cluster_labels)
    if true_labels.shape != cluster_labels.shape or true_labels.ndim != 1:
        raise ValueError(f"need two 1-d label arrays of equal length, got shapes {true_labels.shape} "
                         f"and {cluster_labels.shape}")
    return {"nmi": float(normalized_mutual_info_score(true_labels, cluster_labels)),
            "ami": float(adjusted_mutual_info_score(true_labels, cluster_labels))}


def cluster_sizes_summary(labels: np.ndarray) -> dict[str, float | int]:
    """Cluster count, share of clusters with a single member and the largest cluster's size, for logging."""
    _, sizes = np.unique(np.asarray(labels), return_counts=True)
    if len(sizes) == 0:
        return {"n_points": 0, "n_clusters": 0, "singleton_fraction": 0.0, "largest_cluster": 0}
    return {"n_points": int(sizes.sum()), "n_clusters": int(len(sizes)),
            "singleton_fraction": float(np.mean(sizes == 1)), "largest_cluster": int(sizes.max())}
