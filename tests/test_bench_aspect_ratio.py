"""bench/aspect_ratio.py: the cuts and resizes it compares, and its paired summary, on hand-made frames and numbers."""

from __future__ import annotations

import numpy as np
import torch

from bench.aspect_ratio import RESIZES, VIEWS, Letterbox, centre_cut, summary, table, transform_of
from slic.data.clip_transform import IMAGENET_MEAN, IMAGENET_STD


def test_the_cuts_keep_the_centre_at_the_aspect_asked() -> None:
    frames = np.arange(2 * 64 * 85 * 3, dtype=np.uint32).reshape(2, 64, 85, 3).astype(np.uint8)
    upright = centre_cut(frames, 9 / 16)
    assert upright.shape == (2, 64, 36, 3) and np.array_equal(upright, frames[:, :, 24:60])
    wide = centre_cut(frames, 16 / 9)
    assert wide.shape == (2, 48, 85, 3) and np.array_equal(wide, frames[:, 8:56])
    assert centre_cut(frames, None) is frames


def test_the_resizes_give_the_crop_size_and_letterbox_pads_with_the_mean_colour() -> None:
    tall = torch.full((3, 3, 64, 36), 200, dtype=torch.uint8)  # (T, C, H, W) frames of one colour, 9:16
    for resize in RESIZES:
        assert transform_of(resize, 32)(tall).shape == (3, 3, 32, 32)
    boxed = Letterbox(32, mean=IMAGENET_MEAN, std=IMAGENET_STD)(tall)
    colour = (200 / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(boxed[:, :, :, 16], colour.view(1, 3, 1).expand(3, 3, 32), atol=1e-5)  # the frame, whole
    assert torch.count_nonzero(boxed[..., :6]) == 0 and torch.count_nonzero(boxed[..., -6:]) == 0  # the bars: mean


def test_the_summary_pairs_each_resize_with_iic_per_encoder() -> None:
    def recall(iic: float, other: float) -> dict[str, dict[str, float]]:
        return {resize: {"val_recall@1": value, "test_recall@1": value} for resize, value in
                zip(RESIZES, (iic, other, other))}

    encoders = [{"row": "slic", "seed": seed, "recall": {view: recall(iic, other) for view in VIEWS}}
                for seed, (iic, other) in zip((7, 8, 9), ((0.5, 0.6), (0.6, 0.6), (0.7, 0.5)))]
    found = summary(encoders)
    view = next(iter(VIEWS))
    assert found["mean"][view]["iic"]["test_recall@1"] == 0.6
    paired = found["minus_iic"][view]["letterbox"]["test_recall@1"]
    assert (paired["mean"], paired["beats_iic"], paired["ties"], paired["of"]) == (-0.0333, 1, 1, 3)
    assert "iic" not in found["minus_iic"][view]
    rendered = table({"resizes": list(RESIZES), **found})
    assert f"| {view} | letterbox | 56.7 ± 5.8 | 56.7 ± 5.8 | -3.3 ± 15.3 (1 of 3) |" in rendered


def test_a_split_and_a_subset_of_views_and_resizes_are_measured_in_their_own_work_folder() -> None:
    """`--split 2 --views 9:16 --resizes short_side` (the run on unseen splits): its cells train in
    data/bench/real_split2, never over split 1's, and the summary pairs the one resize with iic."""
    from bench.aspect_ratio import chosen, parse_args, summary
    from bench.real import ROOT, split_work

    args = parse_args(["--split", "2", "--views", "9:16", "--resizes", "short_side"])
    views, resizes = chosen(args)
    assert (args.split, views, resizes) == (2, {"9:16 upright phone": 9 / 16}, ("iic", "short_side"))
    assert split_work(1) == ROOT / "data/bench/real" and split_work(2) == ROOT / "data/bench/real_split2"
    encoders = [{"row": "slic", "seed": seed, "recall": {"9:16 upright phone": {
        "iic": {"val_recall@1": 0.5, "test_recall@1": 0.6}, "short_side": {"val_recall@1": v, "test_recall@1": v}}}}
        for seed, v in ((7, 0.4), (8, 0.6))]
    paired = summary(encoders)["minus_iic"]["9:16 upright phone"]["short_side"]["val_recall@1"]
    assert (paired["mean"], paired["beats_iic"], paired["of"]) == (0.0, 1, 2)
