"""MLflow, and only here: one run per stage (nested under a pipeline run), the pipeline's parent runs.

Where runs go is `slic.mlflow_store` (embedded SQLite store by default, MLFLOW_TRACKING_URI for a
server); the run of one stage is `slic.stage_run.StageRun`; the registry is `slic.registry`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from slic.mlflow_store import (EXPERIMENT, TrackingError, check_reachable, client as _client,  # noqa: F401
                               experiment_id as _experiment_id, tracking_uri)
from slic.stage_run import (RunContext, StageRun, current_run_context, dataset_label, git_tags,  # noqa: F401
                            manifest_dataset, mark_dead_runs, params_tags, process_tags, using_run_context)

MAX_TAG_CHARS = 8000  # MLflow's longest tag value


def active_run_id() -> str | None:
    """The id of the MLflow run open in this process (a stage's run), or None.

    Checkpoints record it, so a resumed stage continues its run. Never imports MLflow itself: when
    nothing imported it, no run can be open.
    """
    import sys

    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    return run.info.run_id if run is not None else None


def run_context(config: Any, params: str | Path, eval_set: str = "") -> RunContext:
    """The context of a stage's runs (`using_run_context`): tags `slic.data.root`, `.layout`, `.split` of the videos it
    reads (eval set `eval_set`'s for its stages, else `manifest`'s), `slic.seed` (pretrain.seed), and those of the
    params file (`params_tags`); names end with 'seed <pretrain.seed> <label of manifest.root>', the encoder's."""
    data = config.eval_sets.get(eval_set, config.manifest)  # an unknown set's stage stops with its own line
    tags = {"slic.data.root": str(data.root), "slic.data.layout": str(data.layout), "slic.data.split": str(data.split),
            "slic.seed": str(config.pretrain.seed), **params_tags(params)}
    return RunContext(tags, f"seed {config.pretrain.seed} {dataset_label(config.manifest.root)}")


def checkout_context(repo: str | Path, stage: str = "") -> RunContext:
    """`run_context` of the checkout's params.yaml (for the eval set of a stage `group@set`); an empty context when
    it does not load (the stage then stops with the line naming the key)."""
    from slic.config import ConfigError, load

    params = Path(repo) / "params.yaml"
    try:
        return run_context(load(params), params, stage.partition("@")[2])
    except (ConfigError, OSError):
        return RunContext()


@contextmanager
def stage_run(stage: str, params: Mapping[str, Any], *, system_metrics: bool = False,
              experiment: str = EXPERIMENT, name: str | None = None, defer: bool = False,
              tags: Mapping[str, Any] | None = None) -> Iterator[StageRun]:
    """An MLflow run for a stage, named `name` (what it is, e.g. 'pretrain slic r3d_18_tiny 32px'), with its params
    and `tags` (beside `slic.stage`). A top-level run's name ends with the process's `RunContext` suffix ('seed 7
    ucf101_6') and every run gets its tags (the dataset, the params file).

    Nested under the run that is open in this process (the ablation's per-mode runs), else under
    SLIC_PARENT_RUN_ID when a flow sets it. With `defer`, the stage opens it with `StageRun.start` (a
    resumed stage continues its checkpoint's run). It ends FINISHED, FAILED on an exception, KILLED on
    Ctrl-C; a process killed outright is marked KILLED by the next run of its stage (`mark_dead_runs`).
    """
    import logging

    import mlflow
    from mlflow.exceptions import MlflowException

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = _experiment_id(experiment)
    except MlflowException as exc:
        raise TrackingError(f"MLflow at {uri} refused to start a run: {exc}".splitlines()[0]) from exc
    run = StageRun(stage, name or stage, params, experiment_id, system_metrics=system_metrics, tags=tags)
    if not defer:
        run.start()
    try:
        yield run
    except KeyboardInterrupt:
        run.end("KILLED")
        raise
    except BaseException:
        run.end("FAILED")
        raise
    run.end()


# --- Pipeline runs: one parent per flow run, one nested run per stage ---------------------------

MAX_PARAM_CHARS = 6000  # MLflow's longest param value
BATCH_PARAMS = 100  # MLflow's most params in one log_batch


def start_pipeline_run(name: str, tags: Mapping[str, Any], experiment: str = EXPERIMENT,
                       params: Mapping[str, str] | None = None, context: RunContext | None = None) -> str:
    """Create (not activate) a parent run for a pipeline run; stages nest under its id. `params` (every setting of
    params.yaml, `slic.config.flat_settings`) become its params, so pipeline runs compare setting by setting;
    `context` (`checkout_context`) gives it the dataset's tags and its name the seed and the dataset.

    Pipeline runs of this host whose process is gone are marked KILLED first (`mark_dead_runs`).
    """
    import mlflow
    from mlflow.entities import Param

    client = _client()
    mlflow.set_tracking_uri(tracking_uri())
    experiment_id = _experiment_id(experiment)
    mark_dead_runs("pipeline", experiment_id)
    context = context or RunContext()
    run = client.create_run(experiment_id, run_name=context.name(name), tags={
        **context.tags, "slic.stage": "pipeline", **process_tags(), **{k: str(v) for k, v in tags.items()}})
    logged = [Param(key, str(value)[:MAX_PARAM_CHARS]) for key, value in (params or {}).items()]
    for start in range(0, len(logged), BATCH_PARAMS):
        client.log_batch(run.info.run_id, params=logged[start:start + BATCH_PARAMS])
    return run.info.run_id


def end_pipeline_run(run_id: str, *, failed: bool = False, description: str = "",
                     metrics: Mapping[str, float] | None = None, stale: Sequence[str] = ()) -> None:
    """Mark a parent run finished or failed; `description` (markdown: what the run made) becomes its note, the
    first thing the MLflow UI shows on the run's page; `metrics` (the fresh reports' headline numbers,
    `slic.summary.headline_metrics`) its metrics, so the runs table sorts pipeline runs by them; `stale` (the
    reports left out of them, made before a change of their inputs) tag `slic.stale_reports`, comma-separated."""
    import mlflow

    client = _client()
    if stale:
        client.set_tag(run_id, "slic.stale_reports", ",".join(stale)[:MAX_TAG_CHARS])
    if description:
        client.set_tag(run_id, "mlflow.note.content", description[:MAX_TAG_CHARS])
    if metrics:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(key, float(value), now, 0)
                                          for key, value in metrics.items()])
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


