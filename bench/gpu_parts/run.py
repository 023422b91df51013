"""The run of bench/gpu.py: sizes (Profile), the report and its time budget (Bench), sanitise, environment."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
PRESET = "paper_ucf101"

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' data sheets; the first name that
# occurs in torch.cuda.get_device_name() wins (GH200 before H200, H100 PCIe/NVL before plain H100 = SXM).
PEAK_BF16_TFLOPS = (("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0),
                    ("H100", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0),
                    ("L4", 121.0))


def peak_bf16_tflops(name: str | None) -> float | None:
    """The dense bf16 peak of a GPU by name (see PEAK_BF16_TFLOPS), or None when it is not in the table."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if name and key in name:
            return tflops
    return None


@dataclass(frozen=True)
class Profile:
    """Sizes of one run: `full` for a GPU, `quick` for the CPU check (tiny everything)."""

    name: str
    backbone: str = "r3d_18_reference"
    clip_len: int = 16
    size: int = 128
    batches: tuple[int, ...] = (32, 64, 128)
    warmup_steps: int = 2
    model_steps: int = 6
    compile: bool = True
    compile_modes: tuple[str, ...] = ("reduce-overhead", "max-autotune-no-cudagraphs")  # besides the default, batch 128
    frame_hw: tuple[int, int] = (240, 320)     # the throughput data: the preset's extract.short_side 240
    shard_videos: int = 64
    shard_frames: int = 48
    e2e_samples: int = 1536                    # triplets per measured end-to-end run (after every worker's first batch)
    e2e_min_steps: int = 100
    e2e_batch: int = 128
    # (loader, prefetch, workers), in the order measured: the new path, the first run's path, then the sweep
    e2e_variants: tuple[tuple[str, bool, int], ...] = (("uint8", True, 15), ("float32", False, 15),
                                                       ("uint8", True, 8), ("gpu_decode", True, 8),
                                                       ("uint8", False, 15), ("uint8", True, 4))
    workers: int = 15
    data_batches: tuple[int, ...] = (32, 128)
    data_clips: int = 1536                     # clips per measured data-path run
    data_min_rounds: int = 4
    cluster_sizes: tuple[int, ...] = (100_000, 1_000_000)
    cluster_subset: int = 50_000
    kmeans_k: int = 1000
    kmeans_iterations: int = 20
    centres: int = 4000
    search_sizes: tuple[int, ...] = (100_000, 1_000_000)
    search_queries: int = 10_000
    search_check_queries: int = 500
    ivf_cpu: bool = True
    flow_batch: int = 256
    flow_cpu_pairs: int = 8
    smoke_classes: int = 4
    smoke_per_class: int = 14                  # 10 train, 2 val, 2 test per class
    smoke_frames: int = 34
    smoke_hw: tuple[int, int] = (96, 128)
    smoke_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    scale_epochs: int = 240                    # learning_at_scale: 10x the CPU default's 24 epochs
    scale_size: int = 64
    scale_workers: int = 8                     # loader and embedding workers of learning_at_scale
    scale_rows: tuple[str, ...] = ("random_init", "intra_video", "slic", "oracle", "slic_video")
    scale_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # params.yaml sections
    scale_pretrain: dict[str, Any] = field(default_factory=dict)
    scale_mode_s: float = 30.0                 # seconds the first trained mode is assumed to need (then: measured)
    flow_stage_batches: tuple[int, ...] = (256, 1024, 4096)


# learning_at_scale on a GPU: 10x the epochs at 8-epoch clustering and validation intervals (30 rounds each;
# at the CPU default's 4 that would be 60 of each, an embedding pass and its loader per round and mode).
FULL = Profile(name="full", workers=max(1, min(15, (os.cpu_count() or 2) - 1)),
               scale_pretrain={"cluster_interval": 8, "eval_interval": 8})
QUICK = Profile(
    name="quick", backbone="r3d_18_tiny", clip_len=4, size=16, batches=(4,), warmup_steps=1, model_steps=2,
    compile=False, frame_hw=(24, 32), shard_videos=8, shard_frames=12, e2e_samples=8, e2e_min_steps=2, workers=1,
    e2e_batch=4, e2e_variants=(("uint8", True, 1), ("float32", False, 1), ("gpu_decode", True, 0)),
    data_batches=(4,), data_clips=8, data_min_rounds=2, cluster_sizes=(2000, 4000), cluster_subset=1500, kmeans_k=20,
    kmeans_iterations=5, centres=40, search_sizes=(4000,), search_queries=200, search_check_queries=50,
    ivf_cpu=True, flow_batch=8, flow_cpu_pairs=2, smoke_classes=3, smoke_per_class=6, smoke_frames=10,
    smoke_hw=(24, 32),
    smoke_overrides={
        "pretrain": {"backbone": "r3d_18_tiny", "hidden_dim": 32, "clip_len": 4, "size": 16, "batch_size": 4,
                     "workers": 0, "frame_cache_mb": 16},
        "embed": {"clips": 2, "batch_size": 8, "workers": 0},
        "linear_probe": {"clip_len": 4, "size": 16, "batch_size": 4, "eval_batch_size": 32, "workers": 0,
                         "test_stride": 4},
        "finetune": {"clip_len": 4, "size": 16, "batch_size": 4, "eval_batch_size": 32, "workers": 0,
                     "test_stride": 4},
        "flow": {"nscales": 2, "warps": 1, "outer_iterations": 2, "inner_iterations": 5},
    },
    scale_epochs=1, scale_size=16, scale_workers=0, scale_rows=("random_init", "intra_video", "slic"),
    scale_overrides={"synth": {"classes": 3, "groups": 5, "clips_per_group": 2, "frames": 24, "width": 32,
                               "height": 24},
                     "embed": {"clips": 2, "batch_size": 8},
                     "flow": {"nscales": 1, "warps": 1, "outer_iterations": 1, "inner_iterations": 2}},
    scale_pretrain={"backbone": "r3d_18_tiny", "hidden_dim": 32, "out_dim": 16, "clip_len": 4, "batch_size": 4,
                    "cluster_interval": 1, "eval_interval": 1, "frame_cache_mb": 16},
    scale_mode_s=1.0, flow_stage_batches=(8, 64))


