"""Everything that touches PyAV: probing, decoding, JPEG-sequence encoding and video writing.

No other module imports `av`. Frames come out as uint8 RGB arrays (T, H, W, 3) in display
orientation: rotation metadata (a display matrix) is applied, so a phone clip filmed upright
comes out upright. Every failure is a `VideoDecodeError` naming the file and the cause. A packet FFmpeg cannot
decode is passed over, as ffmpeg passes over it (its frame is lost and counted: `Damage`); a file with no decodable
frame, or with more than a quarter of its packets damaged, fails.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

import av
import numpy as np

T = TypeVar("T")
log = logging.getLogger(__name__)


DECODE_ERRORS = (RuntimeError, ValueError, OSError)  # what embedding one file can raise: VideoDecodeError is one


def decode_error_line(video: Path | str, exc: BaseException) -> str:
    """Why `video` could not be embedded, in one line without its own path (the caller names the file)."""
    return (str(exc).splitlines() or [type(exc).__name__])[0].removeprefix(f"{video}: ")


def path_problem(path: Path | str) -> str | None:
    """Why `path` is not a file to decode (a link whose target is gone, a folder, nothing there), or None when it is
    one: said before any decoder tries it, in the words a user can act on."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_symlink():
        return f"broken link: it points to {os.readlink(path)}, which does not exist"
    if path.is_dir():
        return "a folder, not a video file"
    return "no such file"


def is_video_path(path: Path, extensions: set[str]) -> bool:
    """A file, or a link whose target is gone, with one of the (lower-case) `extensions`: what a folder listing
    offers to decode, so that a broken link is named rather than silently left out."""
    return path.suffix.lower() in extensions and (path.is_file() or (path.is_symlink() and not path.exists()))


