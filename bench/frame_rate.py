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
  query's frame rate, beside what the gallery's other classes would give by chance;
- queries filmed at another rate: each test video re-encoded twice (MPEG-4 at qscale 2), at its own rate and at half
  of it keeping every 2nd frame (what a camera at 12.5 or 15 fps would have recorded), embedded from the file as
  `slic search` embeds a query: test recall@1 of each against the cell's train gallery (the trained rows only), the
  mean cosine between a video's two copies, and how often a half-rate copy's nearest same-rate copy is its own
  video (the same action at another camera rate found); and the same on the synthetic set, whose classes are
  motions (`synthetic_queries`).

Writes reports/bench/frame_rate.json. Both folders must hold the cells (run bench/real.py for each first); the
re-encoded queries are kept under --queries.

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


def query_copies(manifest: Path, folder: Path) -> list[dict[str, Any]]:
    """The test videos of `manifest`, each re-encoded at its own rate (`same`) and at half of it from every 2nd
    frame (`half`) under `folder` (kept: made once)."""
    from fractions import Fraction

    from slic.data.video import decode, write_video

    table = pd.read_csv(manifest, dtype={"video_id": str}, keep_default_na=False)
    queries = []
    for row in table[table["split"] == "test"].to_dict("records"):
        copies = {"same": folder / "same" / f"{row['video_id']}.avi", "half": folder / "half" / f"{row['video_id']}.avi"}
        if not all(path.is_file() for path in copies.values()):
            frames, rate = decode(row["path"]), Fraction(float(row["fps"])).limit_denominator(1001)
            for name, kept, fps in (("same", frames, rate), ("half", frames[::2], rate / 2)):
                copies[name].parent.mkdir(parents=True, exist_ok=True)
                write_video(copies[name], kept, fps=fps, codec="mpeg4", quality=2)
        queries.append({"video_id": row["video_id"], "class": row["class"], **copies})
    return queries


def query_recall(checkpoint: Path, embeddings: Path, queries: list[dict[str, Any]],
                 frame_rate: float | None = None) -> dict[str, float]:
    """Test recall@1 of the re-encoded queries (`same`, `half`) against the train gallery of `embeddings`, each
    query embedded from its file by the encoder of `checkpoint` as `slic search` does (at `frame_rate` when given,
    else at the rate the checkpoint records)."""
    from slic.serving import VideoEncoder

    data = np.load(embeddings)
    train = data["split"].astype(str) == "train"
    gallery = data["embedding"][train] / np.linalg.norm(data["embedding"][train], axis=1, keepdims=True)
    gallery_classes = data["class_name"].astype(str)[train]
    encoder = VideoEncoder(checkpoint, clips=10)
    if frame_rate is not None:
        encoder.frame_rate = frame_rate
    classes = np.array([q["class"] for q in queries])
    out: dict[str, float] = {"encoder_frame_rate": encoder.frame_rate}
    vectors = {}
    for name in ("same", "half"):
        found = np.stack([vector for _, vector, _ in encoder.embed_files([q[name] for q in queries], workers=2)])
        vectors[name] = found / np.linalg.norm(found, axis=1, keepdims=True)
        hits = gallery_classes[np.argmax(vectors[name] @ gallery.T, axis=1)]
        out[f"{name}_rate_recall@1"] = float(np.mean(hits == classes))
    across = vectors["half"] @ vectors["same"].T  # each half-rate copy against every same-rate copy
    out["cosine_half_to_same"] = float(np.mean(np.diag(across)))
    out["half_finds_its_same_rate_copy@1"] = float(np.mean(np.argmax(across, axis=1) == np.arange(len(queries))))
    return out