class BudgetExceeded(Exception):
    """The run's time budget ran out in the middle of a section."""


class SectionSkipped(Exception):
    """A section that does not apply to this run (the message says why)."""


# ------------------------------------------------------------------------------------------ the run


class Bench:
    """The report being built, its file, the time budget and the shared work folder."""

    def __init__(self, out: Path, budget: float, profile: Profile, device: torch.device, work: Path,
                 reference: Path | None) -> None:
        self.out, self.budget, self.profile, self.device, self.work = out, budget, profile, device, work
        self.reference = reference
        self.started = time.perf_counter()
        self.report: dict[str, Any] = {}
        self.data: dict[str, Any] = {}  # what the setup wrote, for the sections

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.budget - self.elapsed()

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def save(self) -> None:
        """Write the report now (a temporary name, then a rename), paths made relative to the repo."""
        self.report["elapsed_s"] = round(self.elapsed(), 1)
        text = json.dumps(sanitise(self.report, {str(self.work): "<work>", str(ROOT): "."}), indent=2,
                          default=str) + "\n"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.out)

    def section(self, name: str, run: Callable[[Bench, dict[str, Any]], None], *, needs_s: float = 5.0) -> None:
        """Run one section into report[name]; its failure is recorded and the run goes on."""
        result: dict[str, Any] = {"status": "running"}
        self.report[name] = result
        if self.left() < needs_s:
            result.update(status="skipped", reason=f"time budget: {max(0.0, self.left()):.0f} s of {self.budget:.0f} s "
                                                  f"left, the section needs about {needs_s:.0f} s")
            self.save()
            print(f"[{self.elapsed():6.1f} s] {name}: skipped ({result['reason']})", flush=True)
            return
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)
        started = time.perf_counter()
        self.save()
        try:
            with self._deadline():
                run(self, result)
            result["status"] = "ok"
        except SectionSkipped as reason:
            result.update(status="skipped", reason=str(reason))
        except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
            result.update(status="error", error=f"{type(exc).__name__}: {exc}"[:2000],
                          traceback=traceback.format_exc()[-3000:])
        finally:
            result["seconds"] = round(time.perf_counter() - started, 2)
            if self.device.type == "cuda":
                with contextlib.suppress(Exception):
                    result["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    torch.cuda.reset_peak_memory_stats()
                    torch.cuda.empty_cache()
            self.save()
        print(f"[{self.elapsed():6.1f} s] {name}: {result['status']} in {result['seconds']} s"
              + (f" ({result['error']})" if result["status"] == "error" else ""), flush=True)

    @contextlib.contextmanager
    def _deadline(self) -> Iterator[None]:
        """Raise BudgetExceeded in the main thread once the budget is spent (SIGALRM; POSIX main thread)."""
        if not hasattr(signal, "SIGALRM") or self.left() <= 0:
            yield
            return

        def expired(signum: int, frame: Any) -> None:
            raise BudgetExceeded(f"the time budget of {self.budget:.0f} s ran out during this section")

        previous = signal.signal(signal.SIGALRM, expired)
        signal.setitimer(signal.ITIMER_REAL, max(0.5, self.left()))
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


MACHINE_PATH = re.compile(r"(?<![\w.:/<>-])/[A-Za-z_][\w.+-]*(?:/[^\s'\",:)]*)?")  # /abs/path, not "clips/s"


def _short_path(match: re.Match[str]) -> str:
    """An absolute path as what identifies it without the machine: the part after site-/dist-packages, else
    its file name (tracebacks stay readable)."""
    path = match.group(0)
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            return "<site>/" + path.split(marker, 1)[1]
    return f"<path:{path.rsplit('/', 1)[-1]}>"


def sanitise(value: Any, replacements: dict[str, str]) -> Any:
    """`value` with the work folder and the repository written as placeholders and other absolute paths
    shortened (see _short_path), so a report names no machine's folders (tests/test_code_health.py checks
    reports/)."""
    if isinstance(value, str):
        for old, new in sorted(replacements.items(), key=lambda kv: -len(kv[0])):
            value = value.replace(old, new)
        return MACHINE_PATH.sub(_short_path, value)
    if isinstance(value, dict):
        return {sanitise(k, replacements): sanitise(v, replacements) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [sanitise(v, replacements) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and which optional packages this run could import (what decides the fallbacks)."""
    import torchvision

    def present(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    info: dict[str, Any] = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "shm_gib": (round(shutil.disk_usage("/dev/shm").total / 2**30, 1) if Path("/dev/shm").is_dir() else None),
        "importable": {m: present(m) for m in ("numpy", "pandas", "yaml", "tqdm", "faiss", "scipy", "sklearn", "cv2",
                                                "av", "mlflow")},
    }
    if info["importable"]["faiss"]:
        with contextlib.suppress(Exception):
            import faiss

            info["faiss"] = faiss.__version__
            info["faiss_gpus"] = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), gpu_capability=f"{props.major}.{props.minor}",
                    gpu_count=torch.cuda.device_count())
    return info