def stage_runs(parent_run_id: str) -> dict[str, str]:
    """{stage: run id} of the runs nested directly under a parent run (latest per stage)."""
    client = _client()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                              order_by=["attributes.start_time ASC"])
    return {run.data.tags.get("slic.stage", run.info.run_name): run.info.run_id for run in runs}


def record_stage(stage: str, report: Mapping[str, Any], parent_run_id: str, *, cached: bool,
                 checkpoint: str | None = None, context: RunContext | None = None) -> str:
    """A nested run for a stage that logs no run itself (or that DVC skipped): its report's numbers, the
    reason as tag `slic.skipped` when the stage skipped (videos without classes), the report's `advice`
    (the manifest's notes) as the run's description, and the encoder of `checkpoint` when the stage works from one
    (`slic.encoder_lineage`), as the stage's own run records it; `context` (`checkout_context`) its dataset's
    tags and its name's seed and dataset.

    A report with `manifest` and `content_fingerprint` (extract, flow) also gives the run its input dataset.
    """
    import mlflow

    client = _client()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    skipped = {"slic.skipped": str(report.get("reason", "yes"))} if report.get("skipped") else {}  # no labels
    advice = [str(line) for line in report.get("advice") or []]  # the run page's description shows them first
    noted = {"mlflow.note.content": "".join(f"- {line}\n" for line in advice)[:MAX_TAG_CHARS]} if advice else {}
    context = context or RunContext()
    run = client.create_run(experiment_id, run_name=context.name(stage), tags={
        **context.tags, "slic.stage": stage, "mlflow.parentRunId": parent_run_id, "slic.cached": str(cached).lower(),
        **skipped, **noted})
    numbers = {k.replace("@", "_at_"): float(v) for k, v in report.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers:
        mlflow.set_tracking_uri(tracking_uri())
        client.log_batch(run.info.run_id, metrics=[
            mlflow.entities.Metric(k, v, int(time.time() * 1000), 0) for k, v in numbers.items()])
    manifest, digest = report.get("manifest"), report.get("content_fingerprint")
    if isinstance(manifest, str) and isinstance(digest, str) and Path(manifest).is_file():
        from mlflow.entities import DatasetInput, InputTag

        dataset = manifest_dataset(manifest, digest)._to_mlflow_entity()
        client.log_inputs(run.info.run_id, datasets=[
            DatasetInput(dataset, tags=[InputTag("mlflow.data.context", stage)])])
    if checkpoint and not report.get("skipped"):
        from slic.encoder_lineage import record_encoder_on

        record_encoder_on(client, run.info.run_id, checkpoint)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def run_link(run_id: str) -> str:
    """A browser link to a run: on the tracking server, or on `mlflow ui` (SLIC_MLFLOW_UI_URL) for a local store."""
    uri = tracking_uri()
    base = uri if uri.startswith(("http://", "https://")) else os.environ.get("SLIC_MLFLOW_UI_URL",
                                                                               "http://127.0.0.1:5000")
    experiment_id = _client().get_run(run_id).info.experiment_id
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
