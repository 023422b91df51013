"""The MLflow run of one stage (`StageRun`), its input dataset, and the bookkeeping that keeps no run RUNNING forever.

`slic.tracking.stage_run` opens one; a resumed stage continues the run its checkpoint names. Every run
records where its process runs (host, pid, start time), so the next run of the stage can mark a run
whose process is gone (killed, out of memory, power loss) KILLED instead of leaving it RUNNING.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slic.mlflow_store import TrackingError, tracking_uri


class StageRun:
    """The MLflow run of one stage: params, metrics per step, files as artifacts, its input dataset.

    Created by `stage_run`. A deferred run (`stage_run(..., defer=True)`) is opened by `start`, which
    can continue an earlier run (a resumed stage names the run its checkpoint recorded) instead of
    opening another; any logging call opens a deferred run that was not started yet.
    """

    def __init__(self, stage: str, name: str, params: Mapping[str, Any], experiment_id: str, *,
                 system_metrics: bool = False, tags: Mapping[str, Any] | None = None) -> None:
        self.stage, self.name, self.experiment_id = stage, name, experiment_id
        self.params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}
        self.tags = {k: str(v) for k, v in (tags or {}).items()}
        self.system_metrics = system_metrics
        self.resumed = False  # True when `start` continued an earlier run
        self._run_id: str | None = None
        self._ended = False
        self._input: tuple[str, tuple[str, ...] | None, str] | None = None

    @property
    def run_id(self) -> str:
        """The MLflow run id (opening a deferred run first)."""
        if self._run_id is None:
            self.start()
        assert self._run_id is not None
        return self._run_id

    @property
    def started(self) -> bool:
        """Whether the MLflow run exists yet (a deferred run does not until `start`)."""
        return self._run_id is not None

    def expect_input(self, manifest: str | Path, *, splits: Sequence[str] | None = None,
                     context: str = "training") -> None:
        """Log `manifest` (rows of `splits`) as the input dataset once `start` is given its digest."""
        self._input = (str(manifest), tuple(splits) if splits else None, context)

    def start(self, resume_run_id: str | None = None, digest: str | None = None) -> None:
        """Open the run (continuing `resume_run_id` when the store still has it), then record `digest`.

        `digest` is the content fingerprint of the data the stage reads: tag `slic.data_fingerprint`,
        and the digest of the input dataset named by `expect_input`. On a run that is already open, a
        different `resume_run_id` is only recorded (tag `slic.resumes_run`).
        """
        if self._run_id is None:
            self._open(resume_run_id)
        elif resume_run_id and resume_run_id != self._run_id:
            self.set_tags({"slic.resumes_run": resume_run_id})
        if digest:
            self.set_tags({"slic.data_fingerprint": digest})
            if self._input is not None:
                manifest, splits, context = self._input
                self.log_input(manifest, digest, splits=splits, context=context)
                self._input = None

    def _open(self, resume_run_id: str | None) -> None:
        import mlflow
        from mlflow.exceptions import MlflowException

        client = mlflow.MlflowClient()
        active = mlflow.active_run()
        parent = active.info.run_id if active else os.environ.get("SLIC_PARENT_RUN_ID")
        context = current_run_context()
        tags = {**context.tags, "slic.stage": self.stage, **self.tags, **process_tags(), **dvc_tags(), **git_tags(),
                **({"mlflow.parentRunId": parent} if parent else {})}
        name = self.name if active is not None else context.name(self.name)  # a nested run's parent says it
        previous = _resumable(client, resume_run_id, self.experiment_id) if resume_run_id else None
        try:
            mark_dead_runs(self.stage, self.experiment_id, keep=resume_run_id)
            if previous is not None:
                tags["slic.resumes"] = int(previous.data.tags.get("slic.resumes", "0")) + 1
                run = mlflow.start_run(run_id=previous.info.run_id, run_name=name, tags=tags,
                                       nested=active is not None, log_system_metrics=self.system_metrics)
            else:
                run = mlflow.start_run(experiment_id=self.experiment_id, run_name=name, tags=tags,
                                       nested=active is not None, log_system_metrics=self.system_metrics)
        except MlflowException as exc:
            raise TrackingError(f"MLflow at {tracking_uri()} refused to start a run: {exc}".splitlines()[0]) from exc
        self._run_id, self.resumed = run.info.run_id, previous is not None
        try:
            if previous is not None:
                self._log_params_again(previous.data.params)
            else:
                mlflow.log_params(self.params)
        except MlflowException as exc:
            self.end("FAILED")
            raise TrackingError(f"MLflow at {tracking_uri()} refused the params: {exc}".splitlines()[0]) from exc

    def _log_params_again(self, logged: Mapping[str, str]) -> None:
        """Params of a continued run: MLflow refuses changed values, so a setting that may change on
        resume (epochs, workers, ...) is recorded as a tag `slic.resumed_param.<key>` instead."""
        import mlflow

        new = {k: v for k, v in self.params.items() if k not in logged}
        changed = {f"slic.resumed_param.{k}": v for k, v in self.params.items()
                   if k in logged and logged[k] != str(v)}
        if new:
            mlflow.log_params(new)
        if changed:
            self.set_tags(changed)

    def end(self, status: str = "FINISHED") -> None:
        """End the run (FINISHED, FAILED or KILLED); a deferred run that never started is opened first
        only when it finished, so a stage that failed before starting leaves no empty run."""
        import mlflow

        if self._ended or (self._run_id is None and status != "FINISHED"):
            return
        self.run_id  # noqa: B018 - opens a deferred run
        mlflow.end_run(status=status)  # a nested run is popped: its parent is the active run again
        self._ended = True

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics ('@' becomes '_at_', MLflow's keys allow no '@')."""
        import mlflow

        self.run_id  # noqa: B018
        clean = {k.replace("@", "_at_"): float(v) for k, v in metrics.items() if v is not None}
        mlflow.log_metrics(clean, step=step)

    def log_history(self, history: Sequence[Mapping[str, float]], step_key: str = "epoch") -> int:
        """Log the per-step metrics of `history` that the run lacks; returns how many values were added.

        A process killed between writing its checkpoint and logging that epoch leaves a gap that the
        resumed stage fills from the checkpoint's history, so the continued run has every epoch once.
        """
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client, missing, logged = MlflowClient(), [], {}
        now = int(time.time() * 1000)
        for entry in history:
            step = int(entry[step_key])
            for key, value in entry.items():
                if key == step_key or value is None:
                    continue
                key = key.replace("@", "_at_")
                if key not in logged:
                    logged[key] = {m.step for m in client.get_metric_history(self.run_id, key)}
                if step not in logged[key]:
                    missing.append(Metric(key, float(value), now, step))
        for start in range(0, len(missing), 1000):  # MLflow's batch limit
            client.log_batch(self.run_id, metrics=missing[start:start + 1000])
        return len(missing)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """Upload a file into the run's artifacts (under `folder`)."""
        import mlflow

        self.run_id  # noqa: B018
        mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings)."""
        import mlflow

        self.run_id  # noqa: B018
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_input(self, manifest: str | Path, digest: str, *, splits: Sequence[str] | None = None,
                  context: str = "training") -> None:
        """Log the rows of `manifest` (those of `splits`) as the run's input dataset with `digest`.

        `digest` is the content fingerprint of the videos the stage reads, so the runs table's Dataset
        column and the run's inputs say which data, not only which file, the run saw.
        """
        import mlflow

        self.run_id  # noqa: B018
        mlflow.log_input(manifest_dataset(manifest, digest, splits), context=context)


def manifest_dataset(manifest: str | Path, digest: str, splits: Sequence[str] | None = None) -> Any:
    """An MLflow pandas dataset of the manifest's rows (of `splits`), named '<file> <splits>', with `digest`."""
    import mlflow
    import pandas as pd
    from mlflow.data.sources import LocalArtifactDatasetSource

    path = Path(manifest)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest to log as the run's input; run `dvc repro validate` first")
    table = pd.read_csv(path, dtype={"video_id": str}, keep_default_na=False)
    if splits:
        table = table[table["split"].isin(list(splits))].reset_index(drop=True)
    name = f"{path.name} {'+'.join(splits)}" if splits else path.name
    dataset = mlflow.data.from_pandas(table, source=LocalArtifactDatasetSource(str(path)), name=name,
                                      digest=digest[:36])
    with warnings.catch_warnings():
        # The record's schema is the manifest's columns as they are (label, frames, width, height are integers).
        # MLflow's hint that integer columns cannot hold missing values concerns a model's input at inference
        # time, which a dataset record never is; only that hint is silenced, and only here.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        dataset.schema  # noqa: B018 - inferred (and cached) here, inside the filter
    return dataset


