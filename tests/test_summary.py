"""`slic summary`: the committed reports of `make run` read back as a few lines, and an unlabelled archive's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from slic.cli import main
from slic.summary import format_summary, headline_metrics, summary_lines
from tests.conftest import ROOT

REPORTS = ROOT / "reports"


def said(lines: list[tuple[str, str]]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for what, line in lines:
        found.setdefault(what, []).append(line)
    return found


def test_the_committed_run_is_summed_up_with_its_own_numbers_and_where_to_look() -> None:
    retrieval = json.loads((REPORTS / "retrieval.json").read_text())
    promotion = json.loads((REPORTS / "promotion.json").read_text())
    lines = said(summary_lines(REPORTS, "sqlite:///mlflow.db"))
    assert [what for what in lines if what != "note"] == ["encoder", "retrieval", "baselines", "classify",
                                                          "transfer", "clusters", "labels", "registry", "search",
                                                          "MLflow"]
    assert lines["retrieval"][0].startswith(f"test recall@1 {100 * retrieval['recall@1']:.1f}%, @5 ")
    assert f", @50 {100 * retrieval['recall@50']:.1f}% (" in lines["retrieval"][0]  # every k, the paper's 20 and 50 too
    assert f"; an encoder unlike the paper's in {len(retrieval['differs_from_paper'])} pretraining settings)" in lines[
        "retrieval"][0] and retrieval["encoder"]["objective"] == "proxy"  # the CPU default is not the paper's
    val = json.loads((REPORTS / "manifest.json").read_text())["splits"]["val"]
    assert (f"against {retrieval['gallery']} train videos: the train list less the {val} val videos carved from it "
            "to choose the checkpoint; the protocol's gallery is the whole list") in lines["retrieval"][0]
    assert "-> reports/retrieval.html" in lines["retrieval"][0]
    assert lines["registry"] == [f"slic-encoder version {promotion['version']} {promotion['decision']}; "
                                 f"@champion -> version {promotion['alias_version']}"]
    ablation = json.loads((REPORTS / "ablation.json").read_text())["modes"]
    assert f"random_init {100 * ablation['random_init']['recall@1']:.1f}%" in lines["baselines"][0]
    assert lines["transfer"][0].startswith("synthetic_unseen: recall@1 ")
    assert lines["MLflow"] == ["mlflow ui --backend-store-uri sqlite:///mlflow.db (runs per stage; the registry's "
                               "champion)"]


def test_an_unlabelled_archive_says_what_needs_no_classes_and_what_skipped(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    for name, report in {
        "pretrain.json": {"labelled": False, "best_epoch": 24, "mode": "slic", "train_videos": 11, "seconds": 3.4,
                          "device": "cpu"},
        "retrieval.json": {"labelled": False, "neighbour_cosine@1": 0.81, "neighbour_cosine@10": 0.2,
                           "effective_rank": 7.18, "embedding_dim": 128},
        "ablation.json": {"skipped": True, "reason": "no class labels"},
        "finetune.json": {"skipped": True}, "linear_probe.json": {"skipped": True},
        "spread_labels.json": {"given": 0, "suggested": 3, "html": "reports/label_next.html",
                               "next_table": "reports/label_next.csv", "given_file": "labels/given.csv"},
        "promotion.json": {"model_name": "slic-encoder", "version": "3", "decision": "not compared",
                           "alias": "champion", "alias_version": "2"},
        "manifest.json": {"videos": 17, "advice": ["set extract.fps: 30"],
                          "excluded": [{"video_id": "a", "reason": "too short: 3 frames < 32"},
                                       {"video_id": "b", "reason": "too short: 4 frames < 32"},
                                       {"video_id": "c", "reason": "unreadable: empty file (0 bytes)"}]},
        "extract.json": {"failed": [{"path": "/v/corrupted.mp4", "error": "InvalidDataError: Invalid data"}],
                         "damaged": [{"path": "/v/glitch.mp4", "note": "1 of 50 packets could not be decoded"}]},
    }.items():
        (reports / name).write_text(json.dumps(report))
    (reports / "index.json").write_text("{not json")  # torn: left out, not misread
    pretrain = json.loads((reports / "pretrain.json").read_text())
    (reports / "pretrain.json").write_text(json.dumps({**pretrain, "short_run_note": "24 training steps in all"}))
    lines = said(summary_lines(reports))
    assert list(lines) == ["encoder", "retrieval", "baselines", "classify", "labels", "registry", "note"]
    assert lines["note"] == [  # what the stages warned of, repeated at the end
        "manifest: 3 of 17 videos excluded (too short 2, unreadable 1) -> reports/manifest.json",
        "manifest: set extract.fps: 30",
        "extract: 1 video(s) could not be decoded, e.g. /v/corrupted.mp4: InvalidDataError: Invalid data",
        "extract: 1 video(s) decoded past damaged packets, e.g. /v/glitch.mp4: 1 of 50 packets could not be decoded",
        "pretrain: 24 training steps in all"]
    assert lines["encoder"] == ["mode slic, 11 train videos, the last epoch (24) is best.pt: no classes to choose "
                                "on; 3 s on cpu"]
    assert lines["retrieval"][0].startswith("no classes, so no recall: neighbour_cosine@1 0.81, effective rank 7.2")
    assert lines["baselines"][0].startswith("skipped: the videos have no classes")
    assert lines["classify"] == ["skipped: no classes to classify"]
    assert "name the 3 videos of reports/label_next.html" in lines["labels"][0]
    assert format_summary([]) == "slic summary: no reports yet: run `dvc repro` (or `make run`)"


def test_slic_summary_prints_the_block_in_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    shutil.copytree(REPORTS, tmp_path / "reports", ignore=shutil.ignore_patterns("bench"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert main(["summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "slic summary (reports/):" and out[-1].split() == [
        "MLflow", "open", "http://127.0.0.1:5000", "(runs", "per", "stage;", "the", "registry's", "champion)"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the SQLite store in the checkout, named as the README names it
    assert main(["summary"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split()[:5] == [
        "MLflow", "mlflow", "ui", "--backend-store-uri", "sqlite:///mlflow.db"]
    shutil.rmtree(tmp_path / "reports")
    assert main(["summary"]) == 0
    assert capsys.readouterr().out.strip() == "slic summary: no reports yet: run `dvc repro` (or `make run`)"


def test_the_markdown_table_keeps_each_line_in_its_row() -> None:
    from slic.summary import summary_markdown

    table = summary_markdown([("retrieval", "test recall@1 35.2%"), ("odd", "a | b")])
    assert table.splitlines()[-2:] == ["| retrieval | test recall@1 35.2% |", "| odd | a / b |"]
    assert summary_markdown([]) == "No reports yet."


def test_the_pipeline_runs_headline_numbers_are_the_reports_own(tmp_path: Path) -> None:
    """What the pipeline's MLflow parent run logs, so the runs table sorts pipeline runs by it: each number equal to
    its report's; a report of another format loses only its own numbers."""
    metrics = headline_metrics(REPORTS)
    retrieval = json.loads((REPORTS / "retrieval.json").read_text())
    ablation = json.loads((REPORTS / "ablation.json").read_text())["modes"]
    finetune = json.loads((REPORTS / "finetune.json").read_text())
    transfer = json.loads((REPORTS / "transfer/synthetic_unseen/retrieval.json").read_text())
    assert {key: metrics[f"evaluate.recall_at_{key[7:]}"] for key in retrieval if key.startswith("recall@")} == {
        key: value for key, value in retrieval.items() if key.startswith("recall@")}
    assert metrics["ablation.intra_video.recall_at_1"] == ablation["intra_video"]["recall@1"]
    assert metrics["finetune.scratch_top1"] == finetune["scratch"]["top1"]
    assert metrics["linear_probe.top1"] == json.loads((REPORTS / "linear_probe.json").read_text())["top1"]
    assert metrics["transfer.synthetic_unseen.random_init_recall_at_1"] == transfer["random_init"]["recall@1"]
    assert "classify.synthetic_unseen.finetune_pretrained_top1" in metrics
    assert metrics["pretrain.best_val_recall_at_1"] == json.loads((REPORTS / "pretrain.json").read_text())[
        "best_val_recall_at_1"]
    shutil.copytree(REPORTS, tmp_path / "reports", ignore=shutil.ignore_patterns("bench"))
    (tmp_path / "reports/finetune.json").write_text(json.dumps({"pretrained": {"top1": "n/a"}, "scratch": []}))
    (tmp_path / "reports/ablation.json").write_text(json.dumps({"modes": {"slic": []}}))
    mangled = headline_metrics(tmp_path / "reports")
    assert "finetune.scratch_top1" not in mangled and not any(key.startswith("ablation.") for key in mangled)
    assert mangled["evaluate.recall_at_1"] == retrieval["recall@1"]  # the other reports' numbers stay
    assert headline_metrics(tmp_path / "nothing") == {}


