"""Prefect flow `slic-pipeline`: the DVC stages of dvc.yaml in order, one task per stage, in one checkout.

Each task runs `dvc repro --single-item <stage>` (DVC owns caching: a stage whose inputs did not
change is skipped), streams its output to the Prefect log, and retries only transient failures
(a killed process, DVC's lock); a stage that refuses its input (slic exits 1 or 2) fails at once
with the stage and its one-line reason. After each stage its reports/<name>.json becomes a
markdown artifact and its MLflow run a link artifact; all stage runs nest under one parent run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.runtime import flow_run

from slic.cli import REPORT_NAMES, TELEMETRY_OFF

GPU_STAGES = ("flow", "pretrain", "embed", "transfer", "classify", "index", "ablation", "ablation_flow", "linear_probe",
              "finetune")  # a foreach group's name stands for all its stages; index embeds add_to_index/'s videos
USER_ERROR_CODES = (1, 2)  # slic: bad data, config or metric; retrying cannot help


class StageError(RuntimeError):
    """A stage failed; the message names the stage and why, `transient` says whether a retry may help."""

    def __init__(self, stage: str, reason: str, *, exit_code: int | None, transient: bool) -> None:
        super().__init__(f"stage '{stage}' failed: {reason}")
        self.stage, self.reason, self.exit_code, self.transient = stage, reason, exit_code, transient


def dvc_stages(repo: str | Path) -> list[str]:
    """The stage names of dvc.yaml, in file order (the order `dvc repro` runs them here); a `foreach` group
    becomes its stages `group@key`, one per entry of the params it iterates (e.g. transfer@synthetic_unseen)."""
    root = Path(repo)
    params: dict[str, Any] | None = None
    names: list[str] = []
    for name, spec in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].items():
        if not (isinstance(spec, dict) and "foreach" in spec):
            names.append(name)
            continue
        if params is None:
            params = yaml.safe_load((root / "params.yaml").read_text()) or {}
        names += [f"{name}@{key}" for key in foreach_keys(spec["foreach"], params)]
    return names


def foreach_keys(foreach: Any, params: dict[str, Any]) -> list[str]:
    """The keys DVC gives a foreach group's stages: a mapping's keys, a list's indices (`${a.b}` read from params)."""
    if isinstance(foreach, str) and foreach.startswith("${") and foreach.endswith("}"):
        value: Any = params
        for part in foreach[2:-1].strip().split("."):
            value = value.get(part) if isinstance(value, dict) else None
        foreach = value
    if isinstance(foreach, dict):
        return [str(key) for key in foreach]
    if isinstance(foreach, list):
        return [str(index) for index in range(len(foreach))]
    return []


EVAL_SET_REPORTS = {"eval_data": "data.json", "transfer": "retrieval.json", "classify": "classify.json"}


def report_path(repo: str | Path, stage: str) -> Path:
    """reports/<name>.json of a stage; an eval set's stages write reports/transfer/<set>/{data,retrieval,classify}.json."""
    from slic.transfer import reports_dir

    group, _, key = stage.partition("@")
    if key:
        return Path(repo) / reports_dir(key) / EVAL_SET_REPORTS.get(group, "retrieval.json")
    return Path(repo) / "reports" / f"{REPORT_NAMES.get(stage, stage)}.json"


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


def classify_failure(stage: str, output: str, returncode: int) -> StageError:
    """Turn a failed `dvc repro` into a StageError: the slic error line if any, else DVC's."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    names = (f"slic {stage}:", f"slic {stage.replace('_', '-')}:")  # stage linear_probe is `slic linear-probe`
    slic_lines = [line for line in lines if line.startswith(names)]
    dvc_lines = [line for line in lines if line.startswith("ERROR")]
    match = re.search(r"exited with (-?\d+)", output)
    code = int(match.group(1)) if match else None
    locked = "unable to acquire lock" in output.lower()
    transient = locked or (code is not None and code not in USER_ERROR_CODES)
    reason = (slic_lines or dvc_lines or lines[-1:] or [f"dvc exited with {returncode}"])[-1]
    if code is not None and code not in USER_ERROR_CODES:
        reason = f"{reason} (exit {code}, retried as transient)"
    return StageError(stage, reason, exit_code=code, transient=transient)


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: only StageErrors marked transient (and unexpected crashes) are retried."""
    try:
        state.result()
    except StageError as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - a crash of the runner itself: worth another try
        return True
    return False


