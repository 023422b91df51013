"""A synthetic action dataset whose classes are motions, written as real videos in UCF101's layout.

Why it looks like this: SLIC's claim is that positives drawn from *other* videos of the same
motion (found by clustering) teach more than positives from the same video. A dataset can only
show that if appearance says nothing about the class. So here:

- a class is a motion pattern (slide, rise, orbit, zoom in, spin, swing, ...), applied to every
  moving object of the video, with speed, radius, phase and left/right sense drawn per clip inside
  the class's range; a horizontal flip (part of SLIC's augmentation) never changes the class;
- the objects' shape, colours, texture, size and start position are drawn per clip, the same way
  for every class;
- the background ("scene") follows the class only as far as `appearance_bias` says: with that
  probability a (class, group) gets a new instance of the class's family of scenes (a class hue),
  otherwise the group's scene from a pool shared by every class. Real action sets are like this:
  appearance (a pool, a field) goes with the action without naming it. SLIC's first clusters
  exploit that correlation; only motion makes them purer;
- groups behave like UCF101's: the clips of one group share their scene (as the clips cut from
  one long UCF101 video share actor and background), and train/test splits never share a group,
  so a memorised scene never helps on test; a learnt scene family or motion does.

At `appearance_bias: 0` appearance carries no class information at all, train included.
Everything is seeded.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from slic.config import SynthConfig

# The motions, in the order classes are taken: the first `classes` of these are used. Every class
# maps to itself under a horizontal flip (the direction left/right, clockwise/counter-clockwise
# is drawn per clip), as real actions do: SLIC's augmentation flips clips, so a class that a flip
# turns into another class (pan right vs pan left) would be unlearnable by design.
MOTIONS: tuple[str, ...] = (
    "Slide", "Rise", "Fall", "Orbit", "ZoomIn", "ZoomOut", "SwingHorizontal", "SwingVertical",
    "Spin", "Pulse", "SpeedUp", "SlowDown", "DiagonalRise", "DiagonalFall", "Wobble", "Bounce",
)
SHAPES = ("disk", "square", "triangle", "ring", "cross", "bar")


@dataclass(frozen=True)
class Pose:
    """Where one object is at one frame: centre (pixels), scale (pixels per unit), angle (rad)."""

    x: float
    y: float
    scale: float
    angle: float


def motion_names(classes: int, first_class: int = 0) -> tuple[str, ...]:
    """The class names (motions) of a synthetic set with `classes` classes, from motion `first_class` on."""
    if not 2 <= classes <= len(MOTIONS):
        raise ValueError(f"synth.classes = {classes}: must be between 2 and {len(MOTIONS)}")
    if first_class < 0 or first_class + classes > len(MOTIONS):
        raise ValueError(f"first_class {first_class} + classes {classes} = {first_class + classes}: there are "
                         f"{len(MOTIONS)} motions; lower first_class or classes")
    return MOTIONS[first_class:first_class + classes]


def held_out_groups(groups: int, split: int) -> set[int]:
    """1-based groups held out for testing in `split` (1..3), in UCF101's proportion (7 of 25)."""
    per_split = max(1, round(groups * 7 / 25))
    first = (split - 1) * per_split + 1
    return set(range(first, first + per_split))


LINEAR = {"Slide": (1.0, 0.0), "Rise": (0.0, -1.0), "Fall": (0.0, 1.0), "DiagonalRise": (0.71, -0.71),
          "DiagonalFall": (0.71, 0.71)}


