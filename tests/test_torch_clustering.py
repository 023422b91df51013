"""slic.torch_clustering: the same partitions as slic.clustering (faiss, scipy) and the same scores as sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slic import clustering
from slic import torch_clustering as tc


def blobs(seed: int = 0, n: int = 600, d: int = 16, centres: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, d))
    x = middle[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, d))
    return (x * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32)


def test_components_match_scipy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(40):
        n = int(rng.integers(1, 400))
        neighbours = rng.integers(0, n, n)
        assert np.array_equal(tc.connected_components(neighbours), clustering.components_of_neighbour_graph(neighbours))
    with pytest.raises(ValueError, match="neighbour ids"):
        tc.connected_components(np.array([0, 5]))


def test_finch_matches_slic_clustering_with_duplicates_and_chunks() -> None:
    pytest.importorskip("faiss")
    x = blobs()
    x[7] = x[3]
    x[11] = 2 * x[3]  # the same direction: an exact duplicate once normalised
    expected = clustering.finch_partition0(x, use_gpu=False)
    assert np.array_equal(tc.finch_partition0(x, device="cpu", chunk=97), expected)
    assert np.array_equal(tc.finch_partition0(torch.from_numpy(x), device="cpu"), expected)  # a tensor works too
    assert np.array_equal(tc.first_neighbours(x, device="cpu"), clustering.first_neighbours(x, use_gpu=False))
    assert tc.finch_partition0(x[:1]).tolist() == [0]


def test_topk_is_exact() -> None:
    x = torch.nn.functional.normalize(torch.from_numpy(blobs(2)), dim=1)
    scores, ids = tc.topk_inner_product(x[:50], x, 5, chunk=16)
    full = x[:50] @ x.T
    assert torch.equal(ids[:, 0], torch.arange(50))  # each point is its own best match
    assert torch.allclose(scores, full.topk(5, dim=1).values)
    with pytest.raises(ValueError, match="-d"):
        tc.topk_inner_product(x[:, :3], x, 1)


@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_tensor_core_search_rescored_in_float32_gives_the_exact_partition(precision: str) -> None:
    x = blobs(3, n=900, d=32, centres=40)
    x[5] = x[2]  # exact duplicates keep their tie-break
    expected = tc.finch_partition0(x, device="cpu")
    assert np.array_equal(tc.finch_partition0(x, device="cpu", chunk=128, precision=precision), expected)
    xn = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
    exact_scores, exact_ids = tc.topk_inner_product(xn, xn, 3)
    scores, ids = tc.topk_inner_product(xn, xn, 3, chunk=100, precision=precision)
    assert torch.equal(scores, (xn[:, None, :] * xn[ids]).sum(dim=2))  # float32 scores of the ids returned
    assert (ids == exact_ids).float().mean() > 0.99 and torch.allclose(scores, exact_scores, atol=1e-6)


def test_bf16_alone_confuses_near_neighbours_the_float32_shortlist_does_not() -> None:
    # One query, neighbours 1e-4 apart in cosine: bf16 scores (8 bits of mantissa) tie them, the rescoring
    # orders them exactly; with a shortlist of one the bf16 order is what comes back.
    rng = np.random.default_rng(0)
    base = rng.standard_normal(64)
    base /= np.linalg.norm(base)
    noise = rng.standard_normal((40, 64))
    noise -= (noise @ base)[:, None] * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angles = np.sqrt(2 * np.linspace(1e-4, 4e-3, 40))
    database = torch.tensor(np.cos(angles)[:, None] * base + np.sin(angles)[:, None] * noise, dtype=torch.float32)
    query = torch.tensor(base[None], dtype=torch.float32)
    _, exact = tc.topk_inner_product(query, database, 1)
    _, shortlisted = tc.topk_inner_product(query, database, 1, precision="bf16", candidates=40)
    assert exact.item() == shortlisted.item() == 0
    rough = [tc.topk_inner_product(query, database[order], 1, precision="bf16", candidates=1)[1].item()
             for order in (torch.arange(40), torch.arange(40).flip(0))]
    assert rough != [0, 39]  # bf16 ranks by its rounded scores: the true neighbour is not found in both orders
    with pytest.raises(ValueError, match="precision"):
        tc.topk_inner_product(query, database, 1, precision="fp16")


def test_kmeans_is_deterministic_and_finds_separated_blobs() -> None:
    rng = np.random.default_rng(3)
    middle = np.eye(8, dtype=np.float32)[:4] * 10
    truth = rng.integers(0, 4, 400)
    x = middle[truth] + 0.1 * rng.standard_normal((400, 8)).astype(np.float32)
    labels = tc.kmeans(x, 4, n_init=3, iterations=10, device="cpu", chunk=64)
    assert np.array_equal(labels, tc.kmeans(x, 4, n_init=3, iterations=10, device="cpu"))
    assert tc.adjusted_rand_index(truth, labels) == pytest.approx(1.0)
    assert labels.dtype == np.int64 and labels.min() >= 0 and labels.max() < 4
    with pytest.raises(ValueError, match="1 <= k <= n"):
        tc.kmeans(x[:3], 4)


def test_scores_match_sklearn() -> None:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(4)
    cases = [(np.zeros(5, int), np.zeros(5, int)), (np.zeros(5, int), np.arange(5)), (np.arange(6), np.arange(6)),
             (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))]
    for _ in range(60):
        n = int(rng.integers(2, 80))
        a = rng.integers(0, int(rng.integers(1, 6)), n)
        cases.append((a, rng.integers(0, int(rng.integers(1, 9)), n)))
        cases.append((a, a[::-1].copy()))
    for a, b in cases:
        assert tc.adjusted_rand_index(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)
        scores = tc.cluster_agreement(a, b)
        assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)
        assert scores["ami"] == pytest.approx(adjusted_mutual_info_score(a, b), abs=1e-8)
