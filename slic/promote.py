"""Stage `promote`: register the new encoder and move the `champion` alias only when it is better.

The decision is a small pure function (`decide`); the registry calls live in slic.registry. The
metric is a validation metric of reports/pretrain.json (best.pt was chosen on it), never a test
metric, so promotion never peeks at the test split. Every decision is written as tags on the new
version (metric, metric_value, champion_metric, champion_version, decision, reason) and returned
for reports/promotion.json.

Equal terms: every version carries the content fingerprint of the data it was trained and validated
on (`data_fingerprint`, from its checkpoint). When the champion's differs from the candidate's, their
recorded numbers are not comparable, so both encoders are evaluated on the candidate's validation
split (recall@1 of val queries against the train gallery, one centre clip per video: pretrain's
protocol) and those two numbers decide; both, and both fingerprints, are recorded.

Videos without classes (the `unlabelled` layout: no validation metric): both encoders are compared on the labelled
videos of `promote.labels` that neither trained on (slic.promote_labels); with too few of those the alias stays.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slic.config import PretrainConfig, PromoteConfig, to_dict

PRETRAIN_REPORT = "reports/pretrain.json"


class PromoteError(ValueError):
    """Promotion refused: a missing or unusable metric; the message names it and where."""


@dataclass(frozen=True)
class Decision:
    """Whether the candidate takes the alias, and why in words."""

    promote: bool
    reason: str


def decide(candidate: float, champion: float | None, *, higher_is_better: bool = True,
           min_delta: float = 0.0) -> Decision:
    """Promote when there is no champion, or the candidate beats it by more than `min_delta`.

    A tie is not a win: the alias stays where it is.
    """
    if champion is None:
        return Decision(True, f"no current champion; candidate {candidate:.6g}")
    gain = candidate - champion if higher_is_better else champion - candidate
    better = "higher" if higher_is_better else "lower"
    if gain > min_delta:
        return Decision(True, f"candidate {candidate:.6g} beats champion {champion:.6g} ({better} is better, "
                              f"margin {gain:.6g} > {min_delta:g})")
    return Decision(False, f"candidate {candidate:.6g} does not beat champion {champion:.6g} ({better} is better, "
                           f"margin {gain:.6g} <= {min_delta:g})")


def read_metric(report: str | Path, metric: str) -> float:
    """The value of `metric` in a JSON report; a missing or non-numeric one refuses, naming both."""
    path = Path(report)
    if not path.is_file():
        raise PromoteError(f"promote.metric {metric!r}: {path} not found; run the `pretrain` stage first")
    data = json.loads(path.read_text())
    value = data.get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        numbers = sorted(k for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
        found = "missing" if value is None else f"{value!r} is not a finite number"
        raise PromoteError(f"promote.metric {metric!r} {found} in {path}; numeric keys there: {', '.join(numbers)}")
    return float(value)


def _champion_metric(version: Any, metric: str) -> float:
    """The champion's recorded value of `metric`; refuses when it was judged on another metric."""
    if version.tags.get("metric") != metric or "metric_value" not in version.tags:
        raise PromoteError(f"promote.metric {metric!r} missing on the champion, version {version.version} of "
                           f"{version.name} (it records {version.tags.get('metric')!r}); compare on that metric or "
                           f"move the alias by hand")
    return float(version.tags["metric_value"])


def validation_split(train_config: dict[str, Any], manifest: str | Path, frames_dir: str | Path) -> tuple[list, list]:
    """(train, val) videos as pretrain selects them for `train_config` (clip_len, frame_step): gallery and queries."""
    from slic.data.clips import load_videos

    clip_len, step = int(train_config["clip_len"]), int(train_config.get("frame_step", 1))
    train = load_videos(manifest, frames_dir, splits=["train"], min_frames=2 * clip_len, frame_step=step)
    val = load_videos(manifest, frames_dir, splits=["val"], min_frames=clip_len, frame_step=step)
    if not train or not val:
        raise PromoteError(f"{manifest} with the shards of {frames_dir} has {len(train)} train and {len(val)} val "
                           "videos; comparing with the champion needs both (dvc repro validate extract)")
    return train, val


