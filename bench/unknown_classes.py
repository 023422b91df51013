"""Can the naming of `spread_labels` and `slic search` tell a video of none of your classes?

Every video (and every query) is named the class of its most similar labelled video, however far that video is: a
Shotput clip in an archive labelled with five other actions is named one of them. A "none of these" answer would
need a score that sets such videos apart: the similarity to the nearest labelled video, or the margin between the
two likeliest classes. This bench measures whether either does, on ucf101_6 with the encoders of bench/real.py
(`--rows`, default slic and intra_video, seeds 7, 8, 9; their stored embeddings, the `embed` protocol): for each
class held out as the unknown one and each of `--draws` draws of `--labels` labelled train videos of the other
five, the val and test videos are named, and

- `auroc`: how well the score ranks the held-out class's videos below the known classes' (0.5: no better than
  chance, 1: every unknown video below every known one), on val and on test;
- a threshold chosen on val (the score below which `--reject-known` of the known val videos fall) applied to test:
  the share of unknown test videos it catches and of known test videos it wrongly refuses;
- `named_rightly`: the share of known test videos named their class (the naming itself, for scale).

Writes reports/bench/unknown_classes.json: per encoder and score the means over held-out classes and draws, and
per score the mean and sample std over encoders.

    python bench/unknown_classes.py                      # reuses bench/real.py's cells in data/bench/real
    python bench/unknown_classes.py --seeds 7 --rows slic --labels 50
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, write_report  # noqa: E402
from bench.real import cells_parser, each_stored_cell, open_bench, printed_markdown  # noqa: E402

DEFAULT_ROWS = ("slic", "intra_video")
DEFAULT_OUT = ROOT / "reports" / "bench" / "unknown_classes.json"
SCORES = ("similarity", "margin")


def auroc(unknown: np.ndarray, known: np.ndarray) -> float:
    """The chance that an unknown video's score is below a known video's (ties half): the Mann-Whitney AUROC of
    telling unknown from known by a low score."""
    if not len(unknown) or not len(known):
        return float("nan")
    below = (unknown[:, None] < known[None, :]).sum() + 0.5 * (unknown[:, None] == known[None, :]).sum()
    return float(below / (len(unknown) * len(known)))


def held_out_class(unit: np.ndarray, label: np.ndarray, split: np.ndarray, unknown: int, labelled: np.ndarray,
                   reject_known: float) -> dict[str, Any]:
    """One held-out class: the val and test videos named from the `labelled` rows (train videos of the other
    classes); per score its val and test AUROC and the val-chosen threshold's catch and false refusal on test."""
    from slic.label_spreading import name_by_vectors

    known_classes = np.array(sorted(set(label[labelled].tolist())))
    number = {c: i for i, c in enumerate(known_classes)}
    named = name_by_vectors(unit, unit[labelled], np.array([number[c] for c in label[labelled]]), len(known_classes))
    scores = {"similarity": named.similarity, "margin": named.margin}
    out: dict[str, Any] = {}
    for name, score in scores.items():
        parts = {s: (score[(split == s) & (label == unknown)], score[(split == s) & (label != unknown)])
                 for s in ("val", "test")}
        threshold = float(np.quantile(parts["val"][1], reject_known))
        unknown_test, known_test = parts["test"]
        out[name] = {"auroc_val": auroc(*parts["val"]), "auroc_test": auroc(*parts["test"]),
                     "test_unknown_caught": float((unknown_test < threshold).mean()),
                     "test_known_refused": float((known_test < threshold).mean())}
    test_known = (split == "test") & (label != unknown)
    out["named_rightly"] = float((known_classes[named.label[test_known]] == label[test_known]).mean())
    return out


