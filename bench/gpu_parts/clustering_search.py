"""Items c and d of bench/gpu.py: FINCH and k-means on the device (and agreement with the CPU path); exact search."""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import numpy as np
import torch

from bench.gpu_parts.run import Bench


def clustered_vectors(n: int, dim: int, centres: int, *, noise: float, seed: int, device: torch.device) -> torch.Tensor:
    """n unit vectors on `device`: a random centre plus Gaussian noise (as bench/search.py's data)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    middle = torch.randn(centres, dim, device=device, generator=generator)
    middle = middle / middle.norm(dim=1, keepdim=True)
    out = torch.empty(n, dim, device=device)
    for start in range(0, n, 250_000):
        stop = min(n, start + 250_000)
        ids = torch.randint(0, centres, (stop - start,), device=device, generator=generator)
        x = middle[ids] + noise * torch.randn(stop - start, dim, device=device, generator=generator)
        out[start:stop] = x / x.norm(dim=1, keepdim=True)
    return out


def faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def gemm_seconds(x: torch.Tensor, dtype: torch.dtype, *, tf32: bool, chunk: int, sync: Any) -> float:
    """Seconds of the bare chunked x @ x.T (no top-k): the floor a tensor-core FINCH is compared with."""
    low = x.to(dtype)
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        sync()
        started = time.perf_counter()
        for start in range(0, len(low), chunk):
            low[start:start + chunk] @ low.T
        sync()
        return time.perf_counter() - started
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed


def finch_on_tensor_cores(bench: Bench, x: torch.Tensor, exact: np.ndarray, row: dict[str, Any]) -> None:
    """Item 2 of GPU round two: FINCH partition 0 with the similarity blocks on the tensor cores (TF32 and
    bf16, a shortlist rescored in float32), seconds beside the bare GEMM's, and the partition against the
    float32 one (identical? adjusted Rand index)."""
    from slic import torch_clustering as tc

    row["tensor_cores"] = {}
    for precision, dtype in (("tf32", torch.float32), ("bf16", torch.bfloat16)):
        if bench.left() < 20:
            row["tensor_cores"][precision] = {"status": "skipped", "reason": "time budget"}
            continue
        bench.sync()
        started = time.perf_counter()
        labels = tc.finch_partition0(x, device=bench.device, precision=precision)
        seconds = time.perf_counter() - started
        gemm = gemm_seconds(x, dtype, tf32=precision == "tf32", chunk=tc.DEFAULT_CHUNK, sync=bench.sync)
        row["tensor_cores"][precision] = {
            "finch_s": round(seconds, 4), "gemm_s": round(gemm, 4), "candidates": tc.DEFAULT_CANDIDATES,
            "identical_to_fp32": bool(np.array_equal(labels, exact)),
            "ari_vs_fp32": round(tc.adjusted_rand_index(exact, labels), 6), "clusters": int(labels.max()) + 1}
        bench.save()


def clustering(bench: Bench, out: dict[str, Any]) -> None:
    """Item c: FINCH partition 0 and k-means on the device; the same partition as the CPU path on a subset."""
    from slic import torch_clustering as tc

    p, device = bench.profile, bench.device
    faiss = faiss_or_none()
    out.update(data={"dim": 128, "centres": p.centres, "noise_std": 0.06, "metric": "cosine (L2-normalised)"},
               implementation="slic.torch_clustering on the device: exact top-2 by chunked float32 matmul, then "
                              "slic.clustering's duplicate tie-break and components; tensor_cores: the blocks in "
                              "TF32 or bf16, each point's shortlist rescored in float32; k-means: Lloyd, chunked "
                              "assignment",
               kmeans={"k": p.kmeans_k, "iterations": p.kmeans_iterations, "n_init": 1}, sizes=[])
    subset = None
    for n in p.cluster_sizes:
        if bench.left() < 20:
            out["sizes"].append({"n": n, "status": "skipped", "reason": "time budget"})
            continue
        x = clustered_vectors(n, 128, p.centres, noise=0.06, seed=0, device=device)
        if subset is None:
            subset = x[:p.cluster_subset].cpu().numpy()
        row: dict[str, Any] = {"n": n}
        out["sizes"].append(row)
        bench.sync()
        started = time.perf_counter()
        labels = tc.finch_partition0(x, device=device)
        row["finch_s"] = round(time.perf_counter() - started, 2)
        row["finch_clusters"] = int(labels.max()) + 1
        bench.save()
        finch_on_tensor_cores(bench, x, labels, row)
        started = time.perf_counter()
        k_labels = tc.kmeans(x, p.kmeans_k, iterations=p.kmeans_iterations, device=device)
        bench.sync()
        row["kmeans_s"] = round(time.perf_counter() - started, 2)
        row["kmeans_nonempty_clusters"] = int(len(np.unique(k_labels)))
        del x
        bench.save()
    if subset is None:
        return
    agreement: dict[str, Any] = {"n": len(subset)}
    out["cpu_agreement"] = agreement
    gpu_finch = tc.finch_partition0(subset, device=device)
    if faiss is not None:
        from slic.clustering import finch_partition0

        cpu_finch = finch_partition0(subset, use_gpu=False) if _scipy_present() else \
            tc.connected_components(_faiss_first_neighbours(subset))
        agreement["finch_cpu_path"] = "slic.clustering on faiss-cpu" + ("" if _scipy_present() else
                                                                       " (components: numpy, no scipy here)")
    else:
        cpu_finch = tc.finch_partition0(subset, device="cpu")
        agreement["finch_cpu_path"] = "slic.torch_clustering on the CPU (faiss not importable)"
    agreement["finch_ari"] = round(tc.adjusted_rand_index(cpu_finch, gpu_finch), 6)
    agreement["finch_identical"] = bool(np.array_equal(cpu_finch, gpu_finch))
    agreement["finch_clusters"] = [int(cpu_finch.max()) + 1, int(gpu_finch.max()) + 1]
    bench.save()
    k = min(p.kmeans_k, len(subset))
    gpu_k = tc.kmeans(subset, k, iterations=p.kmeans_iterations, device=device)
    cpu_k = tc.kmeans(subset, k, iterations=p.kmeans_iterations, device="cpu")
    agreement["kmeans_ari_same_init_cpu"] = round(tc.adjusted_rand_index(cpu_k, gpu_k), 6)
    if faiss is not None:
        from slic.clustering import kmeans

        faiss_k = kmeans(subset, k, n_init=1, iterations=p.kmeans_iterations, use_gpu=False)
        agreement["kmeans_ari_vs_faiss_cpu"] = round(tc.adjusted_rand_index(faiss_k, gpu_k), 6)
        agreement["kmeans_note"] = ("faiss.Kmeans starts from other centroids, so its partition differs by more than "
                                    "rounding; the same-initialisation CPU run is the like-for-like check")


def _scipy_present() -> bool:
    return importlib.util.find_spec("scipy") is not None


def _faiss_first_neighbours(x: np.ndarray) -> np.ndarray:
    from slic.clustering import first_neighbours

    return first_neighbours(x, use_gpu=False)


def search(bench: Bench, out: dict[str, Any]) -> None:
    """Item d: exact (flat) search on the device; IVF where faiss allows."""
    from slic import torch_clustering as tc

    p, device = bench.profile, bench.device
    faiss = faiss_or_none()
    gpus = int(faiss.get_num_gpus()) if faiss is not None and hasattr(faiss, "get_num_gpus") else 0
    out.update(k=10, queries=p.search_queries, data={"dim": 128, "centres": p.centres, "noise_std": 0.06},
               flat="torch on the device: exact inner product, chunked matmul + topk (float32, TF32 off)",
               ivf=("faiss-gpu present" if gpus else
                    "IVF on the GPU needs faiss-gpu, which is not carried (its wheels exceed what the machine can be "
                    "given); ivf_flat_cpu below is faiss-cpu's IVF-Flat on this machine's CPU cores"),
               sizes=[])
    for n in p.search_sizes:
        if bench.left() < 20:
            out["sizes"].append({"n": n, "status": "skipped", "reason": "time budget"})
            continue
        data = clustered_vectors(n + p.search_queries, 128, p.centres, noise=0.06, seed=1, device=device)
        gallery, queries = data[:n], data[n:]
        row: dict[str, Any] = {"n": n}
        out["sizes"].append(row)
        tc.topk_inner_product(queries[:64], gallery, 10)  # warm-up
        bench.sync()
        started = time.perf_counter()
        _, ids = tc.topk_inner_product(queries, gallery, 10)
        bench.sync()
        seconds = time.perf_counter() - started
        row["flat_device"] = {"search_s": round(seconds, 3), "qps": round(p.search_queries / seconds, 1)}
        bench.save()
        if faiss is not None:
            g, q = gallery.cpu().numpy(), queries[:p.search_check_queries].cpu().numpy()
            index = faiss.IndexFlatIP(128)
            index.add(g)
            started = time.perf_counter()
            _, exact = index.search(q, 10)
            cpu_s = time.perf_counter() - started
            found = ids[:p.search_check_queries].cpu().numpy()
            row["flat_faiss_cpu"] = {"qps": round(len(q) / cpu_s, 1), "queries_timed": len(q),
                                     "threads": int(faiss.omp_get_max_threads())}
            row["flat_device"]["recall_at_10_vs_faiss_cpu"] = round(float(np.mean(
                [len(np.intersect1d(f, e)) / 10 for f, e in zip(found, exact)])), 5)
            row["flat_device"]["speedup_vs_faiss_cpu"] = round(
                row["flat_device"]["qps"] / row["flat_faiss_cpu"]["qps"], 1)
            bench.save()
            if p.ivf_cpu and n == max(p.search_sizes) and bench.left() > 45:
                row["ivf_flat_cpu"] = _ivf_flat_cpu(faiss, g, queries.cpu().numpy(), exact, p.search_check_queries)
        del data, gallery, queries
        bench.save()


def _ivf_flat_cpu(faiss: Any, gallery: np.ndarray, queries: np.ndarray, exact: np.ndarray,
                  checked: int) -> dict[str, Any]:
    """faiss-cpu IVF-Flat as bench/search.py builds it (nlist ~ 2 sqrt(n), 64 training points per list)."""
    n, dim = gallery.shape
    nlist = int(2 ** round(np.log2(max(16.0, 2.0 * np.sqrt(n)))))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    started = time.perf_counter()
    sample = np.random.default_rng(1).choice(n, min(n, 64 * nlist), replace=False)
    index.train(gallery[np.sort(sample)])
    index.add(gallery)
    build_s = time.perf_counter() - started
    index.nprobe = 8
    started = time.perf_counter()
    _, ids = index.search(queries, 10)
    seconds = time.perf_counter() - started
    recall = float(np.mean([len(np.intersect1d(f, e)) / 10 for f, e in zip(ids[:checked], exact)]))
    return {"nlist": nlist, "nprobe": 8, "build_s": round(build_s, 2), "qps": round(len(queries) / seconds, 1),
            "recall_at_10": round(recall, 4)}
