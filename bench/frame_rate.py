"""Is the frame rate a shortcut on ucf101_6, and does `extract.fps` take it away?

ucf101_6's classes split by frame rate: HorseRace and PlayingPiano are all 29.97 fps, the other four all 25. At
native frames a clip spans 20% less time in a 29.97 fps video, so its motion looks slower: a cue that tells the two
groups of classes apart without seeing the action. This bench compares the encoders of bench/real.py trained on
native frames (`--native`, its stored cells) with the same rows trained with every video resampled to 25 fps
(`--resampled`: `bench/real.py --set extract.fps=25 --work <it>`), per seed:

- val and test recall@1 (val / test queries against the train gallery, the `embed` protocol's embeddings);
- rate probe: a logistic regression on the embeddings told to separate 29.97 from 25 fps videos, tested on the two
  classes it did not see (one of each rate held out: 8 folds; balanced accuracy, 0.5 is chance). Above chance the
  embedding carries the rate, or something that comes with it, beyond the classes it was fitted on;
- wrong hits at the query's rate: of the test queries whose top-1 is another class, the share whose hit has the
  query's frame rate, beside what the gallery's other classes would give by chance.

Writes reports/bench/frame_rate.json. Both folders must hold the cells (run bench/real.py for each first).

    python bench/frame_rate.py --resampled data/bench/real_fps25
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, write_report  # noqa: E402

ROWS = ("random_init", "intra_video", "slic", "slic_video", "oracle")
SEEDS = (7, 8, 9)
DEFAULT_OUT = ROOT / "reports" / "bench" / "frame_rate.json"


def native_rates(work: Path) -> dict[str, float]:
    """video_id -> the file's own frame rate, from the work folder's validated manifest."""
    table = pd.read_csv(work / "data" / "validated.csv", dtype={"video_id": str}, keep_default_na=False)
    return dict(zip(table["video_id"], table["fps"].astype(float).round(2)))


def rate_probe(embedding: np.ndarray, classes: np.ndarray, fast: np.ndarray) -> float:
    """Mean balanced accuracy of a logistic regression separating the faster-rate videos (`fast`) from the others,
    fitted on all classes but one of each rate and tested on those two, over every such pair."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    x = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    fast_classes = sorted(set(classes[fast]))
    slow_classes = sorted(set(classes[~fast]))
    scores = []
    for held_fast, held_slow in itertools.product(fast_classes, slow_classes):
        test = np.isin(classes, [held_fast, held_slow])
        probe = LogisticRegression(max_iter=2000, class_weight="balanced").fit(x[~test], fast[~test])
        scores.append(balanced_accuracy_score(fast[test], probe.predict(x[test])))
    return float(np.mean(scores))


def wrong_hits_at_query_rate(embedding: np.ndarray, split: np.ndarray, classes: np.ndarray,
                             rates: np.ndarray) -> tuple[float, float, int]:
    """(share of wrong top-1 hits with the query's rate, that share by chance, wrong hits) for test queries against
    the train gallery; chance: the hit's class drawn from the gallery's other classes in their proportions."""
    x = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    query, gallery = np.flatnonzero(split == "test"), np.flatnonzero(split == "train")
    top = gallery[np.argmax(x[query] @ x[gallery].T, axis=1)]
    wrong = classes[top] != classes[query]
    same_rate = float(np.mean(rates[top][wrong] == rates[query][wrong])) if wrong.any() else 0.0
    chance = []
    for q in query[wrong]:
        others = gallery[classes[gallery] != classes[q]]
        chance.append(np.mean(rates[others] == rates[q]))
    return same_rate, float(np.mean(chance)) if chance else 0.0, int(wrong.sum())


def measure(work: Path, seed: int, row: str, rates: dict[str, float]) -> dict[str, Any]:
    """The numbers of one stored cell."""
    from slic.retrieval import evaluate_embeddings

    path = work / f"seed{seed}" / row / "embeddings.npz"
    if not path.is_file():
        sys.exit(f"bench/frame_rate.py: error: {path} missing; run bench/real.py with --work {work} first")
    data = np.load(path)
    classes, split = data["class_name"].astype(str), data["split"].astype(str)
    rate = np.array([rates[v] for v in data["video_id"].astype(str)])
    fast = rate > rate.min()
    same, chance, wrong = wrong_hits_at_query_rate(data["embedding"], split, classes, rate)
    return {"seed": seed, "row": row,
            "val_recall@1": evaluate_embeddings(path, query_split="val", ks=(1,))["recall@1"],
            "test_recall@1": evaluate_embeddings(path, query_split="test", ks=(1,))["recall@1"],
            "rate_probe_balanced_accuracy": rate_probe(data["embedding"], classes, fast),
            "wrong_hits_at_query_rate": same, "wrong_hits_at_query_rate_by_chance": chance, "wrong_hits": wrong}


def summary(cells: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per row: mean and sample std over seeds of every number."""
    keys = [k for k in cells[0] if k not in ("seed", "row")]
    out: dict[str, dict[str, float]] = {}
    for row in dict.fromkeys(c["row"] for c in cells):
        values = {k: [c[k] for c in cells if c["row"] == row] for k in keys}
        out[row] = {**{k: round(float(np.mean(v)), 4) for k, v in values.items()},
                    **{f"{k}_std": round(float(np.std(v, ddof=1)), 4) for k, v in values.items() if len(v) > 1}}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--native", default=str(ROOT / "data" / "bench" / "real"),
                        help="bench/real.py's folder of cells trained on native frames")
    parser.add_argument("--resampled", required=True,
                        help="bench/real.py's folder of cells trained with --set extract.fps=25")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--rows", nargs="+", default=list(ROWS))
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parse_args(argv)
    started = time.perf_counter()
    report: dict[str, Any] = {"question": "is the frame rate a shortcut on ucf101_6 (HorseRace and PlayingPiano "
                                          "29.97 fps, the rest 25), and does extract.fps: 25 take it away?",
                              "seeds": args.seeds, "rows": args.rows}
    for name, work in (("native", Path(args.native)), ("resampled_25", Path(args.resampled))):
        rates = native_rates(work)
        cells = [measure(work, seed, row, rates) for seed in args.seeds for row in args.rows]
        for cell in cells:
            print(f"  {name:12s} seed {cell['seed']} {cell['row']:12s} " + " ".join(
                f"{k}={v:.3f}" for k, v in cell.items() if isinstance(v, float)), flush=True)
        report[name] = {"work": shown(work), "cells": cells, "means": summary(cells)}
    report["machine"] = machine(torch.device("cpu"))
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    out = write_report(report, args.out)
    for row in args.rows:
        native, resampled = report["native"]["means"][row], report["resampled_25"]["means"][row]
        print(f"{row:12s} test recall@1 {native['test_recall@1']:.3f} -> {resampled['test_recall@1']:.3f}; "
              f"val {native['val_recall@1']:.3f} -> {resampled['val_recall@1']:.3f}; rate probe "
              f"{native['rate_probe_balanced_accuracy']:.3f} -> {resampled['rate_probe_balanced_accuracy']:.3f}",
              flush=True)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