def measure_encoder(embeddings: Path, labels: int, draws: int, reject_known: float, seed: int = 7
                    ) -> dict[str, Any]:
    """Every class held out in turn, `draws` labelled sets each: the means of `held_out_class` over them."""
    from slic.retrieval import normalize_rows

    data = np.load(embeddings)
    unit = normalize_rows(data["embedding"].astype(np.float64))
    label, split = np.asarray(data["label"]), np.asarray(data["split"]).astype(str)
    rng = np.random.default_rng(seed)
    cells = []
    for unknown in sorted(set(label.tolist())):
        pool = np.flatnonzero((split == "train") & (label != unknown))
        for _ in range(draws):
            labelled = rng.choice(pool, size=min(labels, len(pool)), replace=False)
            cells.append(held_out_class(unit, label, split, unknown, labelled, reject_known))
    mean = {score: {key: round(float(np.mean([c[score][key] for c in cells])), 4) for key in cells[0][score]}
            for score in SCORES}
    return {**mean, "named_rightly": round(float(np.mean([c["named_rightly"] for c in cells])), 4),
            "held_out_cells": len(cells)}


def summary(encoders: list[dict[str, Any]]) -> dict[str, Any]:
    """Per score and number: the mean and sample std over encoders."""
    out: dict[str, Any] = {}
    for score in SCORES:
        out[score] = {}
        for key in encoders[0]["found"][score]:
            values = [e["found"][score][key] for e in encoders]
            out[score][key] = {"mean": round(float(np.mean(values)), 4),
                               "std": round(float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, 4)}
    named = [e["found"]["named_rightly"] for e in encoders]
    out["named_rightly"] = {"mean": round(float(np.mean(named)), 4),
                            "std": round(float(np.std(named, ddof=1)) if len(named) > 1 else 0.0, 4)}
    return out


def table(report: dict[str, Any]) -> str:
    """The docs' table: per score, AUROC on val and test and the val threshold's catch and false refusal on test
    (%, mean ± std over encoders)."""
    rows = ["| score | AUROC val | AUROC test | unknown test videos caught | known test videos refused |",
            "|---|---|---|---|---|"]
    for score in SCORES:
        found = report["summary"][score]
        cells = [f"{found[key]['mean']:.2f} ± {found[key]['std']:.2f}" for key in ("auroc_val", "auroc_test")]
        cells += [f"{100 * found[key]['mean']:.0f}% ± {100 * found[key]['std']:.0f}"
                  for key in ("test_unknown_caught", "test_known_refused")]
        rows.append(f"| {score} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> Any:
    parser = cells_parser(__doc__.splitlines()[0], list(DEFAULT_ROWS), DEFAULT_OUT, markdown="table")
    parser.add_argument("--labels", type=int, default=50, help="labelled train videos of the known classes")
    parser.add_argument("--draws", type=int, default=5, help="labelled sets drawn per held-out class")
    parser.add_argument("--reject-known", type=float, default=0.1,
                        help="the share of known val videos the threshold refuses (it is chosen so)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if printed_markdown(args, table):
        return
    config, world, work = open_bench(args, "bench/unknown_classes.py")
    started = time.perf_counter()
    encoders = []
    for seed, row, cell, _ in each_stored_cell(config, world, work, args.seeds, args.rows):
        found = measure_encoder(cell / "embeddings.npz", args.labels, args.draws, args.reject_known)
        encoders.append({"row": row, "seed": seed, "found": found})
        print(f"  seed {seed} {row:12s} " + "  ".join(
            f"{score}: AUROC val {found[score]['auroc_val']:.2f} test {found[score]['auroc_test']:.2f}"
            for score in SCORES) + f"  named rightly {100 * found['named_rightly']:.1f}%", flush=True)
    report = {"question": __doc__.splitlines()[0], "split": args.split, "labels": args.labels, "draws": args.draws,
              "reject_known": args.reject_known, "rows": args.rows, "seeds": args.seeds, "encoders": encoders,
              "summary": summary(encoders), "std_is": "sample standard deviation over encoders (ddof 1)",
              "machine": machine(world.device), "work": shown(work),
              "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    print(table(report))
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
