"""Does retraining the encoder on the classes a user gave (or that `spread_labels` spread from them) pay?

After `spread_labels` a user with 100 labels has every video named. The next question is whether to train the
encoder again on those classes. On ucf101_6 (split 1), per seed: the train and val videos are the archive (test
videos stay unseen); a simulated user labels `--labels` of them, 20 a round, with their true classes, each round
the stage's suggestions (its first list, then `label_next` with the finer groups) on the `--base` encoder's
embeddings (bench/real.py's stored cell). Then the network is trained again from scratch, as bench/real.py trains
its rows (the `ucf101_6_cpu` preset; the proxy objective, one proxy per label, as the oracle row), on:
- `given`: the labelled train videos' classes; every other train video its own label (intra-video positives);
- `named`: every train video's class named by its most similar labelled video (`spread_labels`' naming);
- `named_sure`: the labelled videos and the named train videos in the surer half by margin; the rest alone.
Checkpoints are chosen on val against the true classes, as for every row of bench/real.py. Each retrained encoder
is measured like those rows (test queries against the train gallery, recall@k) and by how many test videos the
same labels name rightly through it (nearest labelled video), against the `--base` encoder's share.

Writes reports/bench/retrain_labels.json: per seed and way the recalls, val recall, naming shares, the labels'
accuracy on the train videos; per way mean and std, and paired differences with `--base`, intra_video and oracle
(stored cells of data/bench/real, trained there when missing). Each (seed, way) is stored under the work folder,
so a killed run resumes.

    python bench/retrain_labels.py                  # seeds 7, 8, 9, the three ways, 100 labels: about 13 min
    python bench/retrain_labels.py --seeds 7 8 9 10 11   # the docs' report (make bench-retrain-labels)
    python bench/retrain_labels.py --ways given named_sure --set manifest.split=2 --work data/bench/real_split2 \
        --out reports/bench/retrain_labels_split2.json    # test videos no setting was chosen on (bench/real_splits.py)
    python bench/retrain_labels.py --markdown       # the docs' table from the stored report, no training
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, spread, stored_result, write_report  # noqa: E402
from bench.real import (TRAIN_SECTIONS, cells_parser, each_stored_cell, open_bench, printed_markdown,  # noqa: E402
                        seed_config, settings)
from bench.spread_labels import PER_ROUND, archive_from  # noqa: E402

WAYS = ("given", "named", "named_sure")
COMPARED = ("slic", "intra_video", "oracle")  # stored rows of bench/real.py, beside the retrained encoders
DEFAULT_OUT = ROOT / "reports" / "bench" / "retrain_labels.json"


def stage_labels(embeddings: Path, count: int) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The train and val videos of `embeddings` as the stage's Archive, their true classes, the `count` videos a
    user labels following the stage's suggestions (rounds of PER_ROUND), and the indices of the archive's rows
    in `embeddings`."""
    from slic.label_spreading import finer_groups, label_next, name_by_nearest

    splits = np.load(embeddings)["split"].astype(str)
    rows = np.flatnonzero(splits != "test")
    archive, truth = archive_from(embeddings, rows)
    classes = int(truth.max()) + 1
    labelled = np.array([i for i, _ in label_next(archive, np.zeros(0, dtype=np.int64), None, PER_ROUND)])
    while len(labelled) < count:
        named = name_by_nearest(archive.unit, labelled, truth[labelled], classes)
        picks = label_next(archive, labelled, named.margin, min(PER_ROUND, count - len(labelled)),
                           finer_groups(archive, labelled, PER_ROUND))
        labelled = np.concatenate([labelled, [i for i, _ in picks]]).astype(np.int64)
    return archive, truth, labelled[:count], rows