def validation_recall_of(encoder: Any, train: list, val: list) -> float:
    """Recall@1 of `val` against the `train` gallery with one centre clip per video: pretrain's validation.

    `encoder` is a slic.serving.VideoEncoder (the candidate's checkpoint, or the registered champion).
    """
    from slic.distributed import World
    from slic.pretrain import validation_recall

    device = next(encoder.model.parameters()).device
    cfg = PretrainConfig(clip_len=encoder.clip_len, size=encoder.size, workers=0,
                         bf16=bool(encoder.config.get("bf16", True)))
    return float(validation_recall(encoder.model, val, train, cfg, World(0, 1, 0, device)))


def _on_candidate_data(cfg: PromoteConfig, checkpoint: Path, train_config: dict[str, Any], data: str,
                       manifest: str | Path | None, frames_dir: str | Path | None, flow: Any) -> tuple[float, float]:
    """(candidate, champion) recall@1 on the candidate's validation split; refuses when the data on disk
    is not what the candidate was validated on."""
    from slic.pretrain import data_fingerprint
    from slic.serving import VideoEncoder, encoder_of

    if manifest is None or frames_dir is None:
        raise PromoteError(f"the champion of {cfg.model_name} was validated on other data; comparing it on the "
                           "candidate's validation split needs the manifest and frames_dir")
    train, val = validation_split(train_config, manifest, frames_dir)
    current = data_fingerprint(train, val, frames_dir=frames_dir, flow=flow)
    if current != data:
        raise PromoteError(f"{checkpoint} was trained on data with content fingerprint {data or 'unknown'}, but "
                           f"{manifest} and {frames_dir} hold {current}; re-run `dvc repro pretrain` first")
    candidate = validation_recall_of(VideoEncoder(checkpoint), train, val)
    champion_encoder = encoder_of(load_champion(cfg.model_name, cfg.alias))
    if champion_encoder.frame_step != int(train_config.get("frame_step", 1)):
        # the same videos, sampled as the champion was trained to see them
        champion_config = {"clip_len": champion_encoder.clip_len, "frame_step": champion_encoder.frame_step}
        ids = {v.video_id for v in train + val}
        train, val = ([v for v in videos if v.video_id in ids]
                      for videos in validation_split(champion_config, manifest, frames_dir))
    champion = validation_recall_of(champion_encoder, train, val)
    return candidate, champion


def rate_note(candidate_rate: float, champion_rate: str | None) -> str:
    """What the reason adds when the champion was trained at another extract.fps than the candidate (`champion_rate`:
    its version's frame_rate tag; None for a version from before the tag): both are measured on the candidate's
    shards, so the champion sees frames at a rate it was not trained on, while it is served at its own."""
    def named(rate: float) -> str:
        return "native frames" if rate <= 0 else f"{rate:g} fps"

    if champion_rate is None or float(champion_rate) == candidate_rate:
        return ""
    return (f"; the champion was trained on {named(float(champion_rate))} and is measured here on the candidate's "
            f"{named(candidate_rate)} (extract.fps)")


def _decide_on_equal_terms(cfg: PromoteConfig, candidate: float, data: str, champion: Any, checkpoint: Path,
                           train_config: dict[str, Any], manifest: str | Path | None, frames_dir: str | Path | None,
                           flow: Any, frame_rate: float = 0.0) -> tuple[Decision, dict[str, Any]]:
    """The decision and what to record: recorded metrics on the same data, else both re-evaluated (at the
    candidate's `frame_rate`, which the reason names when the champion's differs)."""
    if champion is None:
        return decide(candidate, None, higher_is_better=cfg.higher_is_better, min_delta=cfg.min_delta), {
            "champion_metric": "none", "champion_version": "none", "champion_data_fingerprint": "none",
            "compared_on": "no champion"}
    champion_data = champion.tags.get("data_fingerprint", "")
    recorded = {"champion_version": champion.version, "champion_data_fingerprint": champion_data or "unknown"}
    if data and champion_data == data:
        champion_value = _champion_metric(champion, cfg.metric)
        decision = decide(candidate, champion_value, higher_is_better=cfg.higher_is_better, min_delta=cfg.min_delta)
        return decision, {**recorded, "champion_metric": champion_value, "compared_on": "same data"}
    ours, theirs = _on_candidate_data(cfg, checkpoint, train_config, data, manifest, frames_dir, flow)
    decision = decide(ours, theirs, higher_is_better=True, min_delta=cfg.min_delta)
    reason = (f"validated on other data (champion {champion_data or 'unknown'}, candidate {data}); on the "
              f"candidate's validation split, recall@1: {decision.reason}"
              f"{rate_note(frame_rate, champion.tags.get('frame_rate'))}")
    same_metric = champion.tags.get("metric") == cfg.metric and "metric_value" in champion.tags
    return Decision(decision.promote, reason), {
        **recorded, "champion_metric": float(champion.tags["metric_value"]) if same_metric else "none",
        "compared_on": "candidate validation split", "candidate_val_recall_at_1": ours,
        "champion_val_recall_at_1": theirs}


