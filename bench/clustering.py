"""Benchmark: our FINCH partition 0 (faiss k=2 search + components) against the FINCH authors' package.

What is compared
    ours       ``slic.clustering.finch_partition0``: L2-normalise, one exact faiss IndexFlatIP k=2 search
               (inner product on unit vectors = cosine), drop self, connected components.  Partition 0 only,
               because SLIC only uses partition 0.
    reference  ``finch.FINCH`` from ``finch-clust==0.2.3`` with its defaults except ``distance='cosine'`` and
               ``ann_threshold=70000``, i.e. what SLIC's reference code runs: a full (n, n) sklearn cosine
               distance matrix below 70k points, then the whole hierarchy (only column 0 is used).  We time
               that full call because it is what the reference pays; ``reference_p0_s`` additionally times the
               package's own partition-0 step alone (``clust_rank`` + ``get_clust``) so the part of the
               speed-up that comes from skipping the hierarchy is visible.

Why it is fair
    Same float32 data for both, same machine and thread settings (faiss and numpy's BLAS both use every core),
    both exact (no ANN on either side), best of the same number of repeats, end-to-end calls (normalisation,
    search, components, relabelling all inside our timing).  The reference runs in a fresh child process per
    size so its multi-GB matrices cannot slow our rows down, and so its peak memory can be measured; it is
    skipped (and the row says why) where its n^2 memory or time, extrapolated from the previous size, would
    pass ``--ref-max-gb`` / ``--ref-max-s``.  Our rows continue beyond that, up to ``--ours-max-s``.
    ``same_partition`` is adjusted Rand index == 1.0; when it is not, every point whose first neighbour
    differs is checked in float64: a difference of cosine similarity within d * eps(float32) is a tie
    (either answer is a correct first neighbour) and the row says whether ties explain the disagreement.
    Other processes may share the machine: before each timing the bench waits (up to ``--quiet-wait-s``) for
    the CPUs to go quiet and records the busy share it saw (``cpu_busy_before_*``) and the load average, so
    noisy rows can be spotted and re-run with ``--merge``; a float32 GEMM probe (``gemm_gflops_*``) at start
    and end shows slowdowns from outside the machine (a shared host) that the busy share cannot see.

A k-means row compares ``slic.clustering.kmeans`` (faiss, n_init=10, 20 iterations) with sklearn ``KMeans``
(K=1000, n_init=10, defaults otherwise, as in the reference) on the same L2-normalised data; quality is
reported as the within-cluster sum of squares of each labelling (lower is better) and their NMI.

Data: embedding-like 128-d float32 vectors, a mixture of a few hundred Gaussian clusters around random
directions with unequal sizes and spreads, 5 % background points, random lengths; fixed seed.

    python bench/clustering.py                      # the full bench, writes reports/bench/clustering.json
    python bench/clustering.py --sizes 20000 --merge --no-kmeans   # re-run one row into the existing JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "reports" / "bench" / "clustering.json"
FINCH_KWARGS = {"distance": "cosine", "ann_threshold": 70_000}
TARGET_SPEEDUP, TARGET_MIN_N = 10.0, 20_000


# ------------------------------------------------------------------------------------------------- data


def embedding_like(n: int, d: int = 128, *, clusters: int = 300, background: float = 0.05,
                   seed: int = 0) -> np.ndarray:
    """Vectors that look like raw video embeddings: uneven Gaussian clusters in random directions plus noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(clusters, 2.0))
    spreads = rng.uniform(0.5, 1.0, size=clusters)
    member = rng.choice(clusters, size=n, p=weights)
    x = centres[member] + spreads[member, None] * rng.standard_normal((n, d)) / np.sqrt(d)
    noise = rng.random(n) < background
    x[noise] = rng.standard_normal((int(noise.sum()), d))
    x *= rng.lognormal(0.0, 0.3, size=(n, 1))
    return x.astype(np.float32)


# ------------------------------------------------------------------------------------------- machine


