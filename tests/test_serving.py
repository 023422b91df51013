"""slic.serving.VideoEncoder on real files: frames decoded small (FFmpeg's scaler), rotation applied, only the
IIC clips' frames kept, and the embedding the same as from every frame at the file's own size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slic.config import PretrainConfig
from tests.conftest import SHARED_VIDEOS, damaged_video

OVERCOUNTED = (SHARED_VIDEOS / "JohnPPinto-HMDB51-demo" / "hmdb51" / "climb"
               / "(HQ)_Rock_Climbing_-_Free_Solo_Speed_Climb_-_Dan_Osman_climb_f_cm_np1_le_med_2.avi")
ROTATED = SHARED_VIDEOS / "dmlc-decord" / "decode_tests" / "video_90.mov"  # coded 568x320, displayed portrait
UCF_CLIP = SHARED_VIDEOS / "FingerRec-3DNet_Visualization" / "ucf101" / "Shotput" / "v_Shotput_g05_c02.avi"
TINY = PretrainConfig(hidden_dim=16, out_dim=8, size=16, clip_len=8)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory):
    if not (ROTATED.is_file() and UCF_CLIP.is_file()):
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    from slic.pretrain import TrainState, build_encoder, save_checkpoint
    from slic.serving import VideoEncoder

    checkpoint = tmp_path_factory.mktemp("serving") / "best.pt"
    save_checkpoint(checkpoint, build_encoder(TINY), None, TrainState(), TINY)
    return VideoEncoder(checkpoint, clips=2)


def test_frames_are_decoded_at_twice_the_crop_and_upright(encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    import slic.serving as serving

    seen: list[tuple[int, ...]] = []
    real = serving.embed_windows
    monkeypatch.setattr(serving, "embed_windows", lambda model, windows, **kw: seen.append(windows[0].shape) or
                        real(model, windows, **kw))
    encoder.embed_paths([ROTATED, UCF_CLIP])
    (t1, h1, w1, _), (t2, h2, w2, _) = seen
    assert (w1, h1 > w1) == (32, True)  # short side 2 x 16; the 90-degree file stands upright
    assert (h2, w2) == (32, 42)  # 320x240 -> 42x32, the long side even-rounded as ffmpeg's scale=-2:32


def test_the_small_decode_gives_the_full_size_embedding(encoder, monkeypatch: pytest.MonkeyPatch) -> None:
    import slic.serving as serving

    small = encoder.embed_paths([UCF_CLIP])[0]
    monkeypatch.setattr(serving, "decode_short_side", lambda size: None)  # the file's own size
    full = encoder.embed_paths([UCF_CLIP])[0]
    assert float(small @ full / np.linalg.norm(small) / np.linalg.norm(full)) > 0.999
    assert not np.allclose(small, full)  # the two ways really differ in pixels


@pytest.mark.parametrize("video", [UCF_CLIP, ROTATED, OVERCOUNTED], ids=["ucf101", "3_frames_rotated", "overcounted"])
def test_only_the_clips_frames_give_the_embedding_of_every_frame(encoder, video: Path) -> None:
    """The clips decoded alone equal those taken from every decoded frame (the `embed` stage's protocol), also
    for a file whose demuxed packet count is one more than its frames (decoded again at its true length)."""
    from slic.data.video import decode, probe
    from slic.serving import decode_short_side, embed_video

    if not video.is_file():
        pytest.skip(f"{video} not found")
    every = decode(video, short_side=decode_short_side(encoder.size))
    if video is OVERCOUNTED:
        assert probe(video).frames == len(every) + 1  # the case the second pass is for
    expected = embed_video(encoder.model, every, clip_len=encoder.clip_len, size=encoder.size, clips=encoder.clips,
                           frame_step=encoder.frame_step)
    np.testing.assert_allclose(encoder.embed_paths([video])[0], expected, atol=1e-6)


def test_decode_frames_at_keeps_only_the_wanted_frames() -> None:
    from slic.data.video import decode, decode_frames_at

    if not UCF_CLIP.is_file():
        pytest.skip(f"{UCF_CLIP} not found")
    frames, decoded = decode_frames_at(UCF_CLIP, [3, 0, 7], short_side=32)
    assert sorted(frames) == [0, 3, 7] and decoded == 8  # stops after the last wanted frame
    np.testing.assert_array_equal(frames[7], decode(UCF_CLIP, short_side=32)[7])
    frames, decoded = decode_frames_at(UCF_CLIP, [5, 10_000], short_side=32)
    assert sorted(frames) == [5] and decoded == len(decode(UCF_CLIP))  # past the end: the whole length


def test_embed_files_overlaps_decoding_and_keeps_order_errors_and_threads(encoder, tmp_path: Path) -> None:
    """Loader workers give the same embeddings in the same order, a corrupt file its reason in place, and the
    model's CPU threads are given back afterwards."""
    import torch

    corrupt = damaged_video(tmp_path / "corrupted.mp4")  # probes, cannot be decoded
    paths = [UCF_CLIP, corrupt, ROTATED]
    threads = torch.get_num_threads()
    here, workers = (list(encoder.embed_files(paths, n)) for n in (0, 2))
    assert [p for p, _, _ in workers] == [0, 1, 2] and torch.get_num_threads() == threads
    assert workers[1][1] is None and "cannot decode video" in workers[1][2] and str(corrupt) not in workers[1][2]
    for (_, a, _), (_, b, _) in zip(here[::2], workers[::2]):
        np.testing.assert_allclose(a, b, atol=1e-5)
