"""bench/unknown_classes.py: its AUROC and one held-out class's numbers, on hand-made embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from bench.unknown_classes import auroc, held_out_class


def test_auroc_is_the_share_of_unknown_known_pairs_ranked_right_with_ties_half() -> None:
    assert auroc(np.array([0.1, 0.2]), np.array([0.5, 0.6])) == 1.0  # every unknown below every known
    assert auroc(np.array([0.7]), np.array([0.5, 0.6])) == 0.0
    assert auroc(np.array([0.5, 0.1]), np.array([0.5, 0.6])) == pytest.approx((0.5 + 1 + 1 + 1) / 4)
    assert np.isnan(auroc(np.array([]), np.array([0.5])))


def test_a_class_far_from_every_labelled_one_is_told_apart_by_its_similarity() -> None:
    """Three classes on three axes, the held-out one (2) on its own: its videos are least similar to every labelled
    video, so similarity ranks them all below the known ones (AUROC 1) and the val threshold catches them."""
    rng = np.random.default_rng(0)
    label = np.repeat([0, 1, 2], 12)
    unit = np.eye(3)[label] + 0.05 * rng.standard_normal((36, 3))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    split = np.tile(np.array(["train"] * 6 + ["val"] * 3 + ["test"] * 3), 3)
    labelled = np.flatnonzero((split == "train") & (label != 2))
    found = held_out_class(unit, label, split, 2, labelled, reject_known=0.1)
    assert found["similarity"]["auroc_val"] == 1.0 and found["similarity"]["auroc_test"] == 1.0
    assert found["similarity"]["test_unknown_caught"] == 1.0 and found["named_rightly"] == 1.0
