"""Clip sampling: non-overlapping positives, pseudo-label positives, one augmentation per clip."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from slic.data.clip_transform import iic_starts
from slic.data.clips import Augmentation, EvalClips, PretrainClips, VideoShard, non_overlapping_start
from slic.data.frames import write_shard
from slic.data.video import decode, encode_jpeg_sequence


@pytest.fixture(scope="module")
def shards(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> list[VideoShard]:
    """Six tiny videos as shards (two per class)."""
    out = tmp_path_factory.mktemp("shards")
    videos = []
    for label, name in enumerate(("Slide", "Rise", "Fall")):
        for clip in (1, 2):
            source = tiny_dataset / name / f"v_{name}_g02_c{clip:02d}.avi"
            sequence = encode_jpeg_sequence(source, short_side=None, quality=3)
            path = out / f"{name}{clip}.shard"
            write_shard(path, sequence.jpegs, {"video_id": path.stem})
            videos.append(VideoShard(path.stem, str(path), len(sequence.jpegs), label, "train", name))
    return videos


def test_non_overlapping_start() -> None:
    rng = np.random.default_rng(0)
    starts = {non_overlapping_start(rng, 40, 0, 16) for _ in range(200)}
    assert starts == set(range(16, 25))
    assert {non_overlapping_start(rng, 48, 16, 16) for _ in range(200)} == {0, 32}
    with pytest.raises(ValueError, match="no 16-frame window"):
        non_overlapping_start(rng, 31, 0, 16)


def test_positive_sampling_follows_pseudo_labels(shards: list[VideoShard]) -> None:
    data = PretrainClips(shards, size=32, p_intra=0.0)
    data.set_labels(np.array([0, 0, 1, 1, 2, 3]))  # video 5 is a singleton cluster
    rng = np.random.default_rng(1)
    for _ in range(50):
        assert data.positive_of(0, rng, 0)[0] == 1  # cross-video, same pseudo-label, never itself
        assert data.positive_of(3, rng, 0)[0] == 2
        video, start = data.positive_of(5, rng, 0)  # singleton: falls back to its own video
        assert video == 5 and start >= 16
    intra = PretrainClips(shards, size=32, p_intra=1.0)
    intra.set_labels(np.zeros(6, dtype=int))
    assert all(intra.positive_of(2, rng, 0)[0] == 2 for _ in range(20))
    mixed = PretrainClips(shards, size=32, p_intra=0.5)
    mixed.set_labels(np.zeros(6, dtype=int))
    same = np.mean([mixed.positive_of(0, rng, 0)[0] == 0 for _ in range(400)])
    assert 0.4 < same < 0.6


def test_sample_is_seeded_by_epoch_and_index(shards: list[VideoShard]) -> None:
    data = PretrainClips(shards, size=32, seed=3)
    first = data[2]
    assert all(torch.equal(a, b) for a, b in zip(first[:3], data[2][:3]))
    data.set_epoch(1)
    assert not torch.equal(first[0], data[2][0])
    anchor, positive, view, label, index = first
    assert anchor.shape == positive.shape == view.shape == (3, 16, 32, 32)
    assert (label, index) == (2, 2)  # default labels are video ids
    assert not torch.equal(anchor, view)  # the second view has its own augmentation


def test_augmentation_is_drawn_once_per_clip(tmp_path: Path) -> None:
    # A still video: whatever crop, flip, jitter, grey or blur is drawn, every frame of the clip
    # must come out identical; a per-frame draw would make them differ.
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    from slic.data.video import write_video

    write_video(tmp_path / "still.mkv", np.repeat(frame[None], 40, axis=0), codec="ffv1")
    sequence = encode_jpeg_sequence(tmp_path / "still.mkv", short_side=None, quality=2)
    write_shard(tmp_path / "still.shard", sequence.jpegs, {})
    data = PretrainClips([VideoShard("still", str(tmp_path / "still.shard"), 40, 0, "train")], size=32)
    for epoch in range(5):
        data.set_epoch(epoch)
        anchor = data[0][0]
        assert torch.allclose(anchor[:, 0], anchor[:, 1:].mean(dim=1), atol=1e-4)


def test_iic_starts_cover_the_video() -> None:
    assert iic_starts(48) == [0, 4, 7, 11, 14, 18, 21, 25, 28, 32]
    starts = iic_starts(300)
    assert len(starts) == 10 and starts[0] == 0 and starts[-1] == 284
    assert iic_starts(16, clips=3) == [0, 0, 0]


def test_eval_clips_are_deterministic_centre_crops(shards: list[VideoShard], tiny_dataset: Path) -> None:
    centre = EvalClips(shards, protocol="centre", size=48)
    clips, index = centre[3]  # Rise, clip 2
    assert clips.shape == (1, 3, 16, 48, 48) and index == 3
    assert torch.equal(clips, centre[3][0])
    iic = EvalClips(shards, protocol="iic", size=32, clips=4)
    assert iic[0][0].shape == (4, 3, 16, 32, 32)
    # The centre clip is frames 8..24 of the 32-frame source, centre-cropped: compare with a decode.
    frames = decode(tiny_dataset / "Rise" / "v_Rise_g02_c02.avi", start=8, stop=24)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = clips[0].permute(1, 2, 3, 0) * std + mean  # (T, H, W, 3) in 0..1
    expected = torch.from_numpy(frames[:, :, 8:56]).float() / 255
    assert (pixels - expected).abs().mean() < 0.03


def test_augmentation_strengths_reach_the_clips(shards: list[VideoShard]) -> None:
    """With crops, jitter, grey and blur switched off, the second view differs from the anchor only by a flip."""
    plain = Augmentation(crop_min_scale=1.0, jitter=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    def flip_of(a: torch.Tensor, b: torch.Tensor) -> bool:  # equal, or mirrored (up to resampling at the edges)
        return min((a - b).abs().mean().item(), (a - b.flip(-1)).abs().mean().item()) < 0.05

    data = PretrainClips(shards, size=32, augmentation=plain)  # scale (1, 1): always the whole frame
    assert all(flip_of(anchor, view) for anchor, _, view, _, _ in (data[i] for i in range(len(shards))))
    default = PretrainClips(shards, size=32)  # the paper's augmentation: views differ beyond a flip
    assert not all(flip_of(anchor, view) for anchor, _, view, _, _ in (default[i] for i in range(len(shards))))


def _red_channel_as_flow(monkeypatch: pytest.MonkeyPatch, videos: list[VideoShard]) -> None:
    """Stand-in flow shards: u := the red channel of the RGB frames, so the two can be compared pixel by pixel."""
    from slic.data.frames import ShardReader

    shard_of = {v.video_id: v.shard for v in videos}
    monkeypatch.setattr("slic.data.clips.read_flow_u",
                        lambda flow_dir, video, start, length, step=1: ShardReader.open(shard_of[video])
                        .read_window(start, length, step)[..., 0])


def _grey(clip: torch.Tensor) -> bool:
    """Whether a normalised clip's three channels were one grey channel before normalisation."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    raw = clip * std[:, None, None, None] + mean[:, None, None, None]
    return bool(torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[0], raw[2], atol=1e-5))