class VideoDecodeError(RuntimeError):
    """A video that cannot be opened or decoded; `path` and `cause` say which and why."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = cause
        super().__init__(f"{self.path}: cannot decode video: {cause}")


@dataclass(frozen=True)
class VideoInfo:
    """What a cheap look at a file says (no pixel is decoded).

    `frames` counts the video stream's non-empty packets, which equals the decoded frame count
    for intra/inter-coded streams; a stream whose last packet holds no picture decodes one fewer.
    `width`/`height` are the display size (after rotation). `variable_rate`: its frames' timestamps stray more
    than half a frame from i / fps (`FrameClock`), so times in it, and its `duration`, come from them (an AVI that
    skips frames, a phone's low-light stretch).
    """

    path: str
    frames: int
    fps: float
    width: int
    height: int
    duration: float
    rotation: int
    codec: str
    variable_rate: bool = False


def _describe(exc: BaseException, path: str | Path) -> str:
    """Why `path` failed: FFmpeg's error (without its error number and the path, which the caller names), with what
    invalid data usually means; or plainly that the file is empty (an interrupted copy, a placeholder), which
    FFmpeg reports only as invalid data."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(exc, av.FFmpegError) and exc.strerror:
        cause = f"{type(exc).__name__}: {exc.strerror}"
        if isinstance(exc, av.error.InvalidDataError):
            cause += " (a damaged file, one cut short by an interrupted copy or download, or not a video)"
        return cause
    return f"{type(exc).__name__}: {exc}"


DAMAGED_SHARE_LIMIT = 0.25  # more of a file's packets than this undecodable: the file fails (re-encode or replace it)


@dataclass
class Damage:
    """The packets a decode passed over because FFmpeg could not decode them: a damaged stretch of a file (one bad
    packet in a phone recording, a torn download) costs its frames, not the whole video, as with ffmpeg itself. Each
    lost frame is the frame before it held, as a player holds it, so the frames after it keep their numbers and
    times (the file's count is the one its packets give)."""

    packets: int = 0  # packets given to the decoder
    damaged: int = 0  # of them, those it could not decode (skipped)
    first_lost: int = -1  # the number of the first frame lost (in presentation order, as the decode numbers it)
    error: str = ""  # why FFmpeg refused the first

    def record(self, exc: BaseException, path: Path) -> None:
        """One more damaged packet; the first one's error is kept for the note."""
        if not self.damaged:
            self.error = (f"{type(exc).__name__}: {exc.strerror}" if isinstance(exc, av.FFmpegError) and exc.strerror
                          else _describe(exc, path))
        self.damaged += 1

    def lost_at(self, frame: int) -> None:
        """A frame lost to a damaged packet would have been number `frame`: the first such is named in the note."""
        if self.first_lost < 0:
            self.first_lost = frame

    def note(self) -> str:
        """One line for a report: how many packets were skipped, where the first was and why ('' when none)."""
        if not self.damaged:
            return ""
        return (f"{self.damaged} of {self.packets} packets could not be decoded (their frames hold the frame before; "
                f"the first lost is frame {max(self.first_lost, 0)}: {self.error})")


def _decoded(container: av.container.InputContainer, stream: av.video.stream.VideoStream, path: Path,
             damage: Damage | None = None) -> Iterator[av.VideoFrame]:
    """The stream's frames from where the container stands, passing over packets FFmpeg cannot decode (counted in
    `damage`) where `container.decode` would stop at the first: the frame before is given again in the lost frame's
    place (none before the first decoded frame), found by the packet's presentation time, as the decoder gives its
    frames out later than it takes their packets. Once every packet is read: VideoDecodeError when no frame came out,
    or when more than DAMAGED_SHARE_LIMIT of the packets were damaged."""
    damage = damage if damage is not None else Damage()
    frames = 0
    last: av.VideoFrame | None = None
    lost: list[int] = []  # presentation times of damaged packets whose held frames wait for their place
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.FFmpegError as exc:  # the container itself is torn here: keep what was read
            damage.record(exc, path)
            if not lost:  # else the first of them, placed below, is the first lost
                damage.lost_at(frames)
            break
        damage.packets += packet.size > 0
        try:
            decoded = packet.decode()
        except av.FFmpegError as exc:
            damage.record(exc, path)
            if packet.size > 0:  # the frame before is held in its place, once the decoder reaches it
                lost.append(packet.pts if packet.pts is not None else -1)
            decoded = []
        for frame in decoded:
            for _ in range(_placed_before(lost, frame.pts)):  # frames come out in presentation order, later
                damage.lost_at(frames)
                if last is not None:  # nothing to hold before the first frame: the file is a frame shorter
                    frames += 1
                    yield last
            frames, last = frames + 1, frame
            yield frame
    if damage.damaged and not frames:
        raise VideoDecodeError(path, f"none of its {damage.packets} packets could be decoded ({damage.error})")
    _refuse_if_mostly_damaged(damage, path)  # every packet read: judged before the frames held at the end
    for _ in lost if last is not None else []:  # lost at the file's end: nothing after them to place them before
        damage.lost_at(frames)
        frames += 1
        yield last


def _placed_before(lost: list[int], pts: int | None) -> int:
    """How many of the lost frames (their packets' presentation times, in `lost`) come before a decoded frame at
    `pts`; they are taken out of `lost`. A lost packet without a time, or a frame without one, is placed at once."""
    if pts is None:
        count = len(lost)
        lost.clear()
        return count
    before = [time for time in lost if time < pts]
    for time in before:
        lost.remove(time)
    return len(before)


def _refuse_if_mostly_damaged(damage: Damage, path: Path, up_to_frame: int | None = None) -> None:
    """VideoDecodeError when more than DAMAGED_SHARE_LIMIT of the packets read were damaged: of the whole file, or
    (`up_to_frame`) of those a decode stopped after, at the last frame it wanted (a short stretch of a mostly damaged
    file would otherwise be its first frame held, answered as if it were video)."""
    if damage.damaged <= DAMAGED_SHARE_LIMIT * max(damage.packets, 1):
        return
    packets = (f"its {damage.packets} packets" if up_to_frame is None else
               f"the {damage.packets} packets read up to frame {up_to_frame}")
    raise VideoDecodeError(path, f"{damage.damaged} of {packets} could not be decoded, more than "
                           f"{DAMAGED_SHARE_LIMIT:.0%} ({damage.error}): re-encode or replace the file")


_WARNED_DAMAGE: set[str] = set()  # the files whose damaged packets this process has named already


def _warn_damage(path: Path, damage: Damage) -> None:
    """Say once per file and process that frames of `path` were lost to damaged packets (search, serving): a query
    decoded twice, or shown again as a thumbnail, is not named again."""
    if damage.damaged and str(path) not in _WARNED_DAMAGE:
        if len(_WARNED_DAMAGE) < 10_000:
            _WARNED_DAMAGE.add(str(path))
        log.warning("%s: %s", path, damage.note())


def _frame_rate(stream: av.video.stream.VideoStream) -> float:
    """The stream's frame rate, as probe and timeline read it (the container's average, else FFmpeg's guess, else
    the time base's rate); 0.0 when none is given."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _rotation_of(stream: av.video.stream.VideoStream, container: av.container.InputContainer, path: Path) -> int:
    """Counter-clockwise degrees to rotate stored frames for display (0, 90, 180 or 270), from the first frame that
    decodes; VideoDecodeError when none does (the file demuxes but holds no decodable picture)."""
    for frame in _decoded(container, stream, path):
        return int(frame.rotation) % 360
    return 0


def probe(path: str | Path) -> VideoInfo:
    """Frames, fps, display size, duration and rotation of a video, by demuxing only.

    Raises `VideoDecodeError` when the file cannot be opened or has no video stream.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream in the file")
            stream = container.streams.video[0]
            fps = _frame_rate(stream)
            width, height = stream.codec_context.width, stream.codec_context.height
            rotation = _rotation_of(stream, container, path)
            time_base = float(stream.time_base) if stream.time_base else 0.0
            container.seek(0)
            stamps = [packet.pts for packet in container.demux(stream) if packet.size > 0]
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, StopIteration) as exc:
        raise VideoDecodeError(path, _describe(exc, path)) from exc
    if rotation in (90, 270):
        width, height = height, width
    frames = len(stamps)
    known = all(pts is not None for pts in stamps) and len(set(stamps)) == frames
    clock = clock_of(Timeline(frames, tuple(sorted(stamps)) if known else (), (), (), fps, time_base))
    duration = clock.length  # a variable-rate file's by its timestamps: frames / fps can be far off
    return VideoInfo(str(path), frames, fps, width, height, duration, rotation, stream.codec_context.name,
                     clock.variable)


