"""Presets: named overlays of params.yaml values, e.g. the paper's UCF101 run (`presets/paper_ucf101.yaml`).

`slic preset NAME` writes a preset's values into params.yaml with ruamel.yaml's round trip, so every
comment, the key order and every other value stay as they were. The result is checked with
`slic.config.load` before it replaces params.yaml (a temporary file, then a rename): a preset never
leaves a half-written or invalid params file behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import io
import os
import sys
import tempfile
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from slic.config import Config, ConfigError, load

PRESETS_DIR = Path(__file__).resolve().parents[1] / "presets"

Change = tuple[str, Any, Any]  # ("section.key", old value, new value)


class PresetError(ValueError):
    """A preset that cannot be applied, worded as one line naming the preset and the key."""


def list_presets(directory: str | Path = PRESETS_DIR) -> list[str]:
    """Names of the presets in `directory` (its *.yaml files, without the suffix), sorted."""
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def describe(path: str | Path) -> str:
    """A preset's first comment line (its description), or '' when it starts with none."""
    for line in Path(path).read_text().splitlines():
        return line.lstrip("#").strip() if line.startswith("#") else ""
    return ""


def preset_path(name: str, directory: str | Path = PRESETS_DIR) -> Path:
    """The file of preset `name`: `directory/<name>.yaml`, or `name` itself when it is a YAML file's path."""
    given = Path(name)
    if given.suffix in (".yaml", ".yml") and given.is_file():
        return given
    path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(list_presets(directory)) or "none"
        raise PresetError(f"no preset {name!r} in {directory}; presets: {known}")
    return path


def _sections() -> dict[str, type]:
    """params.yaml section name -> its dataclass in slic.config."""
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _unknown(where: str, name: str, known: list[str], source: str) -> PresetError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return PresetError(f"{source}: unknown key {where!r}: slic.config has no such key{hint}")


def load_preset(name: str, directory: str | Path = PRESETS_DIR) -> dict[str, dict[str, Any]]:
    """A preset as {section: {key: value}}; raise `PresetError` naming any key slic.config does not know."""
    path = preset_path(name, directory)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PresetError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise PresetError(f"{path}: a preset is a mapping of params.yaml sections, got {raw!r}")
    sections = _sections()
    for section, values in raw.items():
        if section not in sections:
            raise _unknown(str(section), str(section), list(sections), str(path))
        if not isinstance(values, dict):
            raise PresetError(f"{path}: section {section!r} must be a mapping of keys, got {values!r}")
        keys = [f.name for f in dataclasses.fields(sections[section])]
        for key in values:
            if key not in keys:
                raise _unknown(f"{section}.{key}", str(key), keys, str(path))
    return raw


def _default(section: str, key: str) -> Any:
    """slic.config's default of `section.key`: the value in effect when params.yaml omits the key."""
    value = next(f.default for f in dataclasses.fields(_sections()[section]) if f.name == key)
    return list(value) if isinstance(value, tuple) else value


def _same(a: Any, b: Any) -> bool:
    """Equal as params values: 0 and 0.0 are, true and 1 are not; lists item by item."""
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_same(x, y) for x, y in zip(a, b)))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


PAPER_PRESET = "paper_ucf101"
NOT_THE_METHOD = {"seed", "device", "bf16"}  # a draw or the machine: not what the paper's configuration is


def paper_differences(pretrain: Mapping[str, Any], directory: str | Path = PRESETS_DIR) -> list[str]:
    """The settings of an encoder's pretraining (a checkpoint's `config`) that are not the paper's, as
    'objective proxy (paper: triplet)', in the preset's order; [] when the preset is not there. A number set beside
    published ones says with it that it comes from another configuration (the CPU default is one)."""
    try:
        paper = load_preset(PAPER_PRESET, directory).get("pretrain", {})
    except PresetError:
        return []
    return [f"{key} {show(pretrain[key])} (paper: {show(value)})" for key, value in paper.items()
            if key in pretrain and key not in NOT_THE_METHOD and not _same(pretrain[key], value)]


def _round_trip() -> Any:
    from ruamel.yaml import YAML

    rt = YAML()  # round-trip mode: comments, key order, flow style and quotes are kept
    rt.preserve_quotes = True
    rt.width = 4096  # never re-wrap a long line
    return rt