def trained_with_labels(report: str | Path) -> bool:
    """False when pretrain's report says its videos had no classes (`labelled: false`): no metric was measured."""
    path = Path(report)
    return not path.is_file() or json.loads(path.read_text()).get("labelled", True) is not False


def alike_veto(candidate_alike: float | None, champion_alike: float | None) -> str:
    """Why a candidate must not take the alias whatever recall@1 on the user's labels says: its embeddings of the
    labelled videos are nearly all alike (mean pairwise cosine >= ALIKE_COSINE, evaluate's warning), as an untrained
    or collapsed encoder's are, and the champion's are not. On ucf101_6 every trained encoder is at 0.08 or less and
    an untrained one at 0.97 (bench/label_free.py), while a judge of a few dozen labelled videos can favour either
    by a video or two. '' when there is no such reason (both alike: recall decides)."""
    from slic.retrieval import ALIKE_COSINE

    if candidate_alike is None or champion_alike is None or not candidate_alike >= ALIKE_COSINE > champion_alike:
        return ""
    return (f"the candidate's embeddings of them are nearly all alike (mean pairwise cosine {candidate_alike:.3f} >= "
            f"{ALIKE_COSINE}; the champion's {champion_alike:.3f}), as an untrained or collapsed encoder's are, so "
            "it does not take the alias whatever recall@1 says: check that pretrain trained (its loss, "
            "pretrain.epochs)")


def decide_without_labels(cfg: PromoteConfig, champion: Any, checkpoint: Path, manifest: str | Path | None,
                          frames_dir: str | Path | None, frame_rate: float = 0.0) -> tuple[Decision, dict[str, Any]]:
    """A candidate trained on videos without classes has no validation metric: it takes the alias when there is no
    champion (as any first candidate does); otherwise both encoders are compared on the labelled videos of
    `cfg.labels` that neither trained on (slic.promote_labels), and without enough of those the alias stays."""
    if champion is None:
        return Decision(True, "no current champion; the candidate was trained on videos without class labels, so "
                              "nothing was measured"), {
            "champion_metric": "none", "champion_version": "none", "champion_data_fingerprint": "none",
            "compared_on": "no labels"}
    recorded = {"champion_metric": "none", "champion_version": champion.version,
                "champion_data_fingerprint": champion.tags.get("data_fingerprint", "") or "unknown"}
    unlabelled = "the candidate was trained on videos without class labels (no validation metric)"
    by_hand = (f"{cfg.alias} stays on version {champion.version}; to serve the candidate, move the alias by hand: "
               f"MlflowClient().set_registered_model_alias({cfg.model_name!r}, {cfg.alias!r}, VERSION) with the "
               "version in reports/promotion.json")
    from slic.promote_labels import compare_on_labels, no_labels_file, sign_test_p
    from slic.serving import VideoEncoder, encoder_of

    if not Path(cfg.labels).is_file() or manifest is None or frames_dir is None:  # before loading either encoder
        missing = (no_labels_file(cfg.labels) if manifest is not None and frames_dir is not None
                   else "comparing it on your labels needs the manifest and frames_dir")
        return Decision(False, f"{unlabelled} and {missing}; {by_hand}"), {**recorded, "compared_on": "no labels"}

    champion_encoder = encoder_of(load_champion(cfg.model_name, cfg.alias))
    found = compare_on_labels(cfg.labels, VideoEncoder(checkpoint), champion_encoder, manifest, frames_dir)
    counts = {"labels_file": str(cfg.labels), "labels_held_out": found.held_out, "labels_gallery": found.labelled,
              "labels_only_candidate_right": found.only_candidate, "labels_only_champion_right": found.only_champion}
    if found.candidate is None or found.champion is None:
        return Decision(False, f"{unlabelled} and {found.why_not}; {by_hand}"), {
            **recorded, **counts, "compared_on": "no labels"}
    decision = decide(found.candidate, found.champion, higher_is_better=True, min_delta=cfg.min_delta)
    p_value = sign_test_p(found.only_candidate, found.only_champion)
    veto = alike_veto(found.candidate_alike, found.champion_alike)
    reason = (f"{unlabelled}; on the {found.held_out} labelled videos of {cfg.labels} whose labels neither encoder "
              f"trained on (against {found.labelled - 1} others, {found.classes} classes), recall@1: "
              f"{decision.reason}; the candidate names {found.only_candidate} of them rightly that the champion does "
              f"not, the champion {found.only_champion} (sign test p = {p_value:.2g}: below 0.05 the lead is unlikely "
              f"to be chance){'; but ' + veto if veto else ''}{rate_note(frame_rate, champion.tags.get('frame_rate'))}")
    return Decision(decision.promote and not veto, reason), {
        **recorded, **counts, "labels_sign_test_p": p_value, "compared_on": "your labels",
        "candidate_labels_recall_at_1": found.candidate, "champion_labels_recall_at_1": found.champion,
        "candidate_labels_mean_pairwise_cosine": found.candidate_alike,
        "champion_labels_mean_pairwise_cosine": found.champion_alike}


