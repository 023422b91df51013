"""A synthetic action dataset whose classes are motions, written as real videos in UCF101's layout.

Why it looks like this: SLIC's claim is that positives drawn from *other* videos of the same
motion (found by clustering) teach more than positives from the same video. A dataset can only
show that if appearance says nothing about the class. So here:

- a class is a motion pattern (pan right, orbit clockwise, zoom in, spin, swing, ...), applied to
  every moving object of the video, with speed, radius and phase drawn per clip inside the class's
  range;
- appearance is drawn at random and never depends on the class: the background ("scene") per
  group, the objects' shape, colours, texture, size and start position per clip, and the same
  appearance distribution for every class;
- groups behave like UCF101's: the clips of one group share their scene (as the clips cut from
  one long UCF101 video share actor and background), and train/test splits never share a group.

A model that matches videos by appearance (what positives from the same video reward) retrieves
the wrong class; only one that encodes motion retrieves well. Everything is seeded.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slic.config import SynthConfig
from slic.data.video import write_video

# (name, motion) in the order classes are taken: the first `classes` of these are used.
MOTIONS: tuple[str, ...] = (
    "PanRight", "PanLeft", "Rise", "Fall", "OrbitClockwise", "OrbitCounterclockwise",
    "ZoomIn", "ZoomOut", "SwingHorizontal", "SwingVertical", "SpinClockwise",
    "SpinCounterclockwise", "SpeedUpRight", "SlowDownRight", "DiagonalUpRight", "DiagonalDownLeft",
)
SHAPES = ("disk", "square", "triangle", "ring", "cross", "bar")


@dataclass(frozen=True)
class Pose:
    """Where one object is at one frame: centre (pixels), scale (pixels per unit), angle (rad)."""

    x: float
    y: float
    scale: float
    angle: float


def motion_names(classes: int) -> tuple[str, ...]:
    """The class names (motions) of a synthetic set with `classes` classes."""
    if not 2 <= classes <= len(MOTIONS):
        raise ValueError(f"synth.classes = {classes}: must be between 2 and {len(MOTIONS)}")
    return MOTIONS[:classes]


def held_out_groups(groups: int, split: int) -> set[int]:
    """1-based groups held out for testing in `split` (1..3), in UCF101's proportion (7 of 25)."""
    per_split = max(1, round(groups * 7 / 25))
    first = (split - 1) * per_split + 1
    return set(range(first, first + per_split))


