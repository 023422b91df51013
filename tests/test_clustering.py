"""Pseudo-label clustering: FINCH partition 0 and k-means on faiss (CPU here; the GPU branch is wired via a fake)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from slic import clustering
from slic.clustering import (cluster_agreement, cluster_pseudo_labels, cluster_sizes_summary, cluster_sums,
                             finch_groups, finch_levels, finch_partition0, first_neighbours, kmeans, l2_normalize,
                             merge_closest_pairs)

faiss = pytest.importorskip("faiss")

# Eight 2-d points given by angle (degrees) and length.  By cosine (angle) the first neighbours are
#   0(0°)->1(10°), 1->0, 2(25°)->1, 3(100°)->4(104°), 4->3, 5(200°)->6(230°), 6->7(235°), 7->6
# so the components are {0,1,2}, {3,4}, {5,6,7}.  Lengths differ wildly so that Euclidean distance would give
# other neighbours (e.g. point 2, length 9, is Euclidean-far from everything).
ANGLES = np.array([0, 10, 25, 100, 104, 200, 230, 235], dtype=float)
LENGTHS = np.array([1.0, 0.2, 9.0, 3.0, 0.5, 1.0, 7.0, 0.1])
HAND_NEIGHBOURS = np.array([1, 0, 1, 4, 3, 6, 7, 6])
HAND_PARTITION = np.array([0, 0, 0, 1, 1, 2, 2, 2])


def hand_points() -> np.ndarray:
    radians = np.deg2rad(ANGLES)
    return (LENGTHS[:, None] * np.stack([np.cos(radians), np.sin(radians)], axis=1)).astype(np.float32)


def blobs(n_blobs: int = 5, per_blob: int = 40, d: int = 64, spread: float = 0.05,
          seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tight blobs around random unit directions, points at random lengths; returns (x, blob ids)."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.standard_normal((n_blobs, d)))
    truth = np.repeat(np.arange(n_blobs), per_blob)
    x = centres[truth] + spread * rng.standard_normal((len(truth), d)) / np.sqrt(d)
    x *= rng.uniform(0.5, 5.0, size=(len(truth), 1))
    return x.astype(np.float32), truth


def brute_force_partition0(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference FINCH partition 0 in plain numpy: full cosine distance matrix, argsort, union-find."""
    x = np.asarray(x, dtype=np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    distance = 1.0 - unit @ unit.T
    np.fill_diagonal(distance, np.inf)
    neighbours = np.argsort(distance, axis=1, kind="stable")[:, 0]
    parent = list(range(len(x)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in enumerate(neighbours):
        a, b = root(i), root(int(j))
        parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(len(x))])
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}  # numbered by smallest member index
    return neighbours, np.array([ids[r] for r in roots])


# ------------------------------------------------------------------------------------------ FINCH


def test_hand_made_first_neighbours_and_components() -> None:
    x = hand_points()
    assert first_neighbours(x).tolist() == HAND_NEIGHBOURS.tolist()
    labels = finch_partition0(x)
    assert labels.dtype == np.int64
    assert labels.tolist() == HAND_PARTITION.tolist()


def test_cluster_ids_follow_smallest_member_index() -> None:
    order = np.array([6, 3, 0, 7, 4, 1, 5, 2])  # point 6 first: its cluster {5,6,7} must become id 0
    labels = finch_partition0(hand_points()[order])
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0, 2]


def test_matches_brute_force_on_random_data() -> None:
    x = np.random.default_rng(1).standard_normal((600, 24)).astype(np.float32)
    neighbours, expected = brute_force_partition0(x)
    assert first_neighbours(x).tolist() == neighbours.tolist()
    labels = finch_partition0(x)
    assert adjusted_rand_score(expected, labels) == 1.0
    assert labels.tolist() == expected.tolist()
    assert labels.max() + 1 > 20  # a real multi-cluster case, not a trivial one


def test_batched_search_equals_one_batch() -> None:
    x = np.random.default_rng(2).standard_normal((301, 16)).astype(np.float32)
    assert first_neighbours(x, batch=7).tolist() == first_neighbours(x, batch=10_000).tolist()


