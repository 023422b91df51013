"""Clip augmentation as explicit draws: torchvision's definitions, drawn once per clip, applied alike to all frames."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from slic.data.augment import Augmentation, ClipDraw, apply_draw, augment_clip, draw_augmentation, draw_crop

MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def frames(t: int = 6, h: int = 40, w: int = 52, seed: int = 0) -> torch.Tensor:
    """Smooth random (T, H, W, 3) uint8 frames (smooth, so resampling differences stay small)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(t, 3, h // 4, w // 4, generator=g)
    return (torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear") * 255).byte().permute(0, 2, 3, 1)


def unnormalise(clip: torch.Tensor) -> torch.Tensor:
    """(3, T, S, S) normalised -> (T, 3, S, S) in 0..255."""
    return ((clip * STD[:, None, None, None] + MEAN[:, None, None, None]) * 255).permute(1, 0, 2, 3)


def test_crop_boxes_follow_random_resized_crop() -> None:
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        top, left, h, w = draw_crop(rng, 64, 85, (0.25, 1.0))
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 85
        areas.append(h * w / (64 * 85))
        ratios.append(w / h)
    areas, ratios = np.array(areas), np.array(ratios)
    assert areas.min() > 0.22 and areas.max() <= 1.0          # scale (0.25, 1), up to rounding
    assert ratios.min() > 0.7 and ratios.max() < 1.4           # ratio (3/4, 4/3), up to rounding
    # Log-uniform aspect: on a square frame about as many crops wider than tall as taller than wide.
    square = np.array([w / h for _, _, h, w in (draw_crop(rng, 64, 64, (0.25, 1.0)) for _ in range(2000))])
    assert 0.45 < (square > 1).mean() < 0.55
    # torchvision's fallback: when no try fits (scale above what the frame allows), the centred box.
    assert draw_crop(np.random.default_rng(0), 10, 100, (0.99, 1.0)) == (0, 43, 10, 13)


def test_whole_frame_draw_is_a_plain_resize_and_flip_mirrors_it() -> None:
    video = frames()
    plain = ClipDraw(crop=(0, 0, 40, 52), flip=False)
    clip = apply_draw(video, plain, 24)
    assert clip.shape == (3, 6, 24, 24) and clip.dtype == torch.float32
    expected = TF.resize(video.permute(0, 3, 1, 2), [24, 24], antialias=True)
    assert torch.allclose(unnormalise(clip), expected.float(), atol=1e-3)
    mirrored = apply_draw(video, ClipDraw(crop=(0, 0, 40, 52), flip=True), 24)
    assert torch.equal(mirrored, clip.flip(-1))


def test_every_frame_of_a_clip_gets_the_same_draw() -> None:
    still = frames(t=1).expand(5, -1, -1, -1)  # five identical frames
    rng = np.random.default_rng(3)
    for _ in range(20):
        clip = augment_clip(rng, still, Augmentation(), 16)
        assert all(torch.equal(clip[:, 0], clip[:, t]) for t in range(1, 5))


def test_colour_ops_match_torchvision_color_jitter_in_the_drawn_order() -> None:
    video = frames()
    draw = ClipDraw(crop=(0, 0, 40, 52), flip=False, jitter=(1.3, 0.7, 1.2, 0.05), jitter_order=(3, 0, 2, 1))
    got = unnormalise(apply_draw(video, draw, 40)).round().byte()
    v = TF.resize(video.permute(0, 3, 1, 2), [40, 40], antialias=True)
    v = TF.adjust_contrast(TF.adjust_saturation(TF.adjust_brightness(TF.adjust_hue(v, 0.05), 1.3), 1.2), 0.7)
    assert (got.int() - v.int()).abs().max() <= 1
    grey = unnormalise(apply_draw(video, ClipDraw(crop=(0, 0, 40, 52), flip=False, grayscale=True), 40))
    assert torch.allclose(grey[:, 0], grey[:, 1], atol=1e-3) and torch.allclose(grey[:, 0], grey[:, 2], atol=1e-3)
    blurred = apply_draw(video, ClipDraw(crop=(0, 0, 40, 52), flip=False, blur=True), 40)
    sharp = apply_draw(video, ClipDraw(crop=(0, 0, 40, 52), flip=False), 40)
    assert blurred.diff(dim=-1).abs().mean() < sharp.diff(dim=-1).abs().mean()


def test_draw_probabilities_and_ranges_are_the_configured_ones() -> None:
    rng = np.random.default_rng(1)
    a = Augmentation(crop_min_scale=0.5, jitter=0.4, jitter_p=0.3, grayscale_p=0.2, blur_p=0.1, hue=0.1, flip_p=0.5)
    draws = [draw_augmentation(rng, 64, 85, a) for _ in range(4000)]
    jittered = [d.jitter for d in draws if d.jitter is not None]
    assert abs(len(jittered) / 4000 - 0.3) < 0.03
    assert abs(np.mean([d.grayscale for d in draws]) - 0.2) < 0.03
    assert abs(np.mean([d.blur for d in draws]) - 0.1) < 0.02
    assert abs(np.mean([d.flip for d in draws]) - 0.5) < 0.03
    factors = np.array(jittered)
    assert factors[:, :3].min() >= 0.6 and factors[:, :3].max() <= 1.4
    assert factors[:, 3].min() >= -0.1 and factors[:, 3].max() <= 0.1
    assert {tuple(sorted(d.jitter_order)) for d in draws} == {(0, 1, 2, 3)}
    # SLIC's pretraining hue: min(jitter, 0.5) when not given.
    assert Augmentation(jitter=0.8).hue_strength == 0.5 and Augmentation(jitter=0.3).hue_strength == 0.3


def test_a_draw_does_not_depend_on_which_options_are_off() -> None:
    """Switching jitter or grey off changes only those choices: the crop and flip of every clip stay."""
    on = [draw_augmentation(np.random.default_rng(s), 64, 85, Augmentation()) for s in range(50)]
    off = [draw_augmentation(np.random.default_rng(s), 64, 85, Augmentation(jitter=0.0, jitter_p=0.0, grayscale_p=0.0))
           for s in range(50)]
    assert [(d.crop, d.flip) for d in on] == [(d.crop, d.flip) for d in off]
    assert all(d.jitter is None and not d.grayscale for d in off)


@pytest.mark.parametrize("part", ["geometry", "colour"])
def test_clip_statistics_match_torchvisions_random_transforms(part: str) -> None:
    """Our draws and torchvision's random transforms give clips of the same pixel statistics."""
    from torchvision import tv_tensors

    video = frames(t=4, h=48, w=64)
    if part == "geometry":
        ours_aug = Augmentation(crop_min_scale=0.3, jitter=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
        reference = [v2.RandomResizedCrop(16, scale=(0.3, 1.0), antialias=True), v2.RandomHorizontalFlip(0.5)]
        tolerance = 0.01
    else:
        ours_aug = Augmentation(crop_min_scale=1.0, jitter=0.5, jitter_p=0.8, grayscale_p=0.2, blur_p=0.2, flip_p=0.0)
        reference = [v2.Resize((16, 16), antialias=True), v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.5)], p=0.8),
                     v2.RandomGrayscale(0.2), v2.RandomApply([v2.GaussianBlur(15, sigma=2.0)], p=0.2)]
        tolerance = 0.04  # per-clip colour factors vary a lot: sampling noise of 1,000 clips
    theirs_aug = v2.Compose([*reference, v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN.tolist(), STD.tolist())])
    torch.manual_seed(0)
    theirs = torch.stack([theirs_aug(tv_tensors.Video(video.permute(0, 3, 1, 2))) for _ in range(1000)])
    rng = np.random.default_rng(0)
    ours = torch.stack([augment_clip(rng, video, ours_aug, 16).permute(1, 0, 2, 3) for _ in range(1000)])
    assert theirs.shape == ours.shape
    for stat in (lambda x: x.mean(), lambda x: x.std(), lambda x: x.diff(dim=-1).abs().mean()):
        assert math.isclose(stat(ours).item(), stat(theirs).item(), abs_tol=tolerance)
