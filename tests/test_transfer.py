"""Evaluation sets: bad eval_sets params are one line naming the key; the flow sees one stage per set; the synthetic
transfer set holds the motions the training set never shows. (The stages themselves run in tests/test_pipeline.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import pandas as pd

from flows.pipeline import dvc_stages, foreach_keys, report_path
from slic.cli import main
from slic.config import ConfigError, load
from slic.data.synthetic import MOTIONS, motion_names
from tests.conftest import ROOT


def params_with(tmp_path: Path, eval_sets: object) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["eval_sets"] = eval_sets
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize(("eval_sets", "said"), [
    ({"HMDB": {"root": "/data/hmdb51", "layout": "hmdb51"}}, "eval_sets.HMDB: a name must be lowercase"),
    ({"hmdb": {"layout": "hmdb51"}}, "eval_sets.hmdb.root is missing: set it to the folder of the set's videos"),
    ({"hmdb": {"root": "/data/hmdb51", "layout": "unlabelled"}}, "eval_sets.hmdb.layout = 'unlabelled': expected one of"),
    ({"hmdb": {"root": "/data/hmdb51", "splt": 1}},
     "unknown key 'eval_sets.hmdb.splt' (did you mean 'split'?); allowed here:"),
    ({"hmdb": {"root": "/data/hmdb51", "split": 4}}, "eval_sets.hmdb.split = 4: expected an integer in [1, 3]"),
    (["hmdb"], "eval_sets must be a mapping of name -> settings"),
])
def test_bad_eval_sets_are_one_line_naming_the_key(tmp_path: Path, eval_sets: object, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(params_with(tmp_path, eval_sets))
    assert said in str(caught.value) and "\n" not in str(caught.value)


def test_an_unknown_eval_set_name_lists_the_known_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    path = params_with(tmp_path, {"ucf": {"root": "/data/ucf101"}, "hmdb": {"root": "/data/hmdb51"}})
    assert main(["--params", str(path), "transfer", "kinetics"]) == 2
    assert capsys.readouterr().err.strip() == ("slic transfer: error: no eval set 'kinetics' in params.yaml's "
                                               "eval_sets (it has: hmdb, ucf)")
    with pytest.raises(SystemExit):
        main(["--params", str(path), "eval-data"])  # the name is required


def test_the_flow_runs_one_stage_per_eval_set_in_file_order(tmp_path: Path) -> None:
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    params_with(tmp_path, {"ucf": {"root": "/data/ucf101"}, "hmdb": {"root": "/data/hmdb51"}})
    stages = dvc_stages(tmp_path)
    at = stages.index("spread_labels")
    assert stages[at + 1:at + 7] == ["eval_data@ucf", "eval_data@hmdb", "transfer@ucf", "transfer@hmdb",
                                     "classify@ucf", "classify@hmdb"]
    assert report_path(tmp_path, "transfer@hmdb") == tmp_path / "reports/transfer/hmdb/retrieval.json"
    assert report_path(tmp_path, "classify@hmdb") == tmp_path / "reports/transfer/hmdb/classify.json"
    assert report_path(tmp_path, "eval_data@ucf") == tmp_path / "reports/transfer/ucf/data.json"
    params_with(tmp_path, {})
    assert not any("@" in stage for stage in dvc_stages(tmp_path))  # no eval set: no such stage
    assert foreach_keys("${a.b}", {"a": {"b": ["x", "y"]}}) == ["0", "1"] and foreach_keys("${missing}", {}) == []


def test_the_synthetic_transfer_set_holds_the_motions_synth_never_shows() -> None:
    config = load(ROOT / "params.yaml")
    seen = set(motion_names(config.synth.classes, config.synth.first_class))
    unseen = motion_names(config.synth_transfer.classes, config.synth_transfer.first_class)
    assert unseen == MOTIONS[10:16] and not seen & set(unseen)
    assert config.eval_sets["synthetic_unseen"].root == config.synth_transfer.out
    with pytest.raises(ValueError, match="first_class 12 \\+ classes 6 = 18: there are 16 motions"):
        motion_names(6, 12)


def test_classify_is_off_unless_the_set_asks_and_refuses_a_carve_without_val(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    path = params_with(tmp_path, {"hmdb": {"root": "/data/hmdb51", "layout": "hmdb51"}})
    assert main(["--params", str(path), "classify", "hmdb"]) == 0  # off: nothing trained, the report says how
    report = json.loads((tmp_path / "reports/transfer/hmdb/classify.json").read_text())
    assert report["enabled"] is False and "eval_sets.hmdb.classify: true" in report["how"]
    assert (tmp_path / "data/classify/hmdb").is_dir() and not any((tmp_path / "data/classify/hmdb").iterdir())
    # One train group per class: no val can be carved by group. One line naming the key, before any training.
    path = params_with(tmp_path, {"one": {"root": "/data/one", "layout": "ucf101", "classify": True}})
    rows = [{"video_id": f"{c}/v_{c}_g{g:02d}_c01", "path": "", "class": c, "label": i, "split": s,
             "group": f"{c}/g{g:02d}", "frames": 40, "fps": 25.0, "width": 64, "height": 48, "duration": 1.6,
             "excluded": ""} for i, c in enumerate(("A", "B")) for g, s in ((1, "test"), (8, "train"))]
    (tmp_path / "data/eval/one").mkdir(parents=True)
    pd.DataFrame(rows).to_csv(tmp_path / "data/eval/one/validated.csv", index=False)
    capsys.readouterr()
    assert main(["--params", str(path), "classify", "one"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("slic classify: error: eval set one: no val videos after carving val from its 2 train "
                            "videos") and "eval_sets.one.val_fraction" in error and "\n" not in error


def test_a_folder_eval_set_of_clips_is_told_to_name_its_recordings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """An eval set of class folders whose clips come in name families: eval_data says which key groups them (a
    per-video test split would let retrieval find a query's recording in the gallery), and the key reaches the
    set's manifest."""
    from slic.data.datasets import build_manifest
    from slic.transfer import manifest_config, prepare_eval_data
    from tests.data.test_datasets import recordings_folder

    root = recordings_folder(tmp_path / "clips", clips=2)
    monkeypatch.chdir(tmp_path)
    config = load(params_with(tmp_path, {"mine": {"root": str(root), "layout": "folder"}}))
    report = prepare_eval_data(config, "mine")
    pattern = r"^(.*?)_c\d{1,3}\.\w+$"
    assert report["advice"][0].endswith(f"set eval_sets.mine.group_pattern: '{pattern}' (names jump_r0_c01.mp4's "
                                        "recording 'jump_r0') to split by recording")
    assert "eval_data@mine: note: 24 of 24 videos share their name" in capsys.readouterr().out
    grouped = load(params_with(tmp_path, {"mine": {"root": str(root), "layout": "folder", "group_pattern": pattern}}))
    table = build_manifest(manifest_config(grouped, "mine"))
    assert table["group"].nunique() == 12 and (table.groupby("group")["split"].nunique() == 1).all()
    report = prepare_eval_data(grouped, "mine")  # the stage says what the pattern made of the set, in its own key
    assert report["recordings"] == {"count": 12, "largest": 2, "example": "jump/jump_r0"}
    assert ("eval_data@mine: eval_sets.mine.group_pattern names 12 recordings of the 24 usable videos (the largest, "
            "jump/jump_r0, has 2)") in capsys.readouterr().out
    assert set(table["split"]) == {"train", "test"}  # no val carve for an eval set's retrieval
    # Its manifest's errors name the set's own keys, the line of params.yaml to fix.
    from slic.data.datasets import DatasetError

    broken = load(params_with(tmp_path, {"mine": {"root": str(root), "layout": "folder", "group_pattern": "_c(\\d+"}}))
    with pytest.raises(DatasetError, match=r"^eval_sets.mine.group_pattern = '_c\(\\d\+': not a regular"):
        prepare_eval_data(broken, "mine")


def test_an_eval_set_with_takedowns_excludes_them_by_its_own_key(tiny_dataset: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A listed video that is gone (Kinetics' YouTube takedowns) stops eval_data with the set's own key to set, and
    with `on_missing: exclude` is excluded by name."""
    import shutil

    from slic.data.datasets import DatasetError, build_manifest
    from slic.transfer import manifest_config, prepare_eval_data

    root = tmp_path / "set"
    shutil.copytree(tiny_dataset, root)
    (root / "Rise" / "v_Rise_g03_c01.avi").unlink()
    monkeypatch.chdir(tmp_path)
    listed = {"root": str(root), "layout": "synthetic"}
    with pytest.raises(DatasetError, match="1 listed video.*set eval_sets.gone.on_missing: exclude$"):
        prepare_eval_data(load(params_with(tmp_path, {"gone": listed})), "gone")
    table = build_manifest(manifest_config(load(params_with(tmp_path, {"gone": {**listed, "on_missing": "exclude"}})),
                                           "gone")).set_index("video_id")
    assert table.loc["Rise/v_Rise_g03_c01", "excluded"] == "missing file"


def test_an_eval_sets_split_files_outside_its_root_are_fingerprinted(tiny_dataset: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """eval_data@NAME with the set's split files beside its videos: its report keeps their fingerprint, as the
    manifest stage's does, so an edit DVC cannot see marks the set's reports stale (tests/test_summary.py)."""
    import shutil

    from slic.data.datasets import splits_fingerprint
    from slic.transfer import prepare_eval_data

    lists = tmp_path / "lists"
    lists.mkdir()
    for listing in tiny_dataset.glob("*.txt"):
        shutil.copy(listing, lists)
    monkeypatch.chdir(tmp_path)
    config = load(params_with(tmp_path, {"mine": {"root": str(tiny_dataset), "layout": "synthetic",
                                                  "splits_dir": "lists"}}))
    report = prepare_eval_data(config, "mine")
    assert report["unwatched_splits"] == {"dir": "lists", "fingerprint": splits_fingerprint(lists)}
    assert any("eval_sets.mine.splits_dir lists is outside the root" in line for line in report["advice"])


def test_an_encoder_pretrained_elsewhere_still_writes_the_pairs_file_dvc_expects(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the pretraining manifest there is nothing to compare with, but transfer@NAME's DVC out
    (reports/transfer/NAME/pretraining_twins.csv) is written, a header alone, and the report names it."""
    import dataclasses

    from slic.transfer_stages import _pretraining_twins

    config = load(ROOT / "params.yaml")
    config = dataclasses.replace(config, extract=dataclasses.replace(config.extract,
                                                                     manifest=str(tmp_path / "no_manifest.csv")))
    monkeypatch.chdir(tmp_path)
    twins, warning = _pretraining_twins(config, "elsewhere")
    assert warning == "" and twins["note"] == "no pretraining manifest" and twins["with_twin"] == 0
    written = pd.read_csv(tmp_path / twins["pairs_file"])
    assert written.empty and list(written.columns) == ["video_id", "twin", "cosine", "path", "twin_path"]
