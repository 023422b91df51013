"""Benchmark summary: the real-video modes over UCF101's three official splits, seeds paired.

Splits 2 and 3 of ucf101_6 hold test videos that no setting was ever chosen on (the CPU preset and every
variant were chosen on split 1's val): the held-out check of what split 1 says. Each split is one
`bench/real.py` run (same rows, same seeds, one machine); this reads their JSONs and reports, per row:

    per_split         test recall@1 mean and std over the seeds of each split
    pooled            mean and std over every (split, seed) run
    against_<row>     the paired difference (this row minus <row>, same split and seed), its mean, its standard
                      error over the runs, and how many runs it wins, ties and loses

    python bench/real.py --rows random_init intra_video slic slic_video oracle --no-classify \\
        --set manifest.split=2 --work data/bench/real_split2 --out reports/bench/real_split2.json   # and 1, 3
    python bench/real_splits.py reports/bench/real_split1.json reports/bench/real_split2.json \\
        reports/bench/real_split3.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "reports" / "bench" / "real_splits.json"
BASELINES = ("random_init", "intra_video")


def runs_of(report: dict[str, Any], row: str) -> dict[tuple[int, int], float]:
    """{(split, seed): test recall@1} of one row in one bench/real.py report."""
    split = int(report["split"])
    return {(split, int(seed)): float(cell["recall@1"]) for seed, cell in report["per_seed"][row].items()}


def paired(row: dict[tuple[int, int], float], base: dict[tuple[int, int], float]) -> dict[str, Any]:
    """The row minus the baseline over the runs both have: mean, standard error, wins / ties / losses (points)."""
    differences = [100 * (row[key] - base[key]) for key in sorted(row) if key in base]
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    return {"runs": len(differences), "mean_points": round(statistics.fmean(differences), 2),
            "standard_error_points": round(spread / len(differences) ** 0.5, 2),
            "wins": sum(d > 0 for d in differences), "ties": sum(d == 0 for d in differences),
            "losses": sum(d < 0 for d in differences)}


def summarise(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: each split's mean and std, the pooled mean and std, and the paired differences to BASELINES."""
    splits = [int(r["split"]) for r in reports]
    if len(set(splits)) != len(splits):
        raise SystemExit(f"two reports of one split ({splits}): give one report per split")
    rows = [row for row in reports[0]["per_seed"] if all(row in r["per_seed"] for r in reports)]
    runs = {row: {k: v for r in reports for k, v in runs_of(r, row).items()} for row in rows}
    summary: dict[str, Any] = {}
    for row in rows:
        values = list(runs[row].values())
        entry: dict[str, Any] = {
            "per_split": {str(r["split"]): {"mean": round(100 * r["mean"][row]["recall@1"], 2),
                                            "std": round(100 * r["std"][row]["recall@1"], 2)} for r in reports},
            "pooled": {"runs": len(values), "mean": round(100 * statistics.fmean(values), 2),
                       "std": round(100 * statistics.stdev(values), 2) if len(values) > 1 else 0.0}}
        for base in BASELINES:
            if base in runs and base != row:
                entry[f"against_{base}"] = paired(runs[row], runs[base])
        summary[row] = entry
    return {"splits": splits, "seeds": sorted({seed for _, seed in next(iter(runs.values()))}),
            "test_queries": {str(r["split"]): r["data"]["splits"].get("test") for r in reports},
            "machines": sorted({r["machine"].get("cpu_model", "") for r in reports}), "rows": summary}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", type=Path, nargs="+", help="bench/real.py JSONs, one per split")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    missing = [str(p) for p in args.reports if not p.is_file()]
    if missing:
        raise SystemExit(f"no such report: {', '.join(missing)}; run bench/real.py for that split first")
    reports = [json.loads(p.read_text()) for p in args.reports]
    summary = {**summarise(reports), "inputs": [p.name for p in args.reports]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    splits = summary["splits"]
    print("| row | " + " | ".join(f"split {s}" for s in splits) + " | pooled | vs intra_video (wins/ties/losses) |")
    print("|---|" + "---|" * (len(splits) + 2))
    for row, entry in summary["rows"].items():
        against = entry.get("against_intra_video")
        versus = (f"{against['mean_points']:+.1f} ± {against['standard_error_points']:.1f} "
                  f"({against['wins']}/{against['ties']}/{against['losses']})" if against else "")
        cells = [f"{entry['per_split'][str(s)]['mean']:.1f} ± {entry['per_split'][str(s)]['std']:.1f}" for s in splits]
        print(f"| {row} | " + " | ".join(cells)
              + f" | {entry['pooled']['mean']:.1f} ± {entry['pooled']['std']:.1f} | {versus} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