def stage_env(repo: Path, parent_run_id: str | None) -> dict[str, str]:
    """The environment of a stage process: this interpreter's bin on PATH, tracking and telemetry settings."""
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in TELEMETRY_OFF.items()}}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{repo / 'mlflow.db'}")
    if parent_run_id:
        env["SLIC_PARENT_RUN_ID"] = parent_run_id
    return env


@task(name="dvc-stage", task_run_name="{stage}", retries=2, retry_delay_seconds=5, retry_condition_fn=_retry_transient)
def run_stage(repo: str, stage: str, parent_run_id: str | None = None) -> dict[str, Any]:
    """`dvc repro --single-item <stage>` in the checkout, its output in the Prefect log."""
    logger = get_run_logger()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=repo,
                               env=stage_env(Path(repo), parent_run_id), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        logger.info("%s | %s", stage, line.rstrip())
    returncode = process.wait()
    output = "".join(lines)
    if returncode != 0:
        error = classify_failure(stage, output, returncode)
        logger.error(str(error))
        raise error
    ran = f"Running stage '{stage}'" in output
    return {"stage": stage, "ran": ran, "seconds": round(time.perf_counter() - started, 2)}


# Report lists worth reading in the UI, not only counting (largest_groups: the clusters stage's; label_next: the
# spread_labels stage's videos to label next, each with why).
LISTED = {"advice": "Notes", "excluded": "Excluded", "failed": "Could not be decoded",
          "damaged": "Decoded past damaged packets", "largest_groups": "Largest groups",
          "label_next": "Label next"}
LISTED_ITEMS = 10


def report_markdown(stage: str, report: dict[str, Any], ran: bool) -> str:
    """A markdown table of a stage report's scalar values (nested mappings flattened one level), then its notes
    (`advice`: what to change, e.g. manifest.group_pattern) and exclusions as lists, so the Prefect UI says what
    reports/<stage>.json says."""
    rows: list[tuple[str, Any]] = []
    for key, value in report.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", v) for k, v in value.items() if not isinstance(v, (dict, list))]
        elif isinstance(value, list):
            rows.append((key, f"{len(value)} item(s)"))
        else:
            rows.append((key, value))
    status = "ran" if ran else "unchanged (DVC cache)"
    if report.get("skipped"):  # a stage that needs classes, on videos without them
        status = f"skipped: {report.get('reason', '')}"
    body = "\n".join(f"| {k} | {table_cell(f'{v:.4g}' if isinstance(v, float) else v)} |" for k, v in rows[:60])
    lists = [listed_markdown(title, report[key]) for key, title in LISTED.items() if report.get(key)]
    return f"### {stage}: {status}\n\n| key | value |\n|---|---|\n{body}\n" + "".join(lists)