def test_the_pipeline_run_logs_no_number_of_a_stale_report() -> None:
    """After `dvc exp run -S pretrain.seed=8 evaluate` then a pipeline run of other stages, the reports an earlier
    encoder made are stale: the parent run that logs seed 8 must not log their numbers as its own."""
    from slic.report_freshness import Stale
    from slic.summary import stale_headline_reports

    why = Stale("evaluate", "pretrain", "params.yaml: pretrain")
    stale = {"retrieval.json": why, "linear_probe.json": why, "clusters.html": why, "transfer/gone/retrieval.json": why}
    fresh = headline_metrics(REPORTS, stale)
    everything = headline_metrics(REPORTS)
    assert "evaluate.recall_at_1" in everything and "linear_probe.top1" in everything
    assert not any(key.startswith(("evaluate.", "linear_probe.")) for key in fresh)
    assert fresh == {key: value for key, value in everything.items()
                     if not key.startswith(("evaluate.", "linear_probe."))}  # the fresh reports' numbers stay
    # named: the stale reports that gave numbers (not a page, nor a report that is absent)
    assert stale_headline_reports(REPORTS, stale) == ["linear_probe.json", "retrieval.json"]
    assert stale_headline_reports(REPORTS) == []


def test_an_eval_set_dropped_from_params_leaves_its_numbers_out(tmp_path: Path) -> None:
    """`eval_sets: {}` (the README's advice for your own videos) leaves reports/transfer/synthetic_unseen behind:
    its synthetic numbers are not shown beside the new encoder's, nor logged as the pipeline's; a note says why."""
    shutil.copytree(REPORTS, tmp_path / "reports", ignore=shutil.ignore_patterns("bench"))
    (tmp_path / "params.yaml").write_text("eval_sets: {}\n")
    lines = said(summary_lines(tmp_path / "reports"))
    assert "transfer" not in lines
    assert lines["note"][-1] == ("transfer: reports/transfer/synthetic_unseen left out: eval_sets of params.yaml no "
                                 "longer lists it (the committed synthetic run's or an earlier run's; delete the "
                                 "folder to stop this note)")
    assert not any(key.startswith(("transfer.", "classify.")) for key in headline_metrics(tmp_path / "reports"))
    (tmp_path / "params.yaml").write_text("eval_sets:\n  synthetic_unseen: {root: data/raw/synthetic_transfer}\n")
    assert "transfer" in said(summary_lines(tmp_path / "reports"))
    (tmp_path / "params.yaml").unlink()  # reports read on their own: every folder counts
    assert "transfer" in said(summary_lines(tmp_path / "reports"))


