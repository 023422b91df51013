"""bench/added_videos.py: its `slic index` run with the test videos added, and that it pairs each added row with
the same video's embed-stage vector (a wrong pairing would show as a cosine below 1 here)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.added_videos import measure
from slic.config import Config, PretrainConfig
from tests.conftest import SHARED_VIDEOS

FOLDER = SHARED_VIDEOS / "dmlc-decord" / "decode_tests"
SPLITS = {"video_0": "train", "video_90": "train", "video_180": "val", "video_270": "test", "unordered": "test"}


def test_measure_on_a_cell_whose_embed_stage_vectors_are_the_files_own(tmp_path: Path) -> None:
    if not (FOLDER / "video_0.mov").is_file():
        pytest.skip(f"real sample videos not found at {FOLDER}")
    from slic.pretrain import TrainState, build_encoder, save_checkpoint
    from slic.serving import VideoEncoder

    tiny = PretrainConfig(hidden_dim=16, out_dim=8, size=16, clip_len=16)
    cell, work = tmp_path / "seed7" / "slic", tmp_path
    cell.mkdir(parents=True)
    save_checkpoint(cell / "best.pt", build_encoder(tiny), None, TrainState(), tiny)
    ids = list(SPLITS)
    paths = [FOLDER / f"{v}.mov" for v in ids]
    (work / "data").mkdir()
    pd.DataFrame({"video_id": [f"c{i % 2}/{v}" for i, v in enumerate(ids)], "path": [str(p) for p in paths],
                  "class": [f"c{i % 2}" for i in range(5)], "label": [i % 2 for i in range(5)],
                  "split": list(SPLITS.values())}).to_csv(work / "data" / "validated.csv", index=False)
    np.savez(cell / "embeddings.npz", video_id=np.array([f"c{i % 2}/{v}" for i, v in enumerate(ids)]),
             label=np.arange(5) % 2, split=np.array(list(SPLITS.values())),
             embedding=VideoEncoder(cell / "best.pt", clips=2).embed_paths(paths))
    (tmp_path / "archive").mkdir()
    base = Config()
    config = replace(base, manifest=replace(base.manifest, root=str(tmp_path / "archive"), extensions=(".mov",)),
                     embed=replace(base.embed, clips=2))

    checkout_report = Path("reports/index.json")  # the checkout's own, which the bench must leave alone
    before = checkout_report.read_bytes() if checkout_report.is_file() else None
    numbers = measure(config, cell, work, tmp_path / "added")
    assert (numbers["added"], numbers["failed"], numbers["gallery"]) == (2, 0, 2)
    assert numbers["cosine_to_embed_stage"]["min"] == pytest.approx(1.0, abs=1e-4)  # same files, same encoder
    assert numbers["test_recall@1_added"] == numbers["test_recall@1_embed_stage"]
    assert numbers["val_top1_same_video"] == 1.0
    assert (numbers["embedded_first_run"], numbers["embedded_second_run"]) == (2, 0)
    # slic search over the val video: the same answers decoded here and by loader workers, and its hit judged by
    # the class of the nearest indexed video (an added one named by its link), worked out here from the index
    from slic.index import load_index

    assert (numbers["search_queries"], numbers["search_same_answers"]) == (1, True)
    loaded = load_index(tmp_path / "added" / "index")
    query = VideoEncoder(cell / "best.pt", clips=2).embed_paths([FOLDER / "video_180.mov"])[0]
    vectors = np.stack([loaded.index.reconstruct(i) for i in range(loaded.index.ntotal)])
    top = loaded.rows["video_id"].iloc[int(np.argmax(vectors @ (query / np.linalg.norm(query))))]
    top_id = top.removeprefix("added/").rsplit(".", 1)[0] if top.startswith("added/") else top
    assert numbers["search_val_recall@1"] == float(top_id.split("/")[0] == "c0")  # video_180 is of class c0
    rows = pd.read_csv(tmp_path / "added" / "index" / "rows.csv", keep_default_na=False)
    assert sorted(rows["video_id"][rows["video_id"].str.startswith("added/")]) == [
        "added/c0/unordered.mov", "added/c1/video_270.mov"]
    report = json.loads((tmp_path / "added" / "reports" / "index.json").read_text())
    assert report["vectors"] == 4
    assert (checkout_report.read_bytes() if checkout_report.is_file() else None) == before
