"""bench/ablation.py --quick end to end: every cell in the json, consistent statistics, the plot, MLflow, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODES = ("slic", "intra_video", "random_init", "oracle")
QUICK_BIASES = (0.0, 0.75)


def run_quick(tmp: Path) -> tuple[dict[str, Any], float]:
    """Run the quick sweep into `tmp` (work folder, report, MLflow store); its report and wall seconds."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "ablation.py"), "--quick", "--work",
                           str(tmp / "work"), "--out", str(tmp / "out" / "ablation.json")],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp / "out" / "ablation.json").read_text()), time.perf_counter() - started


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], float, dict[str, Any], float]:
    """The quick sweep run twice into the same folders: (folder, first report, its seconds, second, its seconds)."""
    tmp = tmp_path_factory.mktemp("bench_ablation")
    first, first_s = run_quick(tmp)
    second, second_s = run_quick(tmp)
    return tmp, first, first_s, second, second_s


def cell(report: dict[str, Any], mode: str, bias: float) -> dict[str, Any]:
    found = [c for c in report["cells"] if c["mode"] == mode and c["appearance_bias"] == bias]
    assert len(found) == 1, (mode, bias)
    return found[0]


def test_every_cell_has_recalls_whose_mean_and_std_come_from_the_seeds(runs: tuple) -> None:
    _, report, *_ = runs
    assert report["sweep"]["modes"] == list(MODES)
    assert report["sweep"]["appearance_biases"] == list(QUICK_BIASES) and report["sweep"]["seeds"] == [7]
    assert len(report["cells"]) == len(MODES) * len(QUICK_BIASES)
    for mode in MODES:
        for bias in QUICK_BIASES:
            row = cell(report, mode, bias)
            for k in (1, 5, 10):
                stats = row[f"recall@{k}"]
                assert len(stats["per_seed"]) == len(row["seeds"]) == 1
                assert stats["mean"] == pytest.approx(sum(stats["per_seed"]) / len(stats["per_seed"]))
                assert stats["std"] == 0.0  # one seed
                # 6 test queries: every recall is a multiple of 1/6
                assert all(round(6 * v) == pytest.approx(6 * v) for v in stats["per_seed"])
            assert row["recall@1"]["mean"] <= row["recall@5"]["mean"] <= row["recall@10"]["mean"]
            assert len(row["seconds_per_seed"]) == 1 and row["seconds_per_seed"][0] > 0
    assert report["chance_recall_at_1"] == pytest.approx(1 / 3)
    assert report["computed"] == len(MODES) * len(QUICK_BIASES) and report["reused"] == 0
    assert report["machine"]["cpu_count"] == os.cpu_count() and report["machine"]["torch"]
    assert report["machine"]["device"] in ("cpu", "cuda:0")


def test_amis_per_round_only_for_the_modes_that_cluster(runs: tuple) -> None:
    _, report, *_ = runs
    for bias in QUICK_BIASES:
        for mode in ("slic", "oracle"):
            per_seed = cell(report, mode, bias)["cluster_ami_per_round"]
            assert len(per_seed) == 1 and len(per_seed[0]) == 1  # 1 epoch, a round every epoch
            assert -1.0 <= per_seed[0][0] <= 1.0
        # slic and oracle cluster the same untrained network at epoch 0 (same seed): same first round
        assert cell(report, "slic", bias)["cluster_ami_per_round"] == cell(report, "oracle", bias)[
            "cluster_ami_per_round"]
        for mode in ("intra_video", "random_init"):
            assert cell(report, mode, bias)["cluster_ami_per_round"] is None


def test_plot_is_a_png_and_both_files_are_in_the_mlflow_run(runs: tuple) -> None:
    tmp, report, *_ = runs
    png = tmp / "out" / "ablation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.run_name == "bench ablation" and run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"ablation.json", "ablation.png"}
    expected = cell(report, "slic", 0.75)["recall@1"]["mean"]
    assert run.data.metrics["slic/bias_0.75/recall_at_1_mean"] == pytest.approx(expected)
    assert len([k for k in run.data.metrics if k.endswith("recall_at_1_mean")]) == len(MODES) * len(QUICK_BIASES)


def test_second_run_reuses_every_cell_with_the_same_numbers(runs: tuple) -> None:
    _, first, first_s, second, second_s = runs
    assert second["computed"] == 0 and second["reused"] == len(MODES) * len(QUICK_BIASES)
    assert second["datasets_prepared"] == []
    strip = ("reused_per_seed",)
    assert [{k: v for k, v in c.items() if k not in strip} for c in second["cells"]] == [
        {k: v for k, v in c.items() if k not in strip} for c in first["cells"]]
    assert all(c["reused_per_seed"] == [True] for c in second["cells"])
    assert second_s < first_s


def test_a_setting_added_later_at_its_default_keeps_stored_results() -> None:
    """A sweep's stored cells survive slic gaining a setting whose default is the old behaviour, and only that."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import ablation
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from slic.config import Config

    expected = json.loads(json.dumps(ablation.settings(Config())))
    older = json.loads(json.dumps(expected))
    del older["pretrain"]["cluster_start_epoch"]  # stored before the setting existed
    assert ablation.same_settings(older, expected)
    later = json.loads(json.dumps(expected))
    later["pretrain"]["cluster_start_epoch"] = 8
    assert not ablation.same_settings(older, later)  # a non-default value is another experiment
    changed = json.loads(json.dumps(older))
    changed["pretrain"]["lr"] = 0.5
    assert not ablation.same_settings(changed, expected)
    extra = json.loads(json.dumps(expected))
    extra["pretrain"]["removed_setting"] = 1
    assert not ablation.same_settings(extra, expected)
