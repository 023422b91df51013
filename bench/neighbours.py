"""Exact leave-one-out neighbours at archive scale: memory and time of the blocked search, bounded or not.

`evaluate` on unlabelled videos lets every video query all the others (slic.retrieval.nearest_others). The
search holds one block of query rows x the whole gallery at a time, plus argpartition's int64 indices of the
same shape. With a fixed 4,096 rows a block that grows with the archive (a 240k-video Kinetics archive:
about 12 GB); bounded by slic.retrieval.BLOCK_ELEMENTS the block shrinks as the gallery grows. Each
(n, variant) runs in a fresh process for its peak RSS (`search_gb`: above what the imports and the vectors
had taken); both variants must return the same neighbours.

Writes reports/bench/neighbours.json.

    python bench/neighbours.py                 # n = 20,000 and 60,000, 128-d, k = 10
    python bench/neighbours.py --sizes 100000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

VARIANTS = {"fixed_4096_rows": 2**62, "bounded": None}  # BLOCK_ELEMENTS of each (None: the library's)
DEFAULT_OUT = ROOT / "reports" / "bench" / "neighbours.json"


def measure(n: int, dim: int, k: int, variant: str) -> dict[str, float | str | int]:
    """One search in this process: seconds, peak RSS, and a digest of the neighbours found."""
    import slic.retrieval as retrieval

    if VARIANTS[variant] is not None:
        retrieval.BLOCK_ELEMENTS = VARIANTS[variant]
    vectors = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # the imports and the vectors
    started = time.perf_counter()
    indices, _ = retrieval.nearest_others(vectors, k)
    seconds = time.perf_counter() - started
    rows = min(4096, max(1, retrieval.BLOCK_ELEMENTS // n))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"n": n, "variant": variant, "rows_per_block": rows, "seconds": round(seconds, 2),
            "peak_rss_gb": round(peak, 3), "search_gb": round(peak - before, 3),
            "neighbours_sha1": hashlib.sha1(indices.tobytes()).hexdigest()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--one", nargs=2, metavar=("N", "VARIANT"), help=argparse.SUPPRESS)  # a child's measurement
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.dim, args.k, args.one[1])))
        return
    rows = []
    for n in args.sizes:
        for variant in VARIANTS:
            child = subprocess.run([sys.executable, __file__, "--one", str(n), variant, "--dim", str(args.dim),
                                    "--k", str(args.k)], capture_output=True, text=True, check=True)
            rows.append(json.loads(child.stdout))
            print(f"n={n:>7} {variant:16s} {rows[-1]['rows_per_block']:>5} rows/block {rows[-1]['seconds']:7.1f} s "
                  f"peak RSS {rows[-1]['peak_rss_gb']:.2f} GB, {rows[-1]['search_gb']:.2f} GB of it the search",
                  flush=True)
    same = {n: len({r["neighbours_sha1"] for r in rows if r["n"] == n}) == 1 for n in args.sizes}
    from slic.machine import machine_info

    report = {"what": "exact leave-one-out top-k of n random vectors (slic.retrieval.nearest_others)",
              "dim": args.dim, "k": args.k, "rows": rows, "same_neighbours": same, "machine": machine_info(None)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"same neighbours: {same} -> {args.out}")


if __name__ == "__main__":
    main()
