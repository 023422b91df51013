"""GPU bench: every CUDA path of slic measured and run once, in ONE command of about 8 minutes.

A GPU machine is lent now and then for about 15 minutes in all, with no network and at most 64 MiB of
files carried to it, so this script is the whole visit: it writes its own data, runs each section
within a time budget and brings back one JSON file, written again after every section (a timeout still
leaves what was measured). Each section catches its own failure (`"status": "error"` with the error and
the end of its traceback) and the next one runs; once the budget (`--budget`, 420 s on a GPU) is spent
the remaining sections are recorded as `skipped`.

Sections (described in the first run's order; they now run as: clustering, flow_stage, pretrain_throughput,
learning_at_scale, stage_smoke, tvl1, gpu_data_path, search, pretrain_throughput_compiled). The next visit's
plan, two calls that fit its 15 minutes with the machine's start (docs/gpu.md, "The next visit"):

    bash bench/gpu_run.sh --budget 300 --sections clustering flow_stage pretrain_throughput
    bash bench/gpu_run.sh --budget 330 --sections learning_at_scale stage_smoke

* ``pretrain_throughput`` (item a): the paper's configuration (presets/paper_ucf101.yaml:
  r3d_18_reference, 16 x 128 x 128, SGD, triplet + temporal term; bf16 autocast, channels_last_3d) at
  batch 32, 64 and 128 triplets (3 clips each: anchor, positive, second view). `model`: clips/s of
  `slic.pretrain.train_one_epoch` fed batches already on the GPU (the training step alone: forward,
  loss, backward, SGD). `end_to_end`: clips/s and data-wait fraction of the same step fed by the real
  loader (`PretrainClips` reading and decoding frame shards of 240 x 320 JPEGs, the preset's
  extract.short_side, in CPU workers, no frame cache). MFU = clips/s x FLOPs per clip / the GPU's
  dense bf16 peak; FLOPs per clip (forward + backward) are counted by torch's FlopCounterMode on one
  step, not assumed. Why: is the paper's run limited by the model or by the loader on this GPU?
  `end_to_end` compares the loaders side by side at batch 128 over at least 100 steps after warm-up
  (issue "GPU round two", item 1): `uint8` (pretrain's path: augmented uint8 clips, pinned, normalised
  on the device, the next batch prefetched on a side stream), `float32` (the first GPU run's path:
  normalised float32 clips copied in line), `gpu_decode` with prefetch, and a sweep of workers (15, 8,
  4); each row gives clips/s, data-wait share and its share of the model alone at that batch.
  `host_wait_each_step`: the model row at the largest batch again with the host waiting for the GPU
  before each step, as when the step read its loss terms as floats; its share of the sync-free row.
  `sync_check`: CUDA's count of synchronising calls (torch.cuda.set_sync_debug_mode) in training epochs
  of 1 and 3 steps; equal counts: the step waits for nothing. An end-to-end variant runs only while the
  budget holds 1.2x what the last one took.
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
  vectors on the GPU (`slic.torch_clustering`: chunked matmul top-2 / assignment), seconds; FINCH
  again with the similarity blocks on the tensor cores (`tensor_cores`: TF32 and bf16, a shortlist of
  16 per point rescored in float32), its seconds beside the bare GEMM's and its partition against the
  float32 one (identical, ARI); and
  whether the partition is the CPU path's (slic.clustering on faiss) on a 50k subset (adjusted Rand
  index; FINCH should give 1.0, k-means is compared with the same initialisation on the CPU).
* ``search`` (item d): exact search (bench/search.py's `flat` kind) on the GPU at 100k and 1M
  vectors, 10k queries, k 10: queries/s and agreement with faiss's exact CPU search. IVF on the GPU
  needs faiss-gpu, which is not carried; faiss-cpu's IVF-Flat at 1M on this machine's CPU is given
  beside it.
* ``flow_stage`` and ``learning_at_scale`` (issue "GPU round two", items 4 and 3; bench/gpu_parts/scale.py):
  the synthetic default made on the machine (rendered straight to frame shards: no PyAV there); the flow
  stage's pairs/s on its train videos at several batch_pairs; the modes (random_init, intra_video, slic,
  oracle, slic with per-video proxies) pretrained at 10x the CPU default's epochs at 64 px, clustering
  and validation every 8 epochs (30 rounds), one seed, test recall@k and cluster AMI per round, and their
  order beside the CPU default's; a mode the budget cuts short keeps its epochs done, val recall and AMI.
* ``pretrain_throughput_compiled`` (item a, compile on): the `model` rows again with torch.compile,
  then at batch 128 its `reduce-overhead` (CUDA graphs) and `max-autotune-no-cudagraphs` modes
  (`modes`); last because compiling takes a minute or more each; skipped when the budget is short.

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

This script parses the arguments, runs the sections in order and merges reports; the sections themselves
are in bench/gpu_parts/ (run: Profile, Bench, sanitise; shards; throughput; data_path; clustering_search;
tvl1; smoke; scale), which a GPU run carries with the working tree.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DEFAULT_OUT = ROOT / "reports" / "bench" / "gpu.json"

# The sections live in bench/gpu_parts/ (one module each); the names tests and callers use are kept here.
from bench.gpu_parts.clustering_search import clustering, search  # noqa: E402
from bench.gpu_parts.data_path import gpu_data_path  # noqa: E402
from bench.gpu_parts.run import (  # noqa: E402, F401
    FULL, PEAK_BF16_TFLOPS, PRESET, QUICK, Bench, BudgetExceeded, Profile, SectionSkipped, environment,
    peak_bf16_tflops, sanitise)
from bench.gpu_parts.scale import flow_stage, learning_at_scale  # noqa: E402
from bench.gpu_parts.shards import setup  # noqa: E402
from bench.gpu_parts.smoke import stage_smoke  # noqa: E402
from bench.gpu_parts.throughput import pretrain_throughput, pretrain_throughput_compiled  # noqa: E402
from bench.gpu_parts.tvl1 import tvl1  # noqa: E402


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
        # The issue "GPU round two" first: its short items (2 and 4) before the long throughput rows (1), so a
        # slow loader cannot starve them; then learning at scale (3, a call of its own, see docs/gpu.md), the
        # smoke of every stage (it runs the CUDA paths once), then what the first run measured already.
        ("clustering", clustering, 20), ("flow_stage", flow_stage, 15), ("pretrain_throughput", pretrain_throughput, 30),
        ("learning_at_scale", learning_at_scale, 60), ("stage_smoke", stage_smoke, 30),
        ("tvl1", tvl1, 15), ("gpu_data_path", gpu_data_path, 15), ("search", search, 20),
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