def scaled_size(width: int, height: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) with the short side set to `short_side` and the long side even-rounded.

    Same rule as ffmpeg's ``scale=-2:S``, so our shards and the reference's JPEGs match in size.
    """
    if not short_side:
        return width, height
    # Integer rounding exactly as ffmpeg's: nearest even long side, halves rounded up.
    if width <= height:
        long_side = 2 * ((height * short_side + width) // (2 * width))
        return short_side, long_side
    long_side = 2 * ((width * short_side + height) // (2 * height))
    return long_side, short_side


def _open_video(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    """The first video stream, decoded on one thread: parallelism comes from one process per video, and the
    threaded frame conversion in PyAV 18 is slower than the plain one."""
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream in the file")
    stream = container.streams.video[0]
    stream.thread_type = "SLICE"
    stream.codec_context.thread_count = 1
    return stream


def _display(frame: av.VideoFrame, short_side: int | None, pix_fmt: str) -> av.VideoFrame | np.ndarray:
    """A decoded frame scaled so its display short side is `short_side`, in `pix_fmt`; a rotated file's frame
    comes out rotated upright, as an RGB array."""
    rotation = int(frame.rotation) % 360
    disp_w, disp_h = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
    out_w, out_h = scaled_size(disp_w, disp_h, short_side)
    if rotation == 0:
        frame = frame.reformat(width=out_w, height=out_h, format=pix_fmt, threads=1)
        if pix_fmt == "yuvj420p":
            frame.color_range = 2  # full range, as swscale produced; the JPEG encoder requires it
        return frame
    coded_w, coded_h = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
    rgb = frame.reformat(width=coded_w, height=coded_h, format="rgb24", threads=1).to_ndarray()
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))


def _rgb(frame: av.VideoFrame, short_side: int | None) -> np.ndarray:
    """A decoded frame as a (H, W, 3) uint8 RGB array at `short_side`, upright."""
    shown = _display(frame, short_side, "rgb24")
    return shown if isinstance(shown, np.ndarray) else shown.to_ndarray()


def _frames(path: Path, short_side: int | None, start: int, stop: int | None, pix_fmt: str,
            keep: Callable[[int], bool] | None = None, damage: Damage | None = None,
            ) -> Iterator[tuple[int, av.VideoFrame | np.ndarray]]:
    """(index, frame) for the decoded frames [start, stop) that `keep` accepts (default all), scaled and, for
    rotated files, rotated (then as arrays); a frame not kept is decoded but never scaled. Damaged packets are
    passed over (`_decoded`, counted in `damage`): the frames after one are numbered on without it."""
    with av.open(str(path)) as container:
        stream = _open_video(container, path)
        for index, frame in enumerate(_decoded(container, stream, path, damage)):
            if stop is not None and index >= stop:
                return
            if index >= start and (keep is None or keep(index)):
                yield index, _display(frame, short_side, pix_fmt)


def decode(path: str | Path, *, start: int = 0, stop: int | None = None,
           short_side: int | None = None) -> np.ndarray:
    """Decode frames [start, stop) of a video as a (T, H, W, 3) uint8 RGB array.

    `short_side` resizes (bilinear, in FFmpeg) so the shorter display side has that length.
    Raises `VideoDecodeError` naming the file when it cannot be decoded or holds no frame.
    """
    path = Path(path)
    out: list[np.ndarray] = []
    damage = Damage()
    try:
        for _, frame in _frames(path, short_side, start, stop, "rgb24", damage=damage):
            out.append(frame if isinstance(frame, np.ndarray) else frame.to_ndarray())
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(path, _describe(exc, path)) from exc
    _warn_damage(path, damage)
    if not out:
        raise VideoDecodeError(path, f"no frame decoded in range [{start}, {stop})")
    return np.stack(list(_one_size(dict(enumerate(out))).values()))


def _one_size(frames: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """The frames all at the size of the first (lowest index) one: a stream whose resolution changes midway (a
    recording's settings changed, streams joined) is scaled to it, as `extract`'s JPEG encoder, set up by the
    first frame, scales the rest, so a clip that spans the change still stacks."""
    if not frames:
        return frames
    height, width = frames[min(frames)].shape[:2]
    return {index: frame if frame.shape[:2] == (height, width) else
            av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(width=width, height=height,
                                                                        threads=1).to_ndarray()
            for index, frame in frames.items()}


@dataclass(frozen=True)
class FrameClock:
    """When each frame of a file is shown, in seconds from its first: frame i at i / fps for a constant-rate file,
    at its timestamp for a variable-rate one (a phone's 30 fps that drops to 15 in low light), where i / fps at the
    average rate can be off by minutes in a long recording. Segment bounds, the times search and the reports show
    and search's --start/--end all go through it, so a time shown is where a player seeks to.

    `times` is empty for a constant rate (frames within half a frame of i / fps), else each frame's time."""

    frames: int
    fps: float
    times: tuple[float, ...] = ()

    @property
    def variable(self) -> bool:
        """Whether the file's frames are not 1 / fps apart (its timestamps place them)."""
        return bool(self.times)

    @property
    def length(self) -> float:
        """Seconds from the first frame to the end of the last (which lasts as long as the gap before it)."""
        if not self.times:
            return self.frames / self.fps if self.fps > 0 else 0.0
        gap = self.times[-1] - self.times[-2] if len(self.times) > 1 else 1 / self.fps if self.fps > 0 else 0.0
        return self.times[-1] + gap

    def seconds(self, frame: int) -> float:
        """When frame `frame` starts (`frames`: the end of the last one)."""
        if not self.times:
            return frame / self.fps if self.fps > 0 else 0.0
        return self.times[frame] if frame < len(self.times) else self.length

    def frame(self, seconds: float) -> int:
        """The frame boundary (0 to `frames`) nearest `seconds`: the frame a stretch starting there starts at."""
        if not self.times:
            return round(seconds * self.fps)
        after = bisect.bisect_left(self.times, seconds)  # no copy of the times: segment_bounds asks once a part
        return min((k for k in (after - 1, after) if 0 <= k <= len(self.times)),
                   key=lambda k: abs(self.seconds(k) - seconds))


def clock_of(line: Timeline) -> FrameClock:
    """The `FrameClock` of a demuxed file: by its timestamps only when they stray more than half a frame from
    i / fps (a constant-rate file keeps i / fps, so its times and segments stay what they were)."""
    times = line.frame_times()
    if times is None or line.fps <= 0 or all(abs(t - i / line.fps) <= 0.5 / line.fps for i, t in enumerate(times)):
        return FrameClock(line.frames, line.fps)
    return FrameClock(line.frames, line.fps, tuple(times))


def file_clock(path: str | Path) -> FrameClock:
    """`clock_of(file_timeline(path))`: the file's frame times, demuxed once while it is unchanged."""
    return clock_of(file_timeline(path))


def segment_bounds(frames: int, fps: float, seconds: float,
                   clock: FrameClock | None = None) -> list[tuple[int, int]]:
    """[start, stop) frames of the segments of a video (manifest.segment_seconds): round(frames / (seconds x fps))
    equal parts, so each is 0.75 to 1.25 x `seconds` long; a video shorter than 1.5 x `seconds` stays one part.
    A variable-rate file's `clock` cuts it into parts of equal time instead (its frames are not equally spaced)."""
    if clock is not None and clock.variable:
        parts = max(1, round(clock.length / seconds))
        cuts = sorted({0, clock.frames, *(clock.frame(k * clock.length / parts) for k in range(1, parts))})
        return list(zip(cuts, cuts[1:]))
    parts = max(1, round(frames / (seconds * fps))) if fps > 0 and frames > 0 else 1
    bounds = [round(k * frames / parts) for k in range(parts + 1)]
    return list(zip(bounds, bounds[1:]))


def segment_id(video_id: str, start_s: float) -> str:
    """The id of a video's segment that starts `start_s` seconds into its file (`FrameClock.seconds` of its first
    frame): `video_id@<start_s>s`, as the manifest names the gallery's segments and the index names an added
    video's."""
    return f"{video_id}@{start_s:.1f}s"


def resampled_frames(start: int, stop: int, fps: float, target_fps: float,
                     times: Sequence[float] | None = None) -> list[int]:
    """The source frames, in order and with repeats, of source frames [start, stop) resampled to `target_fps`
    (extract.fps): frame j of the resampled video, at j / target_fps seconds, is the source frame nearest that time
    (as FFmpeg's fps filter), so a faster video drops frames and a slower one repeats them. The source frames'
    `times` (seconds from the first, `Timeline.frame_times`) place them when known, so a variable-frame-rate video
    is resampled by when its frames were shown; else frame i is at i / fps. What `extract` stores for that range
    and what serving decodes, so a file embeds alike from its shard and from the file, and a segment's frames are
    its whole file's over its range. [start, stop) itself when `target_fps` is 0, or neither times nor `fps` are
    known."""
    if target_fps <= 0 or stop <= start:
        return list(range(start, max(start, stop)))
    if times is None or len(times) < stop:
        if fps <= 0:
            return list(range(start, stop))
        times = [index / fps for index in range(stop)]
    # frame i is the nearest one from halfway after its predecessor to halfway before its successor (a range's
    # last frame too, when the file goes on: a segment holds its file's frames); the file's last frame lasts as
    # long as the gap before it (1 / fps for a single frame)
    bounds = [(times[i - 1] + times[i]) / 2 for i in range(1, min(len(times), stop + 1))]
    if len(bounds) < stop:
        gap = times[stop - 1] - times[stop - 2] if stop > 1 else (1 / fps if fps > 0 else 1 / target_fps)
        bounds.append(times[stop - 1] + gap / 2)
    first = 0 if start == 0 else math.ceil(bounds[start - 1] * target_fps - 1e-9)
    end = math.ceil(bounds[stop - 1] * target_fps - 1e-9)
    return [min(stop - 1, max(start, bisect.bisect_right(bounds, j / target_fps + 1e-9)))
            for j in range(max(first, 0), end)]


def resampled_count(start: int, stop: int, fps: float, target_fps: float) -> int:
    """How many frames `resampled_frames` gives for source frames [start, stop) at `fps` (their times unknown), in
    constant time: what the manifest counts against manifest.min_frames when extract.fps resamples, before any
    frame is decoded (a variable-frame-rate file can come out a frame or two apart)."""
    if target_fps <= 0 or fps <= 0 or stop <= start:
        return max(0, stop - start)
    # the same bounds as resampled_frames: frame k lasts until halfway to frame k + 1, the last one a half gap on

    def bound(k: int) -> float:
        return (k / fps + (k + 1) / fps) / 2 if k < stop - 1 else (stop - 1) / fps + (1 / fps) / 2

    first = 0 if start == 0 else math.ceil(bound(start - 1) * target_fps - 1e-9)
    end = math.ceil(bound(stop - 1) * target_fps - 1e-9)
    return max(0, end - max(first, 0))


def clock(seconds: float) -> str:
    """A time in a video as `mm:ss.s` (minutes past 59 are not carried into hours: 75:00.0); rounded to the
    tenth first, so 59.96 s is 01:00.0, not 00:60.0."""
    tenths = round(seconds * 10)
    return f"{tenths // 600:02d}:{tenths % 600 / 10:04.1f}"


def time_span(start_s: float, end_s: float) -> str:
    """Where a segment lies in its file, as `mm:ss.s-mm:ss.s` (search's hits, the retrieval report's videos)."""
    return f"{clock(start_s)}-{clock(end_s)}"


SEEK_GAP = 100  # frames: a keyframe this far past the decoder's position is reached by seeking, not decoding


@dataclass(frozen=True)
class Timeline:
    """A video stream's frames as its packets list them, from demuxing only (no pixel decoded).

    `frames` counts the non-empty packets, as `probe` does. `pts` holds their presentation timestamps in
    presentation order, so frame i (the i-th frame a decoder puts out) has pts[i]; it is empty when a packet
    has no timestamp or two share one, and seeking is then off. `keyframes` are the frame indices where the
    container says decoding can start, and `seek_to` their decoding timestamps, which demuxers seek by; `fps`
    the stream's frame rate, as `probe` reads it; `time_base` the seconds of one pts unit.
    """

    frames: int
    pts: tuple[int, ...]
    keyframes: tuple[int, ...]
    seek_to: tuple[int, ...]
    fps: float = 0.0
    time_base: float = 0.0

    def frame_times(self) -> list[float] | None:
        """Each frame's time in seconds from the first frame's, from its timestamp (a variable-frame-rate phone
        video's frames are not 1/fps apart); None when the timestamps are unknown."""
        if not self.pts or self.time_base <= 0:
            return None
        return [(pts - self.pts[0]) * self.time_base for pts in self.pts]


def timeline(path: str | Path) -> Timeline:
    """The frame count, presentation timestamps and keyframes of a video's first video stream, by demuxing.

    Raises `VideoDecodeError` when the file cannot be opened or has no video stream.
    """
    path = Path(path)
    try:
        with av.open(str(path)) as container:
            stream = _open_video(container, path)
            fps = _frame_rate(stream)
            time_base = float(stream.time_base) if stream.time_base else 0.0
            packets = [(packet.pts, packet.dts, packet.is_keyframe) for packet in container.demux(stream)
                       if packet.size > 0]
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(path, _describe(exc, path)) from exc
    stamps = [pts for pts, _, _ in packets]
    if any(pts is None for pts in stamps) or len(set(stamps)) < len(stamps):
        return Timeline(len(packets), (), (), (), fps, time_base)
    order = sorted(stamps)
    rank = {pts: index for index, pts in enumerate(order)}
    keys = sorted((rank[pts], pts if dts is None else dts) for pts, dts, key in packets if key)
    return Timeline(len(packets), tuple(order), tuple(k for k, _ in keys), tuple(d for _, d in keys), fps,
                    time_base)


def file_timeline(path: str | Path) -> Timeline:
    """`timeline(path)`, remembered for the last few files while they are unchanged (same size and mtime): the
    segments of one long video are decoded one after another, and each would otherwise demux the whole file."""
    stat = os.stat(path)
    return _remembered_timeline(str(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _remembered_timeline(path: str, size: int, mtime_ns: int) -> Timeline:
    return timeline(path)


class _SeekMismatch(Exception):
    """Decoding after a seek did not give the frames the timeline promised: decode from the start instead."""


def decode_frames_at(path: str | Path, indices: Sequence[int], *, short_side: int | None = None,
                     frames_of: Timeline | None = None, damage: Damage | None = None,
                     ) -> tuple[dict[int, np.ndarray], int]:
    """The frames at `indices` only, scaled by FFmpeg: (index -> (H, W, 3) uint8 RGB, how many frames were
    decoded: max(indices) + 1, or the video's whole length when it ends before that).

    Memory holds those frames alone, whatever the video's length; an index past the last frame is missing from
    the result. With the file's `frames_of` timeline, a wanted frame whose keyframe lies SEEK_GAP frames or more
    past the decoder's position is reached by seeking to that keyframe, so a long video decodes only around
    its wanted frames; when the frames after a seek are not the ones the timeline names (no keyframe there, a
    gap, no timestamps), the file is decoded from its start instead, so the frames are those of a decode from
    the start either way. Raises `VideoDecodeError` naming the file when it cannot be decoded or holds no frame.
    Packets FFmpeg cannot decode are passed over (`Damage`): counted in `damage` when one is given (its caller
    then tells of them, e.g. in a search answer), else logged once per file.
    """
    path = Path(path)
    wanted = sorted(set(indices))
    try:
        if frames_of is not None and _seeking_pays(frames_of, wanted):
            try:
                frames, decoded = _decode_seeking(path, wanted, frames_of, lambda frame: _rgb(frame, short_side))
                return _one_size(frames), decoded
            except _SeekMismatch:
                pass
        counted = damage if damage is not None else Damage()
        frames, decoded = _decode_from_start(path, wanted, short_side, counted)
        if damage is None:
            _warn_damage(path, counted)
        return _one_size(frames), decoded
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoDecodeError(path, _describe(exc, path)) from exc


def _keyframe_before(frames_of: Timeline, index: int) -> int:
    """The position in `frames_of.keyframes` of the last keyframe at or before frame `index` (-1: none)."""
    return bisect.bisect_right(frames_of.keyframes, index) - 1


def _seeking_pays(frames_of: Timeline, wanted: list[int]) -> bool:
    """Whether some wanted frame's keyframe lies SEEK_GAP frames or more past the frame before it."""
    if not frames_of.pts or not wanted or wanted[-1] >= frames_of.frames:
        return False
    previous = 0
    for index in wanted:
        key = _keyframe_before(frames_of, index)
        if key >= 0 and frames_of.keyframes[key] - previous >= SEEK_GAP:
            return True
        previous = index + 1
    return False


def _decode_from_start(path: Path, wanted: list[int], short_side: int | None,
                       damage: Damage | None = None) -> tuple[dict[int, np.ndarray], int]:
    """decode_frames_at by decoding every frame up to the last wanted one (only the wanted ones are scaled),
    passing over damaged packets (`_decoded`)."""
    keep, out, decoded = set(wanted), {}, 0
    last = wanted[-1] if wanted else 0
    with av.open(str(path)) as container:
        stream = _open_video(container, path)
        for index, frame in enumerate(_decoded(container, stream, path, damage)):
            decoded = index + 1
            if index in keep:
                out[index] = _rgb(frame, short_side)
            if index >= last:
                if damage is not None:  # stopped before the file's end, where _decoded checks the share
                    _refuse_if_mostly_damaged(damage, path, up_to_frame=index)
                break
    if not decoded:
        raise VideoDecodeError(path, "no frame decoded")
    return out, decoded


def _decode_seeking(path: Path, wanted: list[int], frames_of: Timeline,
                    convert: Callable[[av.VideoFrame], T]) -> tuple[dict[int, T], int]:
    """The wanted frames (index -> convert(frame)) and how many frames were decoded, seeking to the keyframe
    before each wanted frame that lies SEEK_GAP frames or more ahead; raises _SeekMismatch when a seek does not
    reach that keyframe, frames are skipped, or a decoded frame's timestamp is not in the timeline."""
    rank = {pts: index for index, pts in enumerate(frames_of.pts)}
    keep, out = set(wanted), {}
    position = 0  # the index of the next frame the decoder puts out
    with av.open(str(path)) as container:
        stream = _open_video(container, path)
        frames = _decoded(container, stream, path)  # a damaged packet skips a frame: the check below falls back
        for target in wanted:
            if target < position:
                continue  # decoded on the way to an earlier target
            key = _keyframe_before(frames_of, target)
            if key >= 0 and frames_of.keyframes[key] - position >= SEEK_GAP:
                frames, position = (_from_keyframe(container, stream, frames_of, key, rank, path),
                                frames_of.keyframes[key])
            for frame in frames:
                index = rank.get(frame.pts)
                if index != position:
                    raise _SeekMismatch(f"frame {index} (pts {frame.pts}) follows frame {position - 1}")
                position = index + 1
                if index in keep:
                    out[index] = convert(frame)
                if index >= target:
                    break
    missing = [index for index in wanted if index < position and index not in out]
    if missing or not position:
        raise _SeekMismatch(f"frames {missing[:3]} were not decoded")
    return out, position


def _from_keyframe(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                   frames_of: Timeline, key: int, rank: dict[int, int], path: Path) -> Iterator[av.VideoFrame]:
    """The decoded frames from keyframe number `key` of the timeline on, after a seek. Demuxers seek by
    presentation time (MP4, Matroska) or by decoding time (AVI's index), so the seek is made by the keyframe's
    pts and, when that lands past it, by its dts; frames before it (an earlier keyframe's, or an open GOP's
    leading ones) are decoded and passed over. _SeekMismatch when neither seek reaches the keyframe."""
    keyframe = frames_of.keyframes[key]
    landed = None
    for stamp in dict.fromkeys((frames_of.pts[keyframe], frames_of.seek_to[key])):
        container.seek(stamp, stream=stream, backward=True, any_frame=False)
        frames = _decoded(container, stream, path)
        for frame in frames:
            landed = rank.get(frame.pts)
            if landed is None or landed >= keyframe:
                break
        if landed == keyframe and frame.key_frame:
            return itertools.chain([frame], frames)
    why = " (not decoded as a keyframe)" if landed == keyframe else ""
    raise _SeekMismatch(f"the seek to keyframe {keyframe} reached frame {landed}{why}")


@dataclass(frozen=True)
class JpegSequence:
    """Every frame of a video as JPEG bytes, with the frame size and frame rate."""

    jpegs: list[bytes]
    width: int
    height: int
    fps: float
    damaged: str = ""  # Damage.note(): packets passed over as undecodable, their frames lost ('' when none)


def encode_jpeg_sequence(path: str | Path, *, short_side: int | None, quality: int, start: int = 0,
                         stop: int | None = None, target_fps: float = 0.0) -> JpegSequence:
    """Decode a video's frames [start, stop) (default: all) and JPEG-encode each, resized to `short_side`.

    Stays in YUV inside FFmpeg from decoding to encoding (no RGB round trip) for unrotated
    files. `quality` is the JPEG qscale (2 best .. 31 worst), as ffmpeg's ``-q:v``. A range that starts far into
    the file (a segment of a long video) is reached by seeking to the keyframe before it, with the checks of
    `decode_frames_at`, so the frames are those of a decode from the start. `target_fps` > 0 resamples to that
    rate by the frames' timestamps (`resampled_frames`: a dropped frame is never scaled or encoded, a repeated
    one is encoded once); the sequence's `fps` is then `target_fps`.
    """
    path = Path(path)
    jpegs: list[bytes] = []
    encoder = None
    damage = Damage()
    try:
        copies: Counter[int] | None = None
        if target_fps > 0:  # the timeline (a demux) places the frames and gives the rate
            frames_of = file_timeline(path)
            rate = frames_of.fps
            end = frames_of.frames if stop is None else min(stop, frames_of.frames)
            copies = Counter(resampled_frames(start, end, rate, target_fps, frames_of.frame_times()))
        else:
            with av.open(str(path)) as container:
                rate = _frame_rate(container.streams.video[0]) if container.streams.video else 0.0
        keep = (lambda index: copies[index] > 0) if copies is not None else None
        for count, (index, frame) in enumerate(_frame_range(path, short_side, start, stop, "yuvj420p", keep,
                                                            damage)):
            if isinstance(frame, np.ndarray):
                frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuvj420p")
                frame.color_range = 2
            if encoder is None:
                encoder = _jpeg_encoder(frame.width, frame.height, quality)
            frame.pts, frame.time_base = count, encoder.time_base  # the encoder wants rising pts
            # mjpeg is intra-only: each frame's packet comes out of its own encode call, so it is repeated here
            jpegs.extend(bytes(packet) for packet in encoder.encode(frame)
                         for _ in range(1 if copies is None else copies[index]))
        if encoder is not None:
            for packet in encoder.encode(None):
                jpegs.append(bytes(packet))
    except VideoDecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise VideoDecodeError(path, _describe(exc, path)) from exc
    if encoder is None or not jpegs:
        raise VideoDecodeError(path, "no frame decoded")
    return JpegSequence(jpegs, encoder.width, encoder.height, target_fps if target_fps > 0 and rate else rate,
                        damage.note())


def _frame_range(path: Path, short_side: int | None, start: int, stop: int | None, pix_fmt: str,
                 keep: Callable[[int], bool] | None = None, damage: Damage | None = None,
                 ) -> Iterator[tuple[int, av.VideoFrame | np.ndarray]]:
    """(index, frame) for frames [start, stop) that `keep` accepts, as `_frames` gives them; a start SEEK_GAP
    frames or more past the first keyframe before it is reached by a checked seek (decoded from the file's start
    when the checks fail)."""
    if start >= SEEK_GAP:
        frames_of = file_timeline(path)
        end = frames_of.frames if stop is None else min(stop, frames_of.frames)
        wanted = [index for index in range(start, end) if keep is None or keep(index)]
        if wanted and _seeking_pays(frames_of, wanted):
            try:
                found, _ = _decode_seeking(path, wanted, frames_of, lambda frame: _display(frame, short_side, pix_fmt))
                return iter(sorted(found.items()))
            except _SeekMismatch:
                pass
    return _frames(path, short_side, start, stop, pix_fmt, keep, damage)


def _jpeg_encoder(width: int, height: int, quality: int) -> av.CodecContext:
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height = width, height
    encoder.pix_fmt = "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    encoder.qscale = True
    encoder.global_quality = quality * 118  # FF_QP2LAMBDA: the same scale as ffmpeg's -q:v
    encoder.qmin = encoder.qmax = quality
    # One thread: mjpeg's threaded slices add restart markers (bigger files, bytes that depend
    # on the machine's core count); parallelism comes from one process per video anyway.
    encoder.thread_count = 1
    encoder.open()
    return encoder


def decode_jpegs(jpegs: Sequence[bytes]) -> np.ndarray:
    """Decode JPEG frames (as written by `encode_jpeg_sequence`) into (T, H, W, 3) uint8 RGB."""
    decoder = av.CodecContext.create("mjpeg", "r")
    decoder.thread_count = 1
    out = []
    for data in jpegs:
        for frame in decoder.decode(av.Packet(data)):
            out.append(frame.to_ndarray(format="rgb24"))
    return np.stack(out)


def write_video(path: str | Path, frames: np.ndarray, *, fps: int | Fraction = 25, codec: str = "mpeg4",
                quality: int = 3) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames into a video file (.avi, .mp4, .mkv) at `fps` (a Fraction for rates
    such as 30000/1001).

    `codec` is an FFmpeg encoder name: mpeg4 (UCF101's codec), libx264, or ffv1 (lossless,
    with rgb pixels kept exactly).
    """
    path = Path(path)
    height, width = frames.shape[1:3]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        if codec == "ffv1":
            stream.pix_fmt = "bgr0"
        else:
            stream.pix_fmt = "yuv420p"
        if codec == "mpeg4":
            stream.codec_context.qscale = True
            stream.codec_context.global_quality = quality * 118
        elif codec == "libx264":
            stream.options = {"crf": str(10 + 3 * quality), "preset": "veryfast"}
        for array in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