def pseudo_labels(way: str, archive: Any, truth: np.ndarray, labelled: np.ndarray) -> dict[str, int]:
    """video id -> class number for the train videos that `way` trains on a class (the others train alone)."""
    from slic.label_spreading import name_by_nearest

    named = name_by_nearest(archive.unit, labelled, truth[labelled], int(truth.max()) + 1)
    train = archive.split == "train"
    given = np.zeros(len(truth), dtype=bool)
    given[labelled] = True
    if way == "given":
        chosen = train & given
    elif way == "named":
        chosen = train
    elif way == "named_sure":
        sure = named.margin >= np.median(named.margin[train & ~given])
        chosen = train & (given | sure)
    else:
        raise ValueError(f"unknown way {way!r}; expected one of {', '.join(WAYS)}")
    label = np.where(given, truth, named.label)
    return {str(archive.ids[i]): int(label[i]) for i in np.flatnonzero(chosen)}


def named_test_share(embeddings: Path, labelled_rows: np.ndarray) -> float:
    """The share of test videos whose most similar labelled video (rows of `embeddings`) has their class."""
    from slic.retrieval import normalize_rows

    data = np.load(embeddings)
    unit = normalize_rows(data["embedding"]).astype(np.float64)
    test = np.flatnonzero(data["split"].astype(str) == "test")
    nearest = (unit[test] @ unit[labelled_rows].T).argmax(axis=1)
    return float((data["label"][labelled_rows][nearest] == data["label"][test]).mean())


def retrain(config: Any, world: Any, work: Path, seed: int, way: str, count: int, base: str) -> dict[str, Any]:
    """One (seed, way): the labels, the retrained encoder's recalls and naming share (stored, reused)."""
    from slic.ablation import train_and_evaluate

    folder = work / f"seed{seed}"
    cfg = seed_config(config, seed, folder)
    name = f"retrain_{way}_{count}"
    path = folder / "results" / f"{name}.json"
    expected = {**settings(replace(cfg, pretrain=replace(cfg.pretrain, mode="oracle")), TRAIN_SECTIONS),
                "labels": {"way": way, "count": count, "suggested_on": base, "per_round": PER_ROUND}}
    found = stored_result(path, expected)
    if found is not None:
        return {**found, "reused": True}
    archive, truth, labelled, rows = stage_labels(folder / base / "embeddings.npz", count)
    given = pseudo_labels(way, archive, truth, labelled)
    right = np.array([given[i] == truth[k] for k, i in enumerate(archive.ids) if i in given])
    pretrain_cfg = replace(cfg.pretrain, mode="oracle", out=str(folder / name))
    result = train_and_evaluate(f"bench_retrain/{way}", pretrain_cfg, cfg, world, tracked=False, given_labels=given)
    found = {"way": way, "seed": seed, "labels": count,
             "labelled_train": int((archive.split[labelled] == "train").sum()),
             "train_videos_on_a_class": len(given), "their_class_right": float(right.mean()),
             **{k: v for k, v in result.items() if k.startswith("recall@") or k in ("best_epoch",
                                                                                    "best_val_recall_at_1", "seconds")},
             "test_named_before": named_test_share(folder / base / "embeddings.npz", rows[labelled]),
             "test_named_after": named_test_share(folder / name / "embeddings.npz", rows[labelled]),
             "settings": expected}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(found, indent=1))
    return {**found, "reused": False}


def summary(cells: list[dict[str, Any]], stored: dict[tuple[int, str], dict[str, Any]], ways: list[str],
            seeds: list[int], compared: list[str]) -> dict[str, Any]:
    """Per way: mean and std over seeds of each measure, and the paired differences (points of recall@1, and of
    val recall@1) with each stored row of `compared`."""
    out: dict[str, Any] = {}
    for way in ways:
        mine = {c["seed"]: c for c in cells if c["way"] == way}
        out[way] = {key: spread([mine[s][key] for s in seeds]) for key in
                    ("recall@1", "recall@5", "best_val_recall_at_1", "test_named_before", "test_named_after",
                     "their_class_right", "train_videos_on_a_class")}
        for row in compared:
            out[way][f"minus {row}"] = spread([100 * (mine[s]["recall@1"] - stored[(s, row)]["recall@1"]) for s in seeds])
            out[way][f"val minus {row}"] = spread([100 * (mine[s]["best_val_recall_at_1"]
                                                          - stored[(s, row)]["best_val_recall_at_1"]) for s in seeds])
    for row in compared:
        out[row] = {key: spread([stored[(s, row)][key] for s in seeds]) for key in ("recall@1", "best_val_recall_at_1")}
    return out


