"""GPU bench: every CUDA path of slic measured and run once, in ONE command of about 8 minutes.

A GPU machine is lent now and then for about 15 minutes in all, with no network and at most 64 MiB of
files carried to it, so this script is the whole visit: it writes its own data, runs each section
within a time budget and brings back one JSON file, written again after every section (a timeout still
leaves what was measured). Each section catches its own failure (`"status": "error"` with the error and
the end of its traceback) and the next one runs; once the budget (`--budget`, 420 s on a GPU) is spent
the remaining sections are recorded as `skipped`.

Sections, in the order they run:

* ``pretrain_throughput`` (item a): the paper's configuration (presets/paper_ucf101.yaml:
  r3d_18_reference, 16 x 128 x 128, SGD, triplet + temporal term; bf16 autocast, channels_last_3d) at
  batch 32, 64 and 128 triplets (3 clips each: anchor, positive, second view). `model`: clips/s of
  `slic.pretrain.train_one_epoch` fed batches already on the GPU (the training step alone: forward,
  loss, backward, SGD). `end_to_end`: clips/s and data-wait fraction of the same step fed by the real
  loader (`PretrainClips` reading and decoding frame shards of 240 x 320 JPEGs, the preset's
  extract.short_side, in CPU workers, no frame cache). MFU = clips/s x FLOPs per clip / the GPU's
  dense bf16 peak; FLOPs per clip (forward + backward) are counted by torch's FlopCounterMode on one
  step, not assumed. Why: is the paper's run limited by the model or by the loader on this GPU?
* ``stage_smoke`` (item f): every GPU stage once, on CUDA, on a small synthetic frame-shard dataset
  this script writes, with the paper preset's values and small epochs: flow (TV-L1 at OpenCV's
  defaults), pretrain (2 epochs, flow view on), pretrain with gpu_decode (1 epoch, RGB), embed, evaluate, linear_probe (1 epoch), finetune
  (1 epoch, pretrained and scratch). The stage functions are called directly without MLflow. Where
  scipy / scikit-learn / faiss are missing, slic.torch_clustering stands in for the clustering pieces
  (named under `substitutes`).
* ``gpu_data_path`` (item b): the JPEG frames of a batch decoded on the GPU in one batched call and
  each clip's augmentation draws applied there (`slic.data.gpu_clips.clip_batch`) against the
  CPU-worker loader (decode + `apply_draw` in DataLoader workers) at the same batch; and how far the
  two paths' clips differ for the same draws (nvJPEG against libjpeg-turbo).
* ``tvl1`` (item e): `slic.tvl1.tvl1_torch` on CUDA, pairs/s at OpenCV's defaults (the paper's) and the
  CPU stage's settings; end-point error against OpenCV on bench/flow.py's real clips when
  `--reference` brings their frames and OpenCV's flow (made by bench/gpu_wheelhouse.py where OpenCV
  and the videos are), and against tvl1_torch on the CPU for the same pairs.
* ``clustering`` (item c): FINCH partition 0 and k-means (k 1000) on 100k and 1M clustered 128-d
  vectors on the GPU (`slic.torch_clustering`: chunked matmul top-2 / assignment), seconds; and
  whether the partition is the CPU path's (slic.clustering on faiss) on a 50k subset (adjusted Rand
  index; FINCH should give 1.0, k-means is compared with the same initialisation on the CPU).
* ``search`` (item d): exact search (bench/search.py's `flat` kind) on the GPU at 100k and 1M
  vectors, 10k queries, k 10: queries/s and agreement with faiss's exact CPU search. IVF on the GPU
  needs faiss-gpu, which is not carried; faiss-cpu's IVF-Flat at 1M on this machine's CPU is given
  beside it.
* ``pretrain_throughput_compiled`` (item a, compile on): the `model` rows again with torch.compile,
  last because compiling takes a minute or more per batch size; skipped when the budget is short.

Without CUDA (or with `--quick`) the same code runs at tiny sizes on the CPU in under a minute
(tests/test_bench_gpu.py runs it, so the script cannot rot).

On the GPU machine, one command (it installs the carried wheels into a venv over the machine's own
torch, then runs this script; `make gpu-wheelhouse` prepares .gpu-wheelhouse/ beforehand):

    bash bench/gpu_run.sh                # writes $OUT/gpu.json (reports/bench/gpu.json without $OUT) and gpu.log

What comes back: gpu.json with `device`, `gpu_name`, `peak_bf16_tflops` (from a small table of GPU
names; null when unknown), `environment` (versions, which optional packages were importable) and one
object per section above. Here: ``python bench/gpu.py [--quick] [--out PATH] [--budget S]``.
A second call on the same machine can run only what the first skipped (``--sections search ...``); then
``python bench/gpu.py --merge first.json second.json --out reports/bench/gpu.json`` keeps one report.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "reports" / "bench" / "gpu.json"
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
    frame_hw: tuple[int, int] = (240, 320)     # the throughput data: the preset's extract.short_side 240
    shard_videos: int = 64
    shard_frames: int = 48
    e2e_samples: int = 1536                    # triplets per measured end-to-end run (after every worker's first batch)
    e2e_min_steps: int = 6
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


FULL = Profile(name="full", workers=max(1, min(15, (os.cpu_count() or 2) - 1)))
QUICK = Profile(
    name="quick", backbone="r3d_18_tiny", clip_len=4, size=16, batches=(4,), warmup_steps=1, model_steps=2,
    compile=False, frame_hw=(24, 32), shard_videos=8, shard_frames=12, e2e_samples=8, e2e_min_steps=2, workers=1,
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
    })


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


# ----------------------------------------------------------------------------- synthetic frame shards


def synthetic_video(rng: np.random.Generator, label: int, classes: int, frames: int, height: int,
                    width: int) -> np.ndarray:
    """(frames, H, W, 3) uint8: a smooth random backdrop and a striped square moving in its class's direction."""
    coarse = rng.uniform(40, 200, size=(4, 5, 3)).astype(np.float32)
    ys, xs = np.linspace(0, 3, height, dtype=np.float32), np.linspace(0, 4, width, dtype=np.float32)
    y0, x0 = np.minimum(ys.astype(int), 2), np.minimum(xs.astype(int), 3)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    backdrop = top * (1 - fy) + bottom * fy
    angle = 2 * np.pi * label / classes + rng.normal(0, 0.1)
    speed = rng.uniform(0.6, 1.2) * max(1.0, min(height, width) / 48)
    side = max(4, min(height, width) // 4)
    colours = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    noise = rng.normal(0, 3, (3, height, width, 3)).astype(np.float32)  # cycled: the grain changes every frame
    rows, cols = np.arange(height), np.arange(width)
    video = np.empty((frames, height, width, 3), np.uint8)
    for t in range(frames):
        py, px = (cy + t * speed * np.sin(angle)) % height, (cx + t * speed * np.cos(angle)) % width
        dy = (rows - py + height / 2) % height - height / 2
        dx = (cols - px + width / 2) % width - width / 2
        inside = (np.abs(dy) < side / 2)[:, None] & (np.abs(dx) < side / 2)[None, :]
        stripes = (dy[:, None] + dx[None, :]) // 3 % 2 == 0
        image = backdrop + noise[t % 3]
        image[inside] = colours[stripes[inside].astype(int)]
        video[t] = np.clip(image, 0, 255).astype(np.uint8)
    return video


def encode_video(frames: np.ndarray, quality: int = 90) -> list[bytes]:
    """(T, H, W, 3) uint8 -> baseline JPEG bytes per frame (Pillow, which torchvision brings; torchvision's own
    encoder as the fallback)."""
    import io

    try:
        from PIL import Image
    except ImportError:
        import warnings

        from torchvision.io import encode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return [encode_jpeg(torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1).contiguous(),
                                quality=quality).numpy().tobytes() for f in frames]
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        out.append(buffer.getvalue())
    return out


