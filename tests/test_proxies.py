"""The proxy objective: proxies start at the label centroids, follow every change of pseudo-labels, and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slic.config import PretrainConfig
from slic.proxies import PseudoLabelProxies, contiguous_labels, label_centroids, matched_proxies
from tests.test_pretrain import pretrain_in_process, workspace  # noqa: F401 (the module's fixture)


def test_contiguous_labels_and_centroids() -> None:
    assert contiguous_labels(np.array([7, 3, 7, 9])).tolist() == [1, 0, 1, 2]
    embeddings = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 1.0]])
    centroids = label_centroids(embeddings, np.array([0, 1, 1, 0]))
    # Label 0: the mean of the unit vectors (1, 0) and (0.707, 0.707), normalised; label 1: (0, 1).
    expected0 = np.array([1 + 2 ** -0.5, 2 ** -0.5])
    assert np.allclose(centroids[0], expected0 / np.linalg.norm(expected0), atol=1e-6)
    assert np.allclose(centroids[1], [0.0, 1.0]) and centroids.dtype == np.float32


def test_state_dict_round_trip_keeps_weight_and_optimizer() -> None:
    cfg = PretrainConfig(optimizer="adamw", lr=0.01)
    proxies = PseudoLabelProxies(cfg, torch.device("cpu"))
    assert not proxies.ready and proxies.state_dict() is None
    proxies.reset(np.random.default_rng(0).normal(size=(6, 4)), np.array([0, 0, 1, 1, 2, 2]))
    assert proxies.weight is not None and tuple(proxies.weight.shape) == (3, 4)
    proxies.weight.sum().backward()
    proxies.step()
    copy = PseudoLabelProxies(cfg, torch.device("cpu"))
    copy.load_state_dict(proxies.state_dict())
    assert copy.weight is not None and torch.equal(copy.weight, proxies.weight)
    assert copy.optimizer is not None and copy.optimizer.state_dict()["state"][0]["step"] == 1


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_proxy_lr_scale_sets_the_proxies_rate_and_only_theirs(optimizer: str) -> None:
    embeddings, labels = np.random.default_rng(1).normal(size=(6, 4)), np.array([0, 0, 1, 1, 2, 2])
    steps = {}
    for scale in (1.0, 10.0):
        proxies = PseudoLabelProxies(PretrainConfig(optimizer=optimizer, lr=0.01, proxy_lr_scale=scale),
                                     torch.device("cpu"))
        proxies.reset(embeddings, labels)
        assert proxies.optimizer is not None and proxies.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * scale)
        assert proxies.weight is not None
        before = proxies.weight.detach().clone()
        proxies.weight[:, 0].sum().backward()
        proxies.step()
        steps[scale] = (proxies.weight.detach() - before).abs().max().item()
    assert steps[10.0] == pytest.approx(10 * steps[1.0], rel=1e-4)  # the first step moves ten times as far
    carried = PseudoLabelProxies(PretrainConfig(optimizer=optimizer, lr=0.01, proxy_lr_scale=10.0), torch.device("cpu"))
    carried.carry(embeddings, labels, labels)
    carried.carry(embeddings, labels, labels)  # a fresh optimizer after a carry keeps the scaled rate
    assert carried.optimizer is not None and carried.optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_matched_proxies_carry_a_clusters_proxy_to_its_majority_descendant_only() -> None:
    old_weight = np.array([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=np.float32)
    old = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    centroids = np.full((4, 2), 7.0, dtype=np.float32)
    # New 0: two videos of old 0. New 1: two of old 1. New 2: one of old 0 and one of old 2, new 3 one of old 1
    # and one of old 2: no majority, so they start at their centroids.
    weight, carried = matched_proxies(old_weight, old, np.array([0, 0, 2, 3, 1, 1, 2, 3]), centroids)
    assert carried == 2
    assert np.allclose(weight[0], [1.0, 0.0]) and np.allclose(weight[1], [0.0, 1.0])  # carried, unit length
    assert np.allclose(weight[2], 7.0) and np.allclose(weight[3], 7.0)
    # A split: new 0 and new 1 both hold only old-0 videos; the larger share (new 1, two) keeps the proxy.
    weight, carried = matched_proxies(old_weight, old, np.array([0, 1, 1, 2, 2, 2, 3, 3]), centroids)
    assert carried == 3 and np.allclose(weight[1], [1.0, 0.0]) and np.allclose(weight[0], 7.0)
    # A merge: new 1 holds one video of old 0 and three of old 1, so old 1's proxy is the one it keeps.
    weight, carried = matched_proxies(old_weight, old, np.array([0, 0, 1, 1, 1, 1, 2, 2]), centroids[:3])
    assert carried == 3 and np.allclose(weight[1], [0.0, 1.0]) and np.allclose(weight[2], 2 ** -0.5)
    with pytest.raises(ValueError, match="3 old labels for 2 new ones"):
        matched_proxies(old_weight, np.array([0, 1, 2]), np.array([0, 1]), centroids[:2])


def test_slic_with_matched_proxies_keeps_trained_proxies_across_rounds(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    carried: list[int] = []
    carry = PseudoLabelProxies.carry

    def recording_carry(self: PseudoLabelProxies, embeddings: np.ndarray, labels: np.ndarray,
                        previous: np.ndarray) -> int:
        assert self.weight is not None and len(previous) == len(labels)
        before = self.weight.detach().clone()
        count = carry(self, embeddings, labels, previous)
        assert self.weight is not None
        kept = [k for k in range(len(self.weight)) if any(torch.allclose(self.weight[k], b / b.norm(), atol=1e-6)
                                                         for b in before)]
        assert len(kept) == count  # exactly the carried rows are old (trained) proxies
        carried.append(count)
        return count

    monkeypatch.setattr(PseudoLabelProxies, "carry", recording_carry)
    _, report = pretrain_in_process(workspace, monkeypatch, objective="proxy", epochs=3, cluster_interval=1,
                                    proxy_carry="matched", out="data/models/proxy_carry")
    assert report["cluster_rounds"] == 3 and len(carried) == 2  # rounds 2 and 3; round 1 starts at centroids
    assert sum(carried) > 0  # the clusters of a slowly moving encoder mostly descend from the last round's


def _proxies_of(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)["proxies"]


def test_slic_proxies_follow_each_clustering_round(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    resets: list[tuple[np.ndarray, np.ndarray]] = []
    reset = PseudoLabelProxies.reset

    def recording_reset(self: PseudoLabelProxies, embeddings: np.ndarray, labels: np.ndarray) -> None:
        resets.append((embeddings.copy(), np.array(labels)))
        reset(self, embeddings, labels)

    monkeypatch.setattr(PseudoLabelProxies, "reset", recording_reset)
    dataset, report = pretrain_in_process(workspace, monkeypatch, objective="proxy", epochs=2, cluster_interval=1,
                                          out="data/models/proxy_slic")
    assert report["objective"] == "proxy" and report["cluster_rounds"] == 2
    # Re-set at each round, with that round's embeddings (the model moved in between) and labels.
    assert len(resets) == 2 and not np.allclose(resets[0][0], resets[1][0])
    assert resets[1][1].tolist() == dataset.labels.tolist()
    saved = _proxies_of(workspace / "data/models/proxy_slic/last.pt")
    # One proxy per cluster of the last round, whose labels are 0..K-1.
    assert saved["weight"].shape == (len(set(dataset.labels.tolist())), 16)
    assert sorted(set(dataset.labels.tolist())) == list(range(saved["weight"].shape[0]))
    history = report["final_proxy"], report["final_proxy_accuracy"]
    assert history[0] > 0 and 0.0 <= history[1] <= 1.0


def test_intra_video_has_a_proxy_per_video_and_oracle_one_per_class(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    dataset, _ = pretrain_in_process(workspace, monkeypatch, mode="intra_video", objective="proxy", epochs=1,
                                     out="data/models/proxy_intra")
    assert _proxies_of(workspace / "data/models/proxy_intra/last.pt")["weight"].shape[0] == len(dataset.videos) == 12
    dataset, _ = pretrain_in_process(workspace, monkeypatch, mode="oracle", objective="proxy", epochs=2,
                                     cluster_interval=1, out="data/models/proxy_oracle")
    weight = _proxies_of(workspace / "data/models/proxy_oracle/last.pt")["weight"]
    assert weight.shape[0] == len({v.label for v in dataset.videos}) == 3
    assert dataset.labels.tolist() == [v.label for v in dataset.videos]  # the true classes, 0..2


def test_proxy_per_video_pulls_cross_video_positives_to_the_anchors_proxy(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """slic with proxy_per video: one proxy per training video, set once and kept through the clustering rounds,
    and every clip of a pair (a positive from another video of the cluster included) labelled with the anchor's
    video; the positives still come from the clusters."""
    import slic.losses

    resets: list[np.ndarray] = []
    reset = PseudoLabelProxies.reset

    def recording_reset(self: PseudoLabelProxies, embeddings: np.ndarray, labels: np.ndarray) -> None:
        resets.append(np.array(labels))
        reset(self, embeddings, labels)

    seen: list[list[int]] = []
    loss = slic.losses.slic_loss

    def recording_loss(anchor: torch.Tensor, positive: torch.Tensor, view: torch.Tensor | None,
                       labels: torch.Tensor, **kwargs: object) -> tuple[torch.Tensor, dict]:
        seen.append(labels.tolist())
        return loss(anchor, positive, view, labels, **kwargs)

    monkeypatch.setattr(PseudoLabelProxies, "reset", recording_reset)
    monkeypatch.setattr(slic.losses, "slic_loss", recording_loss)
    dataset, report = pretrain_in_process(workspace, monkeypatch, objective="proxy", proxy_per="video", epochs=2,
                                          cluster_interval=1, p_intra=0.0, out="data/models/proxy_video")
    assert report["cluster_rounds"] == 2
    assert len(resets) == 1 and resets[0].tolist() == list(range(12))  # set once, one per video, never reset
    served = dataset.served  # (epoch, index, pseudo-label, positive video, ...) in batch order (no workers)
    assert [label for step in seen for label in step] == [row[1] for row in served]
    cross = [row for row in served if row[3] != row[1]]
    assert cross and all(dataset.labels[row[3]] == row[2] for row in cross if row[0] == 1)  # from the cluster
    assert _proxies_of(workspace / "data/models/proxy_video/last.pt")["weight"].shape == (12, 16)


def test_shuffled_clusters_keep_every_size_and_lose_their_content(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """The control `shuffle_clusters`: training sees the round's cluster sizes, dealt to the videos at random."""
    import slic.pretrain

    clusters = np.repeat(np.arange(4), 3)  # 4 clusters of 3 of the 12 training videos, in video order
    real_round = slic.pretrain.cluster_round

    def fixed_round(*args: object, **kwargs: object) -> tuple:
        _, stats, embeddings = real_round(*args, **kwargs)
        return clusters.copy(), stats, embeddings

    monkeypatch.setattr(slic.pretrain, "cluster_round", fixed_round)
    dataset, _ = pretrain_in_process(workspace, monkeypatch, shuffle_clusters=True, epochs=1, cluster_interval=1,
                                     out="data/models/shuffled")
    assert sorted(np.bincount(dataset.labels).tolist()) == [3, 3, 3, 3]
    assert not np.array_equal(dataset.labels, clusters)
    positives = [row for row in dataset.served if row[3] != row[1]]  # drawn from the shuffled clusters
    assert positives and all(dataset.labels[row[3]] == dataset.labels[row[1]] for row in positives)


