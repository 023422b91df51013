"""Promotion: the decision rule, the registry (temporary SQLite store) and the champion embedding a real video."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.config import PretrainConfig, PromoteConfig
from slic.promote import Decision, PromoteError, decide, embed_videos, load_champion, promote, read_metric
from tests.conftest import SHARED_VIDEOS, damaged_video, stop_group

TINY_ENCODER = PretrainConfig(hidden_dim=16, out_dim=8, size=16, clip_len=16)


def test_decide_better_worse_equal_and_no_champion() -> None:
    assert decide(0.5, None).promote is True
    assert "no current champion" in decide(0.5, None).reason
    assert decide(0.6, 0.5) == Decision(True, decide(0.6, 0.5).reason) and "beats" in decide(0.6, 0.5).reason
    assert decide(0.4, 0.5).promote is False and "does not beat" in decide(0.4, 0.5).reason
    assert decide(0.5, 0.5).promote is False  # a tie keeps the champion
    assert decide(0.52, 0.5, min_delta=0.05).promote is False and decide(0.56, 0.5, min_delta=0.05).promote
    assert decide(0.3, 0.5, higher_is_better=False).promote is True  # e.g. a loss
    assert decide(0.7, 0.5, higher_is_better=False).promote is False


def test_missing_metric_refuses_naming_metric_and_file(tmp_path: Path) -> None:
    report = tmp_path / "pretrain.json"
    report.write_text(json.dumps({"best_val_recall_at_1": 0.4, "mode": "slic", "ok": True}))
    assert read_metric(report, "best_val_recall_at_1") == 0.4
    with pytest.raises(PromoteError) as exc:
        read_metric(report, "val_map")
    assert str(exc.value) == (f"promote.metric 'val_map' missing in {report}; numeric keys there: "
                              "best_val_recall_at_1")
    with pytest.raises(PromoteError, match="mode.*'slic' is not a finite number"):
        read_metric(report, "mode")
    with pytest.raises(PromoteError, match="not found; run the `pretrain` stage"):
        read_metric(tmp_path / "absent.json", "best_val_recall_at_1")


def make_candidate(folder: Path, metric: float, seed: int, data: str = "0123456789abcdef",
                   cfg: PretrainConfig = TINY_ENCODER) -> tuple[Path, Path]:
    """A real (untrained) encoder checkpoint as pretrain writes it (trained on content fingerprint `data`),
    and its report with `metric`."""
    from dataclasses import replace

    from slic.pretrain import TrainState, build_encoder, save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    cfg = replace(cfg, seed=seed)
    checkpoint = folder / "best.pt"
    save_checkpoint(checkpoint, build_encoder(cfg), None, TrainState(), cfg, data)
    report = folder / "pretrain.json"
    report.write_text(json.dumps({"best_val_recall_at_1": metric, "mlflow_run_id": f"run-{seed}"}))
    return checkpoint, report


@pytest.fixture()
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SQLite tracking store and artifact folder in tmp_path (the working directory)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    return tmp_path


def version_tags(name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    from slic.tracking import tracking_uri

    return dict(MlflowClient(tracking_uri(), registry_uri=tracking_uri()).get_model_version(name, version).tags)


def test_registry_promotes_better_and_keeps_champion_against_worse(store: Path) -> None:
    from slic.registry import alias_version

    cfg = PromoteConfig()
    first = promote(PromoteConfig(checkpoint=str(make_candidate(store / "a", 0.5, 1)[0])), store / "a/pretrain.json")
    assert (first["version"], first["decision"], first["alias_version"]) == ("1", "promoted", "1")
    assert alias_version(cfg.model_name, cfg.alias).version == "1"

    worse = promote(PromoteConfig(checkpoint=str(make_candidate(store / "b", 0.3, 2)[0])), store / "b/pretrain.json")
    assert (worse["version"], worse["decision"], worse["alias_version"]) == ("2", "rejected", "1")
    assert alias_version(cfg.model_name, cfg.alias).version == "1"  # a worse model never takes the alias
    tags = version_tags(cfg.model_name, "2")
    assert tags["metric"] == "best_val_recall_at_1" and float(tags["metric_value"]) == 0.3
    assert float(tags["champion_metric"]) == 0.5 and tags["champion_version"] == "1"
    assert tags["decision"] == "rejected" and "does not beat champion 0.5" in tags["reason"]

    equal = promote(PromoteConfig(checkpoint=str(make_candidate(store / "c", 0.5, 3)[0])), store / "c/pretrain.json")
    assert equal["decision"] == "rejected" and alias_version(cfg.model_name, cfg.alias).version == "1"

    better = promote(PromoteConfig(checkpoint=str(make_candidate(store / "d", 0.7, 4)[0])), store / "d/pretrain.json")
    assert (better["version"], better["decision"], better["alias_version"]) == ("4", "promoted", "4")
    assert alias_version(cfg.model_name, cfg.alias).version == "4"
    assert version_tags(cfg.model_name, "4")["pretrain_run_id"] == "run-4"
    assert version_tags(cfg.model_name, "1")["decision"] == "promoted"  # history stays on each version


def test_weights_registered_before_are_judged_again_on_their_version_not_registered_again(store: Path) -> None:
    from mlflow import MlflowClient

    from slic.registry import alias_version
    from slic.tracking import tracking_uri

    first = promote(PromoteConfig(checkpoint=str(make_candidate(store / "a", 0.5, 1)[0])), store / "a/pretrain.json")
    checkpoint, report = make_candidate(store / "b", 0.55, 2)
    strict = promote(PromoteConfig(checkpoint=str(checkpoint), min_delta=0.1), report)
    assert (strict["version"], strict["new_version"], strict["decision"]) == ("2", True, "rejected")
    assert version_tags("slic-encoder", "2")["checkpoint_sha256"] == strict["checkpoint_sha256"]
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    described = client.get_model_version("slic-encoder", "2").description  # what the registry UI shows first
    assert described.startswith("**rejected** (") and "does not beat champion 0.5" in described

    # best.pt unchanged, promote rerun for another min_delta: the same version, judged again, now champion
    relaxed = promote(PromoteConfig(checkpoint=str(checkpoint)), report)
    assert (relaxed["version"], relaxed["new_version"], relaxed["decision"]) == ("2", False, "promoted")
    assert relaxed["model_uri"] == "models:/slic-encoder/2" and alias_version("slic-encoder", "champion").version == "2"
    tags = version_tags("slic-encoder", "2")
    assert tags["decision"] == "promoted" and "margin 0.05 > 0" in tags["reason"]
    assert client.get_model_version("slic-encoder", "2").description.startswith("**promoted** (")
    assert version_tags("slic-encoder", first["version"])["decision"] == "promoted"  # the first keeps its own

    # and once more: the champion's own weights, nothing compared or registered, its tags as they were
    same = promote(PromoteConfig(checkpoint=str(checkpoint)), report)
    assert (same["version"], same["new_version"], same["decision"], same["alias_version"]) == (
        "2", False, "already champion", "2")
    assert version_tags("slic-encoder", "2") == tags
    assert client.get_model_version("slic-encoder", "2").description.startswith("**promoted** (")
    assert sorted(str(v.version) for v in client.search_model_versions("name='slic-encoder'")) == ["1", "2"]
    assert client.get_run(same["mlflow_run_id"]).data.tags["promote.new_version"] == "False"


def test_the_registered_model_says_how_to_use_it_once_and_keeps_a_description_written_in_the_ui(store: Path) -> None:
    from mlflow import MlflowClient

    from slic.tracking import tracking_uri

    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    promote(PromoteConfig(checkpoint=str(make_candidate(store / "a", 0.5, 1)[0])), store / "a/pretrain.json")
    said = client.get_registered_model("slic-encoder").description
    assert "slic search clip.mp4 --model models:/slic-encoder@champion" in said and "`path` column" in said
    client.update_registered_model("slic-encoder", description="ours: the encoder of the archive")
    promote(PromoteConfig(checkpoint=str(make_candidate(store / "b", 0.7, 2)[0])), store / "b/pretrain.json")
    assert client.get_registered_model("slic-encoder").description == "ours: the encoder of the archive"
    assert "beats champion 0.5" in client.get_model_version("slic-encoder", "2").description


def test_champion_judged_on_another_metric_refuses(store: Path) -> None:
    checkpoint, report = make_candidate(store / "a", 0.5, 1)
    promote(PromoteConfig(checkpoint=str(checkpoint)), report)
    checkpoint, report = make_candidate(store / "b", 0.5, 2)
    report.write_text(json.dumps({"best_val_recall_at_1": 0.9, "final_val_recall_at_1": 0.9}))
    with pytest.raises(PromoteError, match="'final_val_recall_at_1' missing on the champion, version 1"):
        promote(PromoteConfig(checkpoint=str(checkpoint), metric="final_val_recall_at_1"), report)


def test_champion_loads_from_registry_and_embeds_a_real_video(store: Path) -> None:
    videos = sorted(SHARED_VIDEOS.rglob("*.avi"))[:2]
    if len(videos) < 2:
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    from slic.serving import VideoEncoder

    checkpoint, report = make_candidate(store / "a", 0.5, 1)
    promote(PromoteConfig(checkpoint=str(checkpoint)), report)
    embeddings = embed_videos(videos, "models:/slic-encoder@champion")
    assert embeddings.shape == (2, TINY_ENCODER.out_dim) and np.isfinite(embeddings).all()
    assert not np.allclose(embeddings[0], embeddings[1])  # two different videos
    direct = VideoEncoder(checkpoint).embed_paths(videos)  # the same weights, no registry in between
    np.testing.assert_allclose(embeddings, direct, rtol=1e-5, atol=1e-6)
    model = load_champion()
    assert model.metadata.signature.inputs.input_names() == ["path"]


def test_the_champion_served_over_rest_embeds_files_and_names_the_one_it_cannot_decode(store: Path) -> None:
    """`mlflow models serve -m models:/slic-encoder@champion` (a real scoring server): a POST of paths gives the
    embeddings the registry's model gives in process; a corrupt file is a 400 whose message names it."""
    from slic.tracking import tracking_uri

    videos = sorted(SHARED_VIDEOS.rglob("*.avi"))[:2]
    corrupt = damaged_video(store / "corrupted.mp4")  # probes, cannot be decoded
    if len(videos) < 2:
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    checkpoint, report = make_candidate(store / "a", 0.5, 1)
    promote(PromoteConfig(checkpoint=str(checkpoint)), report)
    expected = embed_videos(videos, "models:/slic-encoder@champion")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri(), "OMP_NUM_THREADS": "1"}
    log = store / "serve.log"
    server, port = serve_champion(env, log)

    def post(paths: list[Path]) -> tuple[int, dict]:
        body = json.dumps({"dataframe_split": {"columns": ["path"], "data": [[str(p)] for p in paths]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    try:
        status, answer = post(videos)
        assert status == 200
        np.testing.assert_allclose(np.array(answer["predictions"], dtype=np.float32), expected, rtol=1e-4, atol=1e-5)
        status, answer = post([videos[0], corrupt])
        assert status == 400 and f"{corrupt}: cannot decode video" in answer["message"]
        assert "other files were not embedded" in answer["message"]
    finally:
        stop_group(server)


def test_promote_stage_writes_promotion_report(store: Path) -> None:
    from slic.cli import main

    checkpoint, report = make_candidate(store / "data/models/pretrain", 0.5, 1)
    (store / "reports").mkdir()
    report.replace(store / "reports/pretrain.json")
    (store / "params.yaml").write_text("promote:\n  checkpoint: data/models/pretrain/best.pt\n")
    assert main(["promote"]) == 0
    written = json.loads((store / "reports/promotion.json").read_text())
    assert written["decision"] == "promoted" and written["alias_version"] == "1"
    from mlflow import MlflowClient

    from slic.tracking import tracking_uri

    run = MlflowClient(tracking_uri()).get_run(written["mlflow_run_id"]).data  # the candidate it judged, named
    assert run.tags["slic.encoder_checkpoint"] == "data/models/pretrain/best.pt" and "encoder.mode" in run.params
    (store / "params.yaml").write_text("promote:\n  metric: val_map\n")
    assert main(["promote"]) == 2  # refuses: the metric is not in reports/pretrain.json


def test_embed_video_command_uses_the_champion(store: Path, capsys: pytest.CaptureFixture) -> None:
    from slic.cli import main

    video = next(iter(sorted(SHARED_VIDEOS.rglob("*.mp4"))), None)
    if video is None:
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    checkpoint, report = make_candidate(store / "a", 0.5, 1)
    promote(PromoteConfig(checkpoint=str(checkpoint)), report)
    assert main(["embed-video", "--out", "vectors.npy", str(video)]) == 0
    vectors = np.load(store / "vectors.npy")
    assert vectors.shape == (1, TINY_ENCODER.out_dim)
    np.testing.assert_allclose(vectors, embed_videos([video]), rtol=1e-5, atol=1e-6)
    assert capsys.readouterr().out.startswith(f"{video}\t")
    assert main(["embed-video", str(store / "absent.avi")]) == 2  # nothing to embed: said before loading a model
    assert capsys.readouterr().err.strip() == f"slic embed-video: error: {store / 'absent.avi'}: no such file"


def test_embed_video_without_a_champion_from_a_checkpoint_and_past_a_corrupt_file(
        store: Path, capsys: pytest.CaptureFixture) -> None:
    """An unlabelled archive has no champion: the command says how to get one or to pass a checkpoint, embeds
    with the checkpoint, and a corrupt file gets a NaN row (the others stay aligned), its name and exit 1."""
    from slic.cli import main
    from slic.serving import VideoEncoder

    good = sorted(SHARED_VIDEOS.rglob("*.mp4"))[:1]
    corrupt = damaged_video(store / "corrupted.mp4")  # probes, cannot be decoded
    if not good:
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    assert main(["embed-video", str(good[0])]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("slic embed-video: error: cannot load model models:/slic-encoder@champion: ")
    assert "--model data/models/pretrain/best.pt" in error and "\n" not in error

    checkpoint, _ = make_candidate(store / "a", 0.5, 1)
    assert main(["embed-video", "--model", str(checkpoint), "--out", "v.npy", str(good[0]), str(corrupt),
                 str(good[0])]) == 1
    vectors = np.load(store / "v.npy")
    assert vectors.shape == (3, TINY_ENCODER.out_dim) and np.isnan(vectors[1]).all()
    np.testing.assert_allclose(vectors[[0, 2]], VideoEncoder(checkpoint).embed_paths([good[0]] * 2), rtol=1e-5,
                               atol=1e-6)
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"slic embed-video: error: {corrupt}: cannot decode video: ") and "\n" not in error

    # A path that is not a file (a typo, a folder, a broken link) is one more NaN row, not the end of the list;
    # when every file fails, --out still gets its rows of NaN instead of keeping an older array.
    (store / "gone.mp4").symlink_to(store / "nowhere.mp4")
    listed = [good[0], store / "absent.avi", store, store / "gone.mp4", corrupt]
    assert main(["embed-video", "--model", str(checkpoint), "--out", "v.npy", *map(str, listed)]) == 1
    vectors = np.load(store / "v.npy")
    assert vectors.shape == (5, TINY_ENCODER.out_dim) and np.isfinite(vectors[0]).all()
    assert np.isnan(vectors[1:]).all()
    assert capsys.readouterr().err.splitlines() == [
        f"slic embed-video: error: {store / 'absent.avi'}: no such file",
        f"slic embed-video: error: {store}: a folder, not a video file",
        f"slic embed-video: error: {store / 'gone.mp4'}: broken link: it points to {store / 'nowhere.mp4'}, which "
        "does not exist",
        f"slic embed-video: error: {corrupt}: cannot decode video: 47 of its 48 packets could not be decoded, more "
        "than 25% (InvalidDataError: Invalid data found when processing input): re-encode or replace the file"]
    assert main(["embed-video", "--model", str(checkpoint), "--out", "v.npy", str(corrupt)]) == 1
    assert np.load(store / "v.npy").shape == (1, TINY_ENCODER.out_dim) and np.isnan(np.load(store / "v.npy")).all()
    capsys.readouterr()
    (store / "notes.pt").write_text("not a checkpoint")
    for model, said in ((store / "absent.pt", "no such checkpoint"), (store / "notes.pt", "not a slic encoder")):
        assert main(["embed-video", "--model", str(model), str(good[0])]) == 2
        assert f"slic embed-video: error: {model}: {said}" in capsys.readouterr().err


def test_served_model_declares_its_signature_and_a_real_example_without_warnings(
        store: Path, tiny_manifest: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    import warnings

    import mlflow

    tiny_manifest.to_csv(store / "manifest.csv", index=False)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING", logger="mlflow"):
        warnings.simplefilter("always")
        result = promote(PromoteConfig(checkpoint=str(make_candidate(store / "a", 0.5, 1)[0])),
                         store / "a/pretrain.json", manifest=store / "manifest.csv")
    ours = [str(w.message) for w in caught if issubclass(w.category, UserWarning)
            and ("input example" in str(w.message) or "Inferred schema" in str(w.message))]
    assert not ours, ours
    # MLflow served the logged model on the example (a real video of the manifest) and it embedded it.
    assert not [r.getMessage() for r in caplog.records if "input example" in r.getMessage()]
    local = mlflow.artifacts.download_artifacts(artifact_uri=result["model_uri"])
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert list(example["path"]) == [tiny_manifest["path"].iloc[0]]
    info = mlflow.models.get_model_info(result["model_uri"])
    assert info.signature.inputs.to_dict() == [{"type": "string", "name": "path", "required": True}]
    (output,) = info.signature.outputs.to_dict()
    assert output["type"] == "tensor" and output["tensor-spec"]["dtype"] == "float32"
    assert output["tensor-spec"]["shape"][0] == -1 and info.saved_input_example_info is not None


def test_the_reason_names_the_rates_when_the_champion_was_trained_at_another_extract_fps() -> None:
    from slic.promote import rate_note

    assert rate_note(25.0, "25.0") == "" and rate_note(0.0, "0.0") == ""
    assert rate_note(25.0, None) == ""  # a version from before the tag: its rate is not known
    assert rate_note(25.0, "0.0") == ("; the champion was trained on native frames and is measured here on the "
                                      "candidate's 25 fps (extract.fps)")
    assert rate_note(0.0, "29.97") == ("; the champion was trained on 29.97 fps and is measured here on the "
                                       "candidate's native frames (extract.fps)")


def serve_champion(env: dict[str, str], log: Path, tries: int = 3) -> tuple[subprocess.Popen, int]:
    """Start `mlflow models serve` on the champion and wait for its /ping. A free port is probed and released
    before the server binds it, so another test may take it meanwhile: only that failure is retried on a new
    port; any other exit fails with the server's own log."""
    for _ in range(tries):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                                   "models:/slic-encoder@champion", "--env-manager", "local", "-h", "127.0.0.1",
                                   "-p", str(port)], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        deadline = time.monotonic() + 120
        while server.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    return server, port
            except OSError:
                time.sleep(0.5)
        stop_group(server)
        text = log.read_text()
        if "address already in use" not in text.lower():
            raise AssertionError(f"the scoring server did not start (exit {server.returncode}):\n{text[-3000:]}")
    raise AssertionError(f"port taken {tries} times in a row:\n{text[-3000:]}")
