"""Finetuning and the linear probe: test-time views, frozen backbone, lr split, val selection, end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from slic.classification import average_softmax, predict_videos, topk_accuracy
from slic.cli import main
from slic.config import ConfigError, FinetuneConfig, LinearProbeConfig, load
from slic.data.clips import load_videos
from slic.data.labelled_clips import WindowViews, crop_boxes, ten_views, window_starts
from slic.finetune import (build_classifier, build_optimizer, build_scheduler, freeze_backbone, train_classifier,
                           train_epoch)

TINY_ENCODER = {"mode": "random_init", "backbone": "r3d_18_tiny", "hidden_dim": 32, "out_dim": 16, "clip_len": 8,
                "size": 16, "workers": 0, "seed": 5}
TINY_CLASSIFIER = {"clip_len": 8, "frame_step": 2, "size": 16, "epochs": 2, "milestones": [1], "batch_size": 4,
                   "workers": 0, "eval_batch_size": 40, "test_stride": 8, "seed": 3}


@pytest.fixture(scope="module")
def workspace(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset's validated manifest, shards and an (untrained, seeded) encoder checkpoint."""
    root = tmp_path_factory.mktemp("finetune")
    params = {"manifest": {"root": str(tiny_dataset), "workers": 1}, "validate": {"data_docs": "docs"},
              "extract": {"short_side": 24, "workers": 1}, "pretrain": TINY_ENCODER,
              "linear_probe": TINY_CLASSIFIER, "finetune": TINY_CLASSIFIER}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cwd, uri = os.getcwd(), os.environ.get("MLFLOW_TRACKING_URI")
    os.chdir(root)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    try:
        for stage in ("manifest", "validate", "extract", "pretrain"):
            assert main([stage]) == 0, stage
    finally:
        os.chdir(cwd)
        if uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = uri
    return root


@pytest.fixture()
def in_workspace(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
    return workspace


def splits_of(workspace: Path, frame_step: int = 1) -> dict[str, list]:
    return {s: load_videos(workspace / "data/manifests/validated.csv", workspace / "data/frames", splits=[s],
                           frame_step=frame_step) for s in ("train", "val", "test")}


# --- test-time views -------------------------------------------------------------------------

@pytest.mark.parametrize("frames, clip_len, stride", [(48, 16, 7), (32, 8, 8), (100, 16, 7), (17, 16, 7), (16, 16, 7)])
def test_window_starts_cover_the_whole_video(frames: int, clip_len: int, stride: int) -> None:
    starts = window_starts(frames, clip_len, stride)
    covered = set().union(*(range(s, s + clip_len) for s in starts))
    assert covered == set(range(frames))  # every frame, nothing past the end
    assert starts == sorted(set(starts)) and starts[-1] == frames - clip_len
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    assert window_starts(48, 16, 7) == [0, 7, 14, 21, 28, 32]
    assert window_starts(10, 16, 7) == [0]  # shorter than a window: one (padded) window


def test_ten_views_are_five_crops_and_their_mirrors() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 20, 28, 3), dtype=np.uint8)
    views = ten_views(frames, size=12, resize=16)
    assert views.shape == (10, 3, 4, 12, 12)
    for k in range(5):
        assert torch.equal(views[2 * k + 1], views[2 * k].flip(-1))  # each crop and its mirror
    crops = [views[2 * k] for k in range(5)]
    assert all(not torch.equal(a, b) for i, a in enumerate(crops) for b in crops[i + 1:])  # 5 distinct crops
    assert crop_boxes(16, 22, 12) == [(2, 5), (0, 0), (0, 10), (4, 0), (4, 10)]
    centre = ten_views(frames, size=12, resize=16, views="centre")
    assert centre.shape == (1, 3, 4, 12, 12) and torch.equal(centre[0], views[0])
    # No colour change at test: the same pixels give the same view, whatever the seed.
    torch.manual_seed(1)
    assert torch.equal(ten_views(frames, size=12, resize=16), views)


def test_softmax_is_averaged_over_views_not_logits() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 5.0]])
    owner = torch.tensor([0, 0, 0, 1])
    scores = average_softmax(logits, owner, 2)
    assert scores.shape == (2, 2) and torch.allclose(scores.sum(1), torch.ones(2, dtype=torch.float64))
    assert logits[:3].mean(0).argmax() == 0 and scores[0].argmax() == 1  # mean logits would say class 0
    expected = torch.softmax(logits[:3].double(), 1).mean(0)
    assert torch.allclose(scores[0], expected)
    accuracy = topk_accuracy(np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3]]), np.array([0, 2]), ks=(1, 2))
    assert accuracy == {"top1": 0.0, "top2": 100.0}


