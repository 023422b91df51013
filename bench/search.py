"""Benchmark: exact search (IndexFlatIP) against IVF-Flat, IVF-PQ (plain and re-ranked) and HNSW, 128-d.

What is measured, per size (100,000 and 1,000,000 gallery vectors by default)
    build_s     wall time to train (IVF kinds: k-means on a sample) and add every vector
    qps         queries per second of one batched search of every query (k=10, every core)
    recall_at_10  share of the exact top-10 that the index returns, averaged over queries (exact = 1.0)
    speedup     qps / exact qps at the same size

Data: `--centres` Gaussian centres on the unit sphere, each gallery vector and each query a centre plus
isotropic noise, L2-normalised (inner product = cosine), fixed seed; queries come from the same
distribution but are never gallery vectors.  Target: an approximate index keeping >= 0.95 of exact
recall@10 at >= 10x exact queries/s at 1M; `target` in the JSON says, per size, which kinds meet it.

Parameters are chosen for a 2-core CPU and the whole run in ~10 minutes: IVF nlist ~ 2 sqrt(n) trained on
at most 64 points per list with 10 k-means iterations; HNSW M=16, efConstruction=40 (measured at 100k
first: 7 s there, 79 s at 1M).  Each index is built once and searched with each search-time setting
(nprobe, efSearch, re-rank k_factor), one row per setting.

    python bench/search.py                              # writes reports/bench/search.json
    python bench/search.py --sizes 100000 --out /tmp/s.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "reports" / "bench" / "search.json"
K = 10


def clustered_vectors(n: int, centres: np.ndarray, *, noise: float, rng: np.random.Generator) -> np.ndarray:
    """n unit vectors: a random centre plus isotropic Gaussian noise of per-dimension std `noise`."""
    out = np.empty((n, centres.shape[1]), np.float32)
    for start in range(0, n, 200_000):  # chunks keep the float64 temporaries small
        stop = min(n, start + 200_000)
        ids = rng.integers(0, len(centres), stop - start)
        x = centres[ids] + rng.normal(0.0, noise, (stop - start, centres.shape[1])).astype(np.float32)
        out[start:stop] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each query's exact top-k ids that `found` also returns."""
    hits = [len(np.intersect1d(f[f >= 0], e)) for f, e in zip(found, exact)]
    return float(np.mean(hits) / exact.shape[1])


