"""TV-L1 flow: both implementations recover a known motion and agree on real video; the `flow` stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from slic.config import ConfigError, load
from slic.data.flow import dequantize, flow_all, quantize, read_flow_u
from slic.data.frames import ShardReader, extract_all, read_index, shard_path
from slic.data.video import decode
from slic.tvl1 import TVL1Params, _median, to_grey, tvl1_opencv, tvl1_torch
from tests.conftest import SHARED_VIDEOS

FAST = TVL1Params(nscales=3, scale_step=0.5, warps=2, inner_iterations=15, outer_iterations=1)


def textured_pair(shift_x: float, shift_y: float, size: tuple[int, int] = (64, 80)) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random texture (a sum of sinusoids, so exact at any subpixel position) and the same
    texture moved by (shift_x, shift_y) px: the true flow is that shift everywhere."""
    rng = np.random.default_rng(0)
    waves = rng.uniform([0.05, 0.05, 0.0], [0.3, 0.3, 2 * np.pi], size=(12, 3))
    ys, xs = np.mgrid[0:size[0], 0:size[1]].astype(np.float64)

    def render(dx: float, dy: float) -> np.ndarray:
        image = sum(np.sin(fx * (xs - dx) + fy * (ys - dy) + phase) for fx, fy, phase in waves)
        return np.clip(127.5 + 20 * image, 0, 255).round().astype(np.uint8)[None]

    return render(0, 0), render(shift_x, shift_y)


@pytest.mark.parametrize("method", ["opencv", "torch"])
@pytest.mark.parametrize("shift", [(1.5, 0.0), (-2.25, 1.0)])
def test_both_methods_recover_a_known_translation(method: str, shift: tuple[float, float]) -> None:
    i0, i1 = textured_pair(*shift)
    run = tvl1_opencv if method == "opencv" else tvl1_torch
    flow = run(i0, i1, TVL1Params())[0]
    inner = flow[8:-8, 8:-8]  # away from the borders, where content leaves the frame
    assert np.abs(inner[..., 0] - shift[0]).mean() < 0.1
    assert np.abs(inner[..., 1] - shift[1]).mean() < 0.1


def test_median_network_is_the_exact_median() -> None:
    u = torch.randn(3, 11, 13)
    u[0, :5] = 2.0  # ties
    padded = torch.nn.functional.pad(u[:, None], (2, 2, 2, 2), mode="replicate")
    expected = torch.nn.functional.unfold(padded, 5).median(dim=1).values.view_as(u)
    assert torch.equal(_median(u, 5), expected)