def _trajectory(motion: str, rng: np.random.Generator, width: int, height: int,
                frames: int) -> Callable[[int], Pose]:
    """A function frame -> pose for one object following `motion`, with clip-level randomness."""
    unit = min(width, height)
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    scale0 = unit * rng.uniform(0.10, 0.16)
    angle0 = rng.uniform(0, 2 * math.pi)
    speed = unit * rng.uniform(0.018, 0.03)  # pixels per frame
    spin = rng.uniform(2 * math.pi / 36, 2 * math.pi / 20)  # radians per frame
    phase = rng.uniform(0, 2 * math.pi)

    def linear(dx: float, dy: float) -> Callable[[int], Pose]:
        return lambda t: Pose(x0 + dx * speed * t, y0 + dy * speed * t, scale0, angle0)

    if motion in ("PanRight", "PanLeft", "Rise", "Fall", "DiagonalUpRight", "DiagonalDownLeft"):
        d = {"PanRight": (1, 0), "PanLeft": (-1, 0), "Rise": (0, -1), "Fall": (0, 1),
             "DiagonalUpRight": (0.71, -0.71), "DiagonalDownLeft": (-0.71, 0.71)}[motion]
        return linear(*d)
    if motion in ("OrbitClockwise", "OrbitCounterclockwise"):
        radius = unit * rng.uniform(0.18, 0.3)
        sign = 1 if motion == "OrbitClockwise" else -1  # image y points down: +angle is clockwise
        return lambda t: Pose(x0 + radius * math.cos(phase + sign * spin * t),
                              y0 + radius * math.sin(phase + sign * spin * t), scale0, angle0)
    if motion in ("ZoomIn", "ZoomOut"):
        rate = rng.uniform(0.025, 0.04) * (1 if motion == "ZoomIn" else -1)
        start = unit * (rng.uniform(0.05, 0.08) if motion == "ZoomIn" else rng.uniform(0.3, 0.4))
        return lambda t: Pose(x0, y0, start * math.exp(rate * t), angle0)
    if motion in ("SwingHorizontal", "SwingVertical"):
        amplitude = unit * rng.uniform(0.2, 0.32)
        omega = 2 * math.pi / rng.uniform(14, 22)
        dx, dy = (1, 0) if motion == "SwingHorizontal" else (0, 1)
        return lambda t: Pose(x0 + dx * amplitude * math.sin(phase + omega * t),
                              y0 + dy * amplitude * math.sin(phase + omega * t), scale0, angle0)
    if motion in ("SpinClockwise", "SpinCounterclockwise"):
        sign = 1 if motion == "SpinClockwise" else -1
        big = scale0 * 1.6  # larger, so the rotation of the texture is visible
        return lambda t: Pose(x0, y0, big, angle0 + sign * spin * t)
    if motion in ("SpeedUpRight", "SlowDownRight"):
        top = 2.2 * speed
        if motion == "SpeedUpRight":
            return lambda t: Pose(x0 + 0.5 * top / frames * t * t, y0, scale0, angle0)
        return lambda t: Pose(x0 + top * t - 0.5 * top / frames * t * t, y0, scale0, angle0)
    raise ValueError(f"unknown motion {motion!r}")


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of a unit-size shape in object coordinates (u, v)."""
    if shape == "disk":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "triangle":
        return (v <= 0.7) & (v >= 1.7 * np.abs(u) - 1.0)
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "cross":
        return ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3)) & (np.abs(u) <= 1) & (np.abs(v) <= 1)
    return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.4)  # bar


@dataclass(frozen=True)
class _Sprite:
    shape: str
    colour_a: np.ndarray
    colour_b: np.ndarray
    stripe_freq: float
    stripe_angle: float
    trajectory: Callable[[int], Pose]


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random-coloured texture: low-frequency noise upsampled, float (H, W, 3) in 0..255."""
    cells = rng.integers(3, 7)
    coarse = rng.uniform(0, 1, size=(cells + 1, cells + 1, 3))
    ys = np.linspace(0, cells, height)
    xs = np.linspace(0, cells, width)
    y0, x0 = np.floor(ys).astype(int).clip(0, cells - 1), np.floor(xs).astype(int).clip(0, cells - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    noise = top * (1 - fy) + bottom * fy
    base, tint = rng.uniform(40, 200, size=3), rng.uniform(20, 70, size=3)
    return np.clip(base + (noise - 0.5) * 2 * tint, 0, 255)


def render_clip(motion: str, *, scene_seed: int, clip_seed: int, width: int, height: int,
                frames: int) -> np.ndarray:
    """Render one video of `motion` as (frames, height, width, 3) uint8.

    The scene (background) comes from `scene_seed`; the objects, their look and the motion's
    parameters from `clip_seed`.
    """
    background = _background(np.random.default_rng(scene_seed), width, height)
    rng = np.random.default_rng(clip_seed)
    sprites = [
        _Sprite(shape=str(rng.choice(SHAPES)), colour_a=rng.uniform(0, 255, 3), colour_b=rng.uniform(0, 255, 3),
                stripe_freq=rng.uniform(1.5, 4.0), stripe_angle=rng.uniform(0, math.pi),
                trajectory=_trajectory(motion, rng, width, height, frames))
        for _ in range(int(rng.integers(1, 4)))
    ]
    noise_rng = np.random.default_rng([clip_seed, 1])
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for t in range(frames):
        image = background.copy()
        for sprite in sprites:
            pose = sprite.trajectory(t)
            # Periodic offsets: an object leaving one edge re-enters at the other.
            dx = (xs - pose.x + width / 2) % width - width / 2
            dy = (ys - pose.y + height / 2) % height - height / 2
            cos, sin = math.cos(pose.angle), math.sin(pose.angle)
            u = (cos * dx + sin * dy) / pose.scale
            v = (-sin * dx + cos * dy) / pose.scale
            inside = _shape_mask(sprite.shape, u, v)
            # Stripes fixed to the object, so spinning and moving show in the texture too.
            phase = u * math.cos(sprite.stripe_angle) + v * math.sin(sprite.stripe_angle)
            stripes = (np.sin(phase * sprite.stripe_freq * math.pi) > 0)[..., None]
            colour = np.where(stripes, sprite.colour_a, sprite.colour_b)
            image = np.where(inside[..., None], colour, image)
        image += noise_rng.normal(0, 4.0, size=image.shape)
        video[t] = np.clip(image, 0, 255).astype(np.uint8)
    return video


@dataclass(frozen=True)
class ClipSpec:
    """One video to generate: class, group (1-based), clip (1-based) and where it goes."""

    class_name: str
    class_index: int
    group: int
    clip: int
    path: Path


def clip_specs(config: SynthConfig) -> list[ClipSpec]:
    """Every video of the dataset, in UCF101 naming: <Class>/v_<Class>_g<GG>_c<CC>.avi."""
    groups = max(4, round(config.groups * config.scale))
    out = Path(config.out)
    return [
        ClipSpec(name, index, group, clip, out / name / f"v_{name}_g{group:02d}_c{clip:02d}.avi")
        for index, name in enumerate(motion_names(config.classes))
        for group in range(1, groups + 1)
        for clip in range(1, config.clips_per_group + 1)
    ]


def _write_clip(spec: ClipSpec, config: SynthConfig) -> int:
    frames = render_clip(spec.class_name, scene_seed=hash_seed(config.seed, spec.class_index, spec.group),
                         clip_seed=hash_seed(config.seed, spec.class_index, spec.group, spec.clip),
                         width=config.width, height=config.height, frames=config.frames)
    spec.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = spec.path.with_name(spec.path.name + ".tmp.avi")
    write_video(tmp, frames, fps=config.fps, codec=config.codec)
    tmp.replace(spec.path)
    return spec.path.stat().st_size


def hash_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (Python's hash() of tuples is salted per process)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, dtype=np.uint64)[0] >> 1)


def write_split_files(config: SynthConfig, specs: list[ClipSpec]) -> None:
    """classInd.txt, trainlist0{1,2,3}.txt and testlist0{1,2,3}.txt exactly as UCF101 has them."""
    out = Path(config.out)
    names = motion_names(config.classes)
    (out / "classInd.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    groups = max(s.group for s in specs)
    for split in (1, 2, 3):
        held_out = held_out_groups(groups, split)
        train = [s for s in specs if s.group not in held_out]
        test = [s for s in specs if s.group in held_out]
        (out / f"trainlist0{split}.txt").write_text(
            "".join(f"{s.class_name}/{s.path.name} {s.class_index + 1}\n" for s in train))
        (out / f"testlist0{split}.txt").write_text("".join(f"{s.class_name}/{s.path.name}\n" for s in test))


def generate(config: SynthConfig, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write the whole synthetic dataset under `config.out`; returns counts and bytes."""
    specs = clip_specs(config)
    total = 0
    if config.workers == 1:
        for spec in specs:
            total += _write_clip(spec, config)
            if progress:
                progress(1)
    else:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            for size in pool.map(_write_clip, specs, [config] * len(specs), chunksize=4):
                total += size
                if progress:
                    progress(1)
    write_split_files(config, specs)
    return {"videos": len(specs), "classes": config.classes, "groups": max(s.group for s in specs),
            "frames": len(specs) * config.frames, "bytes": total}
