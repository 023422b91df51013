"""bench/archive_clusters.py and bench/grouping_speed.py: their numbers on hand-made vectors, the paired differences,
and the speed rows against the FINCH authors' package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.archive_clusters import DEFAULT_WAY, WAYS, grouped, labelling, paired

pytest.importorskip("faiss")


def test_each_way_groups_every_video_and_scores_all_and_test_videos(tmp_path: Path) -> None:
    """Six classes on six axes, 10 videos each (4 of them test): both ways recover them when asked for 6."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 10)
    embedding = np.eye(8)[labels] + 0.02 * rng.normal(size=(60, 8))
    split = np.tile(np.array(["train"] * 6 + ["test"] * 4), 6)
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.array([f"v{i}" for i in range(60)]), label=labels,
             class_name=np.array(list("abcdef"))[labels], split=split, embedding=embedding.astype(np.float32))
    numbers = grouped(path)
    assert set(numbers) == set(WAYS) | {"labelling"} and numbers["labelling"]["labelled_videos"] == 11
    assert numbers["kmeans_6"]["groups"] == 6 and numbers["kmeans_6"]["ami"] == pytest.approx(1.0)
    assert numbers["kmeans_6"]["test_ami"] == pytest.approx(1.0) and numbers["kmeans_6"]["purity"] == 1.0
    # FINCH's levels hold 11, 4 and 1 clusters here: 11 merged a closest pair at a time gives the classes.
    assert numbers["finch_6"]["groups"] == 6 and numbers["finch_6"]["ami"] == pytest.approx(1.0)
    assert numbers["finch_20"]["groups"] == 11 and numbers["finch_20"]["purity"] == 1.0  # the first partition
    assert numbers["kmeans_20"]["groups"] == 20 and numbers["kmeans_20"]["purity"] == 1.0  # splits, never mixes
    assert numbers["kmeans_20"]["ami"] < 1.0


def test_labelling_spreads_the_typical_or_random_videos_class_by_group_or_by_nearest() -> None:
    """Two groups on two axes: group 0 is 4 videos of class a and 2 of class b near its axis, the b ones off
    centre; group 1 is 4 videos of class c. Labelling the typical video of each group spreads a to group 0 (4 of
    6 right) and c to group 1: 8 of 10. The typical videos' nearest spreads the same here."""
    vectors = np.array([[1, 0, 0], [1, 0.05, 0], [1, -0.05, 0], [1, 0, 0.05], [1, 0.6, 0], [1, -0.6, 0],
                        [0, 1, 1], [0, 1, 1.1], [0, 1.1, 1], [0, 1, 0.9]], dtype=np.float32)
    classes = np.array(list("aaaabbcccc"))
    groups = np.array([0] * 6 + [1] * 4)
    rank = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    shares = labelling(vectors, classes, groups, rank, draws=50)
    assert shares["labelled_videos"] == 2
    assert shares["typical_by_group"] == shares["typical_nearest"] == 0.8
    # A random member of group 0 is a b video 2 times in 6: then 2 of 6 there are right, else 4 of 6.
    assert shares["random_by_group"] == pytest.approx((4 + (2 / 6 * 2 + 4 / 6 * 4)) / 10, abs=0.06)
    assert 0 < shares["random_nearest"] <= 1


def test_paired_differences_are_per_seed_and_only_for_rows_run() -> None:
    encoders = [{"row": row, "seed": seed, DEFAULT_WAY: {"ami": base + seed / 100}}
                for row, base in (("slic", 0.5), ("intra_video", 0.4), ("random_init", 0.1)) for seed in (7, 8)]
    encoders[0][DEFAULT_WAY]["ami"] = 0.60  # slic seed 7: 0.1 above its value from the formula
    diffs = paired(encoders, ["slic", "intra_video", "random_init"], [7, 8], "ami")
    assert set(diffs) == {"slic - intra_video", "slic - random_init", "intra_video - random_init"}
    assert diffs["slic - intra_video"]["per_seed"] == pytest.approx([0.60 - 0.47, 0.1])
    assert diffs["intra_video - random_init"]["mean"] == pytest.approx(0.3)


def test_grouping_speed_rows_match_the_reference_and_skip_it_above_its_limit(tmp_path: Path) -> None:
    pytest.importorskip("finch")
    import json

    from bench.grouping_speed import main

    main(["--sizes", "400", "900", "--ref-max-n", "400", "--repeats", "1", "--groups", "5",
          "--out", str(tmp_path / "speed.json")])
    small, large = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert small["same_as_reference"] == 1.0 and small["groups"] == 5 and small["reference_s"] > 0
    assert "reference_s" not in large and "skipped" in large["reference"] and large["kmeans_s"] > 0
    assert large["finch_levels"][large["merged_from_level"]] >= 5