def _trajectory(motion: str, rng: np.random.Generator, width: int, height: int,
                frames: int) -> Callable[[int], Pose]:
    """A function frame -> pose for one object following `motion`, with clip-level randomness.

    `side` (+1 or -1) is the clip's horizontal direction (or turning sense): a flip changes it and
    nothing else, so a flipped clip is still a clip of its class.
    """
    unit = min(width, height)
    x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
    # Large and fast enough to stay visible in SLIC's random crops at the CPU default of 32 pixels
    # (about 1.5-2 px of motion per frame there); smaller, slower objects were often cropped away.
    scale0 = unit * rng.uniform(0.16, 0.24)
    angle0 = rng.uniform(0, 2 * math.pi)
    speed = unit * rng.uniform(0.045, 0.065)  # pixels per frame
    spin = rng.uniform(2 * math.pi / 18, 2 * math.pi / 12)  # radians per frame
    phase = rng.uniform(0, 2 * math.pi)
    period = rng.uniform(10, 16)  # frames, for the oscillating motions
    side = 1.0 if rng.random() < 0.5 else -1.0

    if motion in LINEAR:
        dx, dy = LINEAR[motion]
        return lambda t: Pose(x0 + side * dx * speed * t, y0 + dy * speed * t, scale0, angle0)
    if motion == "Orbit":
        radius = unit * rng.uniform(0.18, 0.3)
        return lambda t: Pose(x0 + radius * math.cos(phase + side * spin * t),
                              y0 + radius * math.sin(phase + side * spin * t), scale0, angle0)
    if motion in ("ZoomIn", "ZoomOut"):
        rate = rng.uniform(0.025, 0.04) * (1 if motion == "ZoomIn" else -1)
        start = unit * (rng.uniform(0.06, 0.09) if motion == "ZoomIn" else rng.uniform(0.35, 0.45))
        return lambda t: Pose(x0, y0, start * math.exp(rate * t), angle0)
    if motion in ("SwingHorizontal", "SwingVertical"):
        amplitude = unit * rng.uniform(0.2, 0.32)
        dx, dy = (1, 0) if motion == "SwingHorizontal" else (0, 1)
        return lambda t: Pose(x0 + dx * amplitude * math.sin(phase + 2 * math.pi * t / period),
                              y0 + dy * amplitude * math.sin(phase + 2 * math.pi * t / period), scale0, angle0)
    # Every class draws its objects from the same size range (no size cue): the rotations show in
    # the objects' stripes, and a pulse oscillates around the drawn size.
    if motion == "Spin":
        return lambda t: Pose(x0, y0, scale0, angle0 + side * spin * t)
    if motion == "Pulse":  # the size oscillates
        return lambda t: Pose(x0, y0, scale0 * (1.0 + 0.4 * math.sin(phase + 2 * math.pi * t / period)), angle0)
    if motion == "Wobble":  # the angle oscillates
        return lambda t: Pose(x0, y0, scale0, angle0 + 0.9 * math.sin(phase + 2 * math.pi * t / period))
    if motion in ("SpeedUp", "SlowDown"):
        top = 2.2 * speed
        if motion == "SpeedUp":
            return lambda t: Pose(x0 + side * 0.5 * top / frames * t * t, y0, scale0, angle0)
        return lambda t: Pose(x0 + side * (top * t - 0.5 * top / frames * t * t), y0, scale0, angle0)
    if motion == "Bounce":  # falls and bounces back up, a period at a time
        drop = unit * rng.uniform(0.3, 0.45)
        return lambda t: Pose(x0 + side * 0.3 * speed * t,
                              y0 + drop * (1 - (2 * ((t / period + phase) % 1.0) - 1) ** 2), scale0, angle0)
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


