"""bench/spread_labels.py: a simulated user's rounds on hand-made vectors, where the right answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.spread_labels import KEYS, WAYS, archive_from, label_spreading, markdown, measured, simulate

pytest.importorskip("faiss")


def four_classes(tmp_path: Path) -> Path:
    """Four classes on four axes, 15 videos each (5 of them test), the last two of class 3 far off its axis."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 15)
    embedding = np.eye(6)[labels] + 0.05 * rng.normal(size=(60, 6))
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.array([f"v{i}" for i in range(60)]), label=labels,
             class_name=np.array(list("abcd"))[labels], split=np.tile(np.array(["train"] * 10 + ["test"] * 5), 4),
             embedding=embedding.astype(np.float32))
    return path


def test_rounds_start_from_every_group_and_add_twenty_labels_each(tmp_path: Path) -> None:
    archive, truth = archive_from(four_classes(tmp_path))
    groups = int(archive.group.max()) + 1  # FINCH's first partition: fewer than 20 groups on 60 videos
    ways = simulate(archive, truth, rounds=2, draws=2, seed=7)
    assert set(ways) == set(WAYS)
    assert all([r["labelled"] for r in ways[way]] == [groups, groups + 20] for way in WAYS if way != "with_checks")
    assert [r["labelled"] for r in ways["with_checks"]] == [16 + 4, 40]  # 16 groups' typical videos, 4 checks
    stage = ways["stage"]
    assert stage[0]["test_accuracy"] == stage[0]["trainval_accuracy"] == 1.0  # separated classes: all right
    assert stage[1]["estimate"] == 1.0 and ways["label_spreading"][0]["estimate"] is None
    assert ways["with_checks"][1]["estimate"] == 1.0 == ways["with_checks"][1]["rest_accuracy"]  # 8 checks, right


def test_measured_counts_only_videos_not_labelled_and_splits_them_by_sureness() -> None:
    from types import SimpleNamespace

    archive = SimpleNamespace(split=np.array(["train", "train", "test", "test", "train", "test"]))
    truth = np.array([0, 0, 1, 1, 0, 1])
    named = np.array([0, 1, 1, 0, 0, 1])  # wrong: 1 (train) and 3 (test)
    sureness = np.array([9.0, 0.1, 0.9, 0.2, 0.8, 0.3])
    numbers = measured(archive, truth, np.array([0]), named, sureness, 0.5)  # video 0 labelled: not counted
    assert numbers["trainval_accuracy"] == 0.5 and numbers["test_accuracy"] == pytest.approx(2 / 3)
    # Surer half of the five: 2, 4 (both right); the rest: 5, 3, 1 (one right).
    assert numbers["surer_half"] == 1.0 and numbers["less_sure_half"] == pytest.approx(1 / 3)
    assert numbers["estimate"] == 0.5


def test_label_spreading_recovers_the_classes_from_one_label_each() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 12)
    unit = np.eye(4)[labels] + 0.05 * rng.normal(size=(36, 4))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    shares = label_spreading(unit, np.array([0, 12, 24]), np.array([0, 1, 2]), 3, neighbours=5)
    assert np.allclose(shares.sum(axis=1), 1.0) and (shares.argmax(axis=1) == labels).all()


def test_markdown_prints_the_docs_figures_from_a_report() -> None:
    """The docs' numbers come from the report: a mean over the trained encoders' runs, and the stage's paired lead
    with how many runs it wins."""
    from bench.ablation import spread

    rows, seeds = ["random_init", "intra_video", "slic", "slic_video"], [7, 8]
    lead = {7: 0.10, 8: -0.02}  # the stage minus random picks, per seed, every trained encoder

    def numbers(way: str, seed: int, at: int) -> dict[str, float]:
        accuracy = 0.6 + 0.1 * at - (lead[seed] if way == "random_picks" else 0.0)
        return {"labelled": 20 * (at + 1), **{key: accuracy for key in KEYS}}

    encoders = [{"row": row, "seed": seed, **{way: [numbers(way, seed, at) for at in range(2)] for way in WAYS}}
                for row in rows for seed in seeds]
    summary = {row: {way: [{"labelled": 20 * (at + 1), **{key: spread(
        [e[way][at][key] for e in encoders if e["row"] == row]) for key in KEYS}} for at in range(2)]
        for way in WAYS} for row in rows}
    text = markdown({"rows": rows, "rounds": 2, "encoders": encoders, "row_summary": summary})
    assert "| slic | stage: these suggestions, nearest labelled | 60.0 ± 0.0 | 70.0 ± 0.0 |" in text
    assert "| test videos named rightly, % (mean over the three encoders) | 60.0 | 70.0 |" in text
    assert "stage minus random at 20: +4.0 ± 6.6 (3 of 6)" in text  # (+10, -2) x 3 encoders