def apply_preset(preset: dict[str, dict[str, Any]], params: str | Path = "params.yaml", *,
                 dry_run: bool = False) -> list[Change]:
    """Write `preset`'s values into `params`; return the (section.key, old, new) of each value that changes.

    The new file is written next to `params`, validated with `slic.config.load` and renamed over it;
    on any error (`ConfigError` naming the key, worded for `params`) the file is left untouched.
    With `dry_run` (or nothing to change) nothing is written; the result is validated all the same.
    """
    from ruamel.yaml import YAMLError
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    params = Path(params)
    if not params.is_file():
        raise PresetError(f"{params}: file not found; run from the project root or pass --params")
    rt = _round_trip()
    try:
        doc = rt.load(params.read_text())
    except YAMLError as exc:
        raise PresetError(f"{params}: not valid YAML: {exc}".replace("\n", " ")) from exc
    doc = CommentedMap() if doc is None else doc
    if not isinstance(doc, dict):
        raise PresetError(f"{params}: must be a mapping of sections, got {type(doc).__name__}")
    changes: list[Change] = []
    for section, values in preset.items():
        target = doc.get(section)
        if target is not None and not isinstance(target, dict):
            raise PresetError(f"{params}: section {section!r} must be a mapping of keys, got {target!r}")
        for key, new in values.items():
            present = target is not None and key in target
            current = target[key] if present else None
            old = (list(current) if isinstance(current, list) else current) if present else _default(section, key)
            if _same(old, new):
                continue  # the value in effect already: the line stays as the user wrote it
            changes.append((f"{section}.{key}", old, new))
            if target is None:
                target = doc[section] = CommentedMap()
            if isinstance(current, CommentedSeq) and isinstance(new, list):
                current[:] = new  # in place: keeps the flow style and the comment
            elif isinstance(new, list):
                target[key] = seq = CommentedSeq(new)
                seq.fa.set_flow_style()  # [a, b], as params.yaml writes lists
            else:
                target[key] = new
    out = io.StringIO()
    rt.dump(doc, out)
    _write_checked(params, out.getvalue(), dry_run=dry_run or not changes)
    return changes


def _write_checked(params: Path, text: str, *, dry_run: bool) -> None:
    """Write `text` to a temporary file beside `params`, load it with slic.config, then rename it over `params`."""
    fd, name = tempfile.mkstemp(prefix=f".{params.name}.", suffix=".tmp", dir=params.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        try:
            load(tmp)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(str(tmp), str(params))) from None
        if not dry_run:
            os.chmod(tmp, params.stat().st_mode & 0o7777)
            os.replace(tmp, params)
    finally:
        tmp.unlink(missing_ok=True)


def show(value: Any) -> str:
    """A value as params.yaml writes it: true/false, [60, 100], plain strings; '(unset)' for None."""
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value else '""'
    return str(value)


def run_preset(argv: list[str], params: str = "params.yaml") -> int:
    """`slic preset NAME [--params FILE] [--dry-run]` or `slic preset --list`; returns the exit code."""
    parser = argparse.ArgumentParser(prog="slic preset", description="write a preset's values into params.yaml, "
                                     "keeping its comments, key order and every other value")
    parser.add_argument("name", nargs="?", help="a preset of presets/ (see --list), or a preset YAML file")
    parser.add_argument("--params", default=params, help=f"parameters file (default: {params})")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name in list_presets():
            print(f"{name}\t{describe(PRESETS_DIR / f'{name}.yaml')}")
        return 0
    if not args.name:
        parser.error("give a preset NAME, or --list")
    try:
        changes = apply_preset(load_preset(args.name), args.params, dry_run=args.dry_run)
    except PresetError as exc:
        print(f"slic preset: error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"slic preset: error: {exc} (nothing written)", file=sys.stderr)
        return 2
    for key, old, new in changes:
        print(f"{key}: {show(old)} -> {show(new)}")
    done = ("dry run, nothing written" if args.dry_run else f"written to {args.params}" if changes
            else f"{args.params} has every value already")
    print(f"preset {args.name}: {len(changes)} value(s) changed ({done})")
    config = None if args.dry_run else load(args.params)
    if config and config.manifest.layout != "synthetic" and config.manifest.root == _default("manifest", "root"):
        print(f"next: set manifest.root (and manifest.splits_dir) in {args.params} "
              f"to your {config.manifest.layout} copy")
    return 0
