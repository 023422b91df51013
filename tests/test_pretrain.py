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
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

from slic.cli import main
from slic.data.clips import PretrainClips

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


def seeded_initial_parameters() -> dict[str, torch.Tensor]:
    """The trainable parameters (not BatchNorm buffers, which move without any optimizer step) of the
    seeded encoder a run of TINY_PRETRAIN starts from."""
    from slic.config import PretrainConfig
    from slic.pretrain import build_encoder

    return {name: value.detach().clone()
            for name, value in build_encoder(PretrainConfig(**TINY_PRETRAIN)).named_parameters()}


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
    assert report["final_steps"] == 12 // TINY_PRETRAIN["batch_size"]  # every training video, whole batches
    assert report["final_loss"] == history[-1]["loss"] and report["train_videos"] == 12

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{workspace / 'mlflow.db'}")
    run = mlflow.get_run(report["mlflow_run_id"])
    assert run.data.params["mode"] == "slic"
    losses = mlflow.tracking.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    artifacts = [a.path for a in mlflow.tracking.MlflowClient().list_artifacts(run.info.run_id, "checkpoints")]
    assert artifacts == ["checkpoints/best.pt", "checkpoints/last.pt"]


def test_resume_after_sigkill_reaches_the_same_weights(workspace: Path) -> None:
    # Enough epochs that the kill lands mid-training even when this process is starved of CPU for a while (with
    # 4 tiny epochs a busy 2-core machine saw the training finish before the poll read the first checkpoint).
    epochs = 16
    finish(slic(workspace, "pretrain", out="data/models/straight", epochs=epochs))
    killed = workspace / "data/models/killed/last.pt"
    process = slic(workspace, "pretrain", out="data/models/killed", epochs=epochs)
    while checkpoint_epoch(killed) < 1 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    epoch_at_kill = checkpoint_epoch(killed)
    assert process.returncode == -signal.SIGKILL and 1 <= epoch_at_kill < epochs
    finish(slic(workspace, "pretrain", out="data/models/killed", epochs=epochs))
    report = json.loads((workspace / "reports/pretrain.json").read_text())
    assert report["resumed_from_epoch"] >= epoch_at_kill
    straight, resumed = weights(workspace / "data/models/straight/last.pt"), weights(killed)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # Equal weights would also come from two runs that never trained: every weight moved from the seeded
    # initialisation, and the resumed run logged the same losses and kept the same pseudo-labels.
    initial = seeded_initial_parameters()
    moved = [name for name, value in initial.items() if not torch.allclose(straight[name], value, atol=1e-6)]
    assert moved == list(initial)
    learned = ("loss", "proxy", "temporal", "val_recall_at_1")  # TINY_PRETRAIN: the default proxy objective
    histories = [[{k: h[k] for k in learned} for h in json.loads((folder / "history.json").read_text())]
                 for folder in (workspace / "data/models/straight", killed.parent)]
    assert histories[0] == histories[1] and len(histories[0]) == epochs and histories[0][0]["loss"] > 0
    straight_state, resumed_state = (torch.load(p, map_location="cpu", weights_only=False)["state"]
                                     for p in (workspace / "data/models/straight/last.pt", killed))
    assert resumed_state["labels"] == straight_state["labels"]
    assert len(set(straight_state["labels"])) < len(straight_state["labels"])  # clusters, not video ids
    # The proxies (one per cluster of the last round) and their optimizer resume too.
    straight_proxies, resumed_proxies = (torch.load(p, map_location="cpu", weights_only=False)["proxies"]
                                         for p in (workspace / "data/models/straight/last.pt", killed))
    assert straight_proxies["weight"].shape[0] == len(set(straight_state["labels"]))
    assert torch.equal(straight_proxies["weight"], resumed_proxies["weight"])


