"""params.yaml -> frozen dataclasses, one per stage, checked key by key.

Every stage reads only its own section, so DVC re-runs only the stages whose section changed.
A wrong key, type or value stops with one line naming the file, the key path, the value and
what is allowed (``ConfigError``), before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

DATASET_LAYOUTS = ("synthetic", "ucf101", "hmdb51", "kinetics", "folder")


class ConfigError(ValueError):
    """A params.yaml problem, worded as one line a user can act on."""


def _spec(default: Any, *, low: float | None = None, high: float | None = None,
          choices: tuple[Any, ...] | None = None, help: str = "") -> Any:
    """A dataclass field with its allowed range or choices attached as metadata."""
    return field(default=default, metadata={"low": low, "high": high, "choices": choices, "help": help})


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic motion dataset (stage `synth`)."""

    out: str = _spec("data/raw/synthetic", help="folder the UCF101-style dataset is written to")
    classes: int = _spec(10, low=2, high=16, help="number of motion classes")
    groups: int = _spec(8, low=4, high=1000, help="groups per class (scenes), split by group")
    clips_per_group: int = _spec(3, low=1, high=100)
    scale: float = _spec(1.0, low=0.1, high=1000.0, help="multiplies the number of groups")
    frames: int = _spec(48, low=32, high=1000)
    width: int = _spec(96, low=32, high=1920)
    height: int = _spec(72, low=32, high=1080)
    fps: int = _spec(25, low=1, high=120)
    codec: str = _spec("mpeg4", choices=("mpeg4", "libx264", "ffv1"))
    workers: int = _spec(2, low=1, high=256)
    seed: int = _spec(7, low=0)


@dataclass(frozen=True)
class ManifestConfig:
    """Which dataset to read and how to split it (stage `manifest`)."""

    root: str = _spec("data/raw/synthetic", help="dataset root folder")
    layout: str = _spec("synthetic", choices=DATASET_LAYOUTS)
    splits_dir: str = _spec("", help="folder with the split files; empty: the dataset root")
    split: int = _spec(1, low=1, high=3)
    val_fraction: float = _spec(0.15, low=0.0, high=0.5,
                                help="share of train groups (or videos) carved into val")
    min_frames: int = _spec(32, low=1, help="shorter videos are excluded with a reason")
    on_missing: str = _spec("error", choices=("error", "exclude"),
                            help="a listed video that does not exist: stop, or exclude it by name")
    extensions: tuple[str, ...] = _spec((".avi", ".mp4", ".mkv", ".mov", ".webm"))
    workers: int = _spec(2, low=1, high=256)
    out: str = _spec("data/manifests/manifest.csv")
    seed: int = _spec(7, low=0)


@dataclass(frozen=True)
class ValidateConfig:
    """Great Expectations checks on the manifest (stage `validate`)."""

    manifest: str = _spec("data/manifests/manifest.csv")
    out: str = _spec("data/manifests/validated.csv", help="the manifest rows that may be used")
    max_examples: int = _spec(5, low=1, high=100)
    data_docs: str = _spec("data/validation/docs", help="folder for Great Expectations' HTML data docs")


@dataclass(frozen=True)
class ExtractConfig:
    """Frame shards: one JPEG-sequence file per video (stage `extract`)."""

    manifest: str = _spec("data/manifests/validated.csv")
    out: str = _spec("data/frames")
    short_side: int = _spec(64, low=16, high=1080)
    quality: int = _spec(4, low=2, high=31, help="JPEG qscale: 2 best, 31 worst")
    workers: int = _spec(2, low=1, high=256)
    fail_fast: bool = _spec(False)


@dataclass(frozen=True)
class Config:
    """All sections of params.yaml."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)


def _allowed(f: dataclasses.Field, tp: Any) -> str:
    """Words for what a field accepts, e.g. 'an integer in [16, 1080]'."""
    meta = f.metadata
    kind = _type_name(tp)
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    low, high = meta.get("low"), meta.get("high")
    if low is not None and high is not None:
        return f"{kind} in [{low}, {high}]"
    if low is not None:
        return f"{kind} >= {low}"
    return kind


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return "a list of " + _type_name(typing.get_args(tp)[0]).removeprefix("a ").removeprefix("an ") + "s"
    return str(tp)


def _coerce(value: Any, tp: Any, where: str, f: dataclasses.Field, source: str) -> Any:
    """Check one value against its annotated type and range; return it in canonical form."""
    def fail() -> ConfigError:
        return ConfigError(f"{source}: {where} = {value!r}: expected {_allowed(f, tp)}")

    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _coerce(value, inner, where, f, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail()
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise fail()
    elif origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise fail()
        value = tuple(value)
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise fail()
    if meta.get("low") is not None and value < meta["low"]:
        raise fail()
    if meta.get("high") is not None and value > meta["high"]:
        raise fail()
    return value


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong values."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix or 'top level'} must be a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{source}: unknown key {where!r}; allowed here: {', '.join(sorted(known))}")
    kwargs = {}
    for name, f in known.items():
        if name not in raw:
            continue
        where = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw[name], where, source)
        else:
            kwargs[name] = _coerce(raw[name], tp, where, f, source)
    return cls(**kwargs)


def load(path: str | Path = "params.yaml") -> Config:
    """Read params.yaml into a `Config`; raise `ConfigError` naming the key on any problem.

    Sections that DVC uses for other tools (any key not a stage) are refused, so a typo such as
    ``extrct:`` never silently falls back to defaults.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    return _build(Config, raw, "", str(path))


def to_dict(section: Any) -> dict[str, Any]:
    """A section as plain data (tuples as lists), for reports and MLflow params."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}
