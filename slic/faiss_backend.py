"""What every FAISS user in slic shares: the lazy import, GPU detection and choice, threads, normalisation.

faiss is an optional extra (``slic[cpu]`` installs faiss-cpu, ``slic[gpu]`` faiss-gpu), so it is imported
only when first needed and importing this module changes no global state.  Both the clustering of
pseudo-labels (slic.clustering) and the similarity-search index (slic.index) use these helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import numpy as np


def faiss_module() -> ModuleType:
    """The faiss module, with a clear message when neither faiss-cpu nor faiss-gpu is installed."""
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("slic needs faiss for clustering and search: install slic[cpu] (faiss-cpu) or "
                          "slic[gpu] (faiss-gpu)") from error
    return faiss


def gpu_available() -> bool:
    """True when the installed faiss is built with GPU support and sees at least one GPU."""
    faiss = faiss_module()
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def resolve_gpu(use_gpu: bool | None) -> bool:
    """None -> GPU if faiss has one; True without a GPU is an error rather than a silent CPU fallback."""
    if use_gpu is None:
        return gpu_available()
    if use_gpu and not gpu_available():
        raise RuntimeError("use_gpu=True but faiss sees no GPU (faiss-gpu not installed or no device)")
    return bool(use_gpu)


@contextmanager
def faiss_threads(threads: int | None) -> Iterator[None]:
    """Run the block with faiss using `threads` OpenMP threads (None: leave faiss's default alone)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    faiss = faiss_module()
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm as contiguous float32 (zero rows stay zero): cosine becomes inner product."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, np.finfo(np.float32).tiny))