def test_a_stale_eval_set_marks_its_own_line_not_the_other_sets(tmp_path: Path) -> None:
    """Each eval set's transfer line reads its own reports: one set's changed settings (its `transfer@mine` stage)
    mark its line alone; before, the whole transfer section was marked."""
    from slic.report_freshness import Stale

    shutil.copytree(REPORTS, tmp_path / "reports", ignore=shutil.ignore_patterns("bench"))
    shutil.copytree(tmp_path / "reports/transfer/synthetic_unseen", tmp_path / "reports/transfer/mine")
    (tmp_path / "params.yaml").write_text("eval_sets:\n  synthetic_unseen: {root: a}\n  mine: {root: b}\n")
    stale = {"transfer/mine/retrieval.json": Stale("transfer@mine", "eval_data@mine", "params.yaml: eval_sets")}
    lines = said(summary_lines(tmp_path / "reports", stale=stale))
    assert [line.split(":")[0] for line in lines["transfer"]] == ["[stale] mine", "synthetic_unseen"]
    assert lines["note"][-1].startswith("[stale] lines were made before a change: params.yaml: eval_sets (read by "
                                        "eval_data@mine); transfer@mine comes after those")


STAGES = """stages:
  pretrain:
    cmd: cp given/pretrain.json reports/pretrain.json && echo model > model.txt
    deps: [given/pretrain.json]
    params: [pretrain]
    outs: [model.txt, {reports/pretrain.json: {cache: false}}]
  evaluate:
    cmd: cp given/retrieval.json reports/retrieval.json
    deps: [model.txt, given/retrieval.json]
    outs: [{reports/retrieval.json: {cache: false}}]
"""