def _background(rng: np.random.Generator, width: int, height: int,
                base: np.ndarray | None = None) -> np.ndarray:
    """A smooth random-coloured texture: low-frequency noise upsampled, float (H, W, 3) in 0..255.

    `base` is the scene's mean colour; None draws it uniformly (the shared pool of scenes).
    """
    cells = rng.integers(3, 7)
    coarse = rng.uniform(0, 1, size=(cells + 1, cells + 1, 3))
    ys = np.linspace(0, cells, height)
    xs = np.linspace(0, cells, width)
    y0, x0 = np.floor(ys).astype(int).clip(0, cells - 1), np.floor(xs).astype(int).clip(0, cells - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
    bottom = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
    noise = top * (1 - fy) + bottom * fy
    # Low contrast: the scene is a backdrop, the moving objects carry the structure.
    drawn, tint = rng.uniform(60, 190, size=3), rng.uniform(8, 20, size=3)
    base = drawn if base is None else base
    return np.clip(base + (noise - 0.5) * 2 * tint, 0, 255)


def render_clip(motion: str, *, scene_seed: int, clip_seed: int, width: int, height: int,
                frames: int, scene_colour: np.ndarray | None = None) -> np.ndarray:
    """Render one video of `motion` as (frames, height, width, 3) uint8.

    The scene (background) comes from `scene_seed`, its mean colour from `scene_colour` when given
    (a class's family of scenes) or from `scene_seed` too; the objects, their look and the motion's
    parameters from `clip_seed`.
    """
    background = _background(np.random.default_rng(scene_seed), width, height, base=scene_colour)
    rng = np.random.default_rng(clip_seed)
    sprites = [
        _Sprite(shape=str(rng.choice(SHAPES)), colour_a=rng.uniform(0, 255, 3), colour_b=rng.uniform(0, 255, 3),
                stripe_freq=rng.uniform(1.5, 4.0), stripe_angle=rng.uniform(0, math.pi),
                trajectory=_trajectory(motion, rng, width, height, frames))
        for _ in range(int(rng.integers(1, 3)))
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
        for index, name in enumerate(motion_names(config.classes, config.first_class))
        for group in range(1, groups + 1)
        for clip in range(1, config.clips_per_group + 1)
    ]


POOL = 1_000_003  # seed part of the shared pool's scenes (no class index is that large)


def class_colour(class_index: int, classes: int) -> np.ndarray:
    """The mean colour of a class's family of scenes: hues evenly spaced, mid saturation and value."""
    hue = class_index / classes
    rgb = np.array(colorsys.hsv_to_rgb(hue, 0.55, 0.75))
    return 60 + rgb * 130  # inside the pool's 60..190 range: a family is told apart by hue, not level


def scene_of(spec: ClipSpec, config: SynthConfig) -> tuple[int, np.ndarray | None]:
    """(scene seed, mean colour or None) of the video's scene; every clip of a (class, group) shares it.

    With probability `appearance_bias`, drawn per (class, group), the scene is a new instance of the
    class's family (its colour near `class_colour`); otherwise it is a scene from the pool shared by every
    class: with `pool_scenes: group` the group's (group g shows the same scene in every class, so it names
    no class), with `class_group` one of its own (a group shares no scene across classes, as in UCF101).
    Test and validation groups are other group numbers, hence other scene instances either way.
    """
    family = np.random.default_rng([config.seed, spec.class_index, spec.group, 2]).random() < config.appearance_bias
    if not family and config.pool_scenes == "class_group":  # its own pool scene: names neither class nor group
        return hash_seed(config.seed, POOL, spec.class_index, spec.group), None
    if not family:
        return hash_seed(config.seed, POOL, spec.group), None
    rng = np.random.default_rng([config.seed, spec.class_index, spec.group, 3])
    colour = np.clip(class_colour(spec.class_index, config.classes) + rng.normal(0, 8, size=3), 0, 255)
    return hash_seed(config.seed, spec.class_index, spec.group), colour


def render_spec(spec: ClipSpec, config: SynthConfig) -> np.ndarray:
    """The frames (T, H, W, 3) uint8 of one video of the dataset: its scene, motion and seeds as `generate`
    writes them (a bench renders them straight to frame shards where PyAV is missing)."""
    scene_seed, scene_colour = scene_of(spec, config)
    return render_clip(spec.class_name, scene_seed=scene_seed, scene_colour=scene_colour,
                       clip_seed=hash_seed(config.seed, spec.class_index, spec.group, spec.clip),
                       width=config.width, height=config.height, frames=config.frames)


def _write_clip(spec: ClipSpec, config: SynthConfig) -> int:
    from slic.data.video import write_video  # PyAV: imported here, so rendering alone needs no codec library

    frames = render_spec(spec, config)
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
    names = motion_names(config.classes, config.first_class)
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
