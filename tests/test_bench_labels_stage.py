"""bench/labels_stage.py: the simulated user's rounds, the share of test videos named rightly, the paired lead."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.labels_stage import label_round, share_named_rightly, summary, write_params


def test_each_round_appends_the_suggested_videos_with_their_true_classes(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    truth = {f"v{i}": "run" if i % 2 else "jump" for i in range(6)}
    (tmp_path / "reports/label_next.csv").write_text("video_id,class,guess\nv1,,jump\nv2,,\nv3,,run\n")
    assert label_round(tmp_path, truth, per_round=2) == 2
    (tmp_path / "reports/label_next.csv").write_text("video_id,class\nv4,\n")
    assert label_round(tmp_path, truth, per_round=2) == 3
    assert (tmp_path / "labels/given.csv").read_text() == "video_id,class\nv1,run\nv2,jump\nv4,jump\n"


def test_named_rightly_counts_test_videos_not_labelled_only(tmp_path: Path) -> None:
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports/spread_labels.csv").write_text(
        "video_id,class,source\nt1,run,given\nt2,run,nearest\nt3,run,nearest\nt4,jump,nearest\nr1,jump,nearest\n")
    truth = {"t1": "jump", "t2": "run", "t3": "jump", "t4": "jump", "r1": "run"}
    split = {"t1": "test", "t2": "test", "t3": "test", "t4": "test", "r1": "train"}
    assert share_named_rightly(tmp_path, truth, split) == pytest.approx(2 / 3)  # t1 given, r1 a train video


def test_summary_pairs_the_lead_by_seed() -> None:
    results = [{"test_recall_at_1": {"slic": 0.60, "labels": 0.66}, "test_named_rightly": {"slic": 0.7, "labels": 0.7}},
               {"test_recall_at_1": {"slic": 0.64, "labels": 0.62}, "test_named_rightly": {"slic": 0.7, "labels": 0.8}}]
    lead = summary(results)["test_recall_at_1"]["labels_minus_slic"]
    assert lead["per_seed"] == pytest.approx([6.0, -2.0]) and lead["seeds_ahead"] == 1
    assert summary(results)["test_recall_at_1"]["slic"]["mean"] == pytest.approx(62.0)


def test_params_carry_the_preset_the_split_the_seed_and_the_shared_frames_and_manifest(tmp_path: Path) -> None:
    from slic.config import load

    write_params(tmp_path / "labels", tmp_path / "ucf101_6", 2, 8, tmp_path / "frames",
                 manifest=tmp_path / "slic/validated.csv", mode="labels")
    config = load(tmp_path / "labels/params.yaml")
    assert (config.manifest.root, config.manifest.split) == (str(tmp_path / "ucf101_6/videos"), 2)
    assert (config.pretrain.mode, config.pretrain.seed, config.pretrain.size) == ("labels", 8, 32)
    assert config.extract.out == str(tmp_path / "frames")
    assert config.extract.manifest == str(tmp_path / "slic/validated.csv")
    assert config.manifest.layout == "ucf101"  # the ucf101_6_cpu preset
