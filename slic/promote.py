"""Stage `promote`: register the new encoder and move the `champion` alias only when it is better.

The decision is a small pure function (`decide`); the registry calls live in slic.tracking. The
metric is a validation metric of reports/pretrain.json (best.pt was chosen on it), never a test
metric, so promotion never peeks at the test split. Every decision is written as tags on the new
version (metric, metric_value, champion_metric, champion_version, decision, reason) and returned
for reports/promotion.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slic.config import PromoteConfig, to_dict

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


def promote(cfg: PromoteConfig, report: str | Path = PRETRAIN_REPORT) -> dict[str, Any]:
    """Register cfg.checkpoint as a new version of cfg.model_name; move cfg.alias when it wins."""
    import torch

    from slic import tracking

    candidate = read_metric(report, cfg.metric)  # refuse before touching the registry
    checkpoint = Path(cfg.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint to promote; run the `pretrain` stage first")
    champion = tracking.alias_version(cfg.model_name, cfg.alias)
    champion_value = _champion_metric(champion, cfg.metric) if champion else None
    decision = decide(candidate, champion_value, higher_is_better=cfg.higher_is_better, min_delta=cfg.min_delta)
    pretrain = json.loads(Path(report).read_text())
    dim = int(torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]["out_dim"])
    with tracking.stage_run("promote", to_dict(cfg)) as run:
        model_uri = tracking.log_encoder(checkpoint, embedding_dim=dim)
        tags = {"metric": cfg.metric, "metric_value": candidate,
                "champion_metric": "none" if champion_value is None else champion_value,
                "champion_version": champion.version if champion else "none",
                "decision": "promoted" if decision.promote else "rejected", "reason": decision.reason,
                "pretrain_run_id": pretrain.get("mlflow_run_id", ""), "checkpoint": str(checkpoint)}
        version = tracking.register_version(model_uri, cfg.model_name, tags)
        if decision.promote:
            tracking.set_alias(cfg.model_name, cfg.alias, version.version)
        run.log_metrics({cfg.metric: candidate})
        run.set_tags({f"promote.{k}": v for k, v in tags.items()} | {"promote.version": version.version})
        run_id = run.run_id
    return {"model_name": cfg.model_name, "version": version.version, "alias": cfg.alias,
            "alias_version": version.version if decision.promote else champion.version,
            "promoted": decision.promote, "model_uri": model_uri, "mlflow_run_id": run_id, **tags}


def load_champion(model_name: str = "slic-encoder", alias: str = "champion") -> Any:
    """The pyfunc model `models:/<model_name>@<alias>`: `.predict(DataFrame({'path': [...]}))`."""
    from slic import tracking

    return tracking.load_model(f"models:/{model_name}@{alias}")


def embed_videos(paths: Iterable[str | Path], model_uri: str = "models:/slic-encoder@champion") -> np.ndarray:
    """Embed video files with a registered encoder: one row per path."""
    import pandas as pd

    from slic import tracking

    model = tracking.load_model(model_uri)
    return np.asarray(model.predict(pd.DataFrame({"path": [str(p) for p in paths]})))