def test_nce_objective_trains_without_proxies(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    made: list[PseudoLabelProxies] = []
    monkeypatch.setattr(PseudoLabelProxies, "reset", lambda self, *a: made.append(self))
    _, report = pretrain_in_process(workspace, monkeypatch, objective="nce", nce_positives="pair", epochs=2,
                                    cluster_interval=1, out="data/models/nce_slic")
    assert report["objective"] == "nce" and report["cluster_rounds"] == 2 and not made
    assert report["final_nce"] > 0 and 0.0 <= report["final_nce_accuracy"] <= 1.0
    assert "final_proxy" not in report and "final_triplet" not in report
    assert _proxies_of(workspace / "data/models/nce_slic/last.pt") is None


def test_nearest_positives_come_only_from_the_anchors_nearest_cluster_members(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from slic.pretrain import nearest_members

    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [1, 0.05]], dtype=float)
    found = nearest_members(vectors, np.array([0, 0, 1, 1, 0]), k=1)
    assert [p.tolist() for p in found] == [[4], [4], [3], [2], [0]]  # within the cluster, most similar first
    assert [len(p) for p in nearest_members(vectors, np.array([0, 1, 2, 3, 4]), k=3)] == [0] * 5  # singletons

    dataset, _ = pretrain_in_process(workspace, monkeypatch, positive_pool="nearest", nearest_k=1, epochs=1,
                                     cluster_interval=1, out="data/models/nearest")
    partners = dataset._partners
    assert partners is not None and any(len(p) for p in partners)
    dataset.p_intra = 0.0  # every positive from another video
    rng = np.random.default_rng(0)
    for index, chosen in enumerate(partners):
        if len(chosen):
            assert dataset.labels[chosen[0]] == dataset.labels[index]
            assert all(dataset.positive_of(index, rng, 0)[0] == chosen[0] for _ in range(5))


def test_agreement_schedule_keeps_intra_positives_until_consecutive_rounds_agree(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from sklearn.metrics import adjusted_mutual_info_score

    rounds: list[np.ndarray] = []
    from slic.data.clips import PretrainClips

    set_labels = PretrainClips.set_labels

    def recording(self: PretrainClips, labels: np.ndarray) -> None:
        rounds.append(np.array(labels))
        set_labels(self, labels)

    monkeypatch.setattr(PretrainClips, "set_labels", recording)
    dataset, report = pretrain_in_process(workspace, monkeypatch, p_intra_schedule="agreement", p_intra=0.2,
                                          epochs=2, cluster_interval=1, out="data/models/agreement")
    history = torch.load(workspace / "data/models/agreement/last.pt", weights_only=False)["state"]
    first, second = rounds[-2], rounds[-1]  # the two clustering rounds (after the initial video ids)
    assert history["history"][0]["p_intra"] == 1.0  # no earlier round: every positive from the anchor's video
    expected = max(0.2, 1.0 - adjusted_mutual_info_score(first, second))
    assert history["history"][1]["p_intra"] == pytest.approx(expected)
    assert history["p_intra"] == pytest.approx(expected) and dataset.p_intra == pytest.approx(expected)