GENERIC_FOLDERS = {"videos", "video", "clips", "raw", "data"}  # names that say nothing of which dataset


def dataset_label(root: str | Path) -> str:
    """A short name of the dataset at `root` for run names: its folder's name, or the nearest folder above whose
    name is not generic (../real/ucf101_6/videos -> 'ucf101_6', data/raw/synthetic -> 'synthetic')."""
    names = [part for part in Path(os.path.normpath(str(root))).parts if part not in ("..", ".", os.sep, "")]
    while len(names) > 1 and names[-1].lower() in GENERIC_FOLDERS:
        names.pop()
    return names[-1] if names else Path(root).resolve().name or str(root)


def params_tags(path: str | Path) -> dict[str, str]:
    """`slic.params_sha256` of the params file a stage read and, in a git checkout, `slic.params_uncommitted`
    ('true' when the file differs from HEAD's or git does not track it): the run's commit may hold other params."""
    path = Path(path).resolve()
    tags = {"slic.params_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    try:
        codes = [subprocess.run(["git", *command], cwd=path.parent, capture_output=True, timeout=10).returncode
                 for command in (["rev-parse", "--verify", "-q", "HEAD"], ["diff", "--quiet", "HEAD", "--", path.name],
                                 ["ls-files", "--error-unmatch", "--", path.name])]
    except (OSError, subprocess.SubprocessError):
        return tags
    if codes[0] == 0:  # a checkout with a commit to compare with
        tags["slic.params_uncommitted"] = str(codes[1] != 0 or codes[2] != 0).lower()
    return tags


@dataclass(frozen=True)
class RunContext:
    """What every top-level run of this process records beside its own params: the dataset it reads and the
    params file it was given (`tags`), and the words its name ends with (`suffix`: 'seed 7 ucf101_6')."""

    tags: Mapping[str, str] = field(default_factory=dict)
    suffix: str = ""

    def name(self, name: str) -> str:
        """`name` followed by the suffix (unless it already ends with it)."""
        return f"{name} {self.suffix}" if self.suffix and not name.endswith(self.suffix) else name


_context = RunContext()


@contextmanager
def using_run_context(context: RunContext) -> Iterator[RunContext]:
    """The context of the runs this process opens inside (`slic.cli` runs a stage in its params' context)."""
    global _context
    previous, _context = _context, context
    try:
        yield context
    finally:
        _context = previous


def current_run_context() -> RunContext:
    """The context of `using_run_context` (empty outside one: the runs then carry no dataset tags)."""
    return _context


def process_tags() -> dict[str, str]:
    """Where this process runs, so a later run can tell whether a RUNNING run's process is gone."""
    import psutil

    return {"slic.host": socket.gethostname(), "slic.pid": str(os.getpid()),
            "slic.pid_started": f"{psutil.Process().create_time():.2f}"}


DVC_ENVIRONMENT_TAGS = {"DVC_STAGE": "dvc.stage", "DVC_EXP_NAME": "dvc.exp_name",
                        "DVC_EXP_BASELINE_REV": "dvc.exp_baseline_rev"}


def dvc_tags() -> dict[str, str]:
    """What DVC tells the stage it runs (its environment): the stage's name, and under `dvc exp run` the experiment's
    name and baseline commit, so the MLflow UI finds one experiment's runs (``tags.`dvc.exp_name` = 'seed8'``)."""
    return {tag: os.environ[name] for name, tag in DVC_ENVIRONMENT_TAGS.items() if os.environ.get(name)}


def git_tags(folder: str | Path | None = None) -> dict[str, str]:
    """The commit of the git checkout the stage runs in (or of `folder`), as MLflow's own tag (the run page shows it
    as the source's version); none outside a git checkout or without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True,
                              cwd=folder)
    except (OSError, subprocess.SubprocessError):
        return {}
    commit = head.stdout.strip()
    return {"mlflow.source.git.commit": commit} if len(commit) == 40 else {}


def process_gone(tags: Mapping[str, str]) -> bool:
    """True when the run's process (tags from `process_tags`) ran on this host and no longer exists.

    A run from another host, or without the tags, is never judged gone: nothing here can see it.
    """
    import psutil

    if tags.get("slic.host") != socket.gethostname() or not tags.get("slic.pid", "").isdigit():
        return False
    try:
        process = psutil.Process(int(tags["slic.pid"]))
        started = float(tags.get("slic.pid_started", "nan"))
        if abs(process.create_time() - started) > 1.0:  # the pid was reused by another process
            return True
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, ValueError):
        return False


def mark_dead_runs(stage: str, experiment_id: str, keep: str | None = None) -> list[str]:
    """Mark KILLED the RUNNING runs of `stage` whose process is gone (killed, out of memory, power loss).

    Called whenever a stage opens a run, so no run is left RUNNING forever. `keep` (the run a resumed
    stage is about to continue) is left alone. Returns the ids marked.
    """
    from mlflow import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`slic.stage` = '{stage}'",
                              max_results=1000)
    marked = []
    for run in runs:
        if run.info.run_id == keep or not process_gone(run.data.tags):
            continue
        client.set_terminated(run.info.run_id, status="KILLED")
        client.set_tag(run.info.run_id, "slic.killed", f"process {run.data.tags['slic.pid']} on "
                       f"{run.data.tags['slic.host']} was gone at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        marked.append(run.info.run_id)
    return marked


def _resumable(client: Any, run_id: str, experiment_id: str) -> Any:
    """The run `run_id` when this store has it, undeleted, in `experiment_id`; else None (logged)."""
    import logging

    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        run = None
    if run is None or run.info.lifecycle_stage != "active" or run.info.experiment_id != experiment_id:
        logging.getLogger(__name__).warning("MLflow run %s of the checkpoint is not in %s (experiment %s); "
                                            "opening a new run", run_id, tracking_uri(), experiment_id)
        return None
    return run
