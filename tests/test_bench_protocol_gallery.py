"""bench/protocol_gallery.py: recall against our train split and against the whole train list, paired per encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bench.protocol_gallery import main


def embeddings(path: Path, val_first: bool) -> None:
    """Two classes on two axes; each test query's nearest video is a val video when `val_first`, of its class
    (so the whole train list finds it at rank 1 and the carved train split only at rank 2, behind another class)."""
    rows = {"t0": ([1, 0.2], 0, "test"), "t1": ([0.2, 1], 1, "test"),
            "a": ([1, 0.6], 1, "train"), "b": ([0.6, 1], 0, "train"),
            "c": ([1, 0.9], 0, "train"), "d": ([0.9, 1], 1, "train"),
            "v0": ([1, 0.1 if val_first else 5], 0, "val"), "v1": ([0.1 if val_first else 5, 1], 1, "val")}
    path.parent.mkdir(parents=True)
    np.savez(path, video_id=np.array(list(rows)), label=np.array([r[1] for r in rows.values()]),
             class_name=np.array([f"c{r[1]}" for r in rows.values()]), split=np.array([r[2] for r in rows.values()]),
             embedding=np.array([r[0] for r in rows.values()], dtype=np.float32))


def test_the_whole_train_list_is_compared_with_the_carved_train_split_per_encoder(tmp_path: Path) -> None:
    embeddings(tmp_path / "work/seed7/slic/data/embeddings/embeddings.npz", val_first=True)
    embeddings(tmp_path / "work/seed7/labels/data/embeddings/embeddings.npz", val_first=False)
    assert main(["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.json")]) == 0
    report = json.loads((tmp_path / "out.json").read_text())
    slic = next(c for c in report["cells"] if c["mode"] == "slic")
    assert (slic["train"]["gallery"], slic["train+val"]["gallery"]) == (4, 6)
    assert (slic["train"]["recall@1"], slic["train+val"]["recall@1"]) == (0.0, 100.0)
    assert report["difference_by_mode"]["slic"]["recall@1"]["mean"] == 100.0
    assert report["difference_by_mode"]["labels"]["recall@1"]["mean"] == 0.0  # the val videos lie far away
    assert report["difference_all"]["recall@1"]["per_seed"] == [0.0, 100.0]  # labels, then slic (sorted)
    assert report["work"] == "work"


def test_without_the_labels_stage_folders_it_says_what_to_run(tmp_path: Path, capsys) -> None:
    assert main(["--work", str(tmp_path), "--out", str(tmp_path / "out.json")]) == 2
    assert "run `make bench-labels-stage` first" in capsys.readouterr().err
