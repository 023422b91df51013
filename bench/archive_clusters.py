"""Do the `clusters` stage's groups follow the actions, and does SLIC's training make them follow better?

A user with an unlabelled archive browses it by the `clusters` stage's groups (FINCH merged down to
`clusters.groups`, or k-means). On ucf101_6, where the six classes are known, this bench groups every video
(all splits, as in an archive) with the encoders of bench/real.py (`--rows`, default the four modes and
slic_video, over seeds 7, 8, 9; trained or reused from the same stored cells under `--work`) in each of these
ways: the stage's default (FINCH, 20 groups), FINCH with 6 (the number of classes, which an unlabelled archive
would not tell), and k-means with 6 and with 20. For each it gives the groups' AMI and
purity against the classes, over every video and over the test videos only (which no setting was chosen on).
No setting is chosen here: the stage's default was fixed before this ran.

Writes reports/bench/archive_clusters.json: per encoder and way, the numbers; per row and way, mean and std
over seeds; and per seed the paired differences of the default way's AMI, slic and slic_video against
intra_video and random_init.

    python bench/archive_clusters.py            # reuses bench/real.py's cells in data/bench/real
    python bench/archive_clusters.py --seeds 7 --rows random_init slic
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, spread, write_report  # noqa: E402
from bench.real import cells_parser, each_stored_cell, open_bench  # noqa: E402

DEFAULT_ROWS = ("random_init", "intra_video", "slic", "slic_video", "oracle")
DEFAULT_OUT = ROOT / "reports" / "bench" / "archive_clusters.json"
WAYS = {"finch_20": ("finch", 20), "finch_6": ("finch", 6), "kmeans_6": ("kmeans", 6), "kmeans_20": ("kmeans", 20)}
DEFAULT_WAY = "finch_20"  # params.yaml's clusters section
PAIRS = (("slic", "intra_video"), ("slic_video", "intra_video"), ("slic", "random_init"),
         ("intra_video", "random_init"), ("oracle", "slic"))


def grouped(embeddings: Path) -> dict[str, dict[str, float]]:
    """Every way of WAYS on every video of `embeddings`: groups, and AMI and purity against the classes over all
    videos and over the test videos."""
    from slic.archive_clusters import class_agreement, group_embeddings

    data = np.load(embeddings)
    classes = data["class_name"].astype(str)
    test = data["split"].astype(str) == "test"
    out = {}
    for way, (method, groups) in WAYS.items():
        labels = group_embeddings(data["embedding"], method=method, groups=groups, seed=7).labels
        everyone, tested = class_agreement(labels, classes), class_agreement(labels[test], classes[test])
        out[way] = {"groups": int(labels.max()) + 1, "ami": round(everyone["ami"], 4),
                    "purity": round(everyone["purity"], 4), "test_ami": round(tested["ami"], 4),
                    "test_purity": round(tested["purity"], 4)}
    return out


def paired(encoders: list[dict[str, Any]], rows: list[str], seeds: list[int], key: str) -> dict[str, Any]:
    """Per pair of rows, the per-seed differences of the default way's `key` (and their mean and std)."""
    value = {(e["row"], e["seed"]): e[DEFAULT_WAY][key] for e in encoders}
    out = {}
    for a, b in PAIRS:
        if a in rows and b in rows:
            out[f"{a} - {b}"] = spread([value[a, s] - value[b, s] for s in seeds])
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return cells_parser(__doc__.splitlines()[0], list(DEFAULT_ROWS), DEFAULT_OUT).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config, world, work = open_bench(args, "bench/archive_clusters.py")
    started = time.perf_counter()
    encoders: list[dict[str, Any]] = []
    for seed, row, cell, result in each_stored_cell(config, world, work, args.seeds, args.rows):
        encoders.append({"row": row, "seed": seed, "test_recall@1": result["recall@1"],
                         **grouped(cell / "embeddings.npz")})
        print(f"  seed {seed} {row:12s} test recall@1 {result['recall@1']:.3f} " + " ".join(
            f"{way} ami={encoders[-1][way]['ami']:.3f}" for way in WAYS), flush=True)
    rows_summary = {row: {way: {key: spread([e[way][key] for e in encoders if e["row"] == row])
                                for key in ("groups", "ami", "purity", "test_ami", "test_purity")}
                          for way in WAYS} for row in args.rows}
    report = {
        "question": "do the clusters stage's groups follow the actions, and does slic's training help (ucf101_6)?",
        "grouped": "every video of ucf101_6 (all splits), as an unlabelled archive; test_* over the test videos",
        "ways": {way: {"method": method, "groups": groups} for way, (method, groups) in WAYS.items()},
        "default_way": DEFAULT_WAY, "rows": args.rows, "seeds": args.seeds, "encoders": encoders,
        "row_summary": rows_summary, "paired_ami": paired(encoders, args.rows, args.seeds, "ami"),
        "paired_test_ami": paired(encoders, args.rows, args.seeds, "test_ami"),
        "machine": machine(world.device), "work": shown(work), "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    for row in args.rows:
        print(f"{row:12s} " + " ".join(f"{way} ami {rows_summary[row][way]['ami']['mean']:.3f}"
                                       f"±{rows_summary[row][way]['ami']['std']:.3f}" for way in WAYS), flush=True)
    for pair, diff in report["paired_ami"].items():
        print(f"{pair:26s} {DEFAULT_WAY} ami {diff['mean']:+.3f} ± {diff['std']:.3f} per seed {diff['per_seed']}",
              flush=True)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