def example_video(manifest: str | Path | None) -> str | None:
    """The first video of `manifest` that exists on disk: the served model's input example (None without one)."""
    if manifest is None or not Path(manifest).is_file():
        return None
    from slic.data.datasets import read_manifest

    return next((path for path in read_manifest(manifest)["path"] if Path(path).is_file()), None)


JUDGEMENT_TAGS = ("metric_value", "champion_metric", "champion_version", "champion_data_fingerprint", "compared_on",
                  "candidate_val_recall_at_1", "champion_val_recall_at_1", "candidate_labels_recall_at_1",
                  "champion_labels_recall_at_1", "labels_file", "labels_held_out", "labels_gallery",
                  "labels_only_candidate_right", "labels_only_champion_right", "labels_sign_test_p",
                  "candidate_labels_mean_pairwise_cosine", "champion_labels_mean_pairwise_cosine")


def promote(cfg: PromoteConfig, report: str | Path = PRETRAIN_REPORT, *, manifest: str | Path | None = None,
            frames_dir: str | Path | None = None, flow: Any = None) -> dict[str, Any]:
    """Register cfg.checkpoint as a new version of cfg.model_name; move cfg.alias when it wins.

    A champion validated on other data (another content fingerprint) is compared on the candidate's
    validation split from `manifest` and `frames_dir` (and `flow`, the flow view pretrain used), so the
    alias never moves on numbers measured on different videos.

    Weights already registered (a version tagged with the checkpoint's sha256: a rerun for new labels, another
    `min_delta` or new promote code, with best.pt unchanged) are not registered again: the champion's own weights
    need no comparison, and another version's are judged again on that version, whose judgement tags are replaced.
    """
    import torch

    from slic import registry, tracking
    from slic.checkpoints import frame_rate_of_checkpoint
    from slic.encoder_lineage import record_encoder
    from slic.file_hash import file_sha256

    # refuse before touching the registry; a candidate trained without classes has no metric
    candidate = read_metric(report, cfg.metric) if trained_with_labels(report) else None
    checkpoint = Path(cfg.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to promote; run the `pretrain` stage first")
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    train_config, data = payload["config"], (payload.get("fingerprint") or {}).get("data", "")
    frame_rate = frame_rate_of_checkpoint(payload)  # files are decoded at it (0.0: native)
    sha256 = file_sha256(checkpoint)
    champion = registry.alias_version(cfg.model_name, cfg.alias)
    registered = registry.version_tagged(cfg.model_name, "checkpoint_sha256", sha256)
    if registered is not None and champion is not None and registered.version == champion.version:
        decision = Decision(False, f"{checkpoint} holds the champion's own weights (sha256 {sha256[:12]}), so there "
                                   "is nothing to compare and nothing to register")
        compared: dict[str, Any] = {"compared_on": "itself", "champion_version": champion.version}
    elif candidate is None:
        decision, compared = decide_without_labels(cfg, champion, checkpoint, manifest, frames_dir, frame_rate)
    else:
        decision, compared = _decide_on_equal_terms(cfg, candidate, data, champion, checkpoint, train_config,
                                                    manifest, frames_dir, flow, frame_rate)
    pretrain = json.loads(Path(report).read_text())
    name = (f"promote {train_config.get('mode')} {train_config.get('backbone')} {train_config.get('size')}px "
            f"-> {cfg.model_name}")
    measured = {} if candidate is None else {"metric_value": candidate}  # no value: nothing to compare later
    tags = {"metric": cfg.metric, **measured, "data_fingerprint": data or "unknown", **compared,
            "decision": "already champion" if compared["compared_on"] == "itself" else "promoted" if decision.promote
            else "not compared" if compared["compared_on"] == "no labels" else "rejected",
            "reason": decision.reason,
            "pretrain_run_id": pretrain.get("mlflow_run_id", ""), "checkpoint": str(checkpoint),
            "checkpoint_sha256": sha256, "frame_rate": frame_rate}
    described = (f"**{tags['decision']}** ({time.strftime('%Y-%m-%d %H:%M')}): {decision.reason}. Trained in mode "
                 f"{train_config.get('mode')}, {train_config.get('backbone')} at {train_config.get('size')} px; "
                 f"pretrain run {tags['pretrain_run_id'] or 'unknown'}; every number of the judgement is in the tags.")
    with tracking.stage_run("promote", to_dict(cfg), name=name) as run:
        record_encoder(run, checkpoint)  # the candidate: its settings beside the decision, a link to its pretrain run
        if manifest is not None and Path(manifest).is_file():  # the data the candidate was validated on
            run.log_input(manifest, data or "unknown", splits=("train", "val"), context="validation")
        if compared["compared_on"] == "your labels":  # the labels that judged the two, kept with the decision
            run.log_artifact(Path(cfg.labels), "labels")
        if registered is None:
            model_uri = registry.log_encoder(checkpoint, embedding_dim=int(train_config["out_dim"]),
                                             example_video=example_video(manifest))
            version = registry.register_version(model_uri, cfg.model_name, tags, description=described)
        else:  # the same bytes: that version, judged again (the champion's own tags stay as they are)
            version, model_uri = registered, f"models:/{cfg.model_name}/{registered.version}"
            if compared["compared_on"] != "itself":
                stale = [key for key in JUDGEMENT_TAGS if key in registered.tags and key not in tags]
                registry.retag_version(cfg.model_name, version.version, tags, drop=stale, description=described)
        if decision.promote:
            registry.set_alias(cfg.model_name, cfg.alias, version.version)
        run.log_metrics({**({} if candidate is None else {cfg.metric: candidate}),
                         **{k: v for k, v in compared.items() if isinstance(v, (int, float))
                            and (k.endswith(("recall_at_1", "mean_pairwise_cosine")) or k.startswith("labels_"))}})
        run.set_tags({f"promote.{k}": v for k, v in tags.items()} | {"promote.version": version.version,
                                                                     "promote.new_version": registered is None,
                                                                     "slic.data_fingerprint": data or "unknown"})
        run_id = run.run_id
    return {"model_name": cfg.model_name, "version": version.version, "new_version": registered is None,
            "alias": cfg.alias, "alias_version": version.version if decision.promote else champion.version,
            "promoted": decision.promote, "model_uri": model_uri, "mlflow_run_id": run_id, **tags}


def load_champion(model_name: str = "slic-encoder", alias: str = "champion") -> Any:
    """The pyfunc model `models:/<model_name>@<alias>`: `.predict(DataFrame({'path': [...]}))`."""
    from slic import registry

    return registry.load_model(f"models:/{model_name}@{alias}")


def embed_videos(paths: Iterable[str | Path], model_uri: str = "models:/slic-encoder@champion") -> np.ndarray:
    """Embed video files with a registered encoder: one row per path."""
    import pandas as pd

    from slic import registry

    model = registry.load_model(model_uri)
    return np.asarray(model.predict(pd.DataFrame({"path": [str(p) for p in paths]})))