def table_cell(value: Any) -> str:
    """A value as one markdown table cell: a '|' (a file name may hold one) escaped, a line break a space, so the
    value cannot end its row or the table."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def listed_markdown(title: str, items: list[Any]) -> str:
    """A report's list as markdown bullets: a string as it is, a mapping of two as its values joined by ': ' (an
    exclusion's video_id: reason), a larger one as `key value` pairs (a group's size, most typical video, majority
    class); the first LISTED_ITEMS, then how many more the report holds."""
    lines = [item if isinstance(item, str) else _mapping_line(item) if isinstance(item, dict) else str(item)
             for item in items[:LISTED_ITEMS]]
    more = f"- and {len(items) - LISTED_ITEMS} more in the report\n" if len(items) > LISTED_ITEMS else ""
    return f"\n**{title}**\n\n" + "".join(f"- {line}\n" for line in lines) + more


def _mapping_line(item: dict[str, Any]) -> str:
    """One bullet of a listed mapping: `file: why` for an exclusion, a video extract could not decode or decoded past
    damaged packets, `a: b` for two values, else `key value, ...` (floats to 3 digits)."""
    for why in ("reason", "error", "note"):
        if why in item:
            return f"{item.get('path') or item.get('video_id')}: {item[why]}"
    if len(item) <= 2:
        return ": ".join(str(v) for v in item.values())
    return ", ".join(f"{k} {f'{v:.3g}' if isinstance(v, float) else v}" for k, v in item.items())


@task(name="publish", task_run_name="publish-{stage}", retries=1, retry_delay_seconds=5)
def publish_stage(repo: str, stage: str, ran: bool, parent_run_id: str | None) -> dict[str, str]:
    """The stage report as a markdown artifact; its MLflow run (made here if the stage logs none) as a link."""
    from slic import tracking

    published: dict[str, str] = {}
    path = report_path(repo, stage)
    report = json.loads(path.read_text()) if path.is_file() else {}
    if report.get("skipped"):  # a stage that needs classes, on videos without them
        published["skipped"] = str(report.get("reason", ""))
    if report:
        published["report"] = str(create_markdown_artifact(
            key=artifact_key(stage, "report"), markdown=report_markdown(stage, report, ran),
            description=f"reports/{path.name} after stage {stage}"))
    if parent_run_id:
        run_id = tracking.stage_runs(parent_run_id).get(stage) or tracking.record_stage(
            stage, report, parent_run_id, cached=not ran, checkpoint=encoder_checkpoint(Path(repo), stage),
            context=tracking.checkout_context(repo, stage))
        published["mlflow_run_id"] = run_id
        create_link_artifact(key=artifact_key(stage, "mlflow"), link=tracking.run_link(run_id),
                             link_text=f"MLflow run of stage {stage}")
    return published


def pipeline_settings(repo: Path) -> dict[str, str]:
    """Every setting of the checkout's params.yaml as the pipeline run's params; none when it does not load (the
    first stage then stops with the line naming the key)."""
    from slic.config import ConfigError, flat_settings, load

    try:
        return flat_settings(load(repo / "params.yaml"))
    except ConfigError:
        return {}


def encoder_checkpoint(repo: Path, stage: str) -> str | None:
    """The pretrain checkpoint the stage works from (its path in the checkout), for the record of a stage DVC
    skipped; None for a stage without one, or when params.yaml does not load."""
    from slic.config import ConfigError, load
    from slic.encoder_lineage import stage_checkpoint

    try:
        checkpoint = stage_checkpoint(load(repo / "params.yaml"), stage)
    except ConfigError:
        return None
    return None if checkpoint is None else str(repo / checkpoint)


@contextmanager
def mlflow_at(repo: Path) -> Iterator[str]:
    """Point this process's tracking calls at the checkout's store (unless MLFLOW_TRACKING_URI is set)."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    uri = previous or f"sqlite:///{repo / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)


def run_gpu_stage(deployment: str, repo: str, stage: str, parent_run_id: str) -> dict[str, Any]:
    """Run one stage as a flow run of a GPU-pool deployment of this flow, and wait for it."""
    from prefect.deployments import run_deployment

    child = run_deployment(deployment, parameters={"repo": repo, "stages": [stage],
                                                   "mlflow_parent_run_id": parent_run_id}, timeout=None)
    if child.state is None or not child.state.is_completed():
        raise StageError(stage, f"flow run {child.name} on {deployment} ended {child.state and child.state.name}",
                         exit_code=None, transient=False)
    return {"stage": stage, "ran": True, "deployment": deployment, "flow_run_id": str(child.id)}


