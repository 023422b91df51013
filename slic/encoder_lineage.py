"""Which encoder a stage's MLflow run used, recorded on that run.

embed, evaluate, clusters, spread_labels, transfer@, classify@, linear_probe, finetune and promote (its candidate)
each work from a pretrain checkpoint. Their runs record it: the tag `slic.encoder_run_id` (the pretrain run that
wrote the checkpoint, which the checkpoint names), the settings that made its weights as params `encoder.<key>`
(mode, seed, objective, epochs, ...), and a line in the run's description linking to that pretrain run. So in the
MLflow UI a recall, a top-1 or a group of videos leads back to its encoder, and the runs of several experiments
(seeds, modes) compare by the encoder's settings as columns of the runs table, where before an evaluate run of seed
7 and one of seed 8 had the same params.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

PARAM_PREFIX = "encoder."
# Settings of how fast or where a run trained, not of what it learned (`labels` is a path: the classes it held are
# in the data fingerprint).
MACHINE_ONLY = frozenset({"workers", "frame_cache_mb", "device", "compile", "prefetch", "cudnn_benchmark", "out",
                          "labels"})


@dataclass(frozen=True)
class Encoder:
    """A pretrain checkpoint as its runs record it."""

    checkpoint: str
    run_id: str  # the pretrain stage's MLflow run that wrote it; '' when the checkpoint names none
    settings: dict[str, Any]  # its pretrain settings, less MACHINE_ONLY
    data_fingerprint: str  # the content fingerprint of the videos it trained on ('' when unknown)
    best_epoch: int  # the epoch whose weights it holds (-1 when unknown)


def read_encoder(checkpoint: str | Path) -> Encoder | None:
    """The encoder a pretrain checkpoint holds, or None when the file is missing or is no pretrain checkpoint (the
    stage itself says what is wrong with it; a run only records what can be read)."""
    import torch

    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - a missing or foreign file: recorded as nothing, reported by the stage
        return None
    config = payload.get("config") if isinstance(payload, dict) else None
    if not isinstance(config, dict):
        return None
    fingerprint = payload.get("fingerprint") if isinstance(payload.get("fingerprint"), dict) else {}
    state = payload.get("state") if isinstance(payload.get("state"), dict) else {}
    return Encoder(checkpoint=str(checkpoint), run_id=str(payload.get("mlflow_run_id") or ""),
                   settings={k: v for k, v in config.items() if k not in MACHINE_ONLY},
                   data_fingerprint=str(fingerprint.get("data") or ""), best_epoch=int(state.get("best_epoch", -1)))


def encoder_params(encoder: Encoder) -> dict[str, str]:
    """The encoder's settings as run params `encoder.<key>` (MLflow keeps params as strings)."""
    return {f"{PARAM_PREFIX}{key}": str(value) for key, value in sorted(encoder.settings.items())}


def encoder_tags(encoder: Encoder) -> dict[str, str]:
    """Tags naming the encoder: its pretrain run (search ``tags.`slic.encoder_run_id` = '...'`` for every run that
    used it), its file, the data it trained on and the epoch it holds."""
    tags = {"slic.encoder_checkpoint": encoder.checkpoint}
    if encoder.run_id:
        tags["slic.encoder_run_id"] = encoder.run_id
    if encoder.data_fingerprint:
        tags["slic.encoder_data_fingerprint"] = encoder.data_fingerprint
    if encoder.best_epoch >= 0:
        tags["slic.encoder_epoch"] = str(encoder.best_epoch)
    return tags


def encoder_note(encoder: Encoder, run_name: str = "", experiment_id: str = "") -> str:
    """One markdown line for the run's description: the encoder's file, epoch and settings in brief, and a link to
    its pretrain run when the store has it (`run_name`, `experiment_id`: that run's; the link is relative, so it
    opens in whichever MLflow UI shows the run)."""
    settings = encoder.settings
    brief = ", ".join(f"{key} {settings[key]}" for key in ("mode", "backbone", "objective", "seed", "epochs")
                      if key in settings)
    epoch = f", epoch {encoder.best_epoch}" if encoder.best_epoch >= 0 else ""
    if encoder.run_id and experiment_id:
        made = f"trained by [{run_name or encoder.run_id}](#/experiments/{experiment_id}/runs/{encoder.run_id})"
    elif encoder.run_id:
        made = f"trained by run {encoder.run_id} (not in this tracking store)"
    else:
        made = "no pretrain run recorded"
    return f"Encoder: `{encoder.checkpoint}`{epoch} ({brief}); {made}."


def record_encoder(run: Any, checkpoint: str | Path) -> Encoder | None:
    """Record on `run` (a `slic.stage_run.StageRun`, or None on a rank that logs nothing) the encoder of
    `checkpoint`: params, tags and a line of the run's description (added to a description already there). Returns
    the encoder, or None when there is no run or the checkpoint cannot be read."""
    if run is None:
        return None
    import mlflow

    return record_encoder_on(mlflow.MlflowClient(), run.run_id, checkpoint)


def record_stage_encoder(run: Any, config: Any, stage: str) -> Encoder | None:
    """`record_encoder` for the checkpoint `stage` works from by its params (`stage_checkpoint`; none for a stage that
    works from none), the one the flow's record of that stage names when DVC skipped it."""
    checkpoint = stage_checkpoint(config, stage)
    return None if checkpoint is None else record_encoder(run, checkpoint)


def record_encoder_on(client: Any, run_id: str, checkpoint: str | Path) -> Encoder | None:
    """`record_encoder` on the run `run_id` of `client` (an MlflowClient): also for a run this process did not open,
    such as the flow's record of a stage DVC skipped."""
    from mlflow.entities import Param, RunTag
    from mlflow.exceptions import MlflowException

    encoder = read_encoder(checkpoint)
    if encoder is None:
        return None
    run_name, experiment_id = "", ""
    if encoder.run_id:
        try:
            made = client.get_run(encoder.run_id)
            run_name, experiment_id = made.info.run_name or "", made.info.experiment_id
        except MlflowException:  # trained against another tracking store, or its run was deleted
            pass
    said = client.get_run(run_id).data.tags.get("mlflow.note.content", "")
    note = encoder_note(encoder, run_name, experiment_id)
    tags = {**encoder_tags(encoder), "mlflow.note.content": f"{said.rstrip()}\n\n{note}" if said else note}
    client.log_batch(run_id, params=[Param(key, value) for key, value in encoder_params(encoder).items()],
                     tags=[RunTag(key, value) for key, value in tags.items()])
    return encoder


def stage_checkpoint(config: Any, stage: str) -> str | None:
    """The pretrain checkpoint a stage works from, by its params (`config`: a `slic.config.Config`; promote's is its
    candidate), or None for a stage that works from none (or trains its own, as ablation)."""
    if stage in ("linear_probe", "finetune", "promote"):
        return str(getattr(config, stage).checkpoint)
    embeddings = {"evaluate": config.evaluate.embeddings, "clusters": config.clusters.embeddings,
                  "spread_labels": config.clusters.embeddings}
    if stage in embeddings and embeddings[stage] != config.embed.out:  # embeddings of some other encoder
        return None
    if stage in ("embed", *embeddings) or stage.partition("@")[0] in ("transfer", "classify"):
        return str(config.embed.checkpoint)
    return None