def machine_info() -> dict[str, object]:
    """CPU, memory, library versions and thread counts, for reading the timings."""
    import faiss
    import scipy
    import sklearn

    from slic.faiss_backend import gpu_available

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import importlib.metadata as metadata
        finch_version = metadata.version("finch-clust")
    except Exception:  # noqa: BLE001 - absent package is reported, not fatal
        finch_version = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(_meminfo("MemTotal") / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "sklearn": sklearn.__version__, "faiss": faiss.__version__,
            "finch_clust": finch_version, "faiss_gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus")
            else 0, "faiss_threads": faiss.omp_get_max_threads(), "ours_device": "gpu" if gpu_available()
            else "cpu", "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
            "gemm_gflops_at_start": gemm_gflops()}


def gemm_gflops(size: int = 2048, d: int = 1024, repeats: int = 5) -> float:
    """float32 GEMM speed of numpy's BLAS right now: a probe for host-level slowdowns between runs."""
    a = np.random.default_rng(0).standard_normal((size, d)).astype(np.float32)
    seconds, _ = best_time(lambda: a @ a.T, repeats)
    return round(2 * size * size * d / seconds / 1e9, 1)


def _meminfo(key: str) -> int:
    """A /proc/meminfo entry in bytes (0 if unavailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------------------------- timing


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Smallest wall time of `repeats` calls and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def reference_child(data_path: str, out_prefix: str, repeats: int) -> None:
    """(Child process.) Time finch.FINCH end to end and its partition-0 step; save labels and neighbours."""
    warnings.filterwarnings("ignore")  # the package warns that pynndescent (unused below 70k) is absent
    from finch import FINCH
    from finch.finch import clust_rank, get_clust

    x = np.load(data_path)
    full_s, (c, num_clust, _) = best_time(lambda: FINCH(x, **FINCH_KWARGS), repeats)

    def partition0():
        adj, _, neighbours, _ = clust_rank(x, None, FINCH_KWARGS["distance"],
                                           ann_threshold=FINCH_KWARGS["ann_threshold"])
        return get_clust(adj, [], None)[0], neighbours

    p0_s, (p0_labels, neighbours) = best_time(partition0, repeats)
    np.save(out_prefix + "_labels.npy", np.asarray(c)[:, 0])
    np.save(out_prefix + "_p0_labels.npy", np.asarray(p0_labels))
    np.save(out_prefix + "_neighbours.npy", np.asarray(neighbours))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out_prefix + ".json").write_text(json.dumps({"full_s": full_s, "p0_s": p0_s, "peak_bytes": peak,
                                                      "num_clust": [int(v) for v in num_clust]}))


def run_reference(x: np.ndarray, repeats: int, timeout_s: float) -> dict[str, object]:
    """Run the reference in a fresh process; timings, peak memory, labels and first neighbours (or error)."""
    with tempfile.TemporaryDirectory(prefix="finch-bench-") as tmp:
        data, prefix = os.path.join(tmp, "x.npy"), os.path.join(tmp, "ref")
        np.save(data, x)
        try:
            done = subprocess.run([sys.executable, __file__, "--child", data, prefix, str(repeats)],
                                  capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"reference passed the {timeout_s:.0f} s child timeout"}
        if done.returncode != 0 or not os.path.exists(prefix + ".json"):
            return {"error": f"reference child failed (rc {done.returncode}): {done.stderr.strip()[-300:]}"}
        result = json.loads(Path(prefix + ".json").read_text())
        for name in ("labels", "p0_labels", "neighbours"):
            result[name] = np.load(f"{prefix}_{name}.npy")
    return result


def cpu_busy(interval: float = 1.0) -> float:
    """Share of the machine's CPU time that was busy over `interval` seconds (we sleep meanwhile)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(max_wait_s: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait_s) until other processes use < threshold of the CPUs; the last busy share seen."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy >= threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return round(busy, 3)


# ----------------------------------------------------------------------------------------------- checks


