"""bench/frame_rate.py: the rate probe and the wrong hits' rate share on hand-made embeddings, where the answer
is known."""

from __future__ import annotations

import numpy as np
import pytest

from bench.frame_rate import rate_probe, wrong_hits_at_query_rate

CLASSES = np.repeat(np.array(["a", "b", "c", "d"]), 20)  # a, b at 25 fps; c, d at 29.97
FAST = np.isin(CLASSES, ["c", "d"])


def test_the_rate_probe_finds_a_rate_axis_shared_across_classes_and_not_one_made_of_classes() -> None:
    rng = np.random.default_rng(0)
    by_class = np.eye(4)[np.searchsorted(["a", "b", "c", "d"], CLASSES)] + 0.05 * rng.normal(size=(80, 4))
    rate_axis = np.where(FAST, 1.0, -1.0)[:, None] + 0.05 * rng.normal(size=(80, 1))  # one direction, two sides
    with_rate = np.hstack([by_class, rate_axis])
    assert rate_probe(with_rate, CLASSES, FAST) > 0.95  # held-out classes told apart by the rate axis alone
    assert rate_probe(by_class, CLASSES, FAST) <= 0.55  # each class its own axis: nothing transfers


def test_wrong_hits_count_the_query_rate_against_the_other_classes_share() -> None:
    # gallery: one video per class on its own axis; four test queries: two found in their class, one of class a
    # landing on c (another rate), one of class c landing on d (its own rate)
    gallery = np.eye(4)
    queries = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0.1, 0, 1, 0], [0, 0, 0.1, 1]], dtype=float)
    classes = np.array(["a", "b", "c", "d", "a", "c", "a", "c"])
    rates = np.array([25, 25, 29.97, 29.97, 25, 29.97, 25, 29.97])
    split = np.array(["train"] * 4 + ["test"] * 4)
    same, chance, wrong = wrong_hits_at_query_rate(np.vstack([gallery, queries]), split, classes, rates)
    assert wrong == 2
    assert same == pytest.approx(0.5)  # the c query's hit d shares its rate; the a query's hit c does not
    assert chance == pytest.approx((1 / 3 + 1 / 3) / 2)  # a: b of b, c, d; c: d of a, b, d
