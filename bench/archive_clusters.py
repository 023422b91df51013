"""Do the `clusters` stage's groups follow the actions, and does SLIC's training make them follow better?

A user with an unlabelled archive browses it by the `clusters` stage's groups (FINCH merged down to
`clusters.groups`, or k-means). On ucf101_6, where the six classes are known, this bench groups every video
(all splits, as in an archive) with the encoders of bench/real.py (`--rows`, default the four modes and
slic_video, over seeds 7, 8, 9; trained or reused from the same stored cells under `--work`) in each of these
ways: the stage's default (FINCH, 20 groups), FINCH with 6 (the number of classes, which an unlabelled archive
would not tell), and k-means with 6 and with 20. For each it gives the groups' AMI and purity against the
classes, over every video and over the test videos only. At the default it also measures the stage's advice
"label each group's most typical video first" (`labelling`): with one video labelled per group, the share of
all videos that get their true class from it, against random picks and against spreading by nearest video.
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
LABELLING_KEYS = ("labelled_videos", "typical_by_group", "random_by_group", "typical_nearest", "random_nearest")
PAIRS = (("slic", "intra_video"), ("slic_video", "intra_video"), ("slic", "random_init"),
         ("intra_video", "random_init"), ("oracle", "slic"))


def grouped(embeddings: Path) -> dict[str, dict[str, float]]:
    """Every way of WAYS on every video of `embeddings`: groups, and AMI and purity against the classes over all
    videos and over the test videos."""
    from slic.archive_clusters import class_agreement, group_embeddings

    data = np.load(embeddings)
    classes = data["class_name"].astype(str)
    test = data["split"].astype(str) == "test"
    out: dict[str, Any] = {}
    for way, (method, groups) in WAYS.items():
        grouping = group_embeddings(data["embedding"], method=method, groups=groups, seed=7)
        labels = grouping.labels
        everyone, tested = class_agreement(labels, classes), class_agreement(labels[test], classes[test])
        out[way] = {"groups": int(labels.max()) + 1, "ami": round(everyone["ami"], 4),
                    "purity": round(everyone["purity"], 4), "test_ami": round(tested["ami"], 4),
                    "test_purity": round(tested["purity"], 4)}
        if way == DEFAULT_WAY:
            out["labelling"] = labelling(data["embedding"], classes, labels, grouping.rank)
    return out


def accuracy_from(picked: np.ndarray, classes: np.ndarray, spread_by: np.ndarray) -> float:
    """The share of videos whose class is the one their labelled video has, when each video takes the class of
    the labelled video `spread_by` names (an index into `picked`)."""
    return float((classes[picked][spread_by] == classes).mean())


def labelling(vectors: np.ndarray, classes: np.ndarray, groups: np.ndarray, rank: np.ndarray,
              draws: int = 20, seed: int = 7) -> dict[str, float]:
    """The advice "label each group's most typical video first", measured: with one video labelled per group (as
    many as there are groups), the share of every video that gets its true class when each takes the class of
    - `typical_by_group`: its group's most typical video (the stage's rank 0), spread to the whole group;
    - `random_by_group`: a random member of its group (mean over `draws` draws);
    - `typical_nearest`: the nearest (cosine) of the typical videos, groups forgotten;
    - `random_nearest`: the nearest of as many videos drawn at random from the whole archive (mean over draws).
    Which videos to label (typical or random) and how to spread their classes (group or nearest) side by side."""
    from slic.faiss_backend import l2_normalize

    unit = l2_normalize(vectors).astype(np.float64)
    count = int(groups.max()) + 1
    rng = np.random.default_rng(seed)

    def nearest(picked: np.ndarray) -> np.ndarray:
        return np.argmax(unit @ unit[picked].T, axis=1)

    typical = np.array([np.flatnonzero((groups == g) & (rank == 0))[0] for g in range(count)])
    members = [np.flatnonzero(groups == g) for g in range(count)]
    random_by_group = [accuracy_from(np.array([rng.choice(m) for m in members]), classes, groups)
                       for _ in range(draws)]
    random_nearest = []
    for _ in range(draws):
        picked = rng.choice(len(unit), count, replace=False)
        random_nearest.append(accuracy_from(picked, classes, nearest(picked)))
    return {"labelled_videos": count, "typical_by_group": round(accuracy_from(typical, classes, groups), 4),
            "random_by_group": round(float(np.mean(random_by_group)), 4),
            "typical_nearest": round(accuracy_from(typical, classes, nearest(typical)), 4),
            "random_nearest": round(float(np.mean(random_nearest)), 4)}


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
    for row in args.rows:
        rows_summary[row]["labelling"] = {key: spread([e["labelling"][key] for e in encoders if e["row"] == row])
                                          for key in LABELLING_KEYS}
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
    for row in args.rows:
        shares = rows_summary[row]["labelling"]
        print(f"{row:12s} labelling {shares['labelled_videos']['mean']:.0f} videos: "
              + " ".join(f"{key} {shares[key]['mean']:.3f}" for key in LABELLING_KEYS[1:]), flush=True)
    for pair, diff in report["paired_ami"].items():
        print(f"{pair:26s} {DEFAULT_WAY} ami {diff['mean']:+.3f} ± {diff['std']:.3f} per seed {diff['per_seed']}",
              flush=True)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
