"""SLIC's losses: hand-computed cases, the fallback regression, mining rules, and a loop reference.

Points are mostly 2-D vectors at chosen angles, so cosine distance is 1 - cos(angle between them).
Values used below: cos10 = 0.984808, cos30 = 0.866025, cos45 = 0.707107, cos60 = 0.5,
cos70 = 0.342020, cos80 = 0.173648, cos90 = 0, cos100 = -0.173648, cos140 = -0.766044,
cos150 = -0.866025, cos170 = -0.984808, cos180 = -1.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from slic.losses import (cosine_distance, cosine_distance_matrix, mine_triplets, slic_loss, temporal_loss,
                         triplet_loss, triplet_loss_with_stats)


def at(*degrees: float, norms: tuple[float, ...] | None = None) -> torch.Tensor:
    """(len(degrees), 2) points on circles: unit radius unless `norms` is given (losses must not care)."""
    norms = norms or (1.0,) * len(degrees)
    return torch.tensor([[r * math.cos(math.radians(d)), r * math.sin(math.radians(d))]
                         for d, r in zip(degrees, norms)])


@pytest.fixture(autouse=True)
def one_thread():
    """Tensors here are tiny: one intra-op thread avoids OpenMP spin-waits when the CPUs are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float) -> None:
    """Elementwise |actual - expected| <= atol (torch.testing.assert_close's first call is slow)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=0), (actual, expected)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------- distances


def test_cosine_distance_matrix_matches_angles_and_ignores_norm():
    x = at(0, 60, 180, norms=(1.0, 5.0, 0.1))
    expected = torch.tensor([[0.0, 0.5, 2.0],     # 1 - cos0, 1 - cos60, 1 - cos180
                             [0.5, 0.0, 1.5],     # 1 - cos120 = 1.5
                             [2.0, 1.5, 0.0]])
    assert_close(cosine_distance_matrix(x), expected, atol=1e-6)
    assert_close(cosine_distance(x, x.roll(1, 0)), torch.tensor([2.0, 0.5, 1.5]), atol=1e-6)


def test_cosine_distance_is_finite_for_a_zero_vector():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]], requires_grad=True)
    d = cosine_distance_matrix(x)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all()
    assert d[0, 1].item() == pytest.approx(1.0)


# ------------------------------------------------------------------------- triplet, by hand


def test_triplet_unique_semi_hard_candidate_by_hand():
    # a=0deg, p=60deg (label 0); n1=70deg (label 1), n2=180deg (label 2), n3=100deg (label 3).
    # One pair (0, 1): d_ap = 1 - cos60 = 0.5, so candidates need d_an < 0.5 + 0.2 = 0.7:
    #   n1: 1 - cos70 = 0.657980 (candidate); n2: 2.0 (no); n3: 1 - cos100 = 1.173648 (no).
    # loss = 0.5 - 0.657980 + 0.2 = 0.042020 whatever the seed (any other negative would give 0).
    x = at(0, 60, 70, 180, 100)
    labels = torch.tensor([0, 0, 1, 2, 3])
    for seed in range(5):
        loss, stats = triplet_loss_with_stats(x, labels, margin=0.2, generator=seeded(seed))
        assert loss.item() == pytest.approx(0.042020, abs=1e-5)
        assert stats == {"pairs": 1.0, "fallback_fraction": 0.0, "active_fraction": 1.0}


def test_triplet_fallback_pairs_count_in_the_mean_and_lower_index_is_anchor():
    # idx: 0: 0deg, 1: 90deg, 2: 10deg (label 0); 3: 180deg (label 1). Pairs (0,1), (0,2), (1,2).
    # (0,1): d_ap = 1 - cos90 = 1;        d(0,3) = 2 >= 1.2            -> fallback to 3, loss 0
    # (0,2): d_ap = 1 - cos10 = 0.015192; d(0,3) = 2 >= 0.215          -> fallback to 3, loss 0
    # (1,2): anchor 1 (90deg): d_ap = 1 - cos80 = 0.826352; d(1,3) = 1 - cos90 = 1 < 1.026352 -> candidate,
    #        loss = 0.826352 - 1 + 0.2 = 0.026352. (With 2 as anchor it would be a fallback: d(2,3) = 1.984808.)
    # mean over the 3 pairs = 0.026352 / 3 = 0.008784.
    x = at(0, 90, 10, 180)
    labels = torch.tensor([0, 0, 0, 1])
    loss, stats = triplet_loss_with_stats(x, labels, margin=0.2, generator=seeded(0))
    assert loss.item() == pytest.approx(0.008784, abs=1e-5)
    assert stats["pairs"] == 3.0
    assert stats["fallback_fraction"] == pytest.approx(2 / 3)
    assert stats["active_fraction"] == pytest.approx(1 / 3)
    t = mine_triplets(cosine_distance_matrix(x), labels, margin=0.2, generator=seeded(0))
    assert t.anchor.tolist() == [0, 0, 1] and t.positive.tolist() == [1, 2, 2]
    assert t.negative.tolist() == [3, 3, 3] and t.fallback.tolist() == [True, True, False]


def _buggy_fallback_loss(x: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """The reference's fallback bug, simulated: argmin over the different-label subset, index used
    as if it indexed the whole batch. Only for batches where every pair falls back."""
    d = cosine_distance_matrix(x)
    losses = []
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            if labels[i] == labels[j]:
                others = (labels != labels[i]).nonzero().flatten()
                wrong = int(d[i, others].argmin())          # position in `others`, not a batch index
                losses.append(max(0.0, float(d[i, j] - d[i, wrong] + margin)))
    return sum(losses) / len(losses)


def test_fallback_regression_picks_the_closest_different_label_sample():
    # idx: 0: 0deg, 1: 10deg, 2: 90deg (label 0); 3: 180deg (label 1); 4: 150deg (label 2).
    # The closest sample to 0 overall is 1 (same label). Every pair falls back:
    # (0,1): d_ap = 0.015192, d(0,3) = 2, d(0,4) = 1 - cos150 = 1.866025, both >= 0.215  -> 4, loss 0
    # (0,2): d_ap = 1,        both >= 1.2                                              -> 4, loss 0
    # (1,2): d_ap = 1 - cos80 = 0.826352; d(1,3) = 1 - cos170 = 1.984808,
    #        d(1,4) = 1 - cos140 = 1.766044, both >= 1.026352                          -> 4, loss 0
    # Correct loss = 0. The reference's bug takes argmin over [3, 4] -> position 1 -> batch index 1:
    # (0,1): n = 1 (its own positive), 0.2; (0,2): n = 1, 1 - 0.015192 + 0.2 = 1.184808;
    # (1,2): n = 1 (the anchor itself, d = 0), 0.826352 + 0.2 = 1.026352; mean = 0.803720.
    x = at(0, 10, 90, 180, 150)
    labels = torch.tensor([0, 0, 0, 1, 2])
    assert _buggy_fallback_loss(x, labels, 0.2) == pytest.approx(0.803720, abs=1e-5)  # the test can tell
    loss, stats = triplet_loss_with_stats(x, labels, margin=0.2, generator=seeded(0))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert stats["fallback_fraction"] == 1.0 and stats["active_fraction"] == 0.0
    t = mine_triplets(cosine_distance_matrix(x), labels, margin=0.2, generator=seeded(0))
    assert t.negative.tolist() == [4, 4, 4]             # not 3 (farther) and never a label-0 sample


def test_each_same_label_pair_is_counted_once():
    x = torch.randn(7, 5, generator=seeded(1))
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3])        # C(3,2) + C(2,2) = 3 + 1 pairs
    t = mine_triplets(cosine_distance_matrix(x), labels, generator=seeded(0))
    pairs = list(zip(t.anchor.tolist(), t.positive.tolist()))
    assert sorted(pairs) == [(0, 1), (0, 2), (1, 2), (3, 4)]
    assert triplet_loss_with_stats(x, labels)[1]["pairs"] == 4.0
    assert (labels[t.negative] != labels[t.anchor]).all()


# ------------------------------------------------------------------------------ randomness


def test_seeded_generator_is_deterministic_and_seeds_differ():
    x = torch.randn(32, 8, generator=seeded(2))
    labels = torch.arange(32) % 4
    dist = cosine_distance_matrix(x)
    # margin 2.5 > max distance, so every different-label sample is a candidate: 24 per pair.
    picks = [mine_triplets(dist, labels, margin=2.5, generator=seeded(s)).negative for s in range(4)]
    again = mine_triplets(dist, labels, margin=2.5, generator=seeded(0)).negative
    assert torch.equal(picks[0], again)
    assert triplet_loss(x, labels, margin=2.5, generator=seeded(0)).item() == \
        triplet_loss(x, labels, margin=2.5, generator=seeded(0)).item()
    assert not torch.equal(picks[0], picks[1]) and not torch.equal(picks[2], picks[3])
    # The draw reaches every candidate: over 4 seeds x 112 pairs, all 32 samples get picked.
    assert set(torch.cat(picks).tolist()) == set(range(32))


def test_random_negatives_are_always_valid_candidates():
    x = torch.randn(40, 6, generator=seeded(3))
    labels = torch.randint(0, 5, (40,), generator=seeded(4))
    dist = cosine_distance_matrix(x)
    t = mine_triplets(dist, labels, margin=0.2, generator=seeded(5))
    d_ap, d_an = dist[t.anchor, t.positive], dist[t.anchor, t.negative]
    assert (labels[t.negative] != labels[t.anchor]).all()
    assert (d_an[~t.fallback] < d_ap[~t.fallback] + 0.2).all()
    assert (~t.fallback).any()


# ---------------------------------------------------------------------------- degenerate


@pytest.mark.parametrize("labels", [torch.arange(6), torch.zeros(6, dtype=torch.long)],
                         ids=["no-same-label-pair", "all-same-label"])
def test_no_valid_pairs_gives_zero_with_grad(labels):
    x = torch.randn(6, 4, generator=seeded(6), requires_grad=True)
    loss, stats = triplet_loss_with_stats(x, labels)
    assert loss.item() == 0.0 and not torch.isnan(loss)
    assert stats["pairs"] == 0.0
    loss.backward()
    assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


# ------------------------------------------------------------------------------- temporal


def test_temporal_loss_by_hand_and_scale_invariant():
    # Sample 0: a = 0deg, a2 = 30deg, p = 45deg: 1 - cos30 - (1 - cos45) + 0.04
    #           = 0.133975 - 0.292893 + 0.04 < 0 -> 0.
    # Sample 1: a = 0deg, a2 = 60deg, p = 30deg: 0.5 - 0.133975 + 0.04 = 0.406025.
    # mean = 0.203013. (Swapping a2 and p: sample 0 gives 0.198918, sample 1 gives 0, mean 0.099459.)
    anchor = at(0, 0, norms=(2.0, 0.5))
    view = at(30, 60, norms=(7.0, 1.0))
    positive = at(45, 30, norms=(0.3, 4.0))
    assert temporal_loss(anchor, view, positive, margin=0.04).item() == pytest.approx(0.203013, abs=1e-5)
    assert temporal_loss(anchor, positive, view, margin=0.04).item() == pytest.approx(0.099459, abs=1e-5)


# ---------------------------------------------------------------------------------- total


def test_slic_loss_by_hand():
    # Batch of 2: anchors 0deg, 70deg; positives 60deg, 100deg; labels [0, 1]; views 10deg, 150deg.
    # Triplet batch [a0 0, a1 70, p0 60, p1 100], labels [0, 1, 0, 1] -> pairs (0,2) and (1,3):
    # (0,2): d_ap = 0.5, threshold 0.7: idx1 d = 0.657980 (candidate), idx3 d = 1.173648 (no)
    #        -> 0.5 - 0.657980 + 0.2 = 0.042020
    # (1,3): d_ap = 1 - cos30 = 0.133975, threshold 0.333975: idx0 d = 0.657980 (no),
    #        idx2 d = 1 - cos10 = 0.015192 (candidate) -> 0.133975 - 0.015192 + 0.2 = 0.318783
    # triplet = (0.042020 + 0.318783) / 2 = 0.180401
    # temporal: sample 0: 1 - cos10 - 0.5 + 0.04 < 0 -> 0; sample 1: d(70, 150) = 1 - cos80 = 0.826352,
    #           0.826352 - 0.133975 + 0.04 = 0.732377; mean = 0.366189
    # total with temporal_weight 0.5 = 0.180401 + 0.183094 = 0.363496
    anchor, positive, view = at(0, 70), at(60, 100), at(10, 150)
    labels = torch.tensor([0, 1])
    total, stats = slic_loss(anchor, positive, view, labels, temporal_weight=0.5, generator=seeded(0))
    assert total.item() == pytest.approx(0.363496, abs=1e-5)
    assert stats["loss"] == pytest.approx(0.363496, abs=1e-5)
    assert stats["triplet"] == pytest.approx(0.180401, abs=1e-5)
    assert stats["temporal"] == pytest.approx(0.366189, abs=1e-5)
    assert stats["pairs"] == 2.0 and stats["fallback_fraction"] == 0.0
    # anchor_view takes no part in mining: moving it changes only the temporal term.
    _, moved = slic_loss(anchor, positive, at(80, 90), labels, temporal_weight=0.5, generator=seeded(0))
    assert moved["triplet"] == pytest.approx(float(stats["triplet"]), abs=1e-7)
    assert moved["temporal"] != pytest.approx(float(stats["temporal"]), abs=1e-3)


def test_slic_loss_gradient_reaches_all_three_inputs():
    g = seeded(7)
    anchor, positive, view = (torch.randn(8, 4, generator=g, requires_grad=True) for _ in range(3))
    total, _ = slic_loss(anchor, positive, view, torch.arange(8) % 3, temporal_margin=2.5, generator=seeded(0))
    total.backward()
    for t in (anchor, positive, view):
        assert t.grad is not None and t.grad.abs().sum() > 0


# -------------------------------------------------------------------------- optimisation


def test_triplet_loss_falls_when_optimised():
    # Plain gradient descent, written out (torch.optim's first step imports torch._dynamo, seconds).
    # The step is large because cosine gradients shrink as 1/|x| (|x| ~ 4 here) and the loss is a
    # mean over ~480 pairs.
    labels = torch.arange(64) % 4
    x = torch.randn(64, 16, generator=seeded(8)).requires_grad_()
    g = seeded(9)
    first = triplet_loss(x, labels, margin=0.2, generator=g).item()
    for _ in range(100):
        (grad,) = torch.autograd.grad(triplet_loss(x, labels, margin=0.2, generator=g), x)
        with torch.no_grad():
            x -= 8.0 * grad
    final = triplet_loss(x, labels, margin=0.2, generator=g).item()
    assert first > 0.1
    assert final < 0.3 * first
    with torch.no_grad():
        d = cosine_distance_matrix(x)
        same = labels[:, None] == labels[None, :]
        off_diagonal = ~torch.eye(64, dtype=torch.bool)
        assert d[same & off_diagonal].mean() + 0.2 < d[~same].mean()


# ------------------------------------------------------------------------ loop reference


def reference_triplet_loss(x: torch.Tensor, labels: list[int], margin: float) -> torch.Tensor:
    """Obviously-correct loop version; needs at most one candidate negative per pair (else raises)."""
    def d(i: int, j: int) -> torch.Tensor:
        return 1 - F.cosine_similarity(x[i], x[j], dim=0)

    terms = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] != labels[j]:
                continue
            others = [k for k in range(len(labels)) if labels[k] != labels[i]]
            candidates = [k for k in others if d(i, k) < d(i, j) + margin]
            if len(candidates) > 1:
                raise ValueError("ambiguous batch: several candidate negatives")
            k = candidates[0] if candidates else min(others, key=lambda k: d(i, k).item())
            terms.append(torch.relu(d(i, j) - d(i, k) + margin))
    return torch.stack(terms).mean()


def test_matches_loop_reference_value_and_gradient():
    # Clustered batch (seed chosen so every pair has 0 or 1 candidate, nearest threshold 0.02 away).
    g = seeded(27)
    labels = torch.arange(12) % 4
    centers = torch.randn(4, 4, generator=g)
    base = centers[labels] + 0.5 * torch.randn(12, 4, generator=g)
    x_ref, x = base.clone().requires_grad_(), base.clone().requires_grad_()
    expected = reference_triplet_loss(x_ref, labels.tolist(), 0.1)
    loss, stats = triplet_loss_with_stats(x, labels, margin=0.1, generator=seeded(0))
    assert stats["pairs"] == 12.0 and 0 < stats["fallback_fraction"] < 1 and stats["active_fraction"] > 0
    assert_close(loss.detach(), expected.detach(), atol=1e-6)
    expected.backward()
    loss.backward()
    assert_close(x.grad, x_ref.grad, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("generator_device", ["cpu", "cuda"])
@pytest.mark.parametrize("labels_device", ["cpu", "cuda"])  # host labels: pairs found there, no wait on the GPU
def test_cuda_matches_cpu_on_a_deterministic_batch(generator_device, labels_device):
    x = at(0, 90, 10, 180)
    labels = torch.tensor([0, 0, 0, 1])
    g = torch.Generator(device=generator_device).manual_seed(0)
    loss = triplet_loss(x.cuda().requires_grad_(), labels.to(labels_device), generator=g)
    assert loss.device.type == "cuda"
    assert loss.item() == pytest.approx(triplet_loss(x, labels).item(), abs=1e-6)


def test_batch_all_triplet_by_hand_against_a_loop():
    from slic.losses import batch_all_triplet_loss_with_stats

    torch.manual_seed(3)
    x = torch.randn(7, 5, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 0])
    loss, stats = batch_all_triplet_loss_with_stats(x, labels, margin=0.3)
    d = cosine_distance_matrix(x.detach())
    values, valid = [], 0
    for a in range(7):
        for p in range(7):
            if a == p or labels[a] != labels[p]:
                continue
            for n in range(7):
                if labels[n] == labels[a]:
                    continue
                valid += 1
                value = float(d[a, p] - d[a, n] + 0.3)
                if value > 0:
                    values.append(value)
    assert stats["pairs"] == 3 * 2 + 3 * 2  # ordered same-label pairs: label 0 (3 videos) and 1 (3)
    assert loss.item() == pytest.approx(sum(values) / len(values), rel=1e-5)
    assert stats["active_fraction"] == pytest.approx(len(values) / valid)
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_batch_all_is_zero_with_grad_when_every_triplet_is_satisfied_or_no_pair():
    from slic.losses import batch_all_triplet_loss_with_stats

    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], requires_grad=True)
    loss, stats = batch_all_triplet_loss_with_stats(x, torch.tensor([0, 0, 1, 1]), margin=0.2)
    assert loss.item() == 0.0 and stats["active_fraction"] == 0.0
    loss.backward()
    assert x.grad is not None
    loss, stats = batch_all_triplet_loss_with_stats(x, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0 and stats["pairs"] == 0.0


def test_slic_loss_batch_all_mining_and_no_view():
    torch.manual_seed(0)
    a, p = torch.randn(4, 8), torch.randn(4, 8)
    labels = torch.tensor([0, 1, 0, 1])
    from slic.losses import batch_all_triplet_loss_with_stats

    total, stats = slic_loss(a, p, None, labels, temporal_weight=0.0, mining="batch_all")
    expected, _ = batch_all_triplet_loss_with_stats(torch.cat([a, p]), torch.cat([labels, labels]))
    assert total.item() == pytest.approx(expected.item()) and stats["temporal"] == 0.0
    with pytest.raises(ValueError, match="anchor_view"):
        slic_loss(a, p, None, labels, temporal_weight=1.0)
    with pytest.raises(ValueError, match="mining"):
        slic_loss(a, p, a, labels, mining="hardest")


def test_proxy_loss_is_the_cross_entropy_of_scaled_cosines_and_trains_the_proxies():
    from slic.losses import proxy_loss_with_stats

    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    proxies = torch.tensor([[1.0, 0.0], [0.0, 5.0]], requires_grad=True)  # scale does not matter: cosines
    labels = torch.tensor([0, 1, 1])
    loss, stats = proxy_loss_with_stats(x, labels, proxies, temperature=0.5)
    c = 2 ** -0.5
    cosines = [[1.0, 0.0], [0.0, 1.0], [c, c]]
    expected = sum(-math.log(math.exp(row[y] / 0.5) / sum(math.exp(v / 0.5) for v in row))
                   for row, y in zip(cosines, [0, 1, 1])) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # The tie of the third row is resolved to proxy 0 by argmax: 2 of 3 nearest proxies are right.
    assert stats["proxy_accuracy"] == pytest.approx(2 / 3)
    loss.backward()
    assert proxies.grad is not None and proxies.grad.abs().sum() > 0 and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="0..1"):
        proxy_loss_with_stats(x.detach(), torch.tensor([0, 1, 2]), proxies.detach())
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        proxy_loss_with_stats(x.detach(), labels, torch.ones(2, 3))


def test_slic_loss_with_proxies_replaces_the_triplet_over_anchors_and_positives():
    from slic.losses import proxy_loss_with_stats

    torch.manual_seed(0)
    a, p, v = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    labels, proxies = torch.tensor([0, 1, 2, 1]), torch.randn(3, 8)
    total, stats = slic_loss(a, p, v, labels, proxies=proxies, proxy_temperature=0.2, temporal_weight=0.5)
    term, _ = proxy_loss_with_stats(torch.cat([a, p]), torch.cat([labels, labels]), proxies, temperature=0.2)
    assert "triplet" not in stats and stats["proxy"] == pytest.approx(term.item())
    assert total.item() == pytest.approx(term.item() + 0.5 * float(stats["temporal"]), rel=1e-6)


def test_nce_targets_each_clip_at_its_partner_and_leaves_cluster_mates_out_of_the_denominator():
    from slic.losses import nce_loss_with_stats

    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = a.clone()
    # Two labels: clip 0's candidates are a1 (cos 0), p0 (its partner, cos 1) and p1 (cos 0).
    loss, stats = nce_loss_with_stats(a, p, torch.tensor([0, 1]), temperature=0.5)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + 2.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6) and stats["nce_accuracy"] == 1.0
    # One label: a1 and p1 are cluster mates, left out; the partner is the only candidate, so nothing to learn.
    same, _ = nce_loss_with_stats(a, p, torch.tensor([0, 0]), temperature=0.5)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    # SupCon: the mates are targets too; clip 0's log-probabilities over (a1, p0, p1) averaged.
    supcon, _ = nce_loss_with_stats(a, p, torch.tensor([0, 0]), temperature=0.5, positives="label")
    z = math.exp(2.0) + 2.0
    assert supcon.item() == pytest.approx(-(2 * math.log(1 / z) + math.log(math.exp(2.0) / z)) / 3, rel=1e-6)


def test_nce_gradient_pulls_a_cross_video_positive_to_its_anchor_and_slic_loss_routes_to_it():
    from slic.losses import nce_loss_with_stats

    torch.manual_seed(0)
    a, p = torch.randn(6, 8), torch.randn(6, 8, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, _ = nce_loss_with_stats(a, p, labels, temperature=0.1)
    loss.backward()
    before = F.cosine_similarity(a[0], p[0], dim=0)
    moved = p.detach() - 0.01 * p.grad
    assert F.cosine_similarity(a[0], moved[0], dim=0) > before
    total, stats = slic_loss(a, p.detach(), None, labels, temporal_weight=0.0, nce_positives="pair",
                             nce_temperature=0.1)
    assert stats["nce"] == pytest.approx(loss.item(), rel=1e-6) and "triplet" not in stats
    with pytest.raises(ValueError, match="one"):
        slic_loss(a, p.detach(), None, labels, temporal_weight=0.0, nce_positives="pair", proxies=torch.ones(3, 8))
    with pytest.raises(ValueError, match="positives"):
        nce_loss_with_stats(a, p.detach(), labels, positives="all")