def test_exact_duplicates_never_pair_with_themselves_and_stay_together() -> None:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((30, 8)).astype(np.float32)
    x = np.concatenate([base, np.repeat(base[:3], 40, axis=0), base[3:4] * 5.0])  # copies and a scaled copy
    x = x[rng.permutation(len(x))]
    neighbours = first_neighbours(x)
    assert (neighbours != np.arange(len(x))).all()
    labels = finch_partition0(x)
    groups, sizes = np.unique(l2_normalize(x), axis=0, return_inverse=True, return_counts=True)[1:]
    assert (sizes >= 40).sum() == 3
    for group in np.flatnonzero(sizes > 1):
        assert len(np.unique(labels[groups.ravel() == group])) == 1  # 41 copies never split (a<->b, c<->d)


def test_drop_self_takes_the_other_result_when_a_duplicate_ranks_first() -> None:
    top2 = np.array([[1, 0], [0, 1], [0, 2], [1, 3]])  # rows 0 and 1 saw their duplicate first
    assert clustering._drop_self(top2).tolist() == [1, 0, 0, 1]


def test_duplicate_ties_are_broken_towards_the_smallest_index() -> None:
    # faiss may pair four identical points as 0<->1, 2<->3 (two clusters); all must point into one group.
    x = l2_normalize(np.array([[1, 2, 3]] * 4 + [[3, 2, 1]], dtype=np.float32))
    fixed = clustering._canonical_duplicates(x, np.array([1, 0, 3, 2, 0]), batch=2)
    assert fixed.tolist() == [1, 0, 0, 0, 0]
    assert clustering.components_of_neighbour_graph(fixed).tolist() == [0] * 5


def test_finch_on_separated_blobs_gives_pure_clusters() -> None:
    x, truth = blobs()
    labels = finch_partition0(x)
    summary = cluster_sizes_summary(labels)
    for cluster in np.unique(labels):
        assert len(np.unique(truth[labels == cluster])) == 1  # no cluster straddles two blobs
    assert 5 <= summary["n_clusters"] <= len(x) // 2
    assert summary["singleton_fraction"] == 0.0  # every point is linked to its neighbour


def test_finch_recovers_blobs_that_are_chains() -> None:
    # Each blob is a straight chain of points with geometrically growing gaps, so every point's first
    # neighbour is the previous point of its chain: partition 0 must recover the blobs exactly.
    rng = np.random.default_rng(4)
    directions = l2_normalize(rng.standard_normal((4, 32)))
    offsets = l2_normalize(rng.standard_normal((4, 32)))
    steps = np.cumsum(0.001 * 1.15 ** np.arange(25))
    x = np.concatenate([d + s[:, None] * o for d, o, s in zip(directions, offsets, [steps] * 4)])
    truth = np.repeat(np.arange(4), 25)
    shuffle = rng.permutation(len(x))
    labels = finch_partition0(x[shuffle])
    assert adjusted_rand_score(truth[shuffle], labels) == 1.0


