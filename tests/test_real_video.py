"""Real action video through the stages: a handful of ../shared/real/ucf101_6 clips (UCF101's layout and codec,
170x128 MPEG-4) through manifest -> validate -> extract -> one pretraining epoch -> embed -> evaluate, with the
`ucf101_6_cpu` preset applied as `make run-real` applies it. Skipped, with the reason, where the set is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT

REAL = Path(os.environ.get("SLIC_REAL_UCF101_6", ROOT.parent / "shared" / "real" / "ucf101_6"))
CLASSES = ("Archery", "HorseRace", "PlayingPiano")
TEST_GROUPS, TRAIN_GROUPS = (1,), (8, 9, 10, 11)  # UCF101's split 1 rule: g01-g07 test, g08-g25 train
TINY = {"manifest": {"workers": 1, "val_fraction": 0.25}, "validate": {"data_docs": "docs"},
        "extract": {"workers": 1},
        "pretrain": {"epochs": 1, "batch_size": 4, "hidden_dim": 32, "workers": 0, "eval_interval": 1,
                     "cluster_interval": 1, "frame_cache_mb": 64},
        "embed": {"clips": 2, "workers": 0}}

pytestmark = pytest.mark.skipif(not (REAL / "videos").is_dir(), reason=f"real video set not found at {REAL}")


def name(cls: str, group: int) -> str:
    return f"{cls}/v_{cls}_g{group:02d}_c01.avi"


@pytest.fixture(scope="module")
def subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x 5 groups x 1 clip of the real set (links to the files, never copies) with UCF101 split files."""
    root = tmp_path_factory.mktemp("ucf101_subset")
    for cls in CLASSES:
        (root / "videos" / cls).mkdir(parents=True)
        for group in TEST_GROUPS + TRAIN_GROUPS:
            (root / "videos" / name(cls, group)).symlink_to(REAL / "videos" / name(cls, group))
    splits = root / "splits"
    splits.mkdir()
    (splits / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CLASSES, start=1)))
    (splits / "trainlist01.txt").write_text("".join(f"{name(c, g)} {i}\n" for i, c in enumerate(CLASSES, start=1)
                                                    for g in TRAIN_GROUPS))
    (splits / "testlist01.txt").write_text("".join(f"{name(c, g)}\n" for c in CLASSES for g in TEST_GROUPS))
    return root


def slic(cwd: Path, *args: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "slic.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"slic {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_real_clips_run_through_every_stage_to_retrieval(subset: Path, tmp_path: Path) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    slic(tmp_path, "preset", "ucf101_6_cpu")  # the preset `make run-real` applies: the real set, in place
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert (params["manifest"]["layout"], params["manifest"]["split"]) == ("ucf101", 1)
    assert (ROOT / params["manifest"]["root"]).resolve() == (REAL / "videos").resolve()
    assert (ROOT / params["manifest"]["splits_dir"]).resolve() == (REAL / "splits").resolve()
    params["manifest"].update(root=str(subset / "videos"), splits_dir=str(subset / "splits"))
    for section, values in TINY.items():
        params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    for stage in ("manifest", "validate", "extract", "pretrain", "embed", "evaluate"):
        slic(tmp_path, stage)
    manifest = pd.read_csv(tmp_path / "data/manifests/validated.csv")
    assert len(manifest) == len(CLASSES) * 5 and sorted(set(manifest["class"])) == sorted(CLASSES)
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert (manifest[manifest["split"] == "test"]["video_id"].str.contains("_g01_")).all()
    assert json.loads((tmp_path / "reports/validate.json").read_text())["success"] is True
    index = pd.read_csv(tmp_path / "data/frames/index.csv")
    assert len(index) == len(manifest) and (index["height"] == params["extract"]["short_side"]).all()
    assert (index["width"] > index["height"]).all() and (index["frames"] >= 32).all()  # 170x128 real clips
    pretrain = json.loads((tmp_path / "reports/pretrain.json").read_text())
    assert (pretrain["epochs"], pretrain["cluster_rounds"], pretrain["train_videos"]) == (1, 1, 9)
    retrieval = json.loads((tmp_path / "reports/retrieval.json").read_text())
    assert (retrieval["queries"], retrieval["gallery"]) == (3, 9)
    assert 0.0 <= retrieval["recall@1"] <= retrieval["recall@5"] <= retrieval["recall@10"] == 1.0  # 10 > gallery
    assert "v_Archery_g01_c01" in (tmp_path / "reports/retrieval.html").read_text()


BENCH_TINY = ["pretrain.epochs=1", "pretrain.batch_size=4", "pretrain.hidden_dim=32", "pretrain.workers=0",
              "pretrain.eval_interval=1", "pretrain.cluster_interval=1", "pretrain.frame_cache_mb=64",
              "embed.clips=2", "embed.workers=0", "manifest.workers=1", "manifest.val_fraction=0.25",
              "extract.workers=1"] + [f"{section}.{value}" for section in ("linear_probe", "finetune") for value in
                                      ("epochs=1", "milestones=[1]", "batch_size=4", "workers=0")]


def bench_real(subset: Path, tmp: Path) -> tuple[dict, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(ROOT / "bench" / "real.py"), "--root", str(subset), "--seeds", "7", "--rows",
            "random_init", "slic_video", "--encoder", "slic_video", "--work", str(tmp / "work"),
            "--out", str(tmp / "out" / "real.json")]
    for value in BENCH_TINY:
        args += ["--set", value]
    done = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp / "out" / "real.json").read_text()), done.stdout


def test_bench_real_reports_every_row_the_classifiers_and_resumes(subset: Path, tmp_path: Path) -> None:
    report, _ = bench_real(subset, tmp_path)
    assert report["seeds"] == [7] and report["chance_recall_at_1"] == pytest.approx(1 / 3)
    assert report["rows"]["slic_video"] == {"mode": "slic", "proxy_per": "video"}
    for row in ("random_init", "slic_video"):
        value = report["mean"][row]["recall@1"]
        assert round(3 * value) == pytest.approx(3 * value)  # 3 test queries
        assert report["std"][row]["recall@1"] == 0.0 and report["per_seed"][row]["7"]["recall@1"] == value
        # 9 gallery videos: the 10 nearest are all of them, so recall@10 is 1 for any embedding
        mean = report["mean"][row]
        assert mean["recall@1"] <= mean["recall@5"] <= mean["recall@10"] == 1.0
    ami = report["cluster_ami"]["slic_video"]["7"]
    assert len(ami["per_round"]) == 1 and ami["first"] == ami["last"] == ami["per_round"][0]
    finetune = report["finetune"]
    assert finetune["encoder"] == "slic_video" and set(finetune["per_seed"]["7"]) == {"pretrained", "scratch"}
    assert finetune["pretrained_mean"] == finetune["per_seed"]["7"]["pretrained"]
    assert set(report["linear_probe"]) == {"metric", "slic_video", "random_init"}
    assert (tmp_path / "out" / "real.png").stat().st_size > 10_000 and report["mlflow_run_id"]
    again, output = bench_real(subset, tmp_path)  # every cell stored: nothing retrained, the same figures
    assert output.count("(stored)") == 2
    assert again["mean"] == report["mean"] and again["finetune"] == report["finetune"]