def make_index(kind: str, n: int, dim: int, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """An empty faiss index of `kind` with parameters sized for n vectors, and those parameters."""
    import faiss

    nlist = int(2 ** round(np.log2(max(16.0, args.nlist_factor * np.sqrt(n)))))
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.ef_construction
        return index, {"M": args.hnsw_m, "efConstruction": args.ef_construction}
    if kind == "ivf_pq_refine":  # IVF-PQ candidates (k_factor * k) re-ranked with the exact vectors
        inner, params = make_index("ivf_pq", n, dim, args)
        return faiss.IndexRefineFlat(inner), params
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        params = {"nlist": nlist}
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, args.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
        params = {"nlist": nlist, "pq_m": args.pq_m, "pq_nbits": 8}
    index.cp.niter = args.kmeans_iter
    if kind == "ivf_pq":
        index.pq.cp.niter = args.kmeans_iter
    return index, params


def search_settings(kind: str, index: Any, args: argparse.Namespace) -> list[tuple[dict[str, int], Any]]:
    """The search-time settings swept for one built index: (label, function applying it)."""
    import faiss

    if kind == "hnsw":
        return [({"efSearch": e}, lambda e=e: setattr(index.hnsw, "efSearch", e)) for e in args.ef_search]
    if kind in ("ivf_flat", "ivf_pq"):
        return [({"nprobe": p}, lambda p=p: setattr(index, "nprobe", p)) for p in args.nprobe]
    if kind == "ivf_pq_refine":
        inner = faiss.downcast_index(index.base_index)

        def apply(f: int) -> None:
            inner.nprobe = args.refine_nprobe
            index.k_factor = f
        return [({"nprobe": args.refine_nprobe, "k_factor": f}, lambda f=f: apply(f)) for f in args.refine_factor]
    return [({}, lambda: None)]


def bench_kind(kind: str, gallery: np.ndarray, queries: np.ndarray, exact_ids: np.ndarray | None,
               args: argparse.Namespace) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Build one index over the gallery, search every query once per setting; its rows and the last ids."""
    index, params = make_index(kind, len(gallery), gallery.shape[1], args)
    started = time.perf_counter()
    if not index.is_trained:
        sample = np.random.default_rng(1).choice(len(gallery), min(len(gallery), 64 * params["nlist"]), replace=False)
        index.train(gallery[np.sort(sample)])
    index.add(gallery)
    build_s = time.perf_counter() - started
    rows = []
    for setting, apply in search_settings(kind, index, args):
        apply()
        started = time.perf_counter()
        _, ids = index.search(queries, K)
        search_s = time.perf_counter() - started
        rows.append({"kind": kind, "params": {**params, **setting}, "build_s": round(build_s, 2),
                     "search_s": round(search_s, 3), "qps": round(len(queries) / search_s, 1),
                     "recall_at_10": 1.0 if exact_ids is None else round(recall_at_k(ids, exact_ids), 4)})
        print(f"  {kind:13s} {str(setting):28s} build {build_s:6.1f} s {rows[-1]['qps']:9.1f} q/s  "
              f"recall@10 {rows[-1]['recall_at_10']:.4f}", flush=True)
    return rows, ids


def bench_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Every kind on one gallery size; the rows with speed-ups and which kinds meet the target."""
    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.centres, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    gallery = clustered_vectors(n, centres, noise=args.noise, rng=rng)
    queries = clustered_vectors(args.queries, centres, noise=args.noise, rng=rng)
    print(f"n={n:,} d={args.dim} queries={args.queries:,}", flush=True)
    rows, exact_ids = bench_kind("flat", gallery, queries, None, args)
    exact = rows[0]
    for kind in args.kinds:
        rows += bench_kind(kind, gallery, queries, exact_ids, args)[0]
    for row in rows:
        row["speedup"] = round(row["qps"] / exact["qps"], 2)
        row["meets_target"] = row["kind"] != "flat" and row["recall_at_10"] >= 0.95 and row["speedup"] >= 10
    met = [r for r in rows if r["meets_target"]]
    return {"n": n, "rows": rows, "target_met_by": sorted({r["kind"] for r in met}),
            "fastest_meeting_target": max(met, key=lambda r: r["qps"]) if met else None}


def main(argv: list[str] | None = None) -> int:
    """Run the bench and write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["ivf_flat", "ivf_pq", "ivf_pq_refine", "hnsw"])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--centres", type=int, default=4000)
    parser.add_argument("--noise", type=float, default=0.06, help="per-dimension std of the noise")
    parser.add_argument("--nlist-factor", type=float, default=2.0, help="nlist ~ factor * sqrt(n), a power of 2")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32], help="IVF lists visited (swept)")
    parser.add_argument("--kmeans-iter", type=int, default=10)
    parser.add_argument("--pq-m", type=int, default=32)
    parser.add_argument("--refine-factor", type=int, nargs="+", default=[4, 16],
                        help="ivf_pq_refine: PQ candidates per result re-ranked exactly (swept)")
    parser.add_argument("--refine-nprobe", type=int, default=32, help="ivf_pq_refine: IVF lists visited")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=int, nargs="+", default=[64, 128, 256], help="HNSW (swept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import faiss

    started = time.perf_counter()
    sizes = [bench_size(n, args) for n in args.sizes]
    target = next((s for s in sizes if s["n"] == 1_000_000), sizes[-1])
    report = {
        "target": {"rule": "recall@10 >= 0.95 of exact and >= 10x exact queries/s", "at_n": target["n"],
                   "met": bool(target["target_met_by"]), "met_by": target["target_met_by"]},
        "sizes": sizes,
        "data": {"dim": args.dim, "centres": args.centres, "noise_std": args.noise, "queries": args.queries,
                 "k": K, "seed": args.seed, "metric": "inner product on L2-normalised vectors"},
        "machine": {"cpus": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
                    "faiss": faiss.__version__, "python": sys.version.split()[0],
                    "platform": platform.platform(), "loadavg_end": [round(x, 2) for x in os.getloadavg()]},
        "total_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"target at n={target['n']:,}: {'met by ' + ', '.join(target['target_met_by']) if report['target']['met'] else 'NOT met'}"
          f"; {report['total_s']} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
