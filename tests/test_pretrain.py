"""Pretraining: a real run on tiny shards, exact resume after SIGKILL, gathered loss under gloo DDP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from slic.cli import main

TINY_PRETRAIN = {"backbone": "r3d_18_narrow", "hidden_dim": 32, "out_dim": 16, "clip_len": 8, "size": 16,
                 "batch_size": 4, "epochs": 4, "cluster_interval": 2, "eval_interval": 1, "workers": 0,
                 "seed": 5}


@pytest.fixture(scope="module")
def workspace(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory with the tiny dataset's manifest, validated table and shards."""
    root = tmp_path_factory.mktemp("workspace")
    params = {"manifest": {"root": str(tiny_dataset), "workers": 1}, "validate": {"data_docs": "docs"},
              "extract": {"short_side": 24, "workers": 1}, "pretrain": TINY_PRETRAIN,
              "embed": {"workers": 0, "clips": 3}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage in ("manifest", "validate", "extract"):
            assert main([stage]) == 0
    finally:
        os.chdir(cwd)
    return root


def slic(workspace: Path, *args: str, **pretrain: object) -> subprocess.Popen:
    """Start `slic <args>` in `workspace`, with pretrain overrides written to a params file of its own."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["pretrain"] = {**params["pretrain"], **pretrain}
    name = f"params-{abs(hash(json.dumps(pretrain, sort_keys=True)))}.yaml"
    (workspace / name).write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "slic.cli", "--params", name, *args], cwd=workspace, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output
    return output


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def checkpoint_epoch(path: Path) -> int:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["state"]["epoch"]
    except (OSError, RuntimeError, EOFError, KeyError):
        return -1


def test_pretrain_trains_logs_and_selects_on_validation(workspace: Path) -> None:
    finish(slic(workspace, "pretrain", out="data/models/full"))
    report = json.loads((workspace / "reports/pretrain.json").read_text())
    assert report["mode"] == "slic" and report["epochs"] == 4 and report["resumed_from_epoch"] == 0
    history = json.loads((workspace / "data/models/full/history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert "cluster_n_clusters" in history[0] and "cluster_n_clusters" in history[2]  # epochs 0 and 2
    assert "cluster_n_clusters" not in history[1]
    val = [h["val_recall_at_1"] for h in history]
    best = torch.load(workspace / "data/models/full/best.pt", weights_only=False)["state"]
    assert best["best_metric"] == max(val) and best["best_epoch"] == 1 + val.index(max(val))
    assert report["best_val_recall_at_1"] == max(val)
    assert report["final_clips_per_s"] > 0 and 0 <= report["final_data_wait_fraction"] <= 1

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    run = mlflow.get_run(report["mlflow_run_id"])
    assert run.data.params["mode"] == "slic"
    losses = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    artifacts = [a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.pt", "checkpoints/last.pt"]


def test_resume_after_sigkill_reaches_the_same_weights(workspace: Path) -> None:
    finish(slic(workspace, "pretrain", out="data/models/straight"))
    killed = workspace / "data/models/killed/last.pt"
    process = slic(workspace, "pretrain", out="data/models/killed")
    while checkpoint_epoch(killed) < 1 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epoch_at_kill = checkpoint_epoch(killed)
    assert process.returncode == -signal.SIGKILL and 1 <= epoch_at_kill < 4
    finish(slic(workspace, "pretrain", out="data/models/killed"))
    report = json.loads((workspace / "reports/pretrain.json").read_text())
    assert report["resumed_from_epoch"] >= epoch_at_kill
    straight, resumed = weights(workspace / "data/models/straight/last.pt"), weights(killed)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_modes_random_init_and_intra_video(workspace: Path) -> None:
    finish(slic(workspace, "pretrain", mode="random_init", out="data/models/random"))
    report = json.loads((workspace / "reports/pretrain.json").read_text())
    assert report["epochs"] == 0 and report["best_epoch"] == 0
    from slic.config import PretrainConfig
    from slic.pretrain import build_encoder

    fresh = build_encoder(PretrainConfig(**{**TINY_PRETRAIN, "mode": "random_init"})).state_dict()
    saved = weights(workspace / "data/models/random/best.pt")
    assert all(torch.equal(fresh[k], saved[k]) for k in fresh)  # the untrained, seeded encoder

    finish(slic(workspace, "pretrain", mode="intra_video", epochs=2, out="data/models/intra"))
    history = json.loads((workspace / "data/models/intra/history.json").read_text())
    assert not any(k.startswith("cluster_") for h in history for k in h)  # no clustering in the baseline


def test_embed_and_evaluate_every_video(workspace: Path) -> None:
    if not (workspace / "data/models/full/best.pt").is_file():
        finish(slic(workspace, "pretrain", out="data/models/full"))
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["embed"]["checkpoint"] = "data/models/full/best.pt"
    (workspace / "params-embed.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{workspace / 'mlflow.db'}"}
    for stage in ("embed", "evaluate"):
        subprocess.run([sys.executable, "-m", "slic.cli", "--params", "params-embed.yaml", stage], cwd=workspace,
                       env=env, check=True, capture_output=True)
    data = np.load(workspace / "data/embeddings/embeddings.npz")
    assert data["embedding"].shape == (24, 16) and set(data["split"]) == {"train", "val", "test"}
    retrieval = json.loads((workspace / "reports/retrieval.json").read_text())
    assert retrieval["queries"] == 6 and retrieval["gallery"] == 12  # every test video, every train video
    assert 0 <= retrieval["recall@1"] <= retrieval["recall@5"] <= 1
    assert set(retrieval["per_class"]) == {"Slide", "Rise", "Fall"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_loss(rank: int, world: int, port: int, batch: dict[str, torch.Tensor], results: dict) -> None:
    from slic.distributed import gather_tensor, gather_with_grad
    from slic.losses import slic_loss

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    part = slice(rank * 4, rank * 4 + 4)
    a, p, v = (batch[k][part].clone().requires_grad_() for k in ("a", "p", "v"))
    loss, _ = slic_loss(gather_with_grad(a), gather_with_grad(p), gather_with_grad(v),
                        gather_tensor(batch["labels"][part]), generator=torch.Generator().manual_seed(11))
    loss.backward()
    results[rank] = (loss.item(), a.grad.clone())
    dist.destroy_process_group()


def test_gathered_loss_equals_single_process_loss() -> None:
    from slic.losses import slic_loss

    torch.manual_seed(0)
    batch = {"a": torch.randn(8, 16), "p": torch.randn(8, 16), "v": torch.randn(8, 16),
             "labels": torch.tensor([0, 1, 2, 0, 1, 2, 3, 3])}
    full = {k: batch[k].clone().requires_grad_() for k in ("a", "p", "v")}
    expected, _ = slic_loss(full["a"], full["p"], full["v"], batch["labels"], generator=torch.Generator().manual_seed(11))
    expected.backward()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_rank_loss, args=(2, _free_port(), batch, results), nprocs=2, start_method="spawn")
        losses = {rank: results[rank][0] for rank in (0, 1)}
        grads = {rank: results[rank][1] for rank in (0, 1)}
    assert losses[0] == pytest.approx(expected.item(), abs=1e-6)
    assert losses[1] == pytest.approx(expected.item(), abs=1e-6)
    # Every rank computes the same global loss; the gather's backward sums the ranks' gradients,
    # and DDP then averages over ranks: each rank's share equals world_size x the full gradient.
    assert torch.allclose(grads[0] / 2, full["a"].grad[:4], atol=1e-6)
    assert torch.allclose(grads[1] / 2, full["a"].grad[4:], atol=1e-6)


def test_flow_view_without_flow_shards_stops_with_one_line(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["flow"] = {"enabled": True, "out": "no-flow-here"}
    params["pretrain"] = {**params["pretrain"], "out": "data/models/flow-missing"}
    (workspace / "params-flow-missing.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(workspace)
    assert main(["--params", "params-flow-missing.yaml", "pretrain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no-flow-here" in err and "dvc repro flow" in err
    assert not (workspace / "data/models/flow-missing/last.pt").exists()  # stopped before any training