def test_flow_view_gets_the_rgb_clips_augmentation_draws(shards: list[VideoShard],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from slic.data.clips import FlowView

    _red_channel_as_flow(monkeypatch, shards)
    geometry_only = Augmentation(crop_min_scale=0.3, jitter=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    rgb = PretrainClips(shards, clip_len=8, size=24, augmentation=geometry_only, p_intra=1.0)
    flow = PretrainClips(shards, clip_len=8, size=24, augmentation=geometry_only, p_intra=1.0,
                         flow=FlowView(flow_dir="unused", p=1.0))
    for index in range(len(shards)):
        a, p, v, label, _ = rgb[index]
        fa, fp, fv, flabel, _ = flow[index]
        assert torch.equal(a, fa) and label == flabel            # the anchor is never replaced
        assert _grey(fp) and _grey(fv) and not _grey(p)
        # Same crop and flip as the RGB clip would have had: the red channels agree exactly.
        assert torch.allclose(fp[0], p[0], atol=1e-5) and torch.allclose(fv[0], v[0], atol=1e-5)


def test_flow_view_replaces_positive_and_view_independently(shards: list[VideoShard],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from slic.data.clips import FlowView

    _red_channel_as_flow(monkeypatch, shards)
    clips = PretrainClips(shards, clip_len=8, size=16, augmentation=Augmentation(grayscale_p=0.0),
                          flow=FlowView(flow_dir="unused", p=0.25))
    drawn = []
    for epoch in range(40):
        clips.set_epoch(epoch)
        for index in range(len(shards)):
            a, p, v, _, _ = clips[index]
            drawn.append((_grey(a), _grey(p), _grey(v)))
    anchor, positive, view = np.array(drawn).T
    assert not anchor.any()
    assert 0.15 < positive.mean() < 0.35 and 0.15 < view.mean() < 0.35
    both = (positive & view).mean()
    assert abs(both - positive.mean() * view.mean()) < 0.05   # independent draws


# ------------------------------------------------------------------- frames that say where they come from

PLAIN = Augmentation(crop_min_scale=1.0, jitter=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def counter_shards(folder: Path, lengths: list[int]) -> list[VideoShard]:
    """Shards of flat-colour frames whose colour names them: red 10 + 6 t for frame t, green 40 + 60 v for video v."""
    import warnings

    from torchvision.io import encode_jpeg

    videos = []
    for v, length in enumerate(lengths):
        jpegs = []
        for t in range(length):
            frame = torch.tensor([10 + 6 * t, 40 + 60 * v, 128], dtype=torch.uint8)[:, None, None].expand(3, 24, 32)
            with warnings.catch_warnings():  # torchvision 0.29 marks its image codecs deprecated; they work
                warnings.simplefilter("ignore", DeprecationWarning)
                jpegs.append(encode_jpeg(frame.contiguous(), quality=95).numpy().tobytes())
        path = folder / f"counter{v}.shard"
        write_shard(path, jpegs, {"video_id": path.stem})
        videos.append(VideoShard(path.stem, str(path), length, v, "train"))
    return videos


def frames_of(clip: torch.Tensor) -> list[tuple[int, int]]:
    """(video, frame) of each frame of a normalised (3, T, S, S) clip of counter frames."""
    rgb = (clip.mean(dim=(2, 3)).T * STD + MEAN) * 255  # (T, 3)
    return [(round((g - 40) / 60), round((r - 10) / 6)) for r, g, _ in rgb.tolist()]


def window(clip: torch.Tensor) -> tuple[int, int]:
    """(video, start) of a clip, checking that its frames are consecutive frames of one video."""
    frames = frames_of(clip)
    video, start = frames[0]
    assert frames == [(video, start + i) for i in range(len(frames))], frames
    return video, start


def test_random_anchor_and_its_positive_never_overlap(tmp_path: Path) -> None:
    videos = counter_shards(tmp_path, [40, 24])
    data = PretrainClips(videos, clip_len=8, size=16, random_anchor=True, p_intra=1.0, augmentation=PLAIN)
    anchors: dict[int, set[int]] = {0: set(), 1: set()}
    for epoch in range(12):
        data.set_epoch(epoch)
        for index in (0, 1):
            anchor, positive, view, _, _ = data[index]
            video, start = window(anchor)
            positive_video, positive_start = window(positive)
            assert video == positive_video == index and window(view) == (video, start)
            assert start + 8 <= videos[index].frames and abs(positive_start - start) >= 8
            anchors[index].add(start)
    assert len(anchors[0]) >= 5 and len(anchors[1]) >= 3  # the anchor really moves (not always frame 0)
    fixed = PretrainClips(videos, clip_len=8, size=16, p_intra=1.0, augmentation=PLAIN)
    for epoch in range(5):  # without random_anchor the anchor is frames [0, 8)
        fixed.set_epoch(epoch)
        assert window(fixed[0][0]) == (0, 0)


def test_positive_from_another_video_starts_anywhere_inside_that_video(tmp_path: Path) -> None:
    videos = counter_shards(tmp_path, [40, 24])
    data = PretrainClips(videos, clip_len=8, size=16, p_intra=0.0, augmentation=PLAIN)
    data.set_labels(np.array([0, 0]))
    rng = np.random.default_rng(0)
    draws = {index: [data.positive_of(index, rng, 0) for _ in range(600)] for index in (0, 1)}
    assert {video for video, _ in draws[0]} == {1} and {video for video, _ in draws[1]} == {0}
    assert {start for _, start in draws[0]} == set(range(24 - 8 + 1))  # the other video's bounds, every start
    assert {start for _, start in draws[1]} == set(range(40 - 8 + 1))
    for epoch in range(4):  # and the clip served is that window of that video
        data.set_epoch(epoch)
        video, start = window(data[0][1])
        assert video == 1 and 0 <= start <= 16


def test_load_videos_excludes_short_videos_by_name_and_sorts_by_id(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from slic.data.clips import load_videos

    shards = counter_shards(tmp_path, [40, 12, 24, 30])
    ids = ["B/v_b", "A/v_short", "A/v_a", "C/v_val"]
    pd.DataFrame({"video_id": ids, "shard": [Path(s.shard).name for s in shards],
                  "frames": [s.frames for s in shards]}).to_csv(tmp_path / "index.csv", index=False)
    manifest = pd.DataFrame({"video_id": ids + ["D/v_not_extracted"], "split": ["train"] * 3 + ["val", "train"],
                             "label": [1, 0, 0, 2, 3], "class": ["B", "A", "A", "C", "D"],
                             "frames": [99, 99, 99, 99, 99]})  # the probe's count; the decoded count wins
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    with caplog.at_level("WARNING", logger="slic.data.clips"):
        videos = load_videos(tmp_path / "manifest.csv", tmp_path, splits=["train"], min_frames=16)
    assert [(v.video_id, v.frames, v.label, v.class_name) for v in videos] == [("A/v_a", 24, 0, "A"),
                                                                                ("B/v_b", 40, 1, "B")]
    assert videos[0].shard == str(tmp_path / "counter2.shard")
    assert [r.getMessage() for r in caplog.records] == [
        "excluded 1 of 3 train videos with fewer than 16 frames: A/v_short (12 decoded); manifest.min_frames: 16 "
        "would exclude them in the manifest, by name"]
    from slic.data.clips import short_videos_line

    line = short_videos_line([f"v{i}" for i in range(8)], [20 + i for i in range(8)], 100, ["train"], 16, 2)
    assert line == ("excluded 8 of 100 train videos with fewer than 16 frames at frame_step 2 (31 decoded): "
                    "v0 (20 decoded), v1 (21 decoded), v2 (22 decoded), v3 (23 decoded), v4 (24 decoded) and 3 more; "
                    "manifest.min_frames: 31 would exclude them in the manifest, by name")
    both = load_videos(tmp_path / "manifest.csv", tmp_path, splits=["train", "val"], min_frames=0)
    assert [v.video_id for v in both] == ["A/v_a", "A/v_short", "B/v_b", "C/v_val"]


def strided_window(clip: torch.Tensor, step: int) -> tuple[int, int]:
    """(video, first decoded frame) of a clip whose frames are every `step`-th frame of one video."""
    frames = frames_of(clip)
    video, first = frames[0]
    assert frames == [(video, first + step * i) for i in range(len(frames))], frames
    return video, first


def test_frame_step_takes_every_nth_decoded_frame_in_every_kind_of_clip(tmp_path: Path) -> None:
    from slic.data.clips import load_videos
    from slic.data.labelled_clips import LabelledClips

    shards = counter_shards(tmp_path, [40, 23])
    pd.DataFrame({"video_id": ["a", "b"], "shard": [Path(s.shard).name for s in shards],
                  "frames": [40, 23]}).to_csv(tmp_path / "index.csv", index=False)
    pd.DataFrame({"video_id": ["a", "b"], "split": ["train", "train"], "label": [0, 1],
                  "class": ["A", "B"]}).to_csv(tmp_path / "manifest.csv", index=False)
    videos = load_videos(tmp_path / "manifest.csv", tmp_path, splits=["train"], frame_step=2)
    assert [(v.frames, v.frame_step, v.decoded_frames) for v in videos] == [(20, 2, 40), (12, 2, 23)]
    # min_frames counts frames at the step: b offers 12, so a 6-frame anchor and a positive apart still fit
    assert [v.video_id for v in load_videos(tmp_path / "manifest.csv", tmp_path, splits=["train"],
                                            min_frames=13, frame_step=2)] == ["a"]
    data = PretrainClips(videos, clip_len=6, size=16, random_anchor=True, p_intra=1.0, augmentation=PLAIN)
    for epoch in range(8):
        data.set_epoch(epoch)
        for index, decoded in ((0, 40), (1, 23)):
            anchor, positive, _, _, _ = data[index]
            (video, first), (positive_video, positive_first) = strided_window(anchor, 2), strided_window(positive, 2)
            assert video == positive_video == index and first % 2 == positive_first % 2 == 0
            assert max(first, positive_first) + 10 <= decoded - 1  # the last frame taken exists
            assert abs(positive_first - first) >= 12  # the two windows share no sampled frame
            if index == 1:  # 12 frames, 6 per clip: only anchors at 0 and 6 leave room for a positive
                assert first in (0, 12)
    eval_clips = EvalClips(videos, protocol="iic", clip_len=6, size=16, clips=3)[1][0]
    assert [strided_window(c, 2) for c in eval_clips] == [(1, 2 * s) for s in iic_starts(12, 6, 3)]
    labelled = LabelledClips(videos, clip_len=6, size=16, augmentation=PLAIN)
    assert strided_window(labelled[0][0], 2)[0] == 0


def test_batches_are_identical_with_zero_or_two_loader_workers(shards: list[VideoShard]) -> None:
    from torch.utils.data import DataLoader

    data = PretrainClips(shards, clip_len=8, size=16, p_intra=0.5, random_anchor=True, seed=4)
    data.set_labels(np.array([0, 0, 1, 1, 2, 2]))

    def batches(workers: int, epoch: int) -> list[list[torch.Tensor]]:
        data.set_epoch(epoch)
        loader = DataLoader(data, batch_size=2, num_workers=workers, shuffle=False)
        return [[torch.as_tensor(part) for part in batch] for batch in loader]

    for epoch in (0, 1):
        serial, parallel = batches(0, epoch), batches(2, epoch)
        assert len(serial) == len(parallel) == 3
        assert all(torch.equal(a, b) for one, two in zip(serial, parallel) for a, b in zip(one, two))
    assert not torch.equal(batches(0, 0)[0][0], batches(0, 1)[0][0])  # the epoch changes the draws


def test_shard_cache_serves_the_same_windows_from_memory_within_its_budget(tmp_path: Path) -> None:
    from slic.data.clips import ShardCache

    videos = [replace(v, frame_step=2, decoded=v.frames, frames=(v.frames - 1) // 2 + 1)
              for v in counter_shards(tmp_path, [20, 15, 30])]
    plain = ShardCache()
    one_video = videos[0].frames * 24 * 32 * 3
    cache = ShardCache(max_bytes=one_video + videos[1].frames * 24 * 32 * 3)
    assert cache.preload(videos) == 2 and cache.cached_bytes <= cache.max_bytes  # the third is over budget
    for video in videos:
        for start, length in ((0, 3), (2, 5), (video.frames - 4, 4)):
            assert np.array_equal(cache.window(video, start, length), plain.window(video, start, length))
    with pytest.raises(IndexError, match="outside"):
        cache.window(videos[0], videos[0].frames - 2, 4)
    data = PretrainClips(videos[:2], clip_len=4, size=16, augmentation=PLAIN, cache=cache)
    reference = PretrainClips(videos[:2], clip_len=4, size=16, augmentation=PLAIN)
    assert all(torch.equal(x, y) for x, y in zip(data[1][:3], reference[1][:3]))
