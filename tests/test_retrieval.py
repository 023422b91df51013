"""Retrieval recall: hand-computed cases, cosine not Euclidean, every query counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slic.retrieval import evaluate_embeddings, nearest_gallery, recall_at_k, write_recall_curve


def test_hand_computed_recall() -> None:
    gallery = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
    gallery_labels = np.array([0, 1, 2, 3])
    # query 0 is nearest to gallery 0 (its class) -> hit@1; query 1 (class 1) is nearest to
    # gallery 0 (class 0), second nearest gallery 1 (class 1) -> miss@1, hit@2.
    queries = np.array([[1, 0.1], [1, 0.9]], dtype=np.float32)
    labels = np.array([0, 1])
    assert recall_at_k(queries, labels, gallery, gallery_labels, ks=(1, 2)) == {"recall@1": 0.5, "recall@2": 1.0}


def test_cosine_ignores_length() -> None:
    gallery = np.array([[10.0, 0.0], [0.5, 0.6]], dtype=np.float32)
    # For [0.9, 0.1]: Euclidean distances 9.1 and 0.64 would rank gallery 1 first; cosine
    # similarities 0.99 and 0.72 rank gallery 0 first.
    assert nearest_gallery(np.array([[0.9, 0.1]], dtype=np.float32), gallery, 2).tolist() == [[0, 1]]


def test_evaluate_embeddings_counts_every_query(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    labels = np.repeat([0, 1, 2], 7)
    embeddings = centres[labels] + 0.01 * rng.normal(size=(21, 8))
    split = np.array((["train"] * 4 + ["test"] * 3) * 3)
    embeddings[labels == 2] *= -1  # class 2 stays separable after flipping
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.arange(21).astype(str), label=labels, class_name=np.array(["a", "b", "c"])[labels],
             split=split, embedding=embeddings.astype(np.float32))
    report = evaluate_embeddings(path, ks=(1, 5))
    assert (report["queries"], report["gallery"]) == (9, 12)
    assert report["recall@1"] == 1.0
    assert report["per_class"]["b"] == {"recall@1": 1.0, "recall@5": 1.0, "queries": 3}
    write_recall_curve(report, tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text() == "k,recall\n1,1.000000\n5,1.000000\n"
    with pytest.raises(ValueError, match="'val' queries"):
        evaluate_embeddings(path, query_split="val")