def _dvc(folder: Path, *args: str) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=folder, check=True, capture_output=True)


def test_a_report_whose_stage_or_an_earlier_one_changed_since_is_marked_stale(
        tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A real DVC pipeline: up to date, nothing is stale; a setting of pretrain edited, pretrain's line and the line
    of evaluate (after it) are marked, with a note naming the change; an input missing (a clone without the data)
    marks nothing; outside a DVC repository nothing is said."""
    from slic.report_freshness import Stale, stale_reports

    (tmp_path / "given").mkdir()
    (tmp_path / "reports").mkdir()
    for name in ("pretrain.json", "retrieval.json"):
        shutil.copy(REPORTS / name, tmp_path / "given" / name)
    (tmp_path / "dvc.yaml").write_text(STAGES)
    (tmp_path / "params.yaml").write_text("pretrain:\n  epochs: 24\n")
    _dvc(tmp_path, "init", "--no-scm", "-q")
    _dvc(tmp_path, "repro", "-q")
    assert stale_reports(tmp_path) == {}
    assert not any("[stale]" in line for _, line in summary_lines(tmp_path / "reports", stale=stale_reports(tmp_path)))

    (tmp_path / "params.yaml").write_text("pretrain:\n  epochs: 48\n")
    stale = stale_reports(tmp_path)
    assert stale == {"pretrain.json": Stale("pretrain", "pretrain", "params.yaml: pretrain"),
                     "retrieval.json": Stale("evaluate", "pretrain", "params.yaml: pretrain")}
    lines = said(summary_lines(tmp_path / "reports", stale=stale))
    assert lines["encoder"][0].startswith("[stale] mode ") and lines["retrieval"][0].startswith("[stale] test recall@1")
    assert lines["note"][-1] == ("[stale] lines were made before a change: params.yaml: pretrain (read by pretrain); "
                                 "evaluate comes after those; `dvc repro` remakes them (see `dvc status`)")
    monkeypatch.chdir(tmp_path)  # `slic summary` as a user runs it, in the checkout
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert main(["summary"]) == 0
    printed = capsys.readouterr().out
    assert "  encoder    [stale] mode " in printed and "params.yaml: pretrain (read by pretrain)" in printed
    (tmp_path / "params.yaml").write_text("pretrain:\n  epochs: 24\n")
    (tmp_path / "model.txt").unlink()  # made by pretrain, read by evaluate: missing, not changed
    assert stale_reports(tmp_path) == {}
    (tmp_path / "given" / "retrieval.json").write_text((REPORTS / "retrieval.json").read_text() + "\n")
    assert set(stale_reports(tmp_path)) == {"retrieval.json"}
    plain = tmp_path_factory.mktemp("plain")  # not a DVC repository, with a report
    shutil.copytree(tmp_path / "reports", plain / "reports")
    assert stale_reports(plain) == {}


def test_an_edited_split_file_dvc_does_not_watch_marks_the_manifest_and_after_stale(tmp_path: Path) -> None:
    """manifest.splits_dir outside the root: DVC lists only the root, so an edited split file leaves `dvc status`
    clean. The manifest report's fingerprint of that folder tells `slic summary` so, with the command that remakes
    it (a plain `dvc repro` would not)."""
    from slic.data.datasets import splits_fingerprint
    from slic.report_freshness import Stale, stale_reports

    (tmp_path / "given").mkdir()
    (tmp_path / "reports").mkdir()
    splits = tmp_path / "lists"  # the split files, outside anything DVC watches
    splits.mkdir()
    (splits / "trainlist01.txt").write_text("A/v_A_g01_c01.avi\n")
    manifest = {"videos": 1, "unwatched_splits": {"dir": "lists", "fingerprint": splits_fingerprint(splits)}}
    (tmp_path / "given" / "manifest.json").write_text(json.dumps(manifest))
    shutil.copy(REPORTS / "retrieval.json", tmp_path / "given" / "retrieval.json")
    eval_lists = tmp_path / "hmdb_lists"  # an eval set's split files, outside its root too
    eval_lists.mkdir()
    (eval_lists / "walk_test_split1.txt").write_text("a.avi 1\n")
    data = {"set": "hmdb", "unwatched_splits": {"dir": "hmdb_lists", "fingerprint": splits_fingerprint(eval_lists)}}
    (tmp_path / "given" / "data.json").write_text(json.dumps(data))
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  manifest:\n    cmd: cp given/manifest.json reports/manifest.json\n    deps: [given/manifest.json]\n"
        "    outs: [{reports/manifest.json: {cache: false}}]\n  evaluate:\n"
        "    cmd: cp given/retrieval.json reports/retrieval.json\n"
        "    deps: [reports/manifest.json, given/retrieval.json]\n    outs: [{reports/retrieval.json: {cache: false}}]\n"
        "  eval_data:\n    foreach: [hmdb]\n    do:\n"
        "      cmd: mkdir -p reports/transfer/${item} && cp given/data.json reports/transfer/${item}/data.json\n"
        "      deps: [given/data.json]\n      outs:\n        - reports/transfer/${item}/data.json:\n"
        "            cache: false\n")
    _dvc(tmp_path, "init", "--no-scm", "-q")
    _dvc(tmp_path, "repro", "-q")
    assert stale_reports(tmp_path) == {}

    (splits / "trainlist01.txt").write_text("A/v_A_g01_c01.avi\nA/v_A_g02_c01.avi\n")
    why = "the split files in lists, which DVC does not watch"
    assert stale_reports(tmp_path) == {"manifest.json": Stale("manifest", "manifest", why, unwatched=True),
                                       "retrieval.json": Stale("evaluate", "manifest", why, unwatched=True)}
    lines = said(summary_lines(tmp_path / "reports", stale=stale_reports(tmp_path)))
    assert lines["retrieval"][0].startswith("[stale] test recall@1")
    assert lines["note"][-1].endswith("; `dvc repro --single-item --force manifest`, then `dvc repro`, remakes them")

    (splits / "trainlist01.txt").write_text("A/v_A_g01_c01.avi\n")  # as it was; now the eval set's list changes
    assert stale_reports(tmp_path) == {}
    (eval_lists / "walk_test_split1.txt").write_text("a.avi 2\n")
    assert stale_reports(tmp_path) == {"transfer/hmdb/data.json": Stale(
        "eval_data@hmdb", "eval_data@hmdb", "the split files in hmdb_lists, which DVC does not watch",
        unwatched=True)}
    from slic.summary import _stale_note  # no line of this summary reads data.json: the note as a transfer line gets it

    assert _stale_note(stale_reports(tmp_path)).endswith(
        "; `dvc repro --single-item --force eval_data@hmdb`, then `dvc repro`, remakes them")


def test_the_manifest_stage_keeps_the_fingerprint_of_split_files_outside_the_root(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`slic manifest` with the split files beside the videos' root, not under it: its report keeps their
    fingerprint (what the test above compares), and none when DVC watches them (under the root)."""
    from slic.data.datasets import splits_fingerprint

    lists = tmp_path / "lists"
    lists.mkdir()
    for listing in tiny_dataset.glob("*.txt"):
        shutil.copy(listing, lists)
    (tmp_path / "params.yaml").write_text(f"manifest:\n  root: {tiny_dataset}\n  layout: ucf101\n  splits_dir: lists\n"
                                          "  workers: 1\n")
    monkeypatch.chdir(tmp_path)
    assert main(["manifest"]) == 0
    report = json.loads((tmp_path / "reports/manifest.json").read_text())
    assert report["unwatched_splits"] == {"dir": "lists", "fingerprint": splits_fingerprint(lists)}
    (tmp_path / "params.yaml").write_text(f"manifest:\n  root: {tiny_dataset}\n  layout: ucf101\n  workers: 1\n")
    assert main(["manifest"]) == 0
    assert "unwatched_splits" not in json.loads((tmp_path / "reports/manifest.json").read_text())
