"""bench/retrain_labels.py: the labels a simulated user gives, and what each way trains on a class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.retrain_labels import markdown, pseudo_labels, stage_labels, named_test_share

pytest.importorskip("faiss")


def three_classes(tmp_path: Path) -> Path:
    """Three classes on three axes, 20 videos each: 12 train, 3 val, 5 test."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    embedding = np.eye(5)[labels] + 0.1 * rng.normal(size=(60, 5))
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.array([f"v{i}" for i in range(60)]), label=labels,
             split=np.tile(np.array(["train"] * 12 + ["val"] * 3 + ["test"] * 5), 3),
             embedding=embedding.astype(np.float32))
    return path


def test_the_user_labels_train_and_val_videos_only_and_each_way_puts_its_videos_on_a_class(tmp_path: Path) -> None:
    archive, truth, labelled, rows = stage_labels(three_classes(tmp_path), 6)
    assert len(archive.ids) == 45 and len(labelled) == 6 == len(set(labelled.tolist()))  # test videos never in it
    assert (np.load(tmp_path / "e.npz")["split"][rows] != "test").all()
    given = pseudo_labels("given", archive, truth, labelled)
    train = set(archive.ids[archive.split == "train"].tolist())
    labelled_train = {str(archive.ids[i]) for i in labelled} & train
    assert set(given) == labelled_train and all(given[i] == truth[list(archive.ids).index(i)] for i in given)
    named = pseudo_labels("named", archive, truth, labelled)
    assert set(named) == train  # every train video, by its nearest labelled one: here all rightly
    assert all(named[i] == truth[list(archive.ids).index(i)] for i in named)
    sure = pseudo_labels("named_sure", archive, truth, labelled)
    assert labelled_train <= set(sure) < train  # the labelled ones and the surer half of the others
    assert len(set(sure) - labelled_train) == pytest.approx((len(train) - len(labelled_train)) / 2, abs=1)
    with pytest.raises(ValueError, match="unknown way"):
        pseudo_labels("all", archive, truth, labelled)
    assert named_test_share(tmp_path / "e.npz", rows[labelled]) == 1.0  # separated classes: every test video


def test_markdown_puts_the_lead_over_the_base_beside_each_way() -> None:
    def cell(mean: float, per_seed: list[float] | None = None) -> dict:
        return {"mean": mean, "std": 0.0, "per_seed": per_seed or [mean]}

    stored = {"recall@1": cell(0.6), "best_val_recall_at_1": cell(0.5)}
    way = {"recall@1": cell(0.65), "best_val_recall_at_1": cell(0.55), "minus slic": cell(5.0, [8.0, -1.0, 8.0]),
           "val minus slic": cell(5.0), "test_named_after": cell(0.7), "test_named_before": cell(0.66),
           "train_videos_on_a_class": cell(84), "their_class_right": cell(1.0)}
    text = markdown({"summary": {"slic": stored, "given": way}, "base": "slic", "compared": ["slic"],
                     "ways": ["given"], "labels": 100})
    assert "| slic (bench/real.py) | 60.0 ± 0.0 | 50.0 ± 0.0 | | | |" in text
    assert "| retrained, `given` | 65.0 ± 0.0 | 55.0 ± 0.0 | +5.0 ± 0.0, 2 of 3 (+5.0) | 70.0 ± 0.0 (66.0 ± 0.0) |" \
           " 84 (100%) |" in text


def test_markdown_flag_prints_the_stored_report_and_stops(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from bench.real import cells_parser, printed_markdown

    (tmp_path / "r.json").write_text('{"rows": 3}')
    parser = cells_parser("a bench", ["slic"], tmp_path / "r.json", markdown="table")
    assert printed_markdown(parser.parse_args(["--markdown"]), lambda report: f"rows {report['rows']}")
    assert capsys.readouterr().out == "rows 3\n"
    assert not printed_markdown(parser.parse_args([]), lambda report: "never")
    assert capsys.readouterr().out == ""