def write_dataset(root: Path, *, classes: int, per_class: int, frames: int, hw: tuple[int, int], seed: int,
                  splits: tuple[int, int, int] | None = None) -> dict[str, Any]:
    """Frame shards of a synthetic dataset as `extract` leaves them: <root>/frames/<class>/<video>.shard,
    frames/index.csv and a validated manifest (manifests/validated.csv) with train / val / test splits.

    `splits` = videos per class in (train, val, test); default: all train.
    """
    import pandas as pd

    from slic.data.frames import INDEX_NAME, ShardReader, write_shard

    from concurrent.futures import ThreadPoolExecutor

    frames_dir, manifest = root / "frames", root / "manifests" / "validated.csv"
    train, val, test = splits or (per_class, 0, 0)

    def one(label: int, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
        name = f"Motion{label}"
        split = "train" if k < train else "val" if k < train + val else "test"
        video_id = f"{name}/v_{name}_g{k + 1:02d}_c01"
        jpegs = encode_video(synthetic_video(np.random.default_rng([seed, label, k]), label, classes, frames, *hw))
        shard = frames_dir / f"{video_id}.shard"
        size = write_shard(shard, jpegs, {"video_id": video_id, "height": hw[0], "width": hw[1], "fps": 25.0})
        entry = {"video_id": video_id, "shard": f"{video_id}.shard", "frames": frames, "height": hw[0],
                 "width": hw[1], "fps": 25.0, "bytes": size, "sha256": ShardReader.open(shard).header["content_sha256"]}
        row = {"video_id": video_id, "path": f"{video_id}.avi", "class": name, "label": label, "split": split,
               "group": f"{k + 1:02d}", "frames": frames, "fps": 25.0, "width": hw[1], "height": hw[0],
               "duration": frames / 25.0, "excluded": ""}
        return entry, row

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        done = list(pool.map(lambda lk: one(*lk), [(label, k) for label in range(classes) for k in range(per_class)]))
    index, rows = [d[0] for d in done], [d[1] for d in done]
    pd.DataFrame(index).to_csv(frames_dir / INDEX_NAME, index=False)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return {"root": root, "frames": frames_dir, "manifest": manifest, "videos": len(rows),
            "bytes": int(sum(r["bytes"] for r in index))}


def setup(bench: Bench, out: dict[str, Any]) -> None:
    """Write the two synthetic datasets: large frames for the loaders, a split dataset for the stage smoke."""
    p = bench.profile
    started = time.perf_counter()
    shards = write_dataset(bench.work / "throughput", classes=8, per_class=p.shard_videos // 8, frames=p.shard_frames,
                           hw=p.frame_hw, seed=11)
    out["throughput_data"] = {"videos": shards["videos"], "frames": p.shard_frames, "height_width": list(p.frame_hw),
                              "mib": round(shards["bytes"] / 2**20, 1),
                              "seconds": round(time.perf_counter() - started, 1)}
    bench.data["throughput"] = shards
    n_val = n_test = max(1, p.smoke_per_class // 7)
    smoke = write_dataset(bench.work / "smoke", classes=p.smoke_classes, per_class=p.smoke_per_class,
                          frames=p.smoke_frames, hw=p.smoke_hw, seed=5,
                          splits=(p.smoke_per_class - n_val - n_test, n_val, n_test))
    out["smoke_data"] = {"videos": smoke["videos"], "classes": p.smoke_classes, "frames": p.smoke_frames,
                         "height_width": list(p.smoke_hw),
                         "per_class_train_val_test": [p.smoke_per_class - n_val - n_test, n_val, n_test]}
    bench.data["smoke"] = smoke


def preset_config(bench: Bench, overrides: dict[str, dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
    """slic.config.Config: the paper preset over slic's defaults, then `overrides`, checked by slic.config.load."""
    import yaml

    from slic.config import load
    from slic.presets import load_preset

    values = {section: dict(keys) for section, keys in load_preset(PRESET).items()}
    for section, keys in overrides.items():
        values.setdefault(section, {}).update(keys)
    path = bench.work / f"params-{len(list(bench.work.glob('params-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return load(path), values


def throughput_videos(bench: Bench, cfg: Any, entries: int) -> list[Any]:
    """`entries` training samples over the throughput shards (each shard listed several times, own ids)."""
    from slic.data.clips import load_videos

    data = bench.data["throughput"]
    base = load_videos(data["manifest"], data["frames"], splits=["train"], min_frames=2 * cfg.clip_len,
                       frame_step=cfg.frame_step)
    return [replace(base[i % len(base)], video_id=f"{base[i % len(base)].video_id}#{i // len(base)}")
            for i in range(max(entries, len(base)))]


# ----------------------------------------------------------------------------- a: pretraining throughput


def flops_per_clip(cfg: Any) -> dict[str, float]:
    """FLOPs of one clip through the encoder, forward and forward + backward, counted by FlopCounterMode
    on the meta device (shapes only, nothing computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from slic.models import to_device
    from slic.pretrain import build_encoder

    meta = torch.device("meta")
    model = to_device(build_encoder(cfg), meta)
    clips = torch.zeros(2, 3, cfg.clip_len, cfg.size, cfg.size, device=meta)
    with FlopCounterMode(display=False) as counter:
        model(clips).float().pow(2).mean().backward()
    both = counter.get_total_flops() / 2
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(clips)
    return {"forward_backward": float(both), "forward": float(counter.get_total_flops() / 2)}


def paper_pretrain_cfg(bench: Bench, **changes: Any) -> Any:
    """The preset's pretrain section at this profile's model and clip size."""
    config, _ = preset_config(bench, {})
    p = bench.profile
    return replace(config.pretrain, backbone=p.backbone, clip_len=p.clip_len, size=p.size, frame_cache_mb=0,
                   **changes)


def model_rate(bench: Bench, cfg: Any, batch: int, compiled: bool) -> dict[str, Any]:
    """clips/s of train_one_epoch on in-memory batches: the training step without data loading."""
    from slic.distributed import World
    from slic.models import to_device
    from slic.pretrain import build_encoder, build_optimizer, train_one_epoch

    device = bench.device
    world = World(0, 1, 0, device)
    model = to_device(build_encoder(cfg), device)
    optimizer = build_optimizer(model, cfg)
    trained = torch.compile(model) if compiled else model
    shape = (batch, 3, cfg.clip_len, cfg.size, cfg.size)
    generator = torch.Generator(device=device).manual_seed(0)
    views = [torch.randn(shape, device=device, generator=generator).contiguous(memory_format=torch.channels_last_3d)
             for _ in range(3)]
    labels = torch.randint(0, max(2, batch // 4), (batch,), device=device, generator=generator)
    batch_tuple = (views[0], views[1], views[2], labels, torch.arange(batch))
    started = time.perf_counter()
    train_one_epoch(trained, [batch_tuple] * bench.profile.warmup_steps, optimizer, cfg, world, 0)
    bench.sync()
    warm = time.perf_counter() - started
    metrics = train_one_epoch(trained, [batch_tuple] * bench.profile.model_steps, optimizer, cfg, world, 1)
    bench.sync()
    del model, trained, optimizer, views
    return {"clips_per_s": round(metrics["clips_per_s"], 1), "steps": bench.profile.model_steps,
            "warmup_s": round(warm, 2), "loss": round(float(metrics.get("loss", float("nan"))), 4)}


def end_to_end_rate(bench: Bench, cfg: Any, batch: int) -> dict[str, Any]:
    """clips/s and data-wait fraction of train_one_epoch fed by the real loader (PretrainClips on shards).

    Steady state: the steps after every worker has delivered its first batch, from one long epoch, so all
    workers stay busy (a short epoch would leave most of them idle: a batch is one worker's job).
    """
    import itertools

    from torch.utils.data import DataLoader

    from slic.data.clips import PretrainClips, ShardCache
    from slic.distributed import World
    from slic.models import to_device
    from slic.pretrain import augmentation_of, build_encoder, build_optimizer, train_one_epoch

    p, device = bench.profile, bench.device
    warm = max(1, p.workers) + 1
    steps = max(p.e2e_min_steps, -(-p.e2e_samples // batch))
    videos = throughput_videos(bench, cfg, batch * (warm + steps + 2 * max(1, p.workers) + 1))
    dataset = PretrainClips(videos, clip_len=cfg.clip_len, size=cfg.size, p_intra=cfg.p_intra,
                            random_anchor=cfg.random_anchor, seed=cfg.seed, augmentation=augmentation_of(cfg),
                            anchor_view=cfg.temporal_weight > 0, cache=ShardCache(0))
    dataset.set_labels(np.arange(len(videos)) % 16)
    model = to_device(build_encoder(cfg), device)
    optimizer = build_optimizer(model, cfg)
    world = World(0, 1, 0, device)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=p.workers, drop_last=True,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                        timeout=300 if p.workers > 0 else 0)
    iterator = iter(loader)
    warmup = train_one_epoch(model, itertools.islice(iterator, warm), optimizer, cfg, world, 0)
    measured = train_one_epoch(model, itertools.islice(iterator, steps), optimizer, cfg, world, 1)
    bench.sync()
    del iterator, loader
    return {"clips_per_s": round(measured["clips_per_s"], 1),
            "data_wait_fraction": round(measured["data_wait_fraction"], 3),
            "steps": int(measured["steps"]), "warmup_steps": int(warmup["steps"]),
            "warmup_s": round(warmup["epoch_seconds"], 1), "workers": p.workers}


def pretrain_throughput(bench: Bench, out: dict[str, Any], *, compiled: bool = False) -> None:
    """Item a: model-alone and end-to-end clips/s and MFU at each batch size (compile on or off)."""
    cfg = paper_pretrain_cfg(bench)
    flops = flops_per_clip(cfg)
    peak = bench.report.get("peak_bf16_tflops")
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # fixed shapes here: let cuDNN pick its fastest 3-D convolutions
    try:
        _throughput_rows(bench, out, cfg, flops, peak, compiled)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _throughput_rows(bench: Bench, out: dict[str, Any], cfg: Any, flops: dict[str, float], peak: float | None,
                     compiled: bool) -> None:
    p = bench.profile
    out.update(config={"backbone": cfg.backbone, "clip_len": cfg.clip_len, "size": cfg.size,
                       "hidden_dim": cfg.hidden_dim,
                       "optimizer": cfg.optimizer, "objective": cfg.objective, "mining": cfg.mining,
                       "temporal_weight": cfg.temporal_weight, "bf16_autocast": bench.device.type == "cuda",
                       "channels_last_3d": True, "compile": compiled, "cudnn_benchmark": True,
                       "clips_per_triplet": 3 if cfg.temporal_weight > 0 else 2},
               flops_per_clip=flops, gflop_per_clip_forward_backward=round(flops["forward_backward"] / 1e9, 1),
               peak_bf16_tflops=peak,
               note=("batch = triplets per step; each step forwards anchor, positive and second view (3 clips per "
                     f"triplet), clips/s counts all of them. end_to_end: PretrainClips over the setup's "
                     f"{p.frame_hw[0]}x{p.frame_hw[1]} JPEG shards, no frame cache, flow view off (RGB clips), "
                     f"{p.workers} DataLoader workers."), rows=[])
    for batch in p.batches:
        if bench.left() < (90 if compiled else 20):
            out["rows"].append({"batch": batch, "status": "skipped", "reason": "time budget"})
            continue
        row: dict[str, Any] = {"batch": batch}
        out["rows"].append(row)
        for name, measure in (("model", lambda: model_rate(bench, cfg, batch, compiled)),
                              *(() if compiled else (("end_to_end", lambda: end_to_end_rate(bench, cfg, batch)),))):
            try:
                row[name] = measure()
                if peak and bench.device.type == "cuda":
                    row[name]["mfu"] = round(row[name]["clips_per_s"] * flops["forward_backward"] / (peak * 1e12), 4)
            except BudgetExceeded:
                raise
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at the largest batch: the others stay
                row[name] = {"error": f"{type(exc).__name__}: {exc}"[:1000]}
            finally:
                if bench.device.type == "cuda":
                    torch.cuda.empty_cache()
            bench.save()
        model, end_to_end = row.get("model", {}), row.get("end_to_end", {})
        if "clips_per_s" in model and "clips_per_s" in end_to_end:
            row["end_to_end_share_of_model"] = round(row["end_to_end"]["clips_per_s"] / row["model"]["clips_per_s"], 3)


def pretrain_throughput_compiled(bench: Bench, out: dict[str, Any]) -> None:
    if not bench.profile.compile:
        raise SectionSkipped("torch.compile is measured on CUDA only (the full profile)")
    pretrain_throughput(bench, out, compiled=True)


# ------------------------------------------------------------------------------------ b: GPU data path


class CpuClips(Dataset):
    """One augmented clip per item, decoded and augmented on the CPU: PretrainClips' per-clip work."""

    def __init__(self, requests: list[Any], size: int) -> None:
        from slic.data.clips import ShardCache

        self.requests, self.size, self.cache = requests, size, ShardCache(0)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int) -> torch.Tensor:
        from slic.data.augment import apply_draw

        video, start, length, draw = self.requests[index]
        return apply_draw(torch.from_numpy(self.cache.window(video, start, length)), draw, self.size)


def clip_requests(videos: list[Any], count: int, clip_len: int, hw: tuple[int, int], seed: int) -> list[Any]:
    """`count` (video, start, length, draw) requests with the paper's augmentation draws."""
    from slic.data.augment import Augmentation, draw_augmentation

    rng = np.random.default_rng(seed)
    requests = []
    for k in range(count):
        video = videos[k % len(videos)]
        start = int(rng.integers(0, video.frames - clip_len + 1))
        requests.append((video, start, clip_len, draw_augmentation(rng, hw[0], hw[1], Augmentation())))
    return requests


def gpu_data_path(bench: Bench, out: dict[str, Any]) -> None:
    """Item b: JPEG decode + augmentation on the device against CPU loader workers, at the same batch."""
    from torch.utils.data import DataLoader

    from slic.data.augment import apply_draw
    from slic.data.clips import ShardCache
    from slic.data.gpu_clips import clip_batch, decode_on

    p, device = bench.profile, bench.device
    cfg = paper_pretrain_cfg(bench)
    videos = throughput_videos(bench, cfg, 1)
    out.update(clip={"frames": cfg.clip_len, "size": cfg.size, "source_height_width": list(p.frame_hw),
                     "augmentation": "paper strengths (slic.data.augment.Augmentation())"},
               cpu_workers=p.workers, rows=[])
    # Same draws, both paths: how far apart the clips are (nvJPEG vs libjpeg-turbo; identical on the CPU).
    check = clip_requests(videos, 4, cfg.clip_len, p.frame_hw, seed=1)
    on_device = clip_batch(check, size=cfg.size, device=device).float().cpu()
    cache = ShardCache(0)
    on_cpu = torch.stack([apply_draw(torch.from_numpy(cache.window(v, s, n)), d, cfg.size) for v, s, n, d in check])
    difference = (on_device - on_cpu).abs()
    raw_device = torch.stack(decode_on(ShardCache().jpegs(check[0][0], check[0][1], check[0][2]), device)).cpu()
    raw_cpu = torch.from_numpy(cache.window(check[0][0], check[0][1], check[0][2]))
    out["same_draws_difference"] = {
        "normalised_max_abs": round(float(difference.max()), 4),
        "normalised_mean_abs": round(float(difference.mean()), 5),
        "decoded_uint8_max_abs": int((raw_device.int() - raw_cpu.int()).abs().max()),
        "decoded_uint8_mean_abs": round(float((raw_device.int() - raw_cpu.int()).abs().float().mean()), 4),
        "decoded_identical": bool(torch.equal(raw_device, raw_cpu))}
    bench.save()
    for batch in p.data_batches:
        if bench.left() < 15:
            out["rows"].append({"batch": batch, "status": "skipped", "reason": "time budget"})
            continue
        rounds = max(p.data_min_rounds, -(-p.data_clips // batch))
        warm = max(1, p.workers) + 1
        requests = clip_requests(videos, batch * (warm + rounds + 2 * max(1, p.workers)), cfg.clip_len, p.frame_hw,
                                 seed=batch)
        windows = ShardCache()
        row: dict[str, Any] = {"batch": batch, "batches_timed": rounds}
        clip_batch(requests[:batch], size=cfg.size, device=device, windows=windows)  # warm-up: decoder, kernels
        bench.sync()
        started = time.perf_counter()
        for r in range(1, rounds + 1):
            clips = clip_batch(requests[r * batch:(r + 1) * batch], size=cfg.size, device=device, windows=windows)
        bench.sync()
        seconds = time.perf_counter() - started
        # Where the time goes, on a few of the same batches: file reads (main process), decode, augmentation.
        phases, timed = {"read": 0.0, "decode": 0.0, "augment": 0.0}, min(rounds, 4)
        for r in range(1, timed + 1):
            part = requests[r * batch:(r + 1) * batch]
            tick = time.perf_counter()
            jpegs = [j for v, s, n, _ in part for j in windows.jpegs(v, s, n)]
            phases["read"] += time.perf_counter() - tick
            tick = time.perf_counter()
            frames = decode_on(jpegs, device)
            bench.sync()
            phases["decode"] += time.perf_counter() - tick
            tick = time.perf_counter()
            for k, (_, _, _, draw) in enumerate(part):
                apply_draw(torch.stack(frames[k * cfg.clip_len:(k + 1) * cfg.clip_len]), draw, cfg.size)
            bench.sync()
            phases["augment"] += time.perf_counter() - tick
        row["gpu_path"] = {"clips_per_s": round(batch * rounds / seconds, 1),
                           **{f"{k}_ms_per_batch": round(v / timed * 1000, 2) for k, v in phases.items()},
                           "output_shape": list(clips.shape), "device": str(clips.device),
                           "how": "slic.data.gpu_clips.clip_batch in the main process, one batch after another "
                                  "(file reads not overlapped with the device work)"}
        loader = DataLoader(CpuClips(requests, cfg.size), batch_size=batch, num_workers=p.workers,
                            pin_memory=device.type == "cuda", persistent_workers=False,
                            timeout=300 if p.workers > 0 else 0)
        iterator = iter(loader)
        for _ in range(warm):  # every worker's first batch: start-up is not throughput
            next(iterator)
        started = time.perf_counter()
        for _ in range(rounds):
            next(iterator).to(device, non_blocking=True)
        bench.sync()
        seconds = time.perf_counter() - started
        del iterator, loader
        row["cpu_workers"] = {"clips_per_s": round(batch * rounds / seconds, 1), "workers": p.workers}
        row["gpu_over_cpu"] = round(row["gpu_path"]["clips_per_s"] / row["cpu_workers"]["clips_per_s"], 2)
        out["rows"].append(row)
        bench.save()


# --------------------------------------------------------------------------------- c: clustering, d: search


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


def clustering(bench: Bench, out: dict[str, Any]) -> None:
    """Item c: FINCH partition 0 and k-means on the device; the same partition as the CPU path on a subset."""
    from slic import torch_clustering as tc

    p, device = bench.profile, bench.device
    faiss = faiss_or_none()
    out.update(data={"dim": 128, "centres": p.centres, "noise_std": 0.06, "metric": "cosine (L2-normalised)"},
               implementation="slic.torch_clustering on the device: exact top-2 by chunked float32 matmul, then "
                              "slic.clustering's duplicate tie-break and components; k-means: Lloyd, chunked "
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


# ------------------------------------------------------------------------------------------------ e: TV-L1


def flow_pairs(bench: Bench) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray] | None, dict[str, Any]]:
    """Grey frame pairs (grouped by size) and OpenCV's flow for them when --reference brings it; else pairs of
    the synthetic smoke shards without a reference."""
    if bench.reference is not None and (bench.reference / "flow_pairs.npz").is_file():
        data = np.load(bench.reference / "flow_pairs.npz")
        meta = json.loads((bench.reference / "flow_pairs.json").read_text())
        groups = meta["groups"]
        firsts = [data[f"i0_{g}"] for g in range(groups)]
        seconds = [data[f"i1_{g}"] for g in range(groups)]
        flows = [data[f"flow_{g}"].astype(np.float32) for g in range(groups)]
        return firsts, seconds, flows, {"reference": "OpenCV's flow at its defaults, carried by --reference", **meta}
    from slic.data.frames import ShardReader
    from slic.tvl1 import to_grey

    data = bench.data["smoke"]
    shards = sorted(Path(data["frames"]).rglob("*.shard"))[:4]
    greys = [to_grey(ShardReader.open(s).read_window(0, min(9, bench.profile.smoke_frames))) for s in shards]
    return ([np.concatenate([g[:-1] for g in greys])], [np.concatenate([g[1:] for g in greys])], None,
            {"source": "the synthetic smoke shards (no --reference: bench clips and OpenCV's flow not carried)",
             "reference": None, "pairs": int(sum(len(g) - 1 for g in greys))})


def epe(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    error = np.concatenate([np.sqrt(((x - y) ** 2).sum(-1)).ravel() for x, y in zip(a, b)])
    return {"mean": round(float(error.mean()), 4), "median": round(float(np.median(error)), 4),
            "p99": round(float(np.quantile(error, 0.99)), 4)}


def tvl1(bench: Bench, out: dict[str, Any]) -> None:
    """Item e: tvl1_torch on the device: pairs/s, EPE against OpenCV (carried) and against tvl1_torch on the CPU."""
    from slic.config import FlowConfig
    from slic.tvl1 import TVL1Params, to_grey, tvl1_torch

    p, device = bench.profile, bench.device
    firsts, seconds, reference, meta = flow_pairs(bench)
    settings = {"opencv_defaults": TVL1Params(), "stage_cpu_default": FlowConfig().tvl1()}
    out.update(inputs=meta, settings={k: vars(v) for k, v in settings.items()},
               epe_unit="px, sqrt(du^2 + dv^2) per pixel over all pairs", rows=[])
    pairs = int(sum(len(f) for f in firsts))
    for name, params in settings.items():
        if bench.left() < 20:
            out["rows"].append({"setting": name, "status": "skipped", "reason": "time budget"})
            continue
        tvl1_torch(firsts[0][:2], seconds[0][:2], params, device=device)  # warm-up
        bench.sync()
        started = time.perf_counter()
        flows = [np.concatenate([tvl1_torch(a[i:i + p.flow_batch], b[i:i + p.flow_batch], params, device=device)
                                 for i in range(0, len(a), p.flow_batch)]) for a, b in zip(firsts, seconds)]
        wall = time.perf_counter() - started
        row: dict[str, Any] = {"setting": name, "device": str(device), "pairs": pairs,
                               "pairs_per_s": round(pairs / wall, 1), "batch": p.flow_batch,
                               "frame_sizes": sorted({f"{f.shape[1]}x{f.shape[2]}" for f in firsts})}
        out["rows"].append(row)
        if reference is not None and name == "opencv_defaults":
            row["epe_vs_opencv"] = epe(flows, reference)
            row["opencv_reference"] = "cv2.optflow.DualTVL1OpticalFlow at its defaults, computed where it is installed"
        count = min(p.flow_cpu_pairs, len(firsts[0]))
        cpu = tvl1_torch(firsts[0][:count], seconds[0][:count], params, device="cpu")
        row["epe_vs_torch_cpu"] = {**epe([flows[0][:count]], [cpu]), "pairs": count}
        if reference is not None and name == "opencv_defaults":
            row["epe_torch_cpu_vs_opencv"] = {**epe([cpu], [reference[0][:count]]), "pairs": count}
        bench.save()
    # Throughput at the preset's frame size (short side 240), one big batch: what the flow stage gets.
    if bench.left() > 30 and "throughput" in bench.data:
        from slic.data.frames import ShardReader

        shards = sorted(Path(bench.data["throughput"]["frames"]).rglob("*.shard"))
        greys = []
        while sum(len(g) - 1 for g in greys) < p.flow_batch and len(greys) < len(shards):
            greys.append(to_grey(ShardReader.open(shards[len(greys)]).read_window(0, min(17, p.shard_frames))))
        a = np.concatenate([g[:-1] for g in greys])[:p.flow_batch]
        b = np.concatenate([g[1:] for g in greys])[:p.flow_batch]
        for name, params in settings.items():
            if bench.left() < 20:
                break
            bench.sync()
            started = time.perf_counter()
            tvl1_torch(a, b, params, device=device)
            wall = time.perf_counter() - started
            out["rows"].append({"setting": name, "device": str(device), "pairs": len(a), "batch": len(a),
                                "frame_sizes": [f"{a.shape[1]}x{a.shape[2]}"], "pairs_per_s": round(len(a) / wall, 1),
                                "inputs": f"the setup's {a.shape[1]}x{a.shape[2]} synthetic shards (full profile: "
                                          "short side 240, the preset's extract.short_side)"})
            bench.save()


# ------------------------------------------------------------------------------------ f: the stage smoke


@contextlib.contextmanager
def substitutes(record: list[str]) -> Iterator[None]:
    """Stand-ins from slic.torch_clustering for what this machine cannot import (scipy, sklearn, faiss),
    put into slic.clustering for the smoke and taken out after; each one used is named in `record`."""
    import slic.clustering as clustering
    from slic import torch_clustering as tc

    saved = {name: getattr(clustering, name) for name in
             ("components_of_neighbour_graph", "cluster_agreement", "cluster_pseudo_labels")}
    if importlib.util.find_spec("scipy") is None:
        clustering.components_of_neighbour_graph = tc.connected_components
        record.append("slic.clustering.components_of_neighbour_graph -> slic.torch_clustering.connected_components "
                      "(no scipy)")
    if importlib.util.find_spec("sklearn") is None:
        clustering.cluster_agreement = tc.cluster_agreement
        record.append("slic.clustering.cluster_agreement -> slic.torch_clustering.cluster_agreement (no scikit-learn)")
    if faiss_or_none() is None:
        def pseudo_labels(embeddings: np.ndarray, *, method: str, k: int = 1000, seed: int = 7, **_: Any) -> np.ndarray:
            if method == "finch":
                return tc.finch_partition0(embeddings)
            return tc.kmeans(embeddings, k, seed=seed)

        clustering.cluster_pseudo_labels = pseudo_labels
        record.append("slic.clustering.cluster_pseudo_labels -> slic.torch_clustering (no faiss)")
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(clustering, name, value)


def stage_smoke(bench: Bench, out: dict[str, Any]) -> None:
    """Item f: flow, pretrain, embed, evaluate, linear_probe and finetune once each on the device."""
    from slic.ablation import compute_flow, flow_view
    from slic.distributed import World
    from slic.embed import embed_dataset
    from slic.finetune_stages import run_finetune, run_linear_probe
    from slic.pretrain import pretrain
    from slic.retrieval import evaluate_embeddings

    p, device = bench.profile, bench.device
    data, work = bench.data["smoke"], bench.work / "smoke"
    manifest, frames = str(data["manifest"]), str(data["frames"])
    dev = "cuda" if device.type == "cuda" else "cpu"
    scaled = {
        "extract": {"manifest": manifest, "out": frames},
        "flow": {"manifest": manifest, "frames": frames, "out": str(work / "flow"), "device": dev, "batch_pairs": 4096,
                 "workers": 1},
        "pretrain": {"epochs": 2, "out": str(work / "models/pretrain"), "device": dev, "workers": min(8, p.workers)},
        "embed": {"checkpoint": str(work / "models/pretrain/best.pt"), "out": str(work / "embeddings.npz"),
                  "device": dev, "workers": min(8, p.workers)},
        "linear_probe": {"checkpoint": str(work / "models/pretrain/best.pt"), "epochs": 1, "device": dev,
                         "out": str(work / "models/linear_probe"), "workers": min(8, p.workers)},
        "finetune": {"checkpoint": str(work / "models/pretrain/best.pt"), "epochs": 1, "device": dev,
                     "out": str(work / "models/finetune"), "linear_probe_report": str(work / "linear_probe.json"),
                     "workers": min(8, p.workers)},
    }
    overrides = {s: {**scaled.get(s, {}), **p.smoke_overrides.get(s, {})} for s in {*scaled, *p.smoke_overrides}}
    config, values = preset_config(bench, overrides)
    world = World(0, 1, 0, device)
    used: list[str] = []
    out.update(preset=PRESET, scaled_keys={s: sorted(k for k in keys if k not in ("manifest", "out", "frames",
                                                                                   "checkpoint", "linear_probe_report"))
                                           for s, keys in overrides.items()},
               quick_overrides=p.smoke_overrides or None,
               effective={"pretrain": {k: v for k, v in values["pretrain"].items() if k != "out"}},
               substitutes=used, stages={})
    stages = out["stages"]

    def stage(name: str, run: Callable[[], dict[str, Any]]) -> None:
        started = time.perf_counter()
        try:
            stages[name] = {"status": "ok", **run()}
        except BudgetExceeded:
            stages[name] = {"status": "error", "error": "time budget ran out"}
            raise
        except Exception as exc:  # noqa: BLE001 - the next stages still run (those needing this one fail too)
            stages[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                            "traceback": traceback.format_exc()[-2000:]}
        stages[name]["seconds"] = round(time.perf_counter() - started, 2)
        bench.save()

    def flow() -> dict[str, Any]:
        report = compute_flow(replace(config, flow=replace(config.flow, fail_fast=True)), config.flow.out)
        return {k: report[k] for k in ("videos", "computed", "pairs_computed", "pairs_per_s", "device", "method")}

    def pretrain_stage() -> dict[str, Any]:
        with substitutes(used):
            report = pretrain(config.pretrain, manifest=manifest, frames_dir=frames, world=world, run=None,
                              flow=flow_view(config))
        keep = ("epochs", "best_epoch", "best_val_recall_at_1", "device", "cluster_rounds", "cluster_ami_first",
                "final_loss", "final_clips_per_s", "final_data_wait_fraction", "final_cluster_n_clusters",
                "flow_view_p", "objective", "mining", "train_videos")
        return {k: report[k] for k in keep if k in report}

    def pretrain_gpu_decode() -> dict[str, Any]:
        """pretrain.gpu_decode: the clips decoded (nvJPEG) and augmented in the training step; RGB only."""
        from dataclasses import replace

        cfg = replace(config.pretrain, gpu_decode=True, epochs=1, out=str(work / "models/pretrain_gpu_decode"))
        with substitutes(used):
            report = pretrain(cfg, manifest=manifest, frames_dir=frames, world=world, run=None, flow=None)
        keep = ("epochs", "device", "final_loss", "final_clips_per_s", "final_data_wait_fraction")
        return {k: report[k] for k in keep if k in report}

    def embed() -> dict[str, Any]:
        report = embed_dataset(config.embed, manifest=manifest, frames_dir=frames, world=world)
        return {k: report[k] for k in ("videos", "dim", "clips_per_video", "videos_per_s")}

    def evaluate() -> dict[str, Any]:
        cfg = config.evaluate
        report = evaluate_embeddings(config.embed.out, query_split=cfg.query_split, gallery_split=cfg.gallery_split,
                                     ks=cfg.ks)
        return {k: v for k, v in report.items() if k.startswith("recall@") or k in ("queries", "gallery")}

    def linear_probe() -> dict[str, Any]:
        report = run_linear_probe(config.linear_probe, manifest=manifest, frames_dir=frames)
        Path(config.finetune.linear_probe_report).write_text(json.dumps(report, default=str))
        return {k: report[k] for k in ("top1", "top5", "epochs", "device", "seconds", "test_views")}

    def finetune() -> dict[str, Any]:
        report = run_finetune(config.finetune, manifest=manifest, frames_dir=frames)
        return {init: {k: report[init][k] for k in ("top1", "top5", "epochs", "device", "seconds")}
                for init in ("pretrained", "scratch")}

    for name, run in (("flow", flow), ("pretrain", pretrain_stage), ("pretrain_gpu_decode", pretrain_gpu_decode),
                      ("embed", embed), ("evaluate", evaluate),
                      ("linear_probe", linear_probe), ("finetune", finetune)):
        stage(name, run)
    failed = [name for name, row in stages.items() if row["status"] != "ok"]
    if failed:
        raise RuntimeError(f"stage(s) failed: {', '.join(failed)}")


# ----------------------------------------------------------------------------------------------- main


CALL_KEYS = ("started_at", "budget_s", "total_s", "mode")


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from several calls on the same machine: each section from the last call that finished it.

    A GPU visit is short, so a second call often runs only the sections the first one skipped for time
    (``--sections``). Sections a later call ran with status "ok" replace the earlier ones; any other later
    section only fills one the earlier calls lack. `calls` keeps when each call ran and what it contributed.
    """
    if not reports:
        raise ValueError("merge_reports needs at least one report")
    devices = {(r.get("device"), r.get("gpu_name")) for r in reports}
    if len(devices) > 1:
        raise ValueError(f"the reports come from different devices {sorted(map(str, devices))}: merge only the "
                         "calls of one machine")
    merged: dict[str, Any] = {}
    source: dict[str, int] = {}  # section -> the call whose result is kept
    for index, report in enumerate(reports):
        for key, value in report.items():
            if not (isinstance(value, dict) and "status" in value):
                if key not in merged or key == "environment":
                    merged[key] = value
            elif key not in merged or (key != "setup" and value.get("status") == "ok"):
                merged[key], source[key] = value, index
    merged["calls"] = [{"call": index + 1, **{k: report.get(k) for k in CALL_KEYS},
                        "sections": [k for k, i in source.items() if i == index and k != "setup"]}
                       for index, report in enumerate(reports)]
    merged["total_s"] = round(sum(float(r.get("total_s") or 0.0) for r in reports), 1)
    merged["status"] = {k: v.get("status") for k, v in merged.items() if isinstance(v, dict) and "status" in v}
    return merged


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (automatic without CUDA)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole run; sections past it are skipped "
                             "(default 420 on a GPU, 300 quick)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="folder with flow_pairs.npz/.json (bench/gpu_wheelhouse.py reference) for the TV-L1 EPE")
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the synthetic data (default: a temporary one)")
    parser.add_argument("--keep-work", action="store_true")
    parser.add_argument("--sections", nargs="*", default=None, help="run only these sections (setup always runs)")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="REPORT",
                        help="run nothing: merge these reports of one machine's calls (later calls' finished "
                             "sections win) into --out")
    args = parser.parse_args(argv)
    if args.merge:
        missing = [str(path) for path in args.merge if not path.is_file()]
        if missing:
            parser.error(f"--merge: no report at {', '.join(missing)} (give the gpu.json of each call)")
        merged = merge_reports([json.loads(path.read_text()) for path in args.merge])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(merged, indent=2) + "\n")
        print(f"merged {len(args.merge)} reports into {args.out}: "
              + ", ".join(f"{k} {v}" for k, v in merged["status"].items()), flush=True)
        return merged

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    profile = QUICK if args.quick or not cuda else FULL
    budget = args.budget if args.budget is not None else (420.0 if profile is FULL else 300.0)
    work = args.work or Path(tempfile.mkdtemp(prefix="slic-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    reference = args.reference if args.reference and args.reference.is_dir() else None
    bench = Bench(args.out, budget, profile, device, work, reference)
    name = torch.cuda.get_device_name(0) if cuda else None
    bench.report.update(elapsed_s=0.0, device=str(device), gpu_name=name, peak_bf16_tflops=peak_bf16_tflops(name),
                        peak_source="dense bf16 tensor-core peak from a table by GPU name (bench/gpu.py "
                                    "PEAK_BF16_TFLOPS); null when the name is not in it",
                        mode=profile.name, quick_reason=(None if profile is FULL else
                                                         "--quick" if args.quick else "no CUDA device"),
                        budget_s=budget, started_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        reference=("given" if reference else "none"))
    try:
        bench.report["environment"] = environment(device)
    except Exception as exc:  # noqa: BLE001
        bench.report["environment"] = {"error": f"{type(exc).__name__}: {exc}"}
    sections: list[tuple[str, Callable[[Bench, dict[str, Any]], None], float]] = [
        ("pretrain_throughput", pretrain_throughput, 30), ("stage_smoke", stage_smoke, 30),
        ("gpu_data_path", gpu_data_path, 15), ("tvl1", tvl1, 15), ("clustering", clustering, 20),
        ("search", search, 20),
        ("pretrain_throughput_compiled", pretrain_throughput_compiled, 90 if profile.compile else 1)]
    try:
        bench.section("setup", setup, needs_s=1)
        for key, run, needs in sections:
            if args.sections is None or key in args.sections:
                bench.section(key, run, needs_s=needs)
    finally:
        bench.report["total_s"] = round(bench.elapsed(), 1)
        bench.report["status"] = {k: v.get("status") for k, v in bench.report.items()
                                  if isinstance(v, dict) and "status" in v}
        bench.save()
        if not args.keep_work and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"done in {bench.report['total_s']} s: " + ", ".join(f"{k} {v}" for k, v in bench.report["status"].items())
          + f"; wrote {args.out}", flush=True)
    return bench.report


if __name__ == "__main__":
    main()