@flow(name="slic-pipeline")
def slic_pipeline(repo: str = ".", stages: list[str] | None = None, dask_address: str | None = None,
                  dask_chunk_size: int = 64, gpu_deployment: str | None = None, gpu_stages: list[str] | None = None,
                  gpu_repo: str | None = None, mlflow_parent_run_id: str | None = None) -> dict[str, Any]:
    """Run the stages of dvc.yaml (all, or `stages`) in order in the checkout `repo`.

    `dask_address`: fan frame extraction out on that Dask scheduler first, `dask_chunk_size` videos
    per task. `gpu_deployment` (e.g. "slic-pipeline/docker-gpu"): run `gpu_stages` (default GPU_STAGES;
    a foreach group's name, e.g. transfer, stands for all its stages) as flow runs of that deployment, in
    `gpu_repo` (the checkout as its workers see it).
    """
    from slic import tracking
    from slic.report_freshness import stale_reports
    from slic.summary import headline_metrics, stale_headline_reports, summary_lines, summary_markdown

    root = Path(repo).resolve()
    order = dvc_stages(root)
    groups = {s.partition("@")[0] for s in order if "@" in s}  # a foreach group's name selects all its stages
    unknown = sorted(set(stages or []) - set(order) - groups)
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; dvc.yaml has: {', '.join(order)}")
    chosen = [s for s in order if not stages or s in stages or s.partition("@")[0] in stages]
    on_gpu = set(gpu_stages if gpu_stages is not None else GPU_STAGES) if gpu_deployment else set()
    results: dict[str, Any] = {}
    with mlflow_at(root):
        parent = mlflow_parent_run_id or tracking.start_pipeline_run(
            "pipeline", {"prefect.flow_run_id": flow_run.get_id() or "", "slic.repo": str(root),
                         **tracking.git_tags(root)},
            params=pipeline_settings(root), context=tracking.checkout_context(root))
        if not mlflow_parent_run_id:
            create_link_artifact(key="pipeline-mlflow", link=tracking.run_link(parent),
                                 link_text="MLflow parent run of this pipeline run")
        try:
            for stage in chosen:
                if stage == "extract" and dask_address:
                    from flows.fanout import run_on_dask

                    results["extract-fanout"] = run_on_dask(str(root), dask_address, dask_chunk_size)
                if stage in on_gpu or stage.partition("@")[0] in on_gpu:
                    results[stage] = run_gpu_stage(gpu_deployment, gpu_repo or str(root), stage, parent)
                    continue
                results[stage] = run_stage(str(root), stage, parent)
                results[stage]["published"] = publish_stage(str(root), stage, results[stage]["ran"], parent)
        except BaseException:
            if not mlflow_parent_run_id:
                tracking.end_pipeline_run(parent, failed=True)
            raise
        stale = stale_reports(root)  # a run of some stages: the others' reports may be an earlier run's
        made = summary_markdown(summary_lines(root / "reports", tracking.tracking_uri(), stale))
        create_markdown_artifact(key="pipeline-summary", markdown=made, description="what this pipeline run made")
        if not mlflow_parent_run_id:
            left_out = stale_headline_reports(root / "reports", stale)
            tracking.end_pipeline_run(parent, description=made + left_out_note(left_out), stale=left_out,
                                      metrics=headline_metrics(root / "reports", stale))
    return {"mlflow_parent_run_id": parent, "stages": results,
            "flow_run": {"id": str(flow_run.get_id() or ""), "name": flow_run.get_name() or ""}}


def left_out_note(left_out: list[str]) -> str:
    """The parent run's description's last line: which stale reports' numbers its metrics leave out ('' if none)."""
    if not left_out:
        return ""
    return (f"\nLeft out of this run's metrics (stale, made before a change; tag `slic.stale_reports`): "
            f"{', '.join(f'reports/{name}' for name in left_out)}\n")


def flow_run_line(run_id: str, name: str = "") -> str:
    """Where to see a flow run afterwards: `prefect flow-run inspect`, and its UI page when PREFECT_API_URL names a
    server (a temporary server's runs stay in PREFECT_HOME's database, which `inspect` reads)."""
    from prefect.utilities.urls import url_for

    page = url_for("flow-run", obj_id=run_id)  # None without a server's address (PREFECT_API_URL or PREFECT_UI_URL)
    named = f"{name} ({run_id})" if name else run_id
    return f"Prefect flow run {named}: prefect flow-run inspect {run_id}" + (f" or {page}" if page else "")


def main(argv: list[str] | None = None) -> int:
    """`python -m flows.pipeline [--stages a,b] [--dask-address tcp://...]` (what `slic pipeline` runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="slic pipeline", description="run the DVC stages as a Prefect flow")
    parser.add_argument("--repo", default=".", help="the checkout (default: the current folder)")
    parser.add_argument("--stages", default="", help="comma-separated subset of dvc.yaml's stages")
    parser.add_argument("--dask-address", default=None, help="Dask scheduler for frame extraction fan-out")
    args = parser.parse_args(argv)
    for key, value in {**TELEMETRY_OFF, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
        os.environ.setdefault(key, value)
    stages = [s for s in args.stages.split(",") if s] or None
    state = slic_pipeline(repo=args.repo, stages=stages, dask_address=args.dask_address, return_state=True)
    if not state.is_completed():
        print(f"slic pipeline: {state.message or state.name}", file=sys.stderr)
        if state.state_details.flow_run_id:
            print(flow_run_line(str(state.state_details.flow_run_id)), file=sys.stderr)
        return 1
    result = state.result()
    for stage, done in result["stages"].items():
        if "skipped" in done.get("published", {}):
            print(f"{stage}: skipped: {done['published']['skipped']}")
        elif "ran" in done:
            print(f"{stage}: {'ran' if done['ran'] else 'unchanged (DVC cache)'}")
    print(flow_run_line(result["flow_run"]["id"], result["flow_run"]["name"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