def tie_check(x: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> dict[str, object]:
    """Points whose first neighbour differs, and whether float64 cosine says each difference is a tie."""
    tolerance = x.shape[1] * float(np.finfo(np.float32).eps)
    differ = np.flatnonzero(ours != theirs)
    unit = x.astype(np.float64)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    gap = np.abs(np.einsum("ij,ij->i", unit[differ], unit[ours[differ]])
                 - np.einsum("ij,ij->i", unit[differ], unit[theirs[differ]]))
    return {"points_with_other_neighbour": int(len(differ)),
            "max_cosine_gap": float(gap.max()) if len(gap) else 0.0, "tie_tolerance": tolerance,
            "all_differences_are_ties": bool((gap <= tolerance).all())}


def within_cluster_ss(x: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of points to their cluster mean (k-means objective of a labelling)."""
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), x.shape[1]))
    np.add.at(sums, inverse, x)
    means = sums / counts[:, None]
    return float(((x - means[inverse]) ** 2).sum())


# ------------------------------------------------------------------------------------------------- rows


class Budget:
    """Extrapolates the next size's cost from the last measured one (time and memory grow as n^2)."""

    def __init__(self) -> None:
        self.n: int | None = None
        self.seconds = 0.0
        self.peak_bytes = 0.0

    def predict(self, n: int, *, default_seconds: float, default_bytes: float) -> tuple[float, float]:
        if self.n is None:
            return default_seconds, default_bytes
        scale = (n / self.n) ** 2
        return self.seconds * scale, self.peak_bytes * scale

    def record(self, n: int, seconds: float, peak_bytes: float = 0.0) -> None:
        self.n, self.seconds, self.peak_bytes = n, seconds, peak_bytes


def finch_row(x: np.ndarray, args: argparse.Namespace, ref_budget: Budget, ours_budget: Budget,
              reference_stopped: list[str]) -> dict[str, object] | None:
    """One size: our timing, the reference's if it fits, and how the partitions agree."""
    from sklearn.metrics import adjusted_rand_score

    from slic.clustering import cluster_sizes_summary, components_of_neighbour_graph, finch_partition0, \
        first_neighbours
    from slic.faiss_backend import gpu_available

    n, d = x.shape
    guess_s, _ = ours_budget.predict(n, default_seconds=1e-9 * n * n, default_bytes=0.0)
    if guess_s > args.ours_max_s:
        print(f"n={n}: skipping ours too, predicted {guess_s:.0f} s > --ours-max-s {args.ours_max_s:.0f}")
        return None
    repeats = args.repeats if n <= args.repeat_up_to else 1
    row: dict[str, object] = {"n": n, "d": d, "device": "gpu" if gpu_available() else "cpu",
                              "repeats": repeats, "load_1m_before": round(os.getloadavg()[0], 2)}
    ref = None
    if not reference_stopped:
        ref_s, ref_bytes = ref_budget.predict(n, default_seconds=3e-8 * n * n, default_bytes=12.0 * n * n)
        available = _meminfo("MemAvailable")
        if ref_bytes > args.ref_max_gb * 2**30 or (available and ref_bytes > 0.9 * available):
            reference_stopped.append(f"from n={n}: predicted peak {ref_bytes / 2**30:.1f} GB exceeds "
                                     f"{args.ref_max_gb:g} GB (or 90 % of available memory)")
        elif ref_s > args.ref_max_s:
            reference_stopped.append(f"from n={n}: predicted {ref_s:.0f} s exceeds {args.ref_max_s:g} s")
        else:
            row["cpu_busy_before_reference"] = wait_for_quiet(args.quiet_wait_s)
            ref = run_reference(x, repeats, timeout_s=args.ref_max_s * (2 * repeats + 2) + 60)
            if "error" in ref:
                reference_stopped.append(f"from n={n}: {ref['error']}")
                ref = None
            else:
                ref_budget.record(n, ref["full_s"], ref["peak_bytes"])
    row["cpu_busy_before_ours"] = wait_for_quiet(args.quiet_wait_s)
    ours_s, labels = best_time(lambda: finch_partition0(x), repeats)
    ours_budget.record(n, ours_s)
    row.update({"ours_s": round(ours_s, 4), "ours_n_clusters": cluster_sizes_summary(labels)["n_clusters"]})
    if ref is None:
        row.update({"reference_s": None, "reference_p0_s": None, "speedup": None, "speedup_vs_p0": None,
                    "same_partition": None, "ari": None, "reference_note": reference_stopped[-1]})
    else:
        ari = float(adjusted_rand_score(ref["labels"], labels))
        row.update({"reference_s": round(ref["full_s"], 4), "reference_p0_s": round(ref["p0_s"], 4),
                    "speedup": round(ref["full_s"] / ours_s, 2), "speedup_vs_p0": round(ref["p0_s"] / ours_s, 2),
                    "same_partition": ari == 1.0, "ari": ari,
                    "reference_n_clusters": int(ref["num_clust"][0]), "reference_levels": ref["num_clust"],
                    "reference_peak_gb": round(ref["peak_bytes"] / 2**30, 2),
                    "reference_p0_matches_full": float(adjusted_rand_score(ref["labels"], ref["p0_labels"]))
                    == 1.0})
        if ari < 1.0:
            ties = tie_check(x, first_neighbours(x), ref["neighbours"].astype(np.int64))
            ties["reference_neighbours_rebuild_its_partition"] = float(adjusted_rand_score(
                ref["labels"], components_of_neighbour_graph(ref["neighbours"]))) == 1.0
            ties["same_up_to_ties"] = ties["all_differences_are_ties"] and \
                ties["reference_neighbours_rebuild_its_partition"]
            row["tie_check"] = ties
    row["load_1m_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps({k: v for k, v in row.items() if k != "reference_levels"}), flush=True)
    return row


def kmeans_row(args: argparse.Namespace) -> dict[str, object]:
    """faiss k-means (ours) against sklearn KMeans, same K, n_init and L2-normalised data."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    from slic.clustering import kmeans
    from slic.faiss_backend import gpu_available, l2_normalize

    x = embedding_like(args.kmeans_n, args.d, clusters=args.clusters, seed=args.seed)
    unit = l2_normalize(x)
    row: dict[str, object] = {"n": args.kmeans_n, "d": args.d, "k": args.kmeans_k, "n_init": args.kmeans_n_init,
                              "device": "gpu" if gpu_available() else "cpu",
                              "load_1m_before": round(os.getloadavg()[0], 2)}
    row["cpu_busy_before_ours"] = wait_for_quiet(args.quiet_wait_s)
    ours_s, ours = best_time(lambda: kmeans(x, args.kmeans_k, n_init=args.kmeans_n_init, seed=args.seed), 1)
    model = KMeans(n_clusters=args.kmeans_k, n_init=args.kmeans_n_init, random_state=args.seed)
    row["cpu_busy_before_reference"] = wait_for_quiet(args.quiet_wait_s)
    ref_s, theirs = best_time(lambda: model.fit_predict(unit), 1)
    row.update({"ours_s": round(ours_s, 3), "reference_s": round(ref_s, 3), "speedup": round(ref_s / ours_s, 2),
                "ours_iterations": 20, "reference_iterations_best_init": int(model.n_iter_),
                "ours_within_ss": round(within_cluster_ss(unit, ours), 2),
                "reference_within_ss": round(within_cluster_ss(unit, theirs), 2),
                "ours_used_clusters": int(len(np.unique(ours))),
                "reference_used_clusters": int(len(np.unique(theirs))),
                "nmi_ours_vs_reference": round(float(normalized_mutual_info_score(theirs, ours)), 4),
                "load_1m_after": round(os.getloadavg()[0], 2)})
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------------------------------------ main


def targets(rows: list[dict[str, object]]) -> dict[str, object]:
    """Speed-up >= 10 against the reference at every compared n >= 20,000 on CPU."""
    eligible = [r for r in rows if r["n"] >= TARGET_MIN_N and r["device"] == "cpu" and r.get("speedup")]
    worst = min((r["speedup"] for r in eligible), default=None)
    return {"finch_speedup": {"target": f"speedup >= {TARGET_SPEEDUP:g} at n >= {TARGET_MIN_N} on CPU",
                              "rows_compared": [r["n"] for r in eligible], "min_speedup": worst,
                              "met": bool(eligible) and worst >= TARGET_SPEEDUP,
                              "all_same_partition": all(r["same_partition"] or r.get("tie_check", {}).get(
                                  "same_up_to_ties", False) for r in rows if r.get("ari") is not None)}}


def estimates(rows: list[dict[str, object]], sizes: str) -> list[dict[str, object]]:
    """Our predicted time at sizes too slow to run here, scaled as n^2 from the largest row run."""
    if not rows:
        return []
    last = max(rows, key=lambda r: r["n"])
    return [{"n": n, "predicted_ours_s": round(last["ours_s"] * (n / last["n"]) ** 2), "from_n": last["n"]}
            for n in (int(v) for v in sizes.split(",") if v) if n > last["n"]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,10000,20000,30000,40000,100000",
                        help="comma-separated n, ascending (reference where it fits, ours on all)")
    parser.add_argument("--estimate-sizes", default="200000,1000000",
                        help="sizes not run, reported as our time extrapolated (n^2) from the largest row")
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=300, help="Gaussian clusters in the synthetic data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (both sides)")
    parser.add_argument("--repeat-up-to", type=int, default=20_000, help="above this n, one run each")
    parser.add_argument("--ref-max-gb", type=float, default=12.0)
    parser.add_argument("--ref-max-s", type=float, default=120.0)
    parser.add_argument("--ours-max-s", type=float, default=150.0)
    parser.add_argument("--kmeans-n", type=int, default=20_000)
    parser.add_argument("--kmeans-k", type=int, default=1000)
    parser.add_argument("--kmeans-n-init", type=int, default=10)
    parser.add_argument("--quiet-wait-s", type=float, default=30.0,
                        help="before each timing, wait up to this long for other processes to go quiet")
    parser.add_argument("--no-kmeans", action="store_true")
    parser.add_argument("--no-finch", action="store_true")
    parser.add_argument("--merge", action="store_true", help="replace only the re-run rows in --out")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return parser.parse_args(argv)


def merged(old: list[dict[str, object]], new: list[dict[str, object]], key: tuple[str, ...]) -> list:
    """Old rows whose key was not re-run, plus the new ones, sorted by n."""
    fresh = {tuple(r[k] for k in key) for r in new}
    return sorted([r for r in old if tuple(r[k] for k in key) not in fresh] + new, key=lambda r: r["n"])


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        reference_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    args = parse_args(argv)
    from slic.clustering import finch_partition0

    report = {"machine": machine_info(), "data": {"kind": "embedding_like", "d": args.d, "clusters": args.clusters,
                                                  "background": 0.05, "seed": args.seed},
              "reference": {"package": "finch-clust==0.2.3", "call": "FINCH(x, distance='cosine', "
                            "ann_threshold=70000), whole hierarchy timed; reference_p0_s = clust_rank + get_clust"},
              "ours": "slic.clustering.finch_partition0 (faiss IndexFlatIP k=2 + connected components)"}
    started = time.perf_counter()
    rows, kmeans_rows, stopped = [], [], []
    if not args.no_finch:
        finch_partition0(embedding_like(1000, args.d, seed=args.seed))  # warm up faiss/BLAS once
        ref_budget, ours_budget = Budget(), Budget()
        for n in sorted(int(s) for s in args.sizes.split(",")):
            row = finch_row(embedding_like(n, args.d, clusters=args.clusters, seed=args.seed), args, ref_budget,
                            ours_budget, stopped)
            if row is None:
                break
            rows.append(row)
    if not args.no_kmeans:
        kmeans_rows.append(kmeans_row(args))
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        rows = merged(old.get("rows", []), rows, ("n", "device"))
        kmeans_rows = merged(old.get("kmeans_rows", []), kmeans_rows, ("n", "k", "device"))
        stopped = stopped or old.get("reference_stopped", [])
    report.update({"rows": rows, "ours_not_run_estimates": estimates(rows, args.estimate_sizes),
                   "kmeans_rows": kmeans_rows, "reference_stopped": stopped,
                   "targets": targets(rows), "bench_seconds": round(time.perf_counter() - started, 1)})
    report["machine"]["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    report["machine"]["gemm_gflops_at_end"] = gemm_gflops()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, args.out)
    print(f"wrote {args.out} in {report['bench_seconds']} s; targets: {json.dumps(report['targets'])}")


if __name__ == "__main__":
    main()
