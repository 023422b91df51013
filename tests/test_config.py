"""params.yaml loading: defaults in sync, and every bad value refused with a one-line message."""

from __future__ import annotations

from pathlib import Path

import pytest

from slic.config import Config, ConfigError, ExtractConfig, flat_settings, load
from tests.conftest import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_equal_the_dataclass_defaults() -> None:
    # params.yaml documents the defaults; drift between the two would mislead users.
    assert load(ROOT / "params.yaml") == Config()


def test_values_are_read_and_coerced(tmp_path: Path) -> None:
    config = load(write(tmp_path, "extract:\n  short_side: 128\nmanifest:\n  val_fraction: 0\n"
                                   "  extensions: [.avi]\n"))
    assert config.extract.short_side == 128
    assert config.manifest.val_fraction == 0.0 and isinstance(config.manifest.val_fraction, float)
    assert config.manifest.extensions == (".avi",)
    assert config.synth == Config().synth  # untouched sections keep their defaults


@pytest.mark.parametrize(("text", "expected"), [
    ("extract:\n  short_sid: 64\n", "unknown key 'extract.short_sid' (did you mean 'short_side'?)"),
    ("extrct:\n  short_side: 64\n", "unknown key 'extrct' (did you mean 'extract'?)"),
    ("manifest:\n  qqq: 8\n", "unknown key 'manifest.qqq'; allowed here: "),  # nothing close: no guess
    ("extract:\n  short_side: '64'\n", "extract.short_side = '64': expected an integer in [16, 1080]"),
    ("extract:\n  short_side: 8\n", "extract.short_side = 8: expected an integer in [16, 1080]"),
    ("extract:\n  fail_fast: 1\n", "extract.fail_fast = 1: expected true or false"),
    ("manifest:\n  layout: ucf\n", "manifest.layout = 'ucf': expected one of 'synthetic', 'ucf101'"),
    ("manifest:\n  val_fraction: 0.9\n", "manifest.val_fraction = 0.9: expected a number in [0.0, 0.5]"),
    ("synth: [1, 2]\n", "synth must be a mapping"),
    ("synth:\n  classes: true\n", "synth.classes = True: expected an integer"),
])
def test_bad_values_name_file_key_value_and_what_is_allowed(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


def test_missing_file_and_bad_yaml_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML") as caught:
        load(write(tmp_path, "extract: [\n"))
    assert "\n" not in str(caught.value)


def test_a_regular_expression_in_double_quotes_is_told_to_use_single_quotes(tmp_path: Path) -> None:
    """YAML reads \\d inside double quotes as an escape it does not know: the one line says what to write instead;
    in single quotes the pattern reaches manifest.group_pattern as written."""
    with pytest.raises(ConfigError, match=r"found unknown escape character 'd'.*; inside double quotes YAML reads a "
                                          r"backslash as an escape: put a regular expression in single quotes"):
        load(write(tmp_path, 'manifest:\n  layout: folder\n  group_pattern: "^(.*?)_c\\d+"\n'))
    config = load(write(tmp_path, "manifest:\n  layout: folder\n  group_pattern: '^(.*?)_c\\d+\\.\\w+$'\n"))
    assert config.manifest.group_pattern == r"^(.*?)_c\d+\.\w+$"


def test_the_index_may_hold_every_video_but_evaluate_never_queries_its_own_gallery(tmp_path: Path) -> None:
    config = load(write(tmp_path, "index:\n  gallery_split: all\nevaluate:\n  gallery_split: train+val\n"))
    assert (config.index.gallery_split, config.evaluate.gallery_split) == ("all", "train+val")
    with pytest.raises(ConfigError, match=r"evaluate.gallery_split = 'all'"):
        load(write(tmp_path, "evaluate:\n  gallery_split: all\n"))


def test_flat_settings_name_every_key_by_its_section(tmp_path: Path) -> None:
    """The params of a pipeline's MLflow run: every setting, defaults included, and each eval set's keys."""
    (tmp_path / "params.yaml").write_text("pretrain:\n  seed: 9\nevaluate:\n  ks: [1, 5]\neval_sets:\n  hmdb:\n"
                                          "    root: /videos/hmdb51\n    layout: hmdb51\n")
    flat = flat_settings(load(tmp_path / "params.yaml"))
    assert flat["pretrain.seed"] == "9" and flat["evaluate.ks"] == "[1, 5]"
    assert flat["eval_sets.hmdb.layout"] == "hmdb51" and flat["eval_sets.hmdb.root"] == "/videos/hmdb51"
    assert flat["extract.short_side"] == str(ExtractConfig().short_side)  # a default, not in the file
    assert not any(key.startswith("eval_sets.synthetic_unseen") for key in flat)  # the file's eval_sets replaced it
