"""The GPU data path (slic.data.gpu_clips) run on the CPU device gives the CPU loaders' clips for the same draws."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from slic.data.augment import Augmentation, apply_draw, augment_clip, draw_augmentation
from slic.data.clip_transform import sampled_frames
from slic.data.clips import ShardCache, VideoShard
from slic.data.frames import write_shard
from slic.data.gpu_clips import clip_batch, decode_on


def jpegs_of(frames: np.ndarray) -> list[bytes]:
    out = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


@pytest.fixture(scope="module")
def shard_videos(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int]]:
    """Three shards of 20 textured frames (two sizes), as (path, decoded frames)."""
    root = tmp_path_factory.mktemp("gpu_clips")
    rng = np.random.default_rng(0)
    made = []
    for k, (h, w) in enumerate(((36, 48), (36, 48), (40, 28))):
        base = rng.integers(0, 256, (h // 4, w // 4, 3)).repeat(4, 0).repeat(4, 1)
        frames = np.stack([np.roll(base, t, axis=1) for t in range(20)]).astype(np.uint8)
        path = root / f"v{k}.shard"
        write_shard(path, jpegs_of(frames), {"video_id": f"v{k}"})
        made.append((path, len(frames)))
    return made


def videos_at(made: list[tuple[Path, int]], step: int) -> list[VideoShard]:
    return [VideoShard(f"v{k}", str(path), sampled_frames(n, step), 0, "train", "c", step, n)
            for k, (path, n) in enumerate(made)]


@pytest.mark.parametrize("step", [1, 2])
def test_same_draws_give_the_cpu_loaders_clips(shard_videos: list[tuple[Path, int]], step: int) -> None:
    videos = videos_at(shard_videos, step)
    strengths = Augmentation(jitter_p=1.0, grayscale_p=0.5, blur_p=0.5)  # every operation gets exercised
    requests, expected = [], []
    for k, video in enumerate(videos * 2):
        start, length = k % (video.frames - 4 + 1), 4
        # The CPU path exactly as PretrainClips runs it: frames from the cache, augment_clip drawing from the sample's
        # generator; the same generator state gives the draw for the GPU path.
        frames = ShardCache().window(video, start, length)
        expected.append(augment_clip(np.random.default_rng(k), frames, strengths, 16))
        draw = draw_augmentation(np.random.default_rng(k), frames.shape[1], frames.shape[2], strengths)
        assert torch.equal(apply_draw(torch.from_numpy(frames), draw, 16), expected[-1])
        requests.append((video, start, length, draw))
    batch = clip_batch(requests, size=16, device="cpu")
    assert batch.shape == (len(requests), 3, 4, 16, 16) and batch.dtype == torch.float32
    assert torch.equal(batch, torch.stack(expected))  # libjpeg-turbo on both sides: identical


def test_windows_take_every_frame_step_th_frame(shard_videos: list[tuple[Path, int]]) -> None:
    video = videos_at(shard_videos, 3)[0]
    assert video.frames == 7  # frames 0, 3, ..., 18 of 20
    decoded = torch.stack(decode_on(ShardCache().jpegs(video, 2, 4), "cpu"))  # frames 6, 9, 12, 15
    assert decoded.shape == (4, 36, 48, 3)
    assert np.array_equal(decoded.numpy(), ShardCache().window(video, 2, 4))
    every = torch.stack(decode_on(ShardCache().jpegs(videos_at(shard_videos, 1)[0], 6, 10), "cpu"))
    assert torch.equal(decoded, every[::3])


def test_a_batch_needs_one_clip_length(shard_videos: list[tuple[Path, int]]) -> None:
    video = videos_at(shard_videos, 1)[0]
    draw = draw_augmentation(np.random.default_rng(0), 36, 48, Augmentation())
    with pytest.raises(ValueError, match="same length"):
        clip_batch([(video, 0, 4, draw), (video, 0, 5, draw)], size=16, device="cpu")
    with pytest.raises(ValueError, match="at least one"):
        clip_batch([], size=16, device="cpu")


def test_pretrain_clips_without_decoding_give_the_same_clips_on_the_device(
        shard_videos: list[tuple[Path, int]]) -> None:
    """pretrain.gpu_decode: the loader's encoded frames and draws, decoded and augmented by the training
    step, are the clips the decoding loader makes (CPU device: the same decoder, so equal)."""
    from slic.data.clips import PretrainClips, collate_encoded
    from slic.data.gpu_clips import clips_from_jpegs

    videos = [VideoShard(f"v{k}", str(path), n, k % 2, "train") for k, (path, n) in enumerate(shard_videos[:2])]
    common = dict(clip_len=4, size=16, p_intra=0.5, random_anchor=True, seed=3, augmentation=Augmentation())
    decoded, encoded = PretrainClips(videos, **common), PretrainClips(videos, **common, decode=False)
    for data in (decoded, encoded):
        data.set_labels(np.array([0, 0]))
        data.set_epoch(2)
    kinds, labels, indices = collate_encoded([encoded[0], encoded[1]])
    assert len(kinds) == 3 and labels.tolist() == [0, 0] and indices.tolist() == [0, 1]
    on_device = [clips_from_jpegs(kind, size=16, device="cpu") for kind in kinds]
    for index in (0, 1):
        anchor, positive, view, _, _ = decoded[index]
        for k, clip in enumerate((anchor, positive, view)):
            assert torch.equal(on_device[k][index], clip)
    with pytest.raises(ValueError, match="gpu_decode"):
        from slic.data.clips import FlowView

        PretrainClips(videos, **common, decode=False, flow=FlowView("unused"))