class ViewLogits(nn.Module):
    """A deterministic 'model': logits from per-channel means, so every view gives other logits."""

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return clips.mean(dim=(2, 3, 4)) * 3.0


def test_predictions_average_every_view_of_every_window(workspace: Path) -> None:
    videos = splits_of(workspace)["test"][:3]
    dataset = WindowViews(videos, clip_len=8, stride=8, size=16, resize=18)
    assert len(dataset) == sum(len(window_starts(v.frames, 8, 8)) for v in videos) == 3 * 4
    scores = predict_videos(ViewLogits(), dataset, device=torch.device("cpu"), batch_size=20, workers=0)
    for index in range(3):
        views = torch.cat([dataset[i][0] for i, (owner, _) in enumerate(dataset.items) if owner == index])
        assert views.shape[0] == 4 * 10  # 4 windows x 5 crops x 2 flips
        expected = torch.softmax(ViewLogits()(views).double(), 1).mean(0).numpy()
        np.testing.assert_allclose(scores[index], expected, rtol=1e-5)


# --- what is trained, at which lr ----------------------------------------------------------------

def _checkpoint(workspace: Path) -> str:
    return str(workspace / "data/models/pretrain/best.pt")


def test_a_frame_step_other_than_the_encoders_is_named_in_a_warning(workspace: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from slic.finetune_stages import load_splits

    manifest, frames = workspace / "data/manifests/validated.csv", workspace / "data/frames"
    with caplog.at_level("WARNING", logger="slic.finetune_stages"):
        load_splits(manifest, frames, checkpoint=_checkpoint(workspace), section="finetune", frame_step=2)
        assert not caplog.records  # the encoder was pretrained at 2 (the default)
        splits, _, _ = load_splits(manifest, frames, checkpoint=_checkpoint(workspace), section="finetune",
                                   frame_step=1)
    [record] = caplog.records
    assert record.getMessage().startswith("finetune.frame_step is 1 but ") and "pretrained at frame_step 2" in \
        record.getMessage() and "set finetune.frame_step: 2" in record.getMessage()
    assert all(v.frame_step == 1 for v in splits["train"])  # a warning, not a refusal: the setting is kept


def test_linear_probe_changes_neither_backbone_weights_nor_batchnorm_statistics(workspace: Path) -> None:
    model = build_classifier(init="pretrained", checkpoint=_checkpoint(workspace), classes=3, dropout=0.5, seed=0)
    freeze_backbone(model)
    cfg = LinearProbeConfig(lr=0.05)
    optimizer = build_optimizer(model, cfg, linear_probe=True)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.fc.parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 8, 16, 16) * 3 + 1, torch.tensor([0, 1, 2, 0])) for _ in range(3)]
    train_epoch(model, batches, optimizer, device=torch.device("cpu"), bf16=False, linear_probe=True)
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone) and any("num_batches_tracked" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights AND BatchNorm statistics
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    # The same epoch in finetuning mode does move the statistics: the check above can fail.
    train_epoch(model, batches, optimizer, device=torch.device("cpu"), bf16=False, linear_probe=False)
    assert not all(torch.equal(before[k], model.state_dict()[k]) for k in backbone if "running_mean" in k)


def test_finetuning_trains_every_layer_with_the_backbone_at_a_tenth_of_the_lr(workspace: Path) -> None:
    model = build_classifier(init="pretrained", checkpoint=_checkpoint(workspace), classes=3, dropout=0.9, seed=0)
    cfg = FinetuneConfig(lr=0.001, milestones=(2, 3), lr_gamma=0.1)
    optimizer = build_optimizer(model, cfg, linear_probe=False)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == {"head": pytest.approx(1e-3), "backbone": pytest.approx(1e-4)}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # every parameter, once
    backbone = {id(p) for p in model.backbone.parameters()}
    assert all(id(p) in backbone for p in next(g for g in optimizer.param_groups if g["name"] == "backbone")["params"])
    assert optimizer.defaults["weight_decay"] == 1e-3 and isinstance(optimizer, torch.optim.Adam)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(4):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert np.allclose(seen, [[1e-3, 1e-4], [1e-3, 1e-4], [1e-4, 1e-5], [1e-5, 1e-6]])
    assert model.dropout.p == 0.9 and model.fc.in_features == model.backbone.feature_dim


def test_scratch_has_the_same_architecture_and_other_weights(workspace: Path) -> None:
    pretrained = build_classifier(init="pretrained", checkpoint=_checkpoint(workspace), classes=3, dropout=0.9, seed=0)
    scratch = build_classifier(init="scratch", checkpoint=_checkpoint(workspace), classes=3, dropout=0.9, seed=0)
    encoder = torch.load(_checkpoint(workspace), weights_only=False)["model"]
    a, b = pretrained.backbone.state_dict(), scratch.backbone.state_dict()
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert all(torch.equal(a[k], encoder[f"backbone.{k}"]) for k in a)  # the checkpoint's backbone, no head
    assert not torch.equal(a["stem.0.weight"], b["stem.0.weight"])


def test_best_checkpoint_is_chosen_on_val_and_used_for_test(workspace: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import slic.finetune as finetune

    splits = splits_of(workspace)
    scripted = iter([20.0, 60.0, 40.0])
    calls: list[tuple[str, torch.Tensor]] = []

    def fake_evaluate(model, videos, cfg, device, *, views):
        split = next(s for s, v in splits.items() if v is videos)
        calls.append((split, model.fc.weight.detach().clone()))
        top1 = next(scripted) if split == "val" else 55.0
        return {"top1": top1, "top5": 100.0, "views": 1.0}

    monkeypatch.setattr(finetune, "evaluate", fake_evaluate)
    cfg = FinetuneConfig(**{**TINY_CLASSIFIER, "milestones": (5,), "epochs": 3, "lr": 0.05,
                            "checkpoint": _checkpoint(workspace)})
    report = train_classifier(cfg, init="pretrained", linear_probe=False, splits=splits, classes=3,
                              out=tmp_path / "ft", device=torch.device("cpu"), data="d")
    assert [c[0] for c in calls] == ["val", "val", "val", "test"]  # test only once, after training
    assert report["best_epoch"] == 2 and report["best_val_top1"] == 60.0 and report["top1"] == 55.0
    assert torch.equal(calls[3][1], calls[1][1])  # test used the weights of epoch 2, not the last ones
    assert not torch.equal(calls[2][1], calls[1][1])
    best = torch.load(tmp_path / "ft/best.pt", weights_only=False)
    assert best["state"]["best_epoch"] == 2 and torch.equal(best["model"]["fc.weight"], calls[1][1])
    assert [h["val_top1"] for h in json.loads((tmp_path / "ft/history.json").read_text())] == [20.0, 60.0, 40.0]


# --- the stages ------------------------------------------------------------------------------

def test_linear_probe_then_finetune_write_the_report(in_workspace: Path) -> None:
    assert main(["linear-probe"]) == 0
    probe = json.loads((in_workspace / "reports/linear_probe.json").read_text())
    assert main(["finetune"]) == 0
    report = json.loads((in_workspace / "reports/finetune.json").read_text())
    assert set(report) == {"pretrained", "scratch", "linear_probe"}
    test_views = 6 * 2 * 10  # 6 test videos x 2 windows (32 frames at frame_step 2: 16, windows of 8) x 10 views
    saved = {"linear_probe": "linear_probe", "pretrained": "finetune/pretrained", "scratch": "finetune/scratch"}
    for name, row in report.items():
        best = in_workspace / f"data/models/{saved[name]}/best.pt"
        assert row["top1"] == pytest.approx(top1_by_hand(in_workspace, best)), name
        assert row["top5"] == 100.0, name  # 3 classes: the 5 best scores always hold the label
        assert row["test_views"] == test_views and row["epochs"] == 2 and row["best_epoch"] in (1, 2)
    assert report["linear_probe"]["top1"] == probe["top1"] and probe["init"] == "pretrained"
    for init in ("pretrained", "scratch"):
        assert (in_workspace / f"data/models/finetune/{init}/best.pt").is_file()
        assert not list((in_workspace / f"data/models/finetune/{init}").glob("*.tmp-*"))

    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{in_workspace / 'mlflow.db'}")
    run_id = report["pretrained"]["mlflow_run_id"]
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)]
               for k in ("loss", "train_top1", "val_top1", "lr_head", "lr_backbone")}
    assert [s for s, _ in history["val_top1"]] == [1, 2] and len(history["loss"]) == 2
    assert [v for _, v in history["lr_head"]] == pytest.approx([1e-2, 1e-3])  # milestone at epoch 1
    assert [v for _, v in history["lr_backbone"]] == pytest.approx([1e-3, 1e-4])
    parent = client.get_run(run_id).data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).data.tags["slic.stage"] == "finetune"
    probe_run = client.get_run(probe["mlflow_run_id"])
    assert probe_run.data.tags["slic.stage"] == "linear_probe" and "lr_backbone" not in probe_run.data.metrics
    for stage_run in (client.get_run(parent), probe_run):  # both name the encoder they started from
        assert stage_run.data.tags["slic.encoder_checkpoint"] == probe["pretrained_from"]
        assert stage_run.data.params["encoder.mode"] and "Encoder: " in stage_run.data.tags["mlflow.note.content"]

    # Again with nothing changed: resumed from last.pt, no epoch trained, the same numbers.
    assert main(["finetune"]) == 0
    again = json.loads((in_workspace / "reports/finetune.json").read_text())
    assert again["pretrained"]["resumed_from_epoch"] == 2
    assert again["pretrained"]["top1"] == report["pretrained"]["top1"]


