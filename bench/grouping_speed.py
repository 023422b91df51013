"""How long the `clusters` stage takes to group an archive: our FINCH-to-k against the FINCH authors' package
and against k-means, side by side on the same vectors.

What is compared, for `--groups` groups (the stage's default, 20) on L2-normalised 128-d vectors shaped like
embeddings (bench/clustering.py's `embedding_like`: Gaussian clusters over a background):
    ours       `slic.clustering.finch_groups`: the hierarchy by faiss first-neighbour searches on cluster means,
               then the level above `groups` merged one closest pair at a time, updating one row of
               similarities per merge.
    reference  `finch.FINCH(req_clust=groups, distance="cosine")` from `finch-clust` (the FINCH authors), exact
               (its approximate path needs pynndescent): a full (n, n) distance matrix for partition 0, then
               every merge recomputes every cluster mean and their distances. Skipped above `--ref-max-n`.
    kmeans     `slic.clustering.kmeans` with k = groups (faiss, 10 restarts of 20 iterations), what
               `clusters.method: kmeans` runs.
Each is the best of `--repeats` runs (one above 20k vectors); `same_as_reference` is the adjusted Rand index
of ours against the reference (1.0: the same groups). Writes reports/bench/grouping_speed.json.

    python bench/grouping_speed.py
    python bench/grouping_speed.py --sizes 2000 5000 --ref-max-n 5000
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, write_report  # noqa: E402
from bench.clustering import embedding_like  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "grouping_speed.json"


def best_time(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The fastest of `repeats` calls of `run`, in seconds, and the last call's result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - started)
    return best, result


def size_row(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """The three ways on `n` vectors."""
    from sklearn.metrics import adjusted_rand_score

    from slic.clustering import finch_groups, kmeans, l2_normalize

    x = l2_normalize(embedding_like(n, clusters=max(30, n // 200), seed=args.seed))
    repeats = args.repeats if n <= 20_000 else 1
    ours_s, (ours, counts, start) = best_time(lambda: finch_groups(x, args.groups), repeats)
    row: dict[str, Any] = {"n": n, "groups": int(ours.max()) + 1, "finch_levels": counts, "merged_from_level": start,
                           "ours_s": round(ours_s, 4)}
    if n <= args.ref_max_n:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # finch-clust warns at import that pynndescent (its ANN path) is missing
            from finch import FINCH

            ref_s, ref = best_time(lambda: FINCH(x, req_clust=args.groups, distance="cosine", ann_threshold=n + 1,
                                                 verbose=False)[2], repeats)
        row.update(reference_s=round(ref_s, 4), speedup=round(ref_s / ours_s, 2),
                   same_as_reference=round(float(adjusted_rand_score(ref, ours)), 6))
    else:
        row["reference"] = f"skipped: above --ref-max-n {args.ref_max_n} (its n x n matrix)"
    kmeans_s, _ = best_time(lambda: kmeans(x, args.groups, seed=args.seed), repeats)
    row["kmeans_s"] = round(kmeans_s, 4)
    return row


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000, 10_000, 20_000, 100_000, 300_000])
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--ref-max-n", type=int, default=20_000, help="largest n the reference runs at")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    rows = []
    for n in args.sizes:
        rows.append(size_row(n, args))
        print("  " + " ".join(f"{k}={v}" for k, v in rows[-1].items() if k != "finch_levels"), flush=True)
    report = {"question": "how long grouping an archive takes: ours, the FINCH authors' package, k-means",
              "groups": args.groups, "dimension": 128, "rows": rows, "machine": machine("cpu"),
              "wall_seconds": round(time.perf_counter() - started, 2)}
    print(f"-> {write_report(report, args.out)} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