def nested_blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3 far-apart families of 3 sub-blobs each (sub-blobs near their family's direction, points tight around
    their sub-blob): (x, sub-blob ids, family ids)."""
    rng = np.random.default_rng(seed)
    families = l2_normalize(rng.standard_normal((3, 64)))
    subs = l2_normalize(np.repeat(families, 3, axis=0) + 0.3 * l2_normalize(rng.standard_normal((9, 64))))
    sub_of = np.repeat(np.arange(9), 20)
    x = subs[sub_of] + 0.01 * rng.standard_normal((len(sub_of), 64))
    return x.astype(np.float32), sub_of, sub_of // 3


def test_finch_levels_coarsen_to_the_sub_blobs_then_the_families_then_one() -> None:
    x, sub_of, family_of = nested_blobs()
    levels = finch_levels(x)
    assert levels[0].tolist() == finch_partition0(x).tolist()
    counts = [int(labels.max()) + 1 for labels in levels]
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts) and counts[-1] == 1
    for finer, coarser in zip(levels, levels[1:]):  # nested: a coarser group is a union of finer ones
        for group in np.unique(finer):
            assert len(np.unique(coarser[finer == group])) == 1
    by_count = {count: labels for count, labels in zip(counts, levels)}
    assert adjusted_rand_score(sub_of, by_count[9]) == 1.0
    assert adjusted_rand_score(family_of, by_count[3]) == 1.0


def test_finch_levels_of_tiny_inputs() -> None:
    assert [level.tolist() for level in finch_levels(np.zeros((1, 4)))] == [[0]]
    assert [level.tolist() for level in finch_levels(np.eye(2))] == [[0, 0]]  # each the other's neighbour


def test_cluster_sums_equal_adding_each_row_to_its_cluster() -> None:
    rng = np.random.default_rng(3)
    x, labels = rng.normal(size=(500, 7)).astype(np.float32), rng.permutation(np.arange(500) % 37)
    expected = np.zeros((37, 7))
    np.add.at(expected, labels, x.astype(np.float64))
    assert np.allclose(cluster_sums(x, labels), expected, rtol=0, atol=1e-12)


def merged_by_hand(x: np.ndarray, labels: np.ndarray, groups: int) -> np.ndarray:
    """Reference: recompute every cluster's mean direction and merge the most similar pair, until `groups`."""
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    labels = labels.copy()
    while len(np.unique(labels)) > groups:
        ids = np.unique(labels)
        means = np.stack([unit[labels == i].sum(axis=0) for i in ids])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        similarity = means @ means.T
        np.fill_diagonal(similarity, -np.inf)
        a, b = np.unravel_index(np.argmax(similarity), similarity.shape)
        labels[labels == ids[max(a, b)]] = ids[min(a, b)]
    return labels


def test_merging_closest_pairs_equals_recomputing_every_step() -> None:
    rng = np.random.default_rng(1)
    for _ in range(8):
        x = rng.normal(size=(200, 12))
        first = finch_partition0(x)
        groups = int(rng.integers(1, first.max() + 2))
        merged = merge_closest_pairs(x, first, groups)
        assert merged.max() + 1 == groups
        assert adjusted_rand_score(merged_by_hand(x, first, groups), merged) == 1.0
    with pytest.raises(ValueError, match="into 1 to"):
        merge_closest_pairs(x, first, int(first.max()) + 2)


def test_finch_groups_reaches_a_count_its_levels_jump_over() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(6), 10)
    x = np.eye(8)[truth] + 0.02 * rng.normal(size=(60, 8))  # six classes on six axes
    assert [int(level.max()) + 1 for level in finch_levels(x)] == [11, 4, 1]  # no level of 6
    labels, counts, start = finch_groups(x, 6)
    assert counts == [11, 4, 1] and start == 0 and adjusted_rand_score(truth, labels) == 1.0
    labels, _, start = finch_groups(x, 4)
    assert start == 1 and labels.tolist() == finch_levels(x)[1].tolist()  # a level of exactly that many
    labels, _, _ = finch_groups(x, 50)  # more than the first partition has: the first partition
    assert labels.tolist() == finch_partition0(x).tolist()


def test_finch_levels_and_groups_equal_the_finch_authors_package() -> None:
    """On unit vectors (the mean of a cluster's points then points where the mean of their unit vectors does), the
    hierarchy and the required-number partitions are those of `finch-clust` (FINCH's authors; bench/clustering.py's
    reference), which stops before the last level of one cluster."""
    finch = pytest.importorskip("finch")
    from bench.clustering import embedding_like

    x = l2_normalize(embedding_like(2000, clusters=60, seed=1))
    theirs, counts, _ = finch.FINCH(x, distance="cosine", verbose=False)
    ours = finch_levels(x)
    assert [int(level.max()) + 1 for level in ours] == [*counts, 1]
    for level in range(len(counts)):
        assert adjusted_rand_score(theirs[:, level], ours[level]) == 1.0
    for groups in (40, 20, 7):
        required = finch.FINCH(x, req_clust=groups, distance="cosine", verbose=False)[2]
        assert adjusted_rand_score(required, finch_groups(x, groups)[0]) == 1.0


def test_cosine_not_euclidean_scaling_a_point_keeps_its_cluster() -> None:
    x, _ = blobs(seed=5)
    scaled = x.copy()
    scaled[17] *= 10.0
    assert finch_partition0(scaled).tolist() == finch_partition0(x).tolist()
    assert kmeans(scaled, 5, seed=3).tolist() == kmeans(x, 5, seed=3).tolist()


