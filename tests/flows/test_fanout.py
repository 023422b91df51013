"""Frame extraction fanned out on a real Dask cluster (prefect-dask), then reused by the DVC `extract` stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.pipeline import slic_pipeline
from tests.flows.conftest import make_checkout


def test_extraction_fans_out_on_dask_and_the_stage_reuses_the_shards(prefect_api: None, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from distributed import Client, LocalCluster

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    repo = make_checkout(tmp_path / "repo")
    ready = slic_pipeline(repo=str(repo), stages=["synth", "manifest", "validate"], return_state=True)
    assert ready.is_completed(), ready.message
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        state = slic_pipeline(repo=str(repo), stages=["extract"], dask_address=cluster.scheduler_address,
                              dask_chunk_size=10, return_state=True)
        assert state.is_completed(), state.message
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    fanout = state.result()["stages"]["extract-fanout"]
    assert fanout == {"videos": 24, "chunks": 3, "extracted": 24, "reused": 0, "failed": 0}
    assert "extract_chunk" in prefixes, prefixes  # the chunks ran on the Dask cluster
    report = json.loads((repo / "reports/extract.json").read_text())
    assert (report["extracted"], report["reused"], report["failed"]) == (0, 24, [])  # the stage kept them
    assert len(list((repo / "data/frames").rglob("*.shard"))) == 24
