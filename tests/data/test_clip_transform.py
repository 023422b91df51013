"""The evaluation transform written with torch alone gives exactly what torchvision's v2 pipeline gives (so no
embedding moves), and `slic search`'s imports leave torchvision out (it costs 1.6 s of its start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from slic.data import clip_transform
from slic.data.clip_transform import as_clip, eval_transform, resized_size

ROOT = Path(__file__).resolve().parents[2]


def torchvision_transform(size: int, resize: tuple[int, int] | None) -> v2.Compose:
    """The pipeline slic used before writing its own: torchvision's v2 transforms."""
    return v2.Compose([v2.Resize(resize if resize else size, antialias=True), v2.CenterCrop(size),
                       v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


def torchvision_clip(frames: np.ndarray, transform: v2.Compose) -> torch.Tensor:
    return transform(tv_tensors.Video(torch.from_numpy(frames).permute(0, 3, 1, 2))).permute(1, 0, 2, 3).contiguous()


@pytest.mark.parametrize("height, width", [(64, 85), (85, 64), (240, 320), (37, 91), (33, 32), (32, 32), (360, 202)])
@pytest.mark.parametrize("size, fixed", [(16, True), (32, True), (32, False), (24, False)])
def test_the_clip_equals_torchvisions_bit_for_bit(height: int, width: int, size: int, fixed: bool) -> None:
    """IIC's fixed (size, size * 171/128) resize and the short-side resize, up and down, odd sizes, a frame already
    at the target size: the same float32 values (the same uint8 resize, crop offset, scaling and normalisation)."""
    frames = np.random.default_rng(height * width + size).integers(0, 256, (4, height, width, 3), dtype=np.uint8)
    resize = (size, round(size * 171 / 128)) if fixed else None
    ours = as_clip(frames, eval_transform(size, resize=resize))
    assert ours.shape == (3, 4, size, size) and ours.dtype == torch.float32
    assert torch.equal(ours, torchvision_clip(frames, torchvision_transform(size, resize)))


def test_without_a_native_uint8_resize_the_frames_are_resized_in_float_and_rounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without AVX2 (and on the GPU) torchvision resizes uint8 frames in float32 and rounds them back; so
    does this module there, so the same video embeds alike on either machine. The uint8 path gives values within
    one grey level of it."""
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    native = clip_transform.resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2), (20, 27))
    monkeypatch.setattr(clip_transform, "_native_uint8_resize", lambda device: False)
    rounded = clip_transform.resize_frames(torch.from_numpy(frames).permute(0, 3, 1, 2), (20, 27))
    expected = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=[20, 27],
                                               mode="bilinear", align_corners=False, antialias=True).round()
    assert rounded.dtype == native.dtype == torch.uint8 and torch.equal(rounded, expected.to(torch.uint8))
    assert (rounded.int() - native.int()).abs().max() <= 1


def test_resized_size_keeps_the_aspect_and_truncates_as_torchvision() -> None:
    assert resized_size(240, 320, 32) == (32, 42) and resized_size(320, 240, 32) == (42, 32)
    assert resized_size(240, 320, (16, 21)) == (16, 21)
    with pytest.raises(ValueError, match="smaller than its 32x32 centre crop"):
        clip_transform.centre_crop(torch.zeros(3, 20, 40), 32)


def test_search_and_the_served_encoder_start_without_importing_torchvision() -> None:
    """Everything `slic search` and `slic embed-video` import to embed a file: no torchvision (whose import pulls in
    torch._dynamo, 1.6 s on 2 cores). Training keeps torchvision's augmentation kernels."""
    code = ("import sys; import slic.cli, slic.search, slic.serving, slic.checkpoints, slic.index, slic.search_report, "
            "slic.data.video, slic.data.clip_transform; "
            "print(sorted(m for m in sys.modules if m.startswith(('torchvision.', 'torch._dynamo.')) "
            "or m in ('torchvision', 'torch._dynamo')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    trained = subprocess.run([sys.executable, "-c", "import sys, slic.data.clips; print('torchvision' in sys.modules)"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert trained.strip() == "True"
