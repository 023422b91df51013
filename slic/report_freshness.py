"""Which reports under reports/ are an earlier run's: their stage's inputs changed since, by DVC's own account.

`slic summary` reads reports/ as the pipeline left them. After a partial run (`dvc repro extract`) or an edit of
params.yaml or the code, some reports no longer describe what `dvc repro` would now make, and their numbers would
read as current. `dvc status` knows which stages changed (a modified input, setting or command); every stage after
a changed one will be rerun too, so its report is stale as well. An input that is missing (a fresh clone without the
data) is not a change: the committed reports stay the committed run's.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

CHANGED = {"modified", "new"}  # a dep's status that means the stage would compute something else


@dataclass(frozen=True)
class Stale:
    """A stale report's stage, and the change that makes it so: its own (`changed` is `stage`) or an earlier
    stage's that it follows."""

    stage: str
    changed: str  # the stage whose input, setting or command changed
    what: str  # what changed there: 'params.yaml: pretrain', 'data/frames', 'its command'
    unwatched: bool = False  # a change DVC cannot see (split files outside the root): `dvc repro` alone keeps it


def _changed_input(entries: list[Any]) -> str:
    """What changed in one stage's `dvc status` entries ('params.yaml: pretrain', 'data/frames', 'its command'),
    or '' when nothing did that a rerun would answer differently (only missing inputs or outputs)."""
    for entry in entries:
        if entry == "changed command":
            return "its command"
        if not isinstance(entry, Mapping):
            continue
        for path, status in (entry.get("changed deps") or {}).items():
            if isinstance(status, Mapping):  # params: {section or key: status}
                keys = [key for key, value in status.items() if value in CHANGED]
                if keys:
                    return f"{path}: {', '.join(keys)}"
            elif status in CHANGED:
                return path
    return ""


def _report_listing(stage: str) -> str | None:
    """The report (relative to reports/) of a stage that lists a dataset from split files: the manifest's, an eval
    set's data.json; None for other stages."""
    if stage == "manifest":
        return "manifest.json"
    group, _, name = stage.partition("@")
    return f"transfer/{name}/data.json" if group == "eval_data" and name else None


def _split_files_changed(root: Path, reports: str, report: str = "manifest.json") -> str:
    """What changed when the split files of a splits_dir outside its dataset's root (which DVC does not watch) differ
    from those `report` (the manifest's, an eval set's data.json) was made from (its `unwatched_splits`), else ''."""
    import json

    from slic.data.datasets import splits_fingerprint

    try:
        recorded = json.loads((root / reports / report).read_text()).get("unwatched_splits")
    except (OSError, ValueError, AttributeError):
        return ""
    if not isinstance(recorded, Mapping) or not recorded.get("dir"):
        return ""
    folder = Path(recorded["dir"])
    if splits_fingerprint(folder if folder.is_absolute() else root / folder) == recorded.get("fingerprint"):
        return ""
    return f"the split files in {recorded['dir']}, which DVC does not watch"


def stale_reports(root: str | Path = ".", reports: str = "reports") -> dict[str, Stale]:
    """{report path relative to `reports`: why it is stale} for the repository at `root`.

    A stage is stale when `dvc status` finds a changed input, setting or command, and so is every stage after it.
    Empty when `root` is not a DVC repository or DVC cannot tell (another `dvc` holds the lock): the summary then
    says nothing of it.
    """
    try:
        import networkx as nx
        from dvc.repo import Repo

        with contextlib.redirect_stderr(io.StringIO()):  # DVC's warnings (a killed run's lock) are not ours to print
            repo = Repo(str(root))
            try:
                status, graph = repo.status(), repo.index.graph
            finally:
                repo.close()
    except Exception as exc:  # noqa: BLE001 - not a DVC repository, a lock held, a broken dvc.yaml: nothing to say
        logging.getLogger(__name__).debug("report freshness unknown: %s", exc)
        return {}
    stages = {stage.addressing: stage for stage in graph.nodes}  # status names stages as the graph addresses them
    why: dict[str, Stale] = {}
    for address, entries in status.items():
        if address in stages and (what := _changed_input(entries)):
            why[address] = Stale(stages[address].name, stages[address].name, what)
    for address, stage in stages.items():  # split files DVC does not watch: their fingerprints tell
        listing = _report_listing(stage.name)
        if listing and address not in why and (what := _split_files_changed(Path(root), reports, listing)):
            why[address] = Stale(stage.name, stage.name, what, unwatched=True)
    for address, cause in list(why.items()):
        for after in nx.ancestors(graph, stages[address]):  # edges point from a stage to the stages it reads
            why.setdefault(after.addressing, replace(cause, stage=after.name))
    prefix = Path(root).resolve() / reports
    stale = {}
    for address, reason in why.items():
        for out in stages[address].outs:
            path = Path(out.fs_path)
            if path.is_relative_to(prefix):
                stale[path.relative_to(prefix).as_posix()] = reason
    return stale
