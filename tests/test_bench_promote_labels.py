"""bench/promote_labels.py: the judges' ranking and average precision, the drawn checks, and the served encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.promote_labels import checks_drawn, judged, main, summary


def test_recall_and_average_precision_leave_out_the_querys_recording() -> None:
    vectors = np.array([[1, 0], [1, 0.1], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.array([0, 0, 1, 0, 0])
    recordings = np.array(["a", "a", "b", "c", "d"])
    found = judged(vectors, labels, recordings, [0], [0, 1, 2, 3, 4])
    # v1 (same recording) and v0 itself left out: ranked v2 (other class), v3, v4 (its class): AP (1/2 + 2/3) / 2.
    assert found["r1"].tolist() == [False] and found["map"] == pytest.approx([(1 / 2 + 2 / 3) / 2])
    alone = judged(vectors, labels, np.array(["a", "b", "c", "d", "e"]), [0], [0, 1, 2, 3, 4])
    assert alone["r1"].tolist() == [True] and alone["map"] == pytest.approx([(1 + 2 / 3 + 3 / 4) / 3])  # v1 v2 v3 v4


def test_checks_are_drawn_from_videos_neither_labelled_nor_of_the_test_split() -> None:
    truth = {f"v{i}": "run" for i in range(10)}
    split = {f"v{i}": "test" if i < 3 else "train" for i in range(10)}
    drawn = checks_drawn(["v3", "v4"], truth, split, 5, np.random.default_rng(0))
    assert sorted(drawn) == ["v5", "v6", "v7", "v8", "v9"]


def pair(slic: float, labels: float, se: float, judged_as: list[tuple[float, float, int, int]]) -> dict:
    return {"test": {"slic": slic, "labels": labels, "lead": labels - slic, "lead_se": se},
            "judged": {"checks_20": [{"labelled_r1": {"candidate": c, "champion": h, "only_candidate": ours,
                                                      "only_champion": theirs}, "held_out": 20}
                                     for c, h, ours, theirs in judged_as]}}


def test_summary_serves_the_candidate_only_where_the_judge_moves_the_alias() -> None:
    pairs = [pair(60.0, 70.0, 2.0, [(80.0, 70.0, 6, 0), (70.0, 70.0, 0, 0)]),  # clearly better: moved once, a tie
             pair(65.0, 63.0, 2.0, [(60.0, 75.0, 0, 4), (90.0, 80.0, 7, 0)])]  # worse within its noise: kept once
    found = summary(pairs)
    judge = found["checks_20"]["labelled_r1"]
    assert (found["candidate_better_on_test"], found["pairs_clear_on_test"]) == (1, 1)
    assert judge["promoted_share"] == 0.5 and judge["agrees_with_test_share"] == 0.5
    assert judge["agrees_where_test_is_clear"] == 0.5  # the first pair's two decisions
    assert judge["served_test_recall_at_1"]["per_seed"] == [70.0, 60.0, 65.0, 63.0]
    assert found["served_test_recall_at_1"]["never_move"]["mean"] == 62.5
    # p < 0.05 for 6 to 0 (0.031) and 7 to 0 (0.016), not for 0 to 4 (0.125): one of the two agrees with the test.
    assert (judge["sign_test_below_05"], judge["agrees_where_sign_test_below_05"]) == (2, 0.5)


def test_without_pairs_it_says_which_bench_to_run_first(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["--work", str(tmp_path / "none")])
    assert "run `make bench-labels-stage`" in capsys.readouterr().err
