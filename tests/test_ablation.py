"""The ablation's verdict: SLIC's recall@1 gains over each baseline, in points, against the bars."""

from __future__ import annotations

import pytest

from slic.ablation import findings


def rows(slic: float, intra: float, random: float) -> dict[str, dict[str, float]]:
    return {"slic": {"recall@1": slic}, "intra_video": {"recall@1": intra}, "random_init": {"recall@1": random}}


def test_finding_holds_only_when_both_bars_are_met() -> None:
    result = findings(rows(0.40, 0.30, 0.20), min_gain_over_random_init=10, min_gain_over_intra_video=5)
    assert result["slic_minus_random_init_points"] == pytest.approx(20.0)
    assert result["slic_minus_intra_video_points"] == pytest.approx(10.0)
    assert result["bars_met"] is True
    short = findings(rows(0.40, 0.37, 0.20), min_gain_over_random_init=10, min_gain_over_intra_video=5)
    assert short["slic_beats_intra_video_by_5"] is False and short["slic_beats_random_init_by_10"] is True
    assert short["bars_met"] is False


def test_exactly_at_the_bar_counts_and_missing_modes_are_skipped() -> None:
    result = findings(rows(0.30, 0.25, 0.20), min_gain_over_random_init=10, min_gain_over_intra_video=5)
    assert result["bars_met"] is True
    only_random = findings({"slic": {"recall@1": 0.3}, "random_init": {"recall@1": 0.1}},
                           min_gain_over_random_init=10, min_gain_over_intra_video=5)
    assert "slic_minus_intra_video_points" not in only_random and only_random["bars_met"] is True
    assert findings({"intra_video": {"recall@1": 0.3}}, min_gain_over_random_init=10,
                    min_gain_over_intra_video=5) == {}


def test_oracle_row_gives_the_ceiling_and_slics_share_of_it() -> None:
    table = {**rows(0.40, 0.30, 0.20), "oracle": {"recall@1": 0.70}}
    result = findings(table, min_gain_over_random_init=10, min_gain_over_intra_video=5)
    assert result["oracle_minus_random_init_points"] == pytest.approx(50.0)
    assert result["slic_share_of_oracle_gain"] == pytest.approx(0.4)
    assert result["bars_met"] is True  # the oracle is a reference, never part of the verdict
    flat = findings({**rows(0.2, 0.2, 0.2), "oracle": {"recall@1": 0.2}}, min_gain_over_random_init=10,
                    min_gain_over_intra_video=5)
    assert flat["oracle_minus_random_init_points"] == 0.0 and "slic_share_of_oracle_gain" not in flat