def test_modes_random_init_and_intra_video(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    finish(slic(workspace, "pretrain", mode="random_init", out="data/models/random"))
    report = json.loads((workspace / "reports/pretrain.json").read_text())
    assert report["epochs"] == 0 and report["best_epoch"] == 0
    from slic.config import PretrainConfig
    from slic.pretrain import build_encoder

    fresh = build_encoder(PretrainConfig(**{**TINY_PRETRAIN, "mode": "random_init"})).state_dict()
    saved = weights(workspace / "data/models/random/best.pt")
    assert all(torch.equal(fresh[k], saved[k]) for k in fresh)  # the untrained, seeded encoder

    dataset, _ = pretrain_in_process(workspace, monkeypatch, mode="intra_video", epochs=2, out="data/models/intra")
    history = json.loads((workspace / "data/models/intra/history.json").read_text())
    assert not any(k.startswith("cluster_") for h in history for k in h)  # no clustering in the baseline
    # The baseline: every positive from the anchor's own video, mining labels = video ids.
    assert dataset.p_intra == 1.0
    assert dataset.labels.tolist() == list(range(len(dataset.videos)))
    assert served_per_epoch(dataset) == {0: list(range(len(dataset.videos))), 1: list(range(len(dataset.videos)))}
    for _, index, label, positive, start, anchor_start in dataset.served:
        assert (label, positive) == (index, index)
        assert abs(start - anchor_start) >= TINY_PRETRAIN["clip_len"]  # not overlapping the anchor


class RecordingClips(PretrainClips):
    """The real training dataset, also remembering each triplet it served:
    (epoch, index, pseudo-label, positive video, positive start, anchor start)."""

    made: list[RecordingClips] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.served: list[tuple[int, int, int, int, int, int]] = []
        self._positive = (-1, -1, -1)
        RecordingClips.made.append(self)

    def positive_of(self, index: int, rng: np.random.Generator, anchor_start: int) -> tuple[int, int]:
        video, start = super().positive_of(index, rng, anchor_start)
        self._positive = (video, start, anchor_start)
        return video, start

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = super().__getitem__(index)
        self.served.append((self.epoch, index, item[-2], *self._positive))  # (..., label, index) either way
        return item


def served_per_epoch(dataset: RecordingClips) -> dict[int, list[int]]:
    """Epoch -> the sorted video indices the training loader drew in it."""
    epochs: dict[int, list[int]] = {}
    for epoch, index, *_ in dataset.served:
        epochs.setdefault(epoch, []).append(index)
    return {epoch: sorted(indices) for epoch, indices in epochs.items()}


def pretrain_in_process(workspace: Path, monkeypatch: pytest.MonkeyPatch, given_labels: dict[str, int] | None = None,
                        **pretrain: object) -> tuple[RecordingClips, dict[str, Any]]:
    """`pretrain` run in this process (loader workers 0) with the dataset it trained on recorded."""
    from slic.config import PretrainConfig, load
    from slic.distributed import World
    from slic.pretrain import pretrain as run

    monkeypatch.chdir(workspace)
    monkeypatch.setattr("slic.pretrain.PretrainClips", RecordingClips)
    RecordingClips.made.clear()
    extract = load(workspace / "params.yaml").extract
    report = run(PretrainConfig(**{**TINY_PRETRAIN, **pretrain}), manifest=extract.manifest,
                 frames_dir=extract.out, world=World(0, 1, 0, torch.device("cpu")), given_labels=given_labels)
    assert len(RecordingClips.made) == 1
    return RecordingClips.made[0], report


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
    # One video's row recomputed by hand: the mean of the model's outputs over its IIC clips.
    from slic.checkpoints import load_encoder
    from slic.data.clips import EvalClips, load_videos

    model, saved = load_encoder(workspace / "data/models/full/best.pt")
    video = next(v for v in load_videos(workspace / "data/manifests/validated.csv", workspace / "data/frames",
                                        splits=["test"], frame_step=saved["frame_step"])
                 if v.video_id.startswith("Rise/"))
    clips, _ = EvalClips([video], protocol="iic", clip_len=TINY_PRETRAIN["clip_len"], size=TINY_PRETRAIN["size"],
                         clips=params["embed"]["clips"])[0]
    assert clips.shape[0] == 3 and len({tuple(c.flatten()[:64].tolist()) for c in clips}) == 3  # 3 distinct clips
    with torch.no_grad():
        expected = model(clips).mean(dim=0).numpy()
    row = data["embedding"][data["video_id"].tolist().index(video.video_id)]
    np.testing.assert_allclose(row, expected, rtol=1e-4, atol=1e-5)
    retrieval = json.loads((workspace / "reports/retrieval.json").read_text())
    assert retrieval["queries"] == 6 and retrieval["gallery"] == 12  # every test video, every train video
    # Recall recomputed from the rows with plain numpy: nearest train videos by cosine, hit if one shares the class.
    unit = data["embedding"] / np.linalg.norm(data["embedding"], axis=1, keepdims=True)
    test, train = data["split"] == "test", data["split"] == "train"
    ranked = np.argsort(-(unit[test] @ unit[train].T), axis=1, kind="stable")
    same = data["label"][train][ranked] == data["label"][test][:, None]
    for k in (1, 5):
        assert retrieval[f"recall@{k}"] == pytest.approx(same[:, :k].any(axis=1).mean())
    names = data["class_name"][test]
    assert retrieval["per_class"] == {
        str(name): {"recall@1": pytest.approx(same[names == name, :1].any(axis=1).mean()),
                    "recall@5": pytest.approx(same[names == name, :5].any(axis=1).mean()), "queries": 2}
        for name in ("Slide", "Rise", "Fall")}


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


def test_a_batch_larger_than_the_train_split_stops_before_training(workspace: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """12 train videos and batch_size 16: every batch would be partial and dropped, so the run would 'finish' with
    an untrained best.pt (a user's small folder did exactly that); it must stop and name the key and a fitting value."""
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["pretrain"] = {**params["pretrain"], "batch_size": 16, "out": "data/models/batch-too-large"}
    (workspace / "params-batch-too-large.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(workspace)
    assert main(["--params", "params-batch-too-large.yaml", "pretrain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pretrain.batch_size 16" in err and "12 usable train videos" in err
    assert "set pretrain.batch_size to 12 or less" in err
    assert not (workspace / "data/models/batch-too-large/best.pt").exists()


def test_steps_per_epoch_counts_the_loaders_whole_batches() -> None:
    from torch.utils.data import DataLoader, DistributedSampler

    from slic.pretrain import steps_per_epoch

    for videos, batch, ranks in [(12, 4, 1), (12, 16, 1), (13, 4, 1), (12, 12, 1), (12, 4, 2), (7, 8, 2), (3, 2, 2),
                                 (5, 3, 1)]:
        sampler = DistributedSampler(range(videos), num_replicas=ranks, rank=0, shuffle=False, drop_last=True)
        loader = DataLoader(range(videos), batch_size=max(2, batch // ranks), sampler=sampler, drop_last=True)
        assert steps_per_epoch(videos, batch, ranks) == len(loader), (videos, batch, ranks)


def test_a_run_of_fewer_steps_than_the_defaults_were_chosen_at_names_the_epochs_that_train_as_long() -> None:
    from slic.pretrain import MEASURED_STEPS, short_run_note, steps_per_epoch

    assert steps_per_epoch(420, 32, 1) * 24 == MEASURED_STEPS  # the synthetic default: no note
    assert short_run_note(420, 24, 32, 1) == "" and short_run_note(5000, 24, 32, 1) == ""
    note = short_run_note(11, 24, 8, 1)  # a small archive: one step an epoch
    assert note.startswith("24 training steps in all (24 epochs of 1 step: 11 train videos at batch 8)")
    assert note.endswith("set pretrain.epochs: 312")
    assert short_run_note(100, 24, 32, 2).endswith("pretrain.epochs: 104")  # 3 steps an epoch on each of 2 ranks
    assert short_run_note(100, 104, 32, 2) == ""


def test_cluster_labels_reach_the_training_triplets(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SLIC mode: each clustering round's labels are what the next epochs' triplets carry and mine positives by."""
    dataset, report = pretrain_in_process(workspace, monkeypatch, epochs=3, out="data/models/labels")
    assert report["epochs"] == 3
    n = len(dataset.videos)
    assert served_per_epoch(dataset) == {epoch: list(range(n)) for epoch in range(3)}
    state = torch.load(workspace / "data/models/labels/last.pt", map_location="cpu", weights_only=False)["state"]
    final = state["labels"]  # the round at epoch 2 (cluster_interval 2)
    labels = {epoch: np.full(n, -1) for epoch in range(3)}
    for epoch, index, label, *_ in dataset.served:
        labels[epoch][index] = label
    assert labels[2].tolist() == final
    assert labels[0].tolist() == labels[1].tolist()  # round 0's labels hold until the next round
    for epoch in (0, 2):
        assert len(set(labels[epoch].tolist())) < n  # FINCH merged videos: not the default video ids
    cross = [(epoch, index, positive) for epoch, index, _, positive, _, _ in dataset.served if positive != index]
    assert cross  # p_intra 0.2: most positives come from another video of the same cluster
    assert all(labels[epoch][positive] == labels[epoch][index] for epoch, index, positive in cross)


def losses_over_passes(workspace: Path, passes: int, **pretrain: object) -> list[float]:
    """Mean training loss of each of `passes` passes of train_one_epoch over the same triplets (the
    twelve training videos, true classes as labels, epoch-0 draws and negatives) from the seeded encoder."""
    from torch.utils.data import DataLoader

    from slic.config import PretrainConfig, load
    from slic.data.clips import load_videos
    from slic.distributed import World
    from slic.pretrain import augmentation_of, build_encoder, build_optimizer, train_one_epoch

    cfg = PretrainConfig(**{**TINY_PRETRAIN, **pretrain})
    extract = load(workspace / "params.yaml").extract
    train = load_videos(workspace / extract.manifest, workspace / extract.out, splits=["train"],
                        min_frames=2 * cfg.clip_len)
    dataset = PretrainClips(train, clip_len=cfg.clip_len, size=cfg.size, p_intra=cfg.p_intra, seed=cfg.seed,
                            augmentation=augmentation_of(cfg))
    dataset.set_labels(np.array([v.label for v in train]))
    batch = [dataset[i] for i in range(len(train))]  # read once: every pass sees exactly these clips
    loader = DataLoader(batch, batch_size=len(batch))
    model = build_encoder(cfg)
    optimizer = build_optimizer(model, cfg)
    world = World(0, 1, 0, torch.device("cpu"))
    return [train_one_epoch(model, loader, optimizer, cfg, world, epoch=0)["loss"] for _ in range(passes)]


def test_optimizer_steps_lower_the_loss_of_their_batch(workspace: Path) -> None:
    """The training step really descends: the loss of a fixed batch falls over repeated steps on it, and
    stays exactly where it was when the steps change nothing (lr 0).

    (Across the epochs of a short run the logged loss need not fall: from the near-collapsed start every
    triplet sits at the margin, and the loss first grows as the embeddings spread and clusters change.)"""
    losses = losses_over_passes(workspace, 8)
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses
    frozen = losses_over_passes(workspace, 3, lr=0.0)
    assert frozen[0] == pytest.approx(losses[0]) and max(frozen) - min(frozen) < 1e-6, frozen