def markdown(report: dict[str, Any]) -> str:
    """The docs' table: test and val recall@1, the paired lead over the base encoder, the naming shares."""
    rows = report["summary"]
    base = report["base"]

    def pct(cell: dict[str, Any]) -> str:
        return f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"

    lines = [f"| encoder | test recall@1 | val recall@1 | minus {base}, points (val) | test videos named rightly "
             f"by the {report['labels']} labels (before: {base}) | train videos on a class (right) |",
             "|---|---|---|---|---|---|"]
    for row in report["compared"]:
        lines.append(f"| {row} (bench/real.py) | {pct(rows[row]['recall@1'])} | "
                     f"{pct(rows[row]['best_val_recall_at_1'])} | | | |")
    for way in report["ways"]:
        r = rows[way]
        lead, val = r[f"minus {base}"], r[f"val minus {base}"]
        wins = sum(v > 0 for v in lead["per_seed"])
        lines.append(f"| retrained, `{way}` | {pct(r['recall@1'])} | {pct(r['best_val_recall_at_1'])} | "
                     f"{lead['mean']:+.1f} ± {lead['std']:.1f}, {wins} of {len(lead['per_seed'])} "
                     f"({val['mean']:+.1f}) | {pct(r['test_named_after'])} ({pct(r['test_named_before'])}) | "
                     f"{r['train_videos_on_a_class']['mean']:.0f} ({100 * r['their_class_right']['mean']:.0f}%) |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> Any:
    parser = cells_parser(__doc__.splitlines()[0], list(COMPARED), DEFAULT_OUT, markdown="table")
    parser.add_argument("--labels", type=int, default=100, help="videos the simulated user labels (rounds of 20)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--base", default="slic", choices=list(COMPARED),
                        help="the stored row whose embeddings suggest what to label (the pipeline's mode)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a setting for every cell, as bench/real.py takes it (e.g. manifest.split=2 with that "
                             "split's --work)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if printed_markdown(args, markdown):
        return
    config, world, work = open_bench(args, "bench/retrain_labels.py", overrides=args.overrides)
    started = time.perf_counter()
    rows = list(dict.fromkeys([args.base, *args.rows]))
    stored = {(seed, row): result for seed, row, _, result in each_stored_cell(config, world, work, args.seeds, rows)}
    cells = []
    for seed in args.seeds:
        for way in args.ways:
            cell = retrain(config, world, work, seed, way, args.labels, args.base)
            cells.append(cell)
            print(f"  seed {seed} {way:10s} recall@1 {100 * cell['recall@1']:.1f} (val "
                  f"{100 * cell['best_val_recall_at_1']:.1f}); {args.base} "
                  f"{100 * stored[(seed, args.base)]['recall@1']:.1f}; test named "
                  f"{100 * cell['test_named_before']:.1f} -> {100 * cell['test_named_after']:.1f}"
                  f"{' (stored)' if cell['reused'] else ''}", flush=True)
    report = {"question": "does retraining the encoder on a user's few labels (or the classes spread from them) pay?",
              "archive": f"ucf101_6 split {config.manifest.split}, train and val videos; test videos unseen",
              "overrides": args.overrides, "labels": args.labels,
              "base": args.base, "ways": args.ways, "compared": rows, "seeds": args.seeds,
              "cells": [{k: v for k, v in c.items() if k not in ("settings", "reused")} for c in cells],
              "summary": summary(cells, stored, args.ways, args.seeds, rows),
              "std_is": "sample standard deviation over seeds (ddof 1)", "machine": machine(world.device),
              "work": shown(work), "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    print(markdown(report))
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
