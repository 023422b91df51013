"""The synthetic set: motion defines the class, appearance does not; UCF101 layout; seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slic.config import SynthConfig
from slic.data.synthetic import _background, clip_specs, held_out_groups, motion_names, render_clip
from slic.data.video import decode, probe

SIZE = dict(width=64, height=48, frames=24)


def foreground(motion: str, seed: int) -> np.ndarray:
    """Boolean masks (T, H, W) of where objects are, from the known background of the scene."""
    video = render_clip(motion, scene_seed=seed, clip_seed=seed + 1, **SIZE).astype(np.float64)
    background = _background(np.random.default_rng(seed), SIZE["width"], SIZE["height"])
    return np.abs(video - background).max(axis=-1) > 40


def mean_shift(masks: np.ndarray) -> tuple[float, float]:
    """Average per-frame (dx, dy) of the objects, by best overlap under periodic shifts."""
    shifts = []
    for a, b in zip(masks[:-1], masks[1:]):
        best = max(((dx, dy) for dx in range(-4, 5) for dy in range(-4, 5)),
                   key=lambda d: np.logical_and(np.roll(a, d, axis=(1, 0)), b).sum())
        shifts.append(best)
    return tuple(np.mean(shifts, axis=0))


@pytest.mark.parametrize(("motion", "direction"), [("Slide", (None, 0)), ("Rise", (0, -1)), ("Fall", (0, 1))])
def test_linear_motions_move_objects_in_their_direction(motion: str, direction: tuple[int | None, int]) -> None:
    senses = set()
    for seed in range(1, 7):
        dx, dy = mean_shift(foreground(motion, seed * 10))
        along, across = (dx, dy) if direction[1] == 0 else (dy, dx)
        assert abs(along) > 1.0 and abs(along) > 2 * abs(across), (motion, seed, dx, dy)
        if direction[0] is None:  # left or right, drawn per clip
            senses.add(np.sign(dx))
        else:
            assert np.sign(dy) == direction[1], (motion, seed, dx, dy)
    assert direction[0] is not None or senses == {-1, 1}


def test_zoom_changes_object_area_in_its_direction() -> None:
    grow = foreground("ZoomIn", 5).sum(axis=(1, 2))
    shrink = foreground("ZoomOut", 5).sum(axis=(1, 2))
    assert grow[-1] > 1.5 * grow[0]
    assert shrink[-1] < 0.67 * shrink[0]


def test_appearance_does_not_depend_on_class() -> None:
    # Same seeds, different classes: the first frame (objects, colours, background) is the same,
    # and only what happens next differs.
    right = render_clip("Slide", scene_seed=4, clip_seed=9, **SIZE)
    left = render_clip("Rise", scene_seed=4, clip_seed=9, **SIZE)
    assert np.array_equal(right[0], left[0])
    assert not np.array_equal(right[8], left[8])


def test_rendering_is_seeded() -> None:
    a = render_clip("Orbit", scene_seed=1, clip_seed=2, **SIZE)
    assert np.array_equal(a, render_clip("Orbit", scene_seed=1, clip_seed=2, **SIZE))
    assert not np.array_equal(a, render_clip("Orbit", scene_seed=1, clip_seed=3, **SIZE))


def test_every_motion_renders_moving_content() -> None:
    for motion in motion_names(16):
        video = render_clip(motion, scene_seed=1, clip_seed=2, **SIZE).astype(np.int16)
        assert np.abs(video[12] - video[0]).mean() > 1.0, motion


def test_test_groups_follow_ucf101_proportions() -> None:
    assert [sorted(held_out_groups(25, s)) for s in (1, 2, 3)] == [list(range(1, 8)), list(range(8, 15)),
                                                              list(range(15, 22))]
    assert held_out_groups(8, 1) == {1, 2}
    assert held_out_groups(4, 3) == {3}


def test_dataset_has_ucf101_layout_and_group_splits(tiny_dataset: Path) -> None:
    classes = [line.split() for line in (tiny_dataset / "classInd.txt").read_text().splitlines()]
    assert classes == [["1", "Slide"], ["2", "Rise"], ["3", "Fall"]]
    for split in (1, 2, 3):
        train = [line.split() for line in (tiny_dataset / f"trainlist0{split}.txt").read_text().splitlines()]
        test = (tiny_dataset / f"testlist0{split}.txt").read_text().split()
        assert len(train) + len(test) == 3 * 4 * 2
        train_groups = {name.split("_g")[1][:2] for name, _ in train}
        test_groups_seen = {name.split("_g")[1][:2] for name in test}
        assert not train_groups & test_groups_seen
        for name, label in train:
            assert (tiny_dataset / name).is_file()
            assert classes[int(label) - 1][1] == name.split("/")[0]
    video = tiny_dataset / "Rise" / "v_Rise_g03_c02.avi"
    info = probe(video)
    assert (info.frames, info.width, info.height, info.codec) == (32, 64, 48, "mpeg4")


def test_scale_multiplies_groups() -> None:
    assert len(clip_specs(SynthConfig(classes=2, groups=4, clips_per_group=1, scale=2.5))) == 2 * 10


def test_dataset_files_are_deterministic(tiny_dataset: Path, tmp_path: Path) -> None:
    from slic.data.synthetic import generate
    from tests.conftest import tiny_synth_config

    generate(tiny_synth_config(tmp_path, classes=2, groups=4, clips_per_group=1))
    again = tmp_path / "Slide" / "v_Slide_g02_c01.avi"
    first = tiny_dataset / "Slide" / "v_Slide_g02_c01.avi"
    assert np.array_equal(decode(again), decode(first))


def _scenes(bias: float, classes: int = 10, groups: int = 40) -> dict[tuple[int, int], tuple[int, object]]:
    from slic.data.synthetic import scene_of

    config = SynthConfig(classes=classes, groups=groups, appearance_bias=bias)
    return {(s.class_index, s.group): scene_of(s, config) for s in clip_specs(config) if s.clip == 1}


def test_without_appearance_bias_a_group_shows_one_scene_in_every_class() -> None:
    scenes = _scenes(0.0)
    for group in range(1, 41):
        drawn = {scenes[(c, group)][0] for c in range(10)}
        assert len(drawn) == 1 and all(scenes[(c, group)][1] is None for c in range(10))
    assert len({seed for seed, _ in scenes.values()}) == 40  # a new scene per group


def test_appearance_bias_draws_class_families_at_its_rate() -> None:
    from slic.data.synthetic import class_colour

    for bias, low, high in ((1.0, 1.0, 1.0), (0.5, 0.42, 0.58), (0.25, 0.18, 0.32)):
        scenes = _scenes(bias)
        family = {key: colour for key, (_, colour) in scenes.items() if colour is not None}
        assert low <= len(family) / len(scenes) <= high, bias
        for c in range(10):  # a family's instances vary around its class's colour, nearer it than any other
            mean = np.mean([colour for (k, _), colour in family.items() if k == c], axis=0)
            assert int(np.argmin([np.abs(mean - class_colour(k, 10)).sum() for k in range(10)])) == c
            assert all(np.abs(colour - class_colour(c, 10)).max() < 40 for (k, _), colour in family.items() if k == c)
    hues = [tuple(np.round(class_colour(c, 10))) for c in range(10)]
    assert len(set(hues)) == 10


def test_no_class_draws_bigger_objects() -> None:
    # The object area, averaged over frames and clips, is the same for the rotating and pulsing
    # classes as for a translating one (spin and wobble used to be 1.5x larger: a size cue).
    def area(motion: str) -> float:
        return float(np.mean([foreground(motion, seed * 7).sum(axis=(1, 2)).mean() for seed in range(1, 13)]))

    slide = area("Slide")
    for motion in ("Spin", "Wobble", "Pulse"):
        assert 0.9 < area(motion) / slide < 1.12, motion


def test_pool_scenes_are_shared_by_group_number_or_owned_by_each_class_and_group(tmp_path: Path) -> None:
    from slic.data.synthetic import clip_specs, scene_of

    for pool, shared in (("group", True), ("class_group", False)):
        config = SynthConfig(out=str(tmp_path), classes=3, groups=4, clips_per_group=2, appearance_bias=0.0,
                             pool_scenes=pool)
        scenes = {(s.class_index, s.group): scene_of(s, config) for s in clip_specs(config)}
        assert all(colour is None for _, colour in scenes.values())  # bias 0: every scene from the pool
        same_group = {scenes[(c, 2)][0] for c in range(3)}
        assert (len(same_group) == 1) is shared  # group 2's scene in every class, or three scenes of its own
        assert len({seed for seed, _ in scenes.values()}) == (4 if shared else 12)
