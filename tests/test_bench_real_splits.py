"""bench/real_splits.py pools bench/real.py reports of several splits: each row's mean per split and over every
(split, seed) run, and its difference to intra_video paired by split and seed; two reports of one split are
refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.real_splits import main


def report(split: int, recalls: dict[str, list[float]]) -> dict:
    """A bench/real.py report of seeds 7, 8, 9 with the given test recall@1 per row."""
    per_seed = {row: {str(seed): {"recall@1": r} for seed, r in zip((7, 8, 9), values)}
                for row, values in recalls.items()}
    mean = {row: {"recall@1": sum(values) / 3} for row, values in recalls.items()}
    return {"split": split, "per_seed": per_seed, "mean": mean, "std": {row: {"recall@1": 0.0} for row in recalls},
            "data": {"splits": {"test": 200}}, "machine": {"cpu_model": "test CPU"}}


def test_rows_are_pooled_over_splits_and_paired_with_intra_video_by_split_and_seed(tmp_path: Path) -> None:
    first = report(1, {"intra_video": [0.60, 0.62, 0.64], "slic": [0.61, 0.62, 0.60], "random_init": [0.5] * 3})
    second = report(2, {"intra_video": [0.70, 0.70, 0.70], "slic": [0.72, 0.68, 0.75], "random_init": [0.5] * 3})
    paths = []
    for number, content in enumerate((first, second)):
        paths.append(tmp_path / f"split{number + 1}.json")
        paths[-1].write_text(json.dumps(content))
    out = tmp_path / "splits.json"
    assert main([*map(str, paths), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    slic = rows["slic"]
    assert slic["pooled"]["runs"] == 6 and slic["pooled"]["mean"] == pytest.approx(100 * (0.61 + 0.62 + 0.60 + 0.72
                                                                                         + 0.68 + 0.75) / 6, abs=0.01)
    against = slic["against_intra_video"]  # +1, 0, -4, +2, -2, +5 points
    assert (against["runs"], against["wins"], against["ties"], against["losses"]) == (6, 3, 1, 2)
    assert against["mean_points"] == pytest.approx(2 / 6, abs=0.01)
    assert "against_intra_video" not in rows["intra_video"] and rows["slic"]["per_split"]["2"]["mean"] == 71.67
    with pytest.raises(SystemExit, match="two reports of one split"):
        main([str(paths[0]), str(paths[0]), "--out", str(out)])
