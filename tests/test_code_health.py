"""Code health checks that keep fixed problems fixed: no import cycles in slic/, no machine paths in reports/."""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "slic"
REPORTS = ROOT / "reports"
# A path from a filesystem root: /work/..., /tmp, /home/..., /root/..., /Users/..., C:\... .
ABSOLUTE = re.compile(r"^(?:/(?!/)|~/|[A-Za-z]:[\\/])")
MACHINE_DIRS = re.compile(r"(?<![\w.:/-])/(?:work|tmp|root|home|Users|mnt|var|opt|srv|scratch)(?:/|\b)")
DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")


# ------------------------------------------------------------------------------------------ import cycles


def module_name(path: Path) -> str:
    """Dotted module name of a file under the repository root (a package's __init__ is the package)."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str], name: str | None = None) -> set[str]:
    """The slic modules `path` (module `name`) imports anywhere in its body (top level, functions, conditionals)."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from slic.data import clips` imports the submodule slic.data.clips.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import slic.data.clips.x` -> the deepest module known
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """slic module -> the slic modules it imports."""
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imported_modules(f, modules) for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when the graph is acyclic (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append(iter(sorted(graph.get(child, ()))))
    return []


def test_cycle_finder_sees_direct_and_function_level_cycles(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    source = tmp_path / "m.py"
    source.write_text("import os\nfrom slic import losses\n\ndef f():\n    from slic.data.clips import EvalClips\n")
    assert imported_modules(source, {"slic", "slic.losses", "slic.data", "slic.data.clips", "slic.m"}, "slic.m") == {
        "slic.losses", "slic.data.clips"}
    relative = tmp_path / "r.py"
    relative.write_text("from . import clips\nfrom ..losses import slic_loss\n")
    assert imported_modules(relative, {"slic", "slic.losses", "slic.data", "slic.data.clips"}, "slic.data.r") == {
        "slic.data.clips", "slic.losses"}


def test_slic_modules_import_each_other_one_way() -> None:
    graph = import_graph()
    assert {"slic.embed", "slic.pretrain", "slic.checkpoints", "slic.index", "slic.data.clips"} <= set(graph)
    assert "slic.checkpoints" in graph["slic.embed"]  # the scan sees module-level imports
    assert "slic.checkpoints" in graph["slic.serving"]  # and those inside functions
    cycle = find_cycle(graph)
    assert not cycle, "import cycle: " + " -> ".join(cycle)


# ------------------------------------------------------------------------------ DVC stage dependencies

# Modules that change no stage's outputs: reading and checking params (params.yaml is tracked as `params`),
# MLflow logging, the machine record, the time left in a log line.
NO_OUTPUT_EFFECT = {"slic", "slic.config", "slic.config_check", "slic.tracking", "slic.stage_run",
                    "slic.mlflow_store", "slic.machine", "slic.progress", "slic.encoder_lineage"}


def test_each_stage_lists_every_slic_module_its_code_imports() -> None:
    """DVC reruns a stage when a file it lists changes, so each stage lists the slic modules that the code it
    lists imports (anywhere in them, and what those import): before, pretrain did not list
    slic/data/device_batches.py, and a change there left its outputs standing."""
    import yaml

    graph = import_graph()
    unlisted: dict[str, list[str]] = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        body = stage.get("do", stage)
        paths = [dep if isinstance(dep, str) else next(iter(dep)) for dep in body.get("deps", [])]
        listed = {module_name(ROOT / path) for path in paths if path.startswith("slic/") and path.endswith(".py")}
        reached, todo = set(), list(listed)
        while todo:
            module = todo.pop()
            if module not in reached:
                reached.add(module)
                todo.extend(graph.get(module, ()))
        missing = sorted(reached - listed - NO_OUTPUT_EFFECT)
        if missing:
            unlisted[name] = missing
    assert not unlisted, f"dvc.yaml: stages whose code imports slic modules they do not list: {unlisted}"


# --------------------------------------------------------------------------------------- machine paths


def strings_of(value: object) -> Iterator[str]:
    """Every string in a parsed JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings_of(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_of(item)


def machine_paths(path: Path) -> list[str]:
    """Absolute paths recorded in one report file (json: any string value; csv: any cell; html: the text)."""
    text = path.read_text(errors="replace")
    if path.suffix == ".json":
        values = list(strings_of(json.loads(text)))
    elif path.suffix == ".csv":
        values = [cell for row in csv.reader(text.splitlines()) for cell in row]
    else:
        return MACHINE_DIRS.findall(DATA_URI.sub("", text))
    return [v for v in values if ABSOLUTE.match(v.strip()) or MACHINE_DIRS.search(v)]


def test_machine_path_check_flags_absolute_paths(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"root": "../shared/videos", "n": 3, "files": ["a/b.avi"], "cmd": "ffmpeg -i X OUT/a"}))
    assert machine_paths(report) == []
    report.write_text(json.dumps({"inputs": {"root": "/work/shared/videos"}, "tmp": ["/tmp"]}))
    assert machine_paths(report) == ["/work/shared/videos", "/tmp"]
    page = tmp_path / "r.html"
    page.write_text('<img src="data:image/webp;base64,AA/home/BB"><p>ok</p><p>see /home/me/x</p>')
    assert len(machine_paths(page)) == 1


REPORT_FILES = sorted(p for p in REPORTS.rglob("*") if p.suffix in (".json", ".csv", ".html"))


@pytest.mark.parametrize("report", REPORT_FILES, ids=[str(p.relative_to(REPORTS)) for p in REPORT_FILES])
def test_reports_record_no_machine_paths(report: Path) -> None:
    found = machine_paths(report)
    assert not found, f"{report.relative_to(ROOT)} records absolute paths (use paths relative to the repo): {found[:5]}"
