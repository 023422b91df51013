"""Frame extraction fanned out over a Dask cluster (prefect-dask), ahead of the `extract` stage.

The chunks write the very shards the `extract` stage would write (same files, same headers), so
the DVC stage that follows finds them intact, reuses them, and writes the index and report. The
Dask workers must see the checkout at the same path (a shared filesystem).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect_dask import DaskTaskRunner


@task(name="extract-chunk", retries=2, retry_delay_seconds=5)
def extract_chunk(rows: list[dict[str, Any]], out_dir: str, short_side: int, quality: int) -> list[dict[str, Any]]:
    """Extract one chunk of videos to shards on a Dask worker; per-video results (never raises per video)."""
    from slic.data.frames import extract_one

    return [extract_one(row, out_dir, short_side, quality) for row in rows]


def manifest_rows(repo: Path) -> tuple[list[dict[str, Any]], str, int, int]:
    """The validated manifest's rows with absolute paths, and the extract settings of params.yaml."""
    from slic.config import load
    from slic.data.datasets import read_manifest

    cfg = load(repo / "params.yaml").extract
    manifest = read_manifest(repo / cfg.manifest)
    rows = [{"video_id": v, "path": str((repo / p).resolve())} for v, p in zip(manifest["video_id"], manifest["path"])]
    return rows, str((repo / cfg.out).resolve()), cfg.short_side, cfg.quality


@flow(name="slic-extract-fanout")
def extract_fanout(repo: str, chunk_size: int = 64) -> dict[str, int]:
    """Submit the videos in chunks to the flow's task runner; count extracted, reused and failed.

    The throughput of the chunks is recorded in the frames folder, so the `extract` stage that then
    reuses every shard reports it.
    """
    from slic.data.frames import throughput

    logger = get_run_logger()
    started = time.perf_counter()
    rows, out_dir, short_side, quality = manifest_rows(Path(repo))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    chunks = [rows[i:i + chunk_size] for i in range(0, len(rows), chunk_size)]
    futures = [extract_chunk.submit(chunk, out_dir, short_side, quality) for chunk in chunks]
    counts = {"videos": len(rows), "chunks": len(chunks), "extracted": 0, "reused": 0, "failed": 0}
    new_frames = 0
    for future in futures:
        for result in future.result():
            counts[result["status"]] += 1
            new_frames += result["frames"] if result["status"] == "extracted" else 0
            if result["status"] == "failed":
                logger.warning("failed %s: %s", result["path"], result["error"])
    throughput(out_dir, new_frames=new_frames, new_videos=counts["extracted"], reused=counts["reused"],
               seconds=time.perf_counter() - started, workers="dask")
    logger.info("fan-out extraction: %s", counts)
    return counts


def run_on_dask(repo: str, address: str, chunk_size: int = 64) -> dict[str, int]:
    """Run `extract_fanout` with its tasks on the Dask scheduler at `address` (tcp://host:8786)."""
    fanout = extract_fanout.with_options(task_runner=DaskTaskRunner(address=address))
    return fanout(repo=repo, chunk_size=chunk_size)
