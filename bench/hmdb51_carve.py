"""Benchmark: HMDB51's val carve per video against by source film, from the official split files alone.

HMDB51 cuts several clips of a class from one film (April_09_brush_hair_u_nm_np1_ba_goo_0.avi to _2). Its
official splits keep a film's clips of a class on one side of train/test; the val carve, drawn from train, did
not while it drew videos. This reads the split files (`<class>_test_split<N>.txt`, no video needed), carves val
both ways with the manifest's own code, and reports per split and seed:

    val_videos              videos carved into val
    val_with_film_in_train  the share of them with a clip of their class and film left in train (a near copy
                            that picks epochs and settings on the scene)
    val_per_class           min / median / max val videos of a class
    test_groups_crossing    class/film groups on both sides of the official split (validate stops on any)

    python bench/hmdb51_carve.py --splits-dir /datasets/HMDB51/testTrainMulti_7030_splits
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "reports" / "bench" / "hmdb51_carve.json"


def split_table(splits_dir: Path, split: int) -> pd.DataFrame:
    """The split's listed videos (class, group, split) as the manifest lists them, without probing any file."""
    from slic.config import ManifestConfig
    from slic.data.datasets import list_videos

    _, entries = list_videos(ManifestConfig(root="/nowhere", layout="hmdb51", splits_dir=str(splits_dir),
                                            split=split))
    table = pd.DataFrame({"class": [e.class_name for e in entries], "group": [e.group for e in entries],
                          "split": [e.split for e in entries]})
    table["excluded"] = ""
    return table[table["split"] != "unused"].reset_index(drop=True)


def carve_figures(table: pd.DataFrame, fraction: float, seed: int, by_group: bool) -> dict[str, Any]:
    """What one carve puts in val: its size, its leak through films left in train, its spread over classes."""
    from slic.data.datasets import carve_validation

    split = carve_validation(table, fraction, seed, by_group)
    val, train = table[split == "val"], table[split == "train"]
    per_class = val.groupby("class").size().reindex(sorted(table["class"].unique()), fill_value=0)
    return {"val_videos": int(len(val)),
            "val_with_film_in_train": round(float(val["group"].isin(set(train["group"])).mean()), 4),
            "val_per_class": [int(per_class.min()), float(per_class.median()), int(per_class.max())]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits-dir", type=Path, required=True, help="HMDB51's <class>_test_split<N>.txt files")
    parser.add_argument("--splits", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9])
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"val_fraction": args.val_fraction, "splits": {}}
    for split in args.splits:
        table = split_table(args.splits_dir, split)
        sides = table.groupby("group")["split"].nunique()
        entry: dict[str, Any] = {"train": int((table["split"] == "train").sum()),
                                 "test": int((table["split"] == "test").sum()), "groups": int(len(sides)),
                                 "test_groups_crossing": int((sides > 1).sum()), "carves": {}}
        for seed in args.seeds:
            entry["carves"][str(seed)] = {way: carve_figures(table, args.val_fraction, seed, by_group)
                                          for way, by_group in (("per_video", False), ("by_film", True))}
        report["splits"][str(split)] = entry
        for seed, ways in entry["carves"].items():
            print(f"split {split} seed {seed}: " + "; ".join(
                f"{way} {f['val_videos']} val, {100 * f['val_with_film_in_train']:.1f}% with their film in train, "
                f"{f['val_per_class'][0]}-{f['val_per_class'][2]} a class" for way, f in ways.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
