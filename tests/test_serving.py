"""slic.serving.VideoEncoder on real files: frames decoded small (FFmpeg's scaler), rotation applied, and the
embedding the same as from the file's own size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slic.config import PretrainConfig
from tests.conftest import SHARED_VIDEOS

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
    real = serving.embed_video
    monkeypatch.setattr(serving, "embed_video", lambda model, frames, **kw: seen.append(frames.shape) or
                        real(model, frames, **kw))
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
