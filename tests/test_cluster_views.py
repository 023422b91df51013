"""pretrain.cluster_views rgb_flow: a round clusters each video's clip and its flow side by side; it needs the flow."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from slic.data.clips import EvalClips, FlowView, flow_as_frames, load_videos
from slic.data.flow import read_flow_u
from tests.test_pretrain import pretrain_in_process, workspace  # noqa: F401 (the module's fixture)

TINY_TVL1 = {"nscales": 1, "warps": 1, "outer_iterations": 1, "inner_iterations": 2, "median_filtering": 1,
             "workers": 1}


@pytest.fixture(scope="module")
def flow_dir(workspace: Path) -> Path:  # noqa: F811
    """TV-L1 flow of the workspace's train videos at pretrain.frame_step, as the flow stage makes it."""
    from slic.ablation import compute_flow
    from slic.config import load

    config = load(workspace / "params.yaml")
    out = workspace / "data" / "flow_views"
    flow = replace(config.flow, manifest=str(workspace / config.extract.manifest),
                   frames=str(workspace / config.extract.out), **TINY_TVL1)
    report = compute_flow(replace(config, flow=flow), out)
    assert not report["failed"]
    return out


def test_eval_clips_of_the_flow_read_the_same_window_of_the_flow(workspace: Path, flow_dir: Path) -> None:  # noqa: F811
    from slic.config import load

    extract = load(workspace / "params.yaml").extract
    video = load_videos(workspace / extract.manifest, workspace / extract.out, splits=["train"], frame_step=2)[0]
    rgb = EvalClips([video], clip_len=8, size=16)[0][0]
    flow = EvalClips([video], clip_len=8, size=16, flow_dir=str(flow_dir))[0][0]
    start = max(0, (video.frames - 8) // 2)
    u = flow_as_frames(read_flow_u(flow_dir, video.video_id, start * 2, 8, step=2))
    expected = EvalClips([video], clip_len=8, size=16).transform  # the same resize and normalisation
    from slic.data.clip_transform import as_clip

    assert flow.shape == rgb.shape == (1, 3, 8, 16, 16)
    assert torch.equal(flow[0], as_clip(u, expected)) and not torch.equal(flow, rgb)


def test_rgb_flow_rounds_cluster_both_views_side_by_side(workspace: Path, flow_dir: Path,  # noqa: F811
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import slic.clustering as clustering
    import slic.pretrain as pretrain_module

    clustered: list[np.ndarray] = []
    original = clustering.cluster_pseudo_labels

    def recording(embeddings: np.ndarray, **kwargs: object) -> np.ndarray:
        clustered.append(embeddings)
        return original(embeddings, **kwargs)

    monkeypatch.setattr(clustering, "cluster_pseudo_labels", recording)
    flow = FlowView(flow_dir=str(flow_dir), p=0.0)
    real_pretrain = pretrain_module.pretrain
    monkeypatch.setattr(pretrain_module, "pretrain", lambda cfg, **kw: real_pretrain(cfg, **{**kw, "flow": flow}))
    _, report = pretrain_in_process(workspace, monkeypatch, cluster_views="rgb_flow", out="data/models/rgb_flow")
    assert report["cluster_rounds"] == 2 and len(clustered) == 2
    for features in clustered:  # 16-d clip embedding and 16-d flow embedding, each of unit length
        assert features.shape[1] == 32
        assert np.allclose(np.linalg.norm(features[:, :16], axis=1), 1, atol=1e-5)
        assert np.allclose(np.linalg.norm(features[:, 16:], axis=1), 1, atol=1e-5)
        assert not np.allclose(features[:, :16], features[:, 16:])


def test_rgb_flow_without_flow_stops_before_training(workspace: Path,  # noqa: F811
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="cluster_views rgb_flow.*flow.enabled: true"):
        pretrain_in_process(workspace, monkeypatch, cluster_views="rgb_flow", out="data/models/rgb_flow_missing")
    assert not (workspace / "data/models/rgb_flow_missing/last.pt").exists()


def test_the_cli_names_the_keys_in_one_line(workspace: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from slic.cli import main

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["pretrain"] = {**params["pretrain"], "cluster_views": "rgb_flow", "out": "data/models/rgb_flow_cli"}
    (workspace / "params-rgb-flow.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workspace / 'mlflow.db'}")
    assert main(["--params", "params-rgb-flow.yaml", "pretrain"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cluster_views rgb_flow" in err and "flow.enabled: true" in err