def test_tiny_inputs() -> None:
    assert finch_partition0(np.ones((1, 4), dtype=np.float32)).tolist() == [0]
    assert finch_partition0(np.ones((2, 4), dtype=np.float32)).tolist() == [0, 0]
    with pytest.raises(ValueError, match="at least 2 points"):
        first_neighbours(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        finch_partition0(np.array([[1.0, np.nan], [0.0, 1.0]]))


def test_zero_rows_are_safe() -> None:
    x = np.array([[0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    unit = l2_normalize(x)
    assert np.isfinite(unit).all() and unit[0].tolist() == [0.0, 0.0]
    assert unit.dtype == np.float32 and np.allclose(unit[1], [0.6, 0.8])


# ------------------------------------------------------------------------------------------ k-means


def test_kmeans_recovers_blobs_and_is_seeded() -> None:
    x, truth = blobs(seed=6)
    labels = kmeans(x, 5, seed=11)
    assert adjusted_rand_score(truth, labels) == 1.0
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 5
    assert kmeans(x, 5, seed=11).tolist() == labels.tolist()


def test_kmeans_rejects_k_above_n() -> None:
    x, _ = blobs(per_blob=1)
    with pytest.raises(ValueError, match=r"k=6, n=5"):
        kmeans(x, 6)
    assert len(np.unique(kmeans(x, 5, n_init=1))) == 5  # k == n is allowed: one point per cluster


# ---------------------------------------------------------------------------------------- dispatch


def test_cluster_pseudo_labels_dispatch() -> None:
    x, truth = blobs(seed=7)
    assert cluster_pseudo_labels(x, method="finch").tolist() == finch_partition0(x).tolist()
    labels = cluster_pseudo_labels(x, method="kmeans", k=5, seed=2)
    assert labels.tolist() == kmeans(x, 5, seed=2).tolist()
    with pytest.raises(ValueError, match="finch, kmeans"):
        cluster_pseudo_labels(x, method="dbscan")


def test_gpu_branch_is_used_when_faiss_reports_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, int]] = []

    class FakeResources:
        pass

    def to_gpu(resources: object, device: int, index: object) -> object:
        calls.append((resources, device))
        return index  # the CPU index stands in for the GPU one

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1, raising=False)
    monkeypatch.setattr(faiss, "StandardGpuResources", FakeResources, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    assert finch_partition0(hand_points()).tolist() == HAND_PARTITION.tolist()
    assert len(calls) == 1 and isinstance(calls[0][0], FakeResources) and calls[0][1] == 0
    finch_partition0(hand_points(), use_gpu=False)
    assert len(calls) == 1


def test_use_gpu_true_without_a_gpu_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0, raising=False)
    with pytest.raises(RuntimeError, match="no GPU"):
        finch_partition0(hand_points(), use_gpu=True)


def test_threads_option_restores_faiss_default() -> None:
    before = faiss.omp_get_max_threads()
    target = 1 if before != 1 else 2
    x, _ = blobs(seed=8)
    assert finch_partition0(x, threads=target).tolist() == finch_partition0(x).tolist()
    assert faiss.omp_get_max_threads() == before


# -------------------------------------------------------------------------------------- monitoring


def test_agreement_is_perfect_and_permutation_invariant() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    assert cluster_agreement(truth, np.array([5, 5, 3, 3, 9, 9, 9])) == {"nmi": 1.0, "ami": 1.0}
    worse = cluster_agreement(truth, np.array([0, 1, 0, 1, 0, 1, 0]))
    assert worse["nmi"] < 0.5 and worse["ami"] < 0.5
    with pytest.raises(ValueError, match="equal length"):
        cluster_agreement(truth, truth[:-1])


def test_cluster_sizes_summary() -> None:
    summary = cluster_sizes_summary(np.array([4, 4, 1, 2, 2, 2]))
    assert summary == {"n_points": 6, "n_clusters": 3, "singleton_fraction": pytest.approx(1 / 3),
                       "largest_cluster": 3}