def synthetic_queries(folder: Path) -> dict[str, Any]:
    """Queries at half rate on motion classes: the committed `make run`'s synthetic encoders (slic in
    data/models/pretrain, the other modes in data/models/ablation), each at native frames and at 25 fps. The
    synthetic set is all 25 fps, so extract.fps 25 leaves its shards, and so the training, as they are: the same
    weights with frame_rate 25 are what that run would have trained, and only serving differs."""
    encoders = {"slic": (ROOT / "data/models/pretrain/best.pt", ROOT / "data/embeddings/embeddings.npz"),
                **{mode: (ROOT / f"data/models/ablation/{mode}/best.pt", ROOT / f"data/models/ablation/{mode}/embeddings.npz")
                   for mode in ("intra_video", "oracle")}}
    missing = [str(path) for pair in encoders.values() for path in pair if not path.is_file()]
    if missing:
        sys.exit(f"bench/frame_rate.py: error: {missing[0]} missing; run `make run` (dvc repro) first, or --no-synthetic")
    queries = query_copies(ROOT / "data/manifests/validated.csv", folder)
    rows = {}
    for mode, (checkpoint, embeddings) in encoders.items():
        rows[mode] = {"native": query_recall(checkpoint, embeddings, queries, frame_rate=0.0),
                      "at_25_fps": query_recall(checkpoint, embeddings, queries, frame_rate=25.0)}
        print(f"  synthetic {mode:12s} " + "; ".join(
            f"{how}: recall@1 at own rate {cell['same_rate_recall@1']:.3f}, at half {cell['half_rate_recall@1']:.3f}, "
            f"cosine {cell['cosine_half_to_same']:.3f}, finds its copy {cell['half_finds_its_same_rate_copy@1']:.3f}"
            for how, cell in rows[mode].items()), flush=True)
    return {"queries": len(queries), "manifest": "data/manifests/validated.csv (test split)", "rows": rows}


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
    parser.add_argument("--query-rows", nargs="+", default=[r for r in ROWS if r != "random_init"],
                        help="rows whose encoders embed the re-encoded queries (none: skip that part)")
    parser.add_argument("--queries", default=str(ROOT / "data" / "bench" / "frame_rate_queries"),
                        help="where the re-encoded test videos are written (kept)")
    parser.add_argument("--no-synthetic", action="store_true",
                        help="skip the synthetic set's queries at half rate (they need the committed `make run`)")
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
    if args.query_rows:
        queries = query_copies(Path(args.native) / "data" / "validated.csv", Path(args.queries) / "ucf101_6")
        for name, work in (("native", Path(args.native)), ("resampled_25", Path(args.resampled))):
            cells = [{"seed": seed, "row": row, **query_recall(work / f"seed{seed}" / row / "best.pt",
                                                               work / f"seed{seed}" / row / "embeddings.npz", queries)}
                     for seed in args.seeds for row in args.query_rows]
            for cell in cells:
                print(f"  {name:12s} seed {cell['seed']} {cell['row']:12s} queries at their own rate "
                      f"{cell['same_rate_recall@1']:.3f}, at half {cell['half_rate_recall@1']:.3f}; cosine "
                      f"{cell['cosine_half_to_same']:.3f}, finds its copy {cell['half_finds_its_same_rate_copy@1']:.3f}",
                      flush=True)
            report[name]["queries_at_another_rate"] = {"cells": cells, "means": summary(cells)}
    if not args.no_synthetic:
        report["synthetic_queries_at_another_rate"] = synthetic_queries(Path(args.queries) / "synthetic")
    report["machine"] = machine(torch.device("cpu"))
    report["wall_seconds"] = round(time.perf_counter() - started, 2)
    out = write_report(report, args.out)
    for row in args.rows:
        native, resampled = report["native"]["means"][row], report["resampled_25"]["means"][row]
        print(f"{row:12s} test recall@1 {native['test_recall@1']:.3f} -> {resampled['test_recall@1']:.3f}; "
              f"val {native['val_recall@1']:.3f} -> {resampled['val_recall@1']:.3f}; rate probe "
              f"{native['rate_probe_balanced_accuracy']:.3f} -> {resampled['rate_probe_balanced_accuracy']:.3f}",
              flush=True)
    for row in args.query_rows:
        native, resampled = (report[name]["queries_at_another_rate"]["means"][row]
                             for name in ("native", "resampled_25"))
        print(f"{row:12s} queries at their own rate / at half: native {native['same_rate_recall@1']:.3f} / "
              f"{native['half_rate_recall@1']:.3f} (finds its copy {native['half_finds_its_same_rate_copy@1']:.3f}); "
              f"at 25 fps {resampled['same_rate_recall@1']:.3f} / {resampled['half_rate_recall@1']:.3f} (finds its "
              f"copy {resampled['half_finds_its_same_rate_copy@1']:.3f})", flush=True)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
