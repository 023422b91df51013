"""The `slic` command: fast help, one-line errors, reports written per stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from slic.cli import main


def test_help_imports_no_heavy_library() -> None:
    code = ("import sys\nfrom slic.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'mlflow', 'great_expectations', 'prefect', 'pandas', 'av') "
            "if m in sys.modules]\nprint(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert "extract" in out and "validate" in out


def test_config_error_is_one_line_with_exit_2(tmp_path: Path, capsys) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("extract:\n  workers: 0\n")
    assert main(["--params", str(params), "extract"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"slic extract: error: {params}: extract.workers = 0: expected an integer in [1, 256]"


def test_stages_write_reports(tiny_dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(
        f"manifest:\n  root: {tiny_dataset}\n  workers: 1\nvalidate:\n  data_docs: docs\n"
        "extract:\n  short_side: 32\n  workers: 1\n")
    for stage in ("manifest", "validate", "extract"):
        assert main([stage]) == 0, capsys.readouterr().err
    manifest = json.loads(Path("reports/manifest.json").read_text())
    assert manifest["videos"] == 24 and manifest["excluded"] == [] and manifest["splits"]["val"] == 6
    assert json.loads(Path("reports/validate.json").read_text())["success"] is True
    extract = json.loads(Path("reports/extract.json").read_text())
    assert extract["extracted"] == 24 and extract["failed"] == [] and extract["frames"] == 24 * 32
    assert {"videos", "failed", "frames", "seconds", "frames_per_s", "bytes"} <= set(extract)
    assert len(list(Path("data/frames").rglob("*.shard"))) == 24


def test_missing_manifest_is_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text("extract:\n  workers: 1\n")
    assert main(["extract"]) == 2
    err = capsys.readouterr().err
    assert "data/manifests/validated.csv: manifest not found; run the stages before this one first" in err


def test_the_manifest_stage_says_what_a_group_pattern_made_of_the_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    """A regex is easy to get subtly wrong: the stage counts the recordings it names, with the largest, so a user
    sees at a glance whether clips were gathered (an unlabelled folder here: one recording per name family)."""
    from tests.data.test_datasets import recordings_folder

    root = recordings_folder(tmp_path / "clips", clips=2)
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text(f"manifest:\n  root: {root}\n  layout: unlabelled\n  workers: 1\n"
                                   "  group_pattern: '^(.*?)_c\\d+\\.\\w+$'\n")
    assert main(["manifest"]) == 0
    out = capsys.readouterr().out
    assert "manifest: manifest.group_pattern names 12 recordings of the 24 usable videos (the largest, jump_jump_r0, " \
           "has 2)" in out and "note:" not in out
    report = json.loads(Path("reports/manifest.json").read_text())
    assert report["recordings"] == {"count": 12, "largest": 2, "example": "jump_jump_r0"}
    assert report["classes"] == 0  # an unlabelled folder has none (its empty class was counted as one)
