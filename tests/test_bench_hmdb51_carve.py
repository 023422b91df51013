"""bench/hmdb51_carve.py on hand-made HMDB51 split files: the per-video carve leaves val clips with their film in
train, the carve by film leaves none, and a film on both sides of the official split is counted."""

from __future__ import annotations

import json
from pathlib import Path

from bench.hmdb51_carve import main


def test_the_carve_by_film_leaves_no_val_clip_with_its_film_in_train(tmp_path: Path) -> None:
    splits = tmp_path / "splits"
    splits.mkdir()
    for name in ("brush_hair", "cartwheel", "golf"):
        lines = [f"{name.title()}Film{film}_{name}_u_nm_np1_ba_goo_{clip}.avi {2 if film >= 8 else 1}"
                 for film in range(10) for clip in range(4)]  # films 0-7 train, 8-9 test; four clips each
        lines.append(f"Odd_{name}.avi 0")  # unused in this split, and not named as HMDB51 names its clips
        (splits / f"{name}_test_split1.txt").write_text("\n".join(lines) + "\n")
    (splits / "golf_test_split1.txt").write_text(  # one golf film on both sides of the official split
        (splits / "golf_test_split1.txt").read_text().replace("GolfFilm9_golf_u_nm_np1_ba_goo_0.avi 2",
                                                               "GolfFilm0_golf_u_nm_np1_ba_goo_9.avi 2"))
    out = tmp_path / "carve.json"
    assert main(["--splits-dir", str(splits), "--splits", "1", "--seeds", "7", "8", "--out", str(out)]) == 0
    split = json.loads(out.read_text())["splits"]["1"]
    assert (split["train"], split["test"], split["groups"], split["test_groups_crossing"]) == (96, 24, 30, 1)
    for ways in split["carves"].values():
        assert ways["per_video"]["val_with_film_in_train"] > 0.5  # its film's other clips stay in train
        assert ways["by_film"]["val_with_film_in_train"] == 0.0
        assert ways["by_film"]["val_videos"] % 4 == 0 and ways["by_film"]["val_per_class"][0] >= 4  # whole films