def real_pairs(count: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Grey consecutive frames of two real clips at short side 64 (as the frame shards hold them)."""
    files = ["bryanyzhu-tiny-ucf101/ucf101/Basketball/v_Basketball_g01_c01.avi",
             "mmaction2/kinetics400/arm_wrestling/demo.mp4"]
    if not all((SHARED_VIDEOS / f).is_file() for f in files):
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    firsts, seconds = [], []
    for f in files:
        grey = to_grey(decode(SHARED_VIDEOS / f, start=20, stop=21 + count, short_side=64))
        firsts.append(grey[:-1])
        seconds.append(grey[1:])
    return np.concatenate(firsts), np.concatenate(seconds)


def test_torch_agrees_with_opencv_on_real_video() -> None:
    """Same algorithm, same inputs: the only differences are interpolation round-off (OpenCV's
    remap quantises coordinates to 1/32 px) and float summation order. bench/flow.py measured a
    mean end-point error of about 0.02-0.04 px between the two at 64 px (OpenCV defaults and the
    CPU defaults); 0.1 px is well under a quantisation step of the stored u (0.157 px)."""
    i0, i1 = real_pairs()
    a, b = tvl1_opencv(i0, i1, FAST), tvl1_torch(i0, i1, FAST)
    assert a.shape == b.shape == (*i0.shape, 2)
    assert np.abs(a).mean() > 0.1  # the clips move: agreement is not two zero fields
    epe = np.sqrt(((a - b) ** 2).sum(-1))
    assert epe.mean() < 0.1 and np.quantile(epe, 0.99) < 1.0


def test_quantisation_round_trips_within_one_step() -> None:
    u = np.linspace(-25, 25, 101, dtype=np.float32)
    back = dequantize(quantize(u, 20.0), 20.0)
    inside = np.abs(u) <= 20
    assert np.abs(back[inside] - u[inside]).max() <= 0.5 * 40.0 / 255 + 1e-4  # half a step
    assert back.min() == -20.0 and back.max() == 20.0


@pytest.fixture(scope="module")
def frames(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Frame shards (short side 32) of six tiny synthetic videos, and a manifest with their splits."""
    videos = sorted(tiny_dataset.glob("Slide/*.avi"))[:4] + sorted(tiny_dataset.glob("Rise/*.avi"))[:2]
    manifest = pd.DataFrame({"video_id": [f"{p.parent.name}/{p.stem}" for p in videos],
                             "path": [str(p) for p in videos],
                             "split": ["train", "train", "train", "test", "train", "val"]})
    out = tmp_path_factory.mktemp("frames")
    report = extract_all(manifest, out_dir=out, short_side=32, quality=4, workers=1)
    assert not report["failed"]
    return out, manifest


def run_stage(manifest: pd.DataFrame, frames_dir: Path, out: Path, **overrides: object) -> dict:
    args = dict(frames_dir=frames_dir, out_dir=out, splits=("train",), method="torch", device="cpu", bound=20.0,
                quality=95, params=FAST, batch_pairs=40, workers=1)
    args.update(overrides)
    return flow_all(manifest, **args)


def test_stage_aligns_flow_with_frames_and_resumes(frames: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    frames_dir, manifest = frames
    out = tmp_path / "flow"
    report = run_stage(manifest, frames_dir, out, workers=2)
    train = sorted(manifest[manifest["split"] == "train"]["video_id"])
    assert (report["videos"], report["computed"], report["reused"], report["failed"]) == (4, 4, 0, [])
    index = read_index(out)
    assert index["video_id"].tolist() == train
    for video_id in train:
        rgb = ShardReader.open(frames_dir / f"{video_id}.shard")
        u = read_flow_u(out, video_id, 0, rgb.frames)  # the whole video: same frame count, same size
        assert u.shape == (rgb.frames, *rgb.read_window(0, 1).shape[1:3]) and u.dtype == np.uint8
        assert np.abs(u[-1].astype(int) - u[-2]).max() <= 2  # the last frame repeats the previous flow (JPEG)
        window = read_flow_u(out, video_id + ".shard", 5, 16)
        assert np.array_equal(window, u[5:21])
    slide = dequantize(read_flow_u(out, train[-1], 0, 31), 20.0)
    assert np.abs(slide).max() > 0.5  # the object moves
    assert not shard_path(out, "Slide/" + manifest["video_id"].iloc[3].split("/")[1]).exists()  # test split

    first = shard_path(out, train[0])
    mtime = first.stat().st_mtime_ns
    damaged = shard_path(out, train[1])
    damaged.write_bytes(damaged.read_bytes()[:200])
    again = run_stage(manifest, frames_dir, out)
    assert (again["computed"], again["reused"]) == (1, 3)
    assert first.stat().st_mtime_ns == mtime
    assert ShardReader.open(damaged).frames == ShardReader.open(frames_dir / f"{train[1]}.shard").frames
    other = run_stage(manifest, frames_dir, out, method="opencv", workers=1)  # other settings: all stale
    assert other["computed"] == 4


def test_missing_or_corrupt_frame_shards_are_reported_by_name(frames: tuple[Path, pd.DataFrame],
                                                              tmp_path: Path) -> None:
    frames_dir, manifest = frames
    broken = tmp_path / "frames"
    broken.mkdir()
    for path in frames_dir.rglob("*"):
        target = broken / path.relative_to(frames_dir)
        if path.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(path.read_bytes())
    train = sorted(manifest[manifest["split"] == "train"]["video_id"])
    (broken / f"{train[0]}.shard").unlink()
    corrupt = broken / f"{train[1]}.shard"
    data = bytearray(corrupt.read_bytes())
    data[-600:] = b"\x00" * 600  # the last JPEGs of the shard are garbage
    corrupt.write_bytes(bytes(data))
    report = run_stage(manifest, broken, tmp_path / "flow", workers=2)
    failed = {f["video_id"]: f["error"] for f in report["failed"]}
    assert set(failed) == {train[0], train[1]} and report["computed"] == 2
    assert str(broken / f"{train[0]}.shard") in failed[train[0]] and "missing" in failed[train[0]]
    assert str(corrupt) in failed[train[1]]
    assert read_index(tmp_path / "flow")["video_id"].tolist() == train[2:]


@pytest.mark.parametrize("line, key", [("  method: farneback", "flow.method"), ("  bound: -1", "flow.bound"),
                                       ("  splits: [train, dev]", "flow.splits"), ("  warps: 0", "flow.warps"),
                                       ("  tv_lambda: 0.1", "flow.tv_lambda")])
def test_config_errors_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("flow:\n  out: data/flow\n" + line + "\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(params)


SHIFTS = (2.0, -1.5, 0.5, -2.5, 1.0)  # horizontal motion from frame t to t + 1: distinct, both signs


def moving_texture_shard(folder: Path) -> Path:
    """A frame shard (and its index.csv) of a texture moved by SHIFTS[t] px from frame t to frame t + 1."""
    import warnings

    from torchvision.io import encode_jpeg

    from slic.data.frames import write_shard

    positions = np.concatenate([[0.0], np.cumsum(SHIFTS)])
    grey = np.concatenate([textured_pair(x, 0.0, size=(48, 64))[1] for x in positions])
    with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; pinned, they work
        warnings.simplefilter("ignore", DeprecationWarning)
        jpegs = [encode_jpeg(torch.from_numpy(np.repeat(f[None], 3, axis=0)), quality=98).numpy().tobytes()
                 for f in grey]
    path = folder / "Move" / "v_Move_g01_c01.shard"
    path.parent.mkdir(parents=True)
    write_shard(path, jpegs, {"video_id": "Move/v_Move_g01_c01"})
    pd.DataFrame({"video_id": ["Move/v_Move_g01_c01"], "shard": ["Move/v_Move_g01_c01.shard"],
                  "frames": [len(grey)]}).to_csv(folder / "index.csv", index=False)
    return path


def test_stored_u_of_frame_t_is_the_flow_from_t_to_t_plus_1(tmp_path: Path) -> None:
    """Sign and pairing: frame t holds +SHIFTS[t] (not -SHIFTS[t], not SHIFTS[t -/+ 1]), and equals TV-L1 of
    the grey frames t and t + 1 as the frame shard stores them; the last frame repeats the one before."""
    shard = moving_texture_shard(tmp_path / "frames")
    manifest = pd.DataFrame({"video_id": ["Move/v_Move_g01_c01"], "split": ["train"]})
    report = run_stage(manifest, tmp_path / "frames", tmp_path / "flow", params=TVL1Params())
    assert report["computed"] == 1 and not report["failed"]
    stored = read_flow_u(tmp_path / "flow", "Move/v_Move_g01_c01", 0, len(SHIFTS) + 1)
    u = dequantize(stored, 20.0)[:, 8:-8, 8:-8]  # away from the borders, where content leaves the frame
    np.testing.assert_allclose(u.mean(axis=(1, 2)), [*SHIFTS, SHIFTS[-1]], atol=0.15)
    grey = to_grey(ShardReader.open(shard).read_window(0, len(SHIFTS) + 1))
    expected = quantize(tvl1_torch(grey[:-1], grey[1:], TVL1Params())[..., 0], 20.0)
    assert np.abs(stored[:-1].astype(int) - expected).mean() < 0.25  # the JPEG of the stored u, no more


def test_at_frame_step_2_frame_k_is_the_flow_from_2k_to_2k_plus_2_and_half_the_pairs(tmp_path: Path) -> None:
    """Only what clips at frame_step 2 read: the pairs (2k, 2k+2), the summed motion of two steps, read back at
    the clip's decoded frame indices; a shard made at another step is refused with the fix."""
    from slic.data.flow import FlowError

    shard = moving_texture_shard(tmp_path / "frames")
    manifest = pd.DataFrame({"video_id": ["Move/v_Move_g01_c01"], "split": ["train"]})
    report = run_stage(manifest, tmp_path / "frames", tmp_path / "flow", params=TVL1Params(), frame_step=2)
    frames = len(SHIFTS) + 1
    sampled = (frames - 1) // 2 + 1
    assert (report["computed"], report["frame_step"], report["pairs_computed"]) == (1, 2, sampled - 1)
    assert ShardReader.open(shard_path(tmp_path / "flow", "Move/v_Move_g01_c01")).frames == sampled
    stored = read_flow_u(tmp_path / "flow", "Move/v_Move_g01_c01", 0, sampled, step=2)
    two_steps = [SHIFTS[2 * k] + SHIFTS[2 * k + 1] for k in range(sampled - 1)]
    u = dequantize(stored, 20.0)[:, 8:-8, 8:-8]
    np.testing.assert_allclose(u.mean(axis=(1, 2))[:-1], two_steps, atol=0.3)
    grey = to_grey(ShardReader.open(shard).read_window(0, sampled, 2))
    expected = quantize(tvl1_torch(grey[:-1], grey[1:], TVL1Params())[..., 0], 20.0)
    assert np.abs(stored[:-1].astype(int) - expected).mean() < 0.25
    window = read_flow_u(tmp_path / "flow", "Move/v_Move_g01_c01", 2, 2, step=2)  # decoded frames 2 and 4
    assert np.array_equal(window, stored[1:3])
    with pytest.raises(FlowError, match="made at frame_step 2, read at frame_step 1.*dvc repro flow"):
        read_flow_u(tmp_path / "flow", "Move/v_Move_g01_c01", 0, 4, step=1)
    again = run_stage(manifest, tmp_path / "frames", tmp_path / "flow", params=TVL1Params(), frame_step=1)
    assert again["computed"] == 1  # another step: recomputed, not reused