def top1_by_hand(workspace: Path, best: Path) -> float:
    """Test top-1 (percent) of a saved classifier: argmax of the softmax averaged over the ten views of every window."""
    cfg = FinetuneConfig(**TINY_CLASSIFIER)
    model = build_classifier(init="scratch", checkpoint=_checkpoint(workspace), classes=3, dropout=0.9, seed=0)
    model.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["model"])
    videos = splits_of(workspace, cfg.frame_step)["test"]
    dataset = WindowViews(videos, clip_len=cfg.clip_len, stride=cfg.test_stride, size=cfg.size,
                          resize=round(cfg.size * cfg.test_resize), views="ten")
    scores = predict_videos(model, dataset, device=torch.device("cpu"), batch_size=40, workers=0)
    return 100.0 * float((scores.argmax(axis=1) == np.array([v.label for v in videos])).mean())


def _params(workspace: Path, name: str, **sections: dict) -> str:
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    for section, values in sections.items():
        params[section] = {**params.get(section, {}), **values}
    (workspace / name).write_text(yaml.safe_dump(params))
    return name


def test_bad_input_is_one_line_naming_the_file_and_the_fix(in_workspace: Path, capsys: pytest.CaptureFixture) -> None:
    name = _params(in_workspace, "params-nockpt.yaml", linear_probe={"checkpoint": "data/models/none.pt"})
    assert main(["--params", name, "linear-probe"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "linear_probe.checkpoint = data/models/none.pt" in err and "pretrain" in err

    name = _params(in_workspace, "params-noprobe.yaml", finetune={"linear_probe_report": "reports/none.json"})
    assert main(["--params", name, "finetune"]) == 2
    err = capsys.readouterr().err.strip()
    assert "finetune.linear_probe_report = reports/none.json" in err and "slic linear-probe" in err

    manifest = pd.read_csv(in_workspace / "data/manifests/validated.csv", keep_default_na=False)
    lonely = manifest["class"].iloc[0]
    manifest[~((manifest["class"] == lonely) & (manifest["split"] == "train"))].to_csv(
        in_workspace / "no-train.csv", index=False)
    name = _params(in_workspace, "params-notrain.yaml", extract={"manifest": "no-train.csv"})
    assert main(["--params", name, "linear-probe"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("slic linear-probe: error: no-train.csv: no train videos for class " + lonely)

    name = _params(in_workspace, "params-nomanifest.yaml", extract={"manifest": "missing.csv"})
    assert main(["--params", name, "finetune"]) == 2
    assert "missing.csv: no validated manifest" in capsys.readouterr().err


def test_sections_refuse_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"finetune": {"epoch": 3}}))
    with pytest.raises(ConfigError, match="unknown key 'finetune.epoch'"):
        load(path)
    path.write_text(yaml.safe_dump({"linear_probe": {"backbone_lr_scale": 0.1}}))
    with pytest.raises(ConfigError, match="unknown key 'linear_probe.backbone_lr_scale'"):
        load(path)
    path.write_text(yaml.safe_dump({"finetune": {"milestones": [60, "x"]}}))
    with pytest.raises(ConfigError, match="finetune.milestones"):
        load(path)
    repo = load(Path(__file__).resolve().parents[1] / "params.yaml")  # the CPU defaults, chosen on val (README)
    assert (repo.finetune.lr, repo.finetune.weight_decay, repo.finetune.batch_size) == (1e-2, 1e-3, 32)
    assert (repo.finetune.backbone_lr_scale, repo.finetune.dropout, repo.linear_probe.dropout) == (0.1, 0.5, 0.5)
    # The paper's values are the preset's (tests/test_presets.py checks each against SLIC.md).
    paper = yaml.safe_load((Path(__file__).resolve().parents[1] / "presets/paper_ucf101.yaml").read_text())
    assert (paper["finetune"]["lr"], paper["finetune"]["dropout"], paper["linear_probe"]["dropout"]) == (1e-3, 0.9, 0.9)
