"""What a stage's MLflow run records of its encoder (`slic.encoder_lineage`), on checkpoints and a real store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from slic.encoder_lineage import encoder_note, encoder_params, encoder_tags, read_encoder, record_encoder


def write_checkpoint(path: Path, run_id: str | None = "abc123") -> Path:
    torch.save({"model": {}, "config": {"mode": "slic", "backbone": "r3d_18_tiny", "objective": "proxy", "seed": 8,
                                        "epochs": 24, "workers": 2, "out": "data/models/pretrain", "ks": (1, 5)},
                "fingerprint": {"data": "b1f3f4401367e301"}, "state": {"best_epoch": 16}, "mlflow_run_id": run_id},
               path)
    return path


def test_a_checkpoint_gives_its_settings_its_run_and_its_data(tmp_path: Path) -> None:
    encoder = read_encoder(write_checkpoint(tmp_path / "best.pt"))
    assert encoder is not None and encoder.run_id == "abc123" and encoder.best_epoch == 16
    params = encoder_params(encoder)
    assert params["encoder.seed"] == "8" and params["encoder.objective"] == "proxy"
    assert "encoder.workers" not in params and "encoder.out" not in params  # how it ran, not what it learned
    assert encoder_tags(encoder) == {"slic.encoder_checkpoint": str(tmp_path / "best.pt"),
                                     "slic.encoder_run_id": "abc123", "slic.encoder_epoch": "16",
                                     "slic.encoder_data_fingerprint": "b1f3f4401367e301"}
    assert encoder_note(encoder, "pretrain slic r3d_18_tiny 32px", "1") == (
        f"Encoder: `{tmp_path / 'best.pt'}`, epoch 16 (mode slic, backbone r3d_18_tiny, objective proxy, seed 8, "
        "epochs 24); trained by [pretrain slic r3d_18_tiny 32px](#/experiments/1/runs/abc123).")
    assert encoder_note(encoder).endswith("trained by run abc123 (not in this tracking store).")


def test_what_is_no_pretrain_checkpoint_records_nothing(tmp_path: Path) -> None:
    """The stage itself says what is wrong with its checkpoint: recording the encoder never fails a stage."""
    assert read_encoder(tmp_path / "missing.pt") is None
    (tmp_path / "text.pt").write_text("not a checkpoint")
    assert read_encoder(tmp_path / "text.pt") is None
    torch.save({"model": {}}, tmp_path / "weights_only.pt")
    assert read_encoder(tmp_path / "weights_only.pt") is None
    assert record_encoder(None, write_checkpoint(tmp_path / "best.pt")) is None  # a rank that logs nothing


def test_a_run_records_its_encoder_beside_a_description_it_already_has(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from slic.tracking import stage_run, tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    with stage_run("pretrain", {}, name="pretrain slic r3d_18_tiny 32px") as pretrain:
        pass
    with stage_run("evaluate", {"ks": [1, 5]}) as run:
        run.set_tags({"mlflow.note.content": "- a note of the stage"})
        record_encoder(run, write_checkpoint(tmp_path / "best.pt", run_id=pretrain.run_id))
    with stage_run("clusters", {}) as other_store:  # trained against another store: named, not linked
        record_encoder(other_store, write_checkpoint(tmp_path / "elsewhere.pt", run_id="0" * 32))
    client = MlflowClient(tracking_uri())
    logged = client.get_run(run.run_id).data
    assert logged.params["ks"] == "[1, 5]" and logged.params["encoder.mode"] == "slic"
    assert logged.tags["slic.encoder_run_id"] == pretrain.run_id
    note = logged.tags["mlflow.note.content"]
    assert note.startswith("- a note of the stage\n\nEncoder: ")
    assert f"[pretrain slic r3d_18_tiny 32px](#/experiments/{pretrain.experiment_id}/runs/{pretrain.run_id})" in note
    assert client.get_run(other_store.run_id).data.tags["mlflow.note.content"].endswith(
        f"trained by run {'0' * 32} (not in this tracking store).")


def test_each_stage_names_the_checkpoint_it_works_from(tmp_path: Path) -> None:
    from slic.config import load
    from slic.encoder_lineage import stage_checkpoint

    (tmp_path / "params.yaml").write_text("linear_probe:\n  checkpoint: data/models/other/best.pt\n"
                                          "clusters:\n  embeddings: data/elsewhere.npz\n")
    config = load(tmp_path / "params.yaml")
    assert stage_checkpoint(config, "linear_probe") == "data/models/other/best.pt"
    for stage in ("embed", "evaluate", "transfer@hmdb51", "classify@hmdb51", "finetune"):
        assert stage_checkpoint(config, stage) == "data/models/pretrain/best.pt", stage
    assert stage_checkpoint(config, "promote") == "data/models/pretrain/best.pt"  # its candidate
    for stage in ("clusters", "spread_labels", "pretrain", "ablation", "manifest"):
        assert stage_checkpoint(config, stage) is None, stage  # other embeddings, or no encoder to start from
