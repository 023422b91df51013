"""Shared fixtures: a tiny synthetic dataset made once per session, and the real sample videos."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slic.config import ManifestConfig, SynthConfig

ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = Path(os.environ.get("SLIC_SHARED_VIDEOS", ROOT.parent / "shared" / "videos"))

for key, value in {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                   "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "GX_ANALYTICS_ENABLED": "false"}.items():
    os.environ.setdefault(key, value)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one thread each (torch and the stages' subprocesses read
    # this before they start their thread pools), so the workers do not fight over the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


class StubEncoder:
    """Stands in for the checkpoint's encoder (slic.serving.VideoEncoder.embed_files): `embed(video)` per file."""

    def __init__(self, embed: Callable[[Path], np.ndarray]) -> None:
        self.embed = embed

    def embed_files(self, paths: list[Path], workers: int = 0,
                    spans: list[tuple[int, int] | None] | None = None) -> Iterator[tuple[int, np.ndarray, str]]:
        for position, path in enumerate(paths):
            yield position, self.embed(path), ""


MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture(autouse=True)
def _mlflow_store_stays_with_its_test() -> Iterator[None]:
    """mlflow.set_tracking_uri and set_registry_uri also write MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into
    os.environ. Restored after each test, so that one test's store never becomes a later test's: a `dvc repro`
    subprocess inherits the environment, and tests/test_pipeline.py's registry then held another test's
    champion whenever such a test had run before it on the same worker."""
    saved = {key: os.environ.get(key) for key in MLFLOW_URI_VARIABLES}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_stage_in(root: Path, *argv: str) -> dict[str, Any]:
    """`slic ARGV` run in the project folder `root` with its own MLflow store (none inherited): its exit code,
    stdout, stderr, and the runs and the first run's artifact paths of experiment `slic` (empty when it failed)."""
    from slic.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("SLIC_PARENT_RUN_ID", raising=False)
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(argv))
        runs, artifacts = [], set()
        if code == 0:
            import mlflow

            from slic.tracking import tracking_uri

            mlflow.set_tracking_uri(tracking_uri())
            runs = mlflow.search_runs(experiment_names=["slic"], output_format="list")
            artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs[0].info.run_id)}
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue(), "runs": runs, "artifacts": artifacts}


def tiny_synth_config(out: Path, **overrides: object) -> SynthConfig:
    """A synthetic set small enough for unit tests: 3 classes x 4 groups x 2 clips of 32 frames."""
    values = dict(out=str(out), classes=3, groups=4, clips_per_group=2, frames=32, width=64, height=48,
                  workers=1, seed=3)
    values.update(overrides)
    return SynthConfig(**values)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Root of a tiny synthetic UCF101-layout dataset (generated once; treat as read-only)."""
    from slic.data.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(tiny_synth_config(root))
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_dataset: Path):
    """The manifest table of the tiny dataset (read-only: copy before changing)."""
    from slic.data.datasets import build_manifest

    return build_manifest(ManifestConfig(root=str(tiny_dataset), layout="synthetic", workers=1))


@pytest.fixture(scope="session")
def shared_manifest() -> list[dict[str, str]]:
    """Rows of ../shared/videos/MANIFEST.csv: real videos with what a full decode reported."""
    listing = SHARED_VIDEOS / "MANIFEST.csv"
    if not listing.is_file():
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    with listing.open(newline="") as handle:
        return list(csv.DictReader(handle))


def stop_group(process: subprocess.Popen) -> None:
    """Stop a process started with start_new_session=True, and every child of its group (a server's workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def damaged_video(dest: Path, *, decodable: int = 1, frames: int = 48) -> Path:
    """An h264 mp4 at `dest` whose packets after the first `decodable` are damaged (each NAL unit's length set to
    0xFFFFFFFF, so FFmpeg refuses the packet, as it refuses the bad packet of ../shared/videos' corrupted.mp4).
    decodable=1: it probes (its first frame decodes) but cannot be decoded (far more than a quarter of its packets
    are bad); decodable=0: no frame decodes; decodable close to `frames`: a few packets lost, the file usable."""
    import av

    from slic.data.video import write_video

    moving = np.zeros((frames, 48, 64, 3), np.uint8)
    for t in range(frames):
        moving[t, 8:32, t % 48:t % 48 + 16] = (255, 128, 0)
    write_video(dest, moving, fps=25, codec="h264")
    with av.open(str(dest)) as container:
        offsets = [packet.pos for packet in container.demux(container.streams.video[0]) if packet.size]
    data = bytearray(dest.read_bytes())
    for offset in offsets[decodable:]:
        data[offset:offset + 4] = b"\xff\xff\xff\xff"
    dest.write_bytes(bytes(data))
    return dest


def decode_tests_folder() -> Path:
    """../shared/videos' five good decode_tests videos, copied beside `corrupted.mp4`, a file that probes but cannot
    be decoded (`damaged_video`): the folder searched, indexed and embedded by the tests. (The shared corrupted.mp4
    loses one packet of 50 and is now decoded: tests/data/test_video.py.) Made once per machine, atomically."""
    import shutil
    import tempfile

    folder = Path(tempfile.gettempdir()) / f"slic-tests-{os.getuid()}" / "decode_tests-v1"
    source = SHARED_VIDEOS / "dmlc-decord" / "decode_tests"
    if folder.is_dir() or not source.is_dir():  # no shared videos: not made, and the tests that need it skip
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder.parent))
    for video in sorted(source.glob("*")):
        if video.name != "corrupted.mp4":
            shutil.copy(video, building / video.name)
    damaged_video(building / "corrupted.mp4")
    try:
        building.rename(folder)
    except OSError:  # another test process made it first
        shutil.rmtree(building, ignore_errors=True)
    return folder
