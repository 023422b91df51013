"""bench/label_free.py: its numbers on a hand-made embeddings file, and the rank correlations' direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.label_free import correlations, label_free_numbers, labelled_numbers


@pytest.fixture()
def embeddings(tmp_path: Path) -> Path:
    """Two classes on two axes, with train, val and test videos of each; one val video of class 1 leans to
    class 0's axis (a val miss), everything else is near its own axis."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1])
    split = np.array(["train"] * 6 + ["val", "val", "val", "test", "test"])
    axes = np.eye(4)[labels] + 0.01 * rng.normal(size=(11, 4))
    axes[7] = 0.8 * np.eye(4)[0] + 0.6 * np.eye(4)[2]  # class 1, nearer class 0 than its own (cos 0.8 against 0)
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.array([f"v{i}" for i in range(11)]), label=labels,
             class_name=np.array(["a", "b"])[labels], split=split, embedding=axes.astype(np.float32))
    return path


def test_label_free_numbers_use_every_video_as_an_unlabelled_archive_would(embeddings: Path) -> None:
    numbers = label_free_numbers(embeddings)
    unit = np.load(embeddings)["embedding"]
    unit = unit / np.linalg.norm(unit, axis=1, keepdims=True)
    pairs = unit @ unit.T
    assert numbers["mean_pairwise_cosine"] == pytest.approx((pairs.sum() - 11) / 110, rel=1e-4)  # all 11, not train
    assert 1.5 < numbers["effective_rank"] < 3.0  # two directions, and v7 a little off them


def test_labelled_numbers_by_hand(embeddings: Path) -> None:
    numbers = labelled_numbers(embeddings)
    assert numbers["val_recall@1"] == pytest.approx(2 / 3)  # v7 is found among class 0
    assert numbers["test_recall@1"] == 1.0
    assert numbers["all_top1_same_class"] == pytest.approx(10 / 11)  # only v7's nearest other video is of class 0


def test_correlations_have_the_sign_of_the_agreement() -> None:
    encoders = [{"x": float(i), "y": float(-i), "val_recall@1": i / 10, "test_recall@1": i / 10} for i in range(5)]
    rho = correlations(encoders, ["x", "y"])
    assert rho["x"] == {"val_recall@1": 1.0, "test_recall@1": 1.0}
    assert rho["y"] == {"val_recall@1": -1.0, "test_recall@1": -1.0}
