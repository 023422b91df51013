"""Dataset layouts (UCF101, HMDB51, Kinetics-400, class folders, synthetic, unlabelled) -> one manifest table.

The manifest has one row per video: video_id, path, class, label, split (train/val/test/unused),
group, frames, fps, width, height, duration, excluded (empty, or why the video is left out).
Every later stage reads only this table, so a new layout is one function here. An unlabelled video has
class "" and label -1 (`UNLABELLED`); `has_labels` tells a stage whether the table has classes at all.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slic.config import ManifestConfig

UNLABELLED = -1  # the label of a video of the unlabelled layout
COLUMNS = ["video_id", "path", "class", "label", "split", "group", "frames", "fps", "width", "height",
           "duration", "excluded"]
GROUP_PATTERN_LAYOUTS = ("folder", "unlabelled")  # where manifest.group_pattern names the recordings
SEGMENT_COLUMNS = ["start_frame", "stop_frame"]  # with manifest.segment_seconds: the row's frames of its file
# (slic.data.frames.RANGE_COLUMNS reads them: the extract stage does not import this module)
SEGMENT_TIME_COLUMNS = ["start_s", "end_s"]  # and where they lie in it, in seconds (by its timestamps when its rate
# varies); a manifest from before them has the frames only, read as frame / fps (`segment_seconds_of`)


class DatasetError(ValueError):
    """A dataset layout problem (missing split file, unknown class, missing video), in one line."""


@dataclass(frozen=True)
class Entry:
    """One listed video before probing."""

    path: Path
    class_name: str
    split: str  # train, test or unused; layout csv also val, or '' where its labels file gives none
    group: str


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} not found; set manifest.splits_dir to the folder that holds it")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _ucf101(root: Path, splits: Path, split: int) -> tuple[list[str], list[Entry]]:
    """UCF101 (and the synthetic set): classInd.txt, trainlist0N.txt, testlist0N.txt; groups g01..g25."""
    classes: list[str] = []
    for number, line in enumerate(_read_lines(splits / "classInd.txt", "class index classInd.txt"), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{splits / 'classInd.txt'}:{number}: expected '<index> <ClassName>', got {line!r}")
        classes.append(parts[1])
    entries = []
    listed: dict[str, str] = {}  # each video's first line, 'file:number': a video is on one side of the split, once
    for kind in ("train", "test"):
        listing = splits / f"{kind}list0{split}.txt"
        for number, line in enumerate(_read_lines(listing, f"split file {listing.name}"), 1):
            relative = line.split()[0]
            if relative in listed:
                raise DatasetError(f"{listing}:{number}: {relative} is listed already, at {listed[relative]}: "
                                   "a video belongs to one split, once; remove one of the two lines")
            listed[relative] = f"{listing.name}:{number}"
            class_name = relative.split("/")[0]
            if class_name not in classes:
                raise DatasetError(f"{listing}:{number}: class {class_name!r} is not in classInd.txt")
            match = re.search(r"_g(\d+)_c\d+", relative)
            if not match:
                raise DatasetError(f"{listing}:{number}: {relative!r} is not named v_<Class>_g<GG>_c<CC>")
            group = f"{class_name}/g{int(match.group(1)):02d}"
            entries.append(Entry(root / relative, class_name, kind, group))
    return classes, entries


# A table a user wrote in a spreadsheet and saved as CSV (layout csv's labels.csv, spread_labels' given.csv):
# spreadsheets write a byte-order mark first (Excel's "CSV UTF-8"), a header in any case, and in many locales
# (where the comma is the decimal sign) semicolons between the cells, or tabs from a copy and paste.
DELIMITERS = (",", ";", "\t")


def header_delimiter(first_line: str) -> str:
    """The delimiter of a CSV file from its header line: the one of `DELIMITERS` it holds most of (a comma on a
    tie, and for a header of one column)."""
    counts = {delimiter: first_line.count(delimiter) for delimiter in DELIMITERS}
    best = max(DELIMITERS, key=lambda delimiter: counts[delimiter])
    return best if counts[best] > counts[","] else ","


def read_table(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, rows) of a CSV file: the header's names stripped and lower-case; each row that is not empty as
    (its line number in the file, {name: stripped value}). The delimiter is the header's (`header_delimiter`), a
    byte-order mark is skipped, and quoted cells may hold the delimiter."""
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: skips a byte-order mark
        first = handle.readline()
        handle.seek(0)
        reader = csv.reader(handle, delimiter=header_delimiter(first))
        header = [name.strip().lower() for name in next(reader, [])]
        rows, ended = [], reader.line_num
        for values in reader:  # a row's number is the line it starts on (a quoted cell may span lines)
            if any(value.strip() for value in values):
                rows.append((ended + 1, dict(zip(header, (value.strip() for value in values)))))
            ended = reader.line_num
    return header, rows


LABELS_FILE = "labels.csv"  # layout csv: the table of videos and classes, in manifest.splits_dir (or the root)
LABELS_SPLITS = ("train", "val", "test", "unused")


def _labels_csv(root: Path, splits: Path) -> tuple[list[str], list[Entry]]:
    """Layout csv: the videos and classes a spreadsheet lists, `labels.csv` in `splits` with columns `path` (under
    `root`, or absolute) and `class`, and optionally `split` (train, val, test or unused; a row without one: '') and
    `group` (the recording a clip comes from: clips of one recording stay on one side of the test and val splits)."""
    listing = splits / LABELS_FILE
    if not listing.is_file():
        raise DatasetError(f"{listing}: labels file not found; layout csv reads {LABELS_FILE} (columns path, class "
                           "and optionally split, group) from manifest.splits_dir (empty: the root)")
    header, rows = read_table(listing)  # a spreadsheet's: its byte-order mark, ';' or tab between cells
    if not {"path", "class"} <= set(header):
        raise DatasetError(f"{listing}:1: the header needs columns path and class (optionally split, group); "
                           f"found: {', '.join(header) or 'nothing'}")
    entries, seen = [], {}
    for number, row in rows:
        where = f"{listing}:{number}"
        path, class_name = row.get("path", ""), row.get("class", "")
        if not path or not class_name:
            raise DatasetError(f"{where}: a row needs a path and a class, got path={path!r} class={class_name!r}; "
                               "list videos without a class with manifest.layout: unlabelled")
        split = row.get("split", "").lower()
        if split and split not in LABELS_SPLITS:
            raise DatasetError(f"{where}: split {row['split']!r} is not one of {', '.join(LABELS_SPLITS)} (or empty)")
        video = Path(path) if Path(path).is_absolute() else root / path
        if str(video) in seen:
            raise DatasetError(f"{where}: {path} is listed twice (also on line {seen[str(video)]}); list a video once")
        seen[str(video)] = number
        recording = row.get("group", "") or str(Path(path).with_suffix(""))
        entries.append(Entry(video, class_name, split, f"{class_name}/{recording.replace('/', '_')}"))
    if not entries:
        raise DatasetError(f"{listing}: no rows below the header; list one video per row (path,class)")
    return sorted({e.class_name for e in entries}), entries


def hmdb51_source(class_name: str, video: str) -> str | None:
    """The source film of an HMDB51 clip: the part of its name before `_<class>_` and the meta tags
    (`April_09` of April_09_brush_hair_u_nm_np1_ba_goo_0.avi), None for a name not made that way. HMDB51's
    splits keep a film's clips of one class on one side (splits 1-3: none of their 2000-2023 class/film groups on
    both sides, every name matched)."""
    match = re.match(rf"^(.+)_{re.escape(class_name)}_[fhlu]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+\.avi$",
                     video)
    return match.group(1) if match else None


def _hmdb51(root: Path, splits: Path, split: int) -> tuple[list[str], list[Entry]]:
    """HMDB51: <class>_test_split<N>.txt listing '<video> <0|1|2>' (1 train, 2 test, 0 unused). A video's group is
    its class and source film (`hmdb51_source`; its name when it has none), so the val carve takes whole films."""
    files = sorted(splits.glob(f"*_test_split{split}.txt"))
    if not files:
        raise DatasetError(f"{splits}: no HMDB51 split files '<class>_test_split{split}.txt'; "
                           "set manifest.splits_dir to the folder that holds them")
    classes = [f.name[: -len(f"_test_split{split}.txt")] for f in files]
    kinds = {"0": "unused", "1": "train", "2": "test"}
    entries = []
    for class_name, listing in zip(classes, files):
        for number, line in enumerate(_read_lines(listing, "split file"), 1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in kinds:
                raise DatasetError(f"{listing}:{number}: expected '<video> <0|1|2>', got {line!r}")
            group = f"{class_name}/{hmdb51_source(class_name, parts[0]) or parts[0]}"
            entries.append(Entry(root / class_name / parts[0], class_name, kinds[parts[1]], group))
    return classes, entries


def _kinetics(root: Path, splits: Path, split: int) -> tuple[list[str], list[Entry]]:
    """Kinetics-400: train.csv (train) and validate.csv or val.csv (our test), official columns."""
    sources = [("train", splits / "train.csv")]
    val = next((p for p in (splits / "validate.csv", splits / "val.csv") if p.is_file()), splits / "validate.csv")
    sources.append(("test", val))
    rows: list[tuple[str, dict[str, str], Path]] = []
    for kind, listing in sources:
        if not listing.is_file():
            raise DatasetError(f"{listing}: Kinetics split file not found; set manifest.splits_dir")
        with listing.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = {"label", "youtube_id", "time_start", "time_end"} - set(reader.fieldnames or [])
            if missing:
                raise DatasetError(f"{listing}: missing columns {sorted(missing)}")
            rows += [(kind, row, listing) for row in reader]
    classes = sorted({row["label"] for _, row, _ in rows})
    entries = []
    for kind, row, listing in rows:
        name = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
        folder_split = "train" if kind == "train" else "val"
        candidates = [root / row["label"], root / folder_split / row["label"], root / listing.stem / row["label"]]
        path = next((c / f"{name}{ext}" for c in candidates for ext in (".mp4", ".mkv", ".webm", ".avi")
                     if (c / f"{name}{ext}").exists()), candidates[0] / f"{name}.mp4")
        entries.append(Entry(path, row["label"], kind, name))
    return classes, entries


def group_regex(pattern: str) -> re.Pattern[str] | None:
    """manifest.group_pattern compiled (None when empty); a `DatasetError` naming the key when it is not a regular
    expression."""
    if not pattern:
        return None
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"manifest.group_pattern = '{pattern}': not a regular expression ({exc}); e.g. '_g(\\d+)_' names "
                           "the recording of v_Archery_g08_c02.avi by its g number") from None


def recording_of(relative: str, regex: re.Pattern[str]) -> str | None:
    """The recording a video's path under its class folder names by `regex`: the first group of the first match
    (the whole match when the pattern has no group), '/' read as '_'; None when it does not match."""
    match = regex.search(relative)
    if match is None:
        return None
    named = match.group(1) if regex.groups else match.group(0)
    return (named or "").replace("/", "_") or None


def _folder(root: Path, extensions: Iterable[str],
            regex: re.Pattern[str] | None = None) -> tuple[list[str], list[Entry]]:
    """A plain <root>/<class>/<video> tree; the split is drawn later (no split files). A video's group is its
    name, or with `regex` (manifest.group_pattern) the recording the regex names in its path under the class."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found; set manifest.root")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    suffixes = {e.lower() for e in extensions}
    entries = []
    matched = 0
    for c in classes:
        for video in sorted((root / c).rglob("*")):
            if video.suffix.lower() not in suffixes or not (video.is_file() or video.is_symlink()):
                continue
            recording = recording_of(video.relative_to(root / c).as_posix(), regex) if regex else None
            matched += recording is not None
            entries.append(Entry(video, c, "train", f"{c}/{recording or video.stem}"))
    if not entries:
        raise DatasetError(f"{root}: no videos with extensions {sorted(suffixes)} in class folders")
    if regex and not matched:
        _matched_none(regex, len(entries), entries[0].path.relative_to(root / entries[0].class_name).as_posix(),
                      "their class folders")
    return classes, entries


def _unlabelled(root: Path, extensions: Iterable[str],
                regex: re.Pattern[str] | None = None) -> tuple[list[str], list[Entry]]:
    """Every video under `root` at any depth: no classes, no split files; all of them train (layout unlabelled).
    A video's group is its path under `root` without the suffix, or with `regex` (manifest.group_pattern) the
    recording the regex names in that path (what `slic search --per-recording` counts)."""
    if not root.is_dir():
        raise DatasetError(f"{root}: video folder not found; set manifest.root")
    suffixes = {e.lower() for e in extensions}
    videos = sorted(v for v in root.rglob("*") if v.suffix.lower() in suffixes and (v.is_file() or v.is_symlink())
                    and not any(part.startswith(".") for part in v.relative_to(root).parts))
    if not videos:
        raise DatasetError(f"{root}: no videos with extensions {sorted(suffixes)} at any depth; set manifest.root "
                           "or manifest.extensions")
    relative = [video.relative_to(root) for video in videos]
    recordings = [recording_of(path.as_posix(), regex) if regex else None for path in relative]
    if regex and not any(recordings):
        _matched_none(regex, len(videos), relative[0].as_posix(), "manifest.root")
    return [], [Entry(video, "", "train", recording or str(path.with_suffix("")))
                for video, path, recording in zip(videos, relative, recordings)]


def _matched_none(regex: re.Pattern[str], videos: int, example: str, under: str) -> None:
    """The DatasetError for a manifest.group_pattern that names no video's recording."""
    raise DatasetError(f"manifest.group_pattern = '{regex.pattern}' matches none of the {videos} videos' paths "
                       f"under {under} (e.g. '{example}'); fix it, or set it to '' to make each video a recording of "
                       "its own")


def has_labels(table: pd.DataFrame) -> bool:
    """Whether a manifest table has class labels (an unlabelled layout's rows all have label -1)."""
    return bool((table["label"].astype(int) != UNLABELLED).any())


def manifest_has_labels(manifest: str | Path) -> bool:
    """Whether the manifest file has class labels. A missing manifest counts as labelled: the stage that
    reads it then says which stage to run first."""
    return not Path(manifest).is_file() or has_labels(read_manifest(manifest))


def list_videos(config: ManifestConfig) -> tuple[list[str], list[Entry]]:
    """The class names and every listed video of the configured layout (nothing probed yet)."""
    root = Path(config.root)
    splits = Path(config.splits_dir) if config.splits_dir else root
    if config.layout in ("ucf101", "synthetic"):
        return _ucf101(root, splits, config.split)
    if config.layout == "hmdb51":
        return _hmdb51(root, splits, config.split)
    if config.layout == "kinetics":
        return _kinetics(root, splits, config.split)
    if config.layout == "csv":
        return _labels_csv(root, splits)
    if config.layout == "unlabelled":
        return _unlabelled(root, config.extensions, group_regex(config.group_pattern))
    return _folder(root, config.extensions, group_regex(config.group_pattern))


SPLIT_FILE_LAYOUTS = ("ucf101", "synthetic", "hmdb51", "kinetics", "csv")  # the layouts that read splits_dir


def is_within(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved): what a DVC dependency on `folder` watches."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents


def unwatched_splits_advice(root: str, layout: str, splits_dir: str, stage: str = "manifest",
                            key: str = "manifest.splits_dir") -> str:
    """A line saying that DVC does not watch a splits_dir outside the root (`key`): dvc.yaml can only list the root,
    so an edited labels.csv or split file there would leave `stage` stale without a word. Empty when the folder is the
    root or under it, or when the layout reads no split files."""
    if layout not in SPLIT_FILE_LAYOUTS or not splits_dir or is_within(splits_dir, root):
        return ""
    return (f"{key} {splits_dir} is outside the root {root}: DVC does not watch its files, so after editing one "
            f"run `dvc repro --single-item --force {stage}`, then `dvc repro` (or keep them under the root, which "
            "DVC watches); `slic summary` marks the reports made before such an edit [stale]")


def splits_fingerprint(splits_dir: str | Path) -> str:
    """A digest of the files directly in `splits_dir` (names and bytes): the manifest's report keeps it for a
    folder DVC does not watch (`unwatched_splits_advice`), so `slic summary` can tell that a split file changed since
    ('' when the folder is gone)."""
    folder = Path(splits_dir)
    if not folder.is_dir():
        return ""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def extracted_frame_counts(table: pd.DataFrame, target_fps: float = 0.0) -> pd.Series:
    """How many frames `extract` stores for each row: its frames, or as many as extract.fps (`target_fps`) resamples
    them to (a segment's over its range of the file), counted from each row's frame rate without decoding; a
    variable-rate row (its seconds more than half a frame from frames / fps) is resampled by time, so it counts
    about its seconds x `target_fps`."""
    from slic.data.video import resampled_count

    if target_fps <= 0:
        return table["frames"].astype(int)
    segments = is_segmented(table)
    starts = table["start_frame"] if segments else pd.Series(0, index=table.index)
    stops = table["stop_frame"] if segments else table["frames"]
    variable = variable_rate_rows(table)

    def count(start: int, stop: int, fps: float, seconds: float, by_time: bool) -> int:
        return max(1, round(seconds * target_fps)) if by_time else resampled_count(start, stop, fps, target_fps)

    return pd.Series([count(int(start), int(stop), float(fps), float(seconds), bool(by_time))
                      for start, stop, fps, seconds, by_time in zip(starts, stops, table["fps"],
                                                                     table.get("duration", starts), variable)],
                     index=table.index, dtype=int)


def variable_rate_rows(table: pd.DataFrame) -> pd.Series:
    """Which rows are of variable-frame-rate files: a duration (by the frames' timestamps, `probe`) more than half
    a frame from frames / fps. False for a table without durations."""
    if "duration" not in table:
        return pd.Series(False, index=table.index)
    fps = table["fps"].astype(float)
    rated = fps > 0
    gap = (table["duration"].astype(float) - table["frames"].astype(float) / fps.where(rated)).abs()
    return (rated & (gap > 0.5 / fps.where(rated))).fillna(False).astype(bool)


def _frames_said(frames: int) -> str:
    """A frame count in words: one frame is a still image (a photo saved as a video, a thumbnail)."""
    return "1 frame (a still image)" if int(frames) == 1 else f"{int(frames)} frames"


def _excluded_as_too_short(table: pd.DataFrame, min_frames: int, what: str = "",
                           target_fps: float = 0.0) -> pd.Series:
    """`excluded`, with every usable row of fewer than `min_frames` frames excluded as too short (`what` says what
    the row is, e.g. a segment). Frames are counted as extract will store them: at extract.fps (`target_fps`) when
    it resamples, so a 30 fps video of 40 frames is too short for 32 at 10 fps (14 frames)."""
    excluded = table["excluded"].copy()
    counts = extracted_frame_counts(table, target_fps)
    short = (excluded == "") & (counts < min_frames)
    if target_fps <= 0:
        excluded[short] = [f"too short: {_frames_said(n)} < manifest.min_frames {min_frames}{what}"
                           for n in table.loc[short, "frames"]]
    else:
        excluded[short] = [f"too short: {_frames_said(n)} at extract.fps {target_fps:g} ({native} at {fps:g} fps) < "
                           f"manifest.min_frames {min_frames}{what}" for n, native, fps in
                           zip(counts[short], table.loc[short, "frames"], table.loc[short, "fps"])]
    return excluded


def _excluded_as_the_same_file(table: pd.DataFrame) -> pd.Series:
    """`excluded`, with every usable row but one of each file listed more than once (through symbolic or hard
    links: the same device and inode) excluded as that one's copy: a video in the gallery twice finds itself, and
    one in train and test leaks. The kept row is a plain file before a link, then the first by video_id."""
    excluded = table["excluded"].copy()
    kept: dict[tuple[int, int], tuple[str, str]] = {}  # (device, inode) -> the kept row's (video_id, path)
    usable = table[table["excluded"] == ""]
    order = sorted(usable.index, key=lambda i: (Path(table.at[i, "path"]).is_symlink(), table.at[i, "video_id"]))
    for index in order:
        try:
            stat = os.stat(table.at[index, "path"])
        except OSError:  # gone since it was probed: validate's file check names it
            continue
        key = (stat.st_dev, stat.st_ino)
        if key in kept:
            video_id, path = kept[key]
            how = "its path listed twice" if path == table.at[index, "path"] else "a link to it"
            excluded.at[index] = f"the same file as {video_id} ({how}): listed once"
        else:
            kept[key] = (table.at[index, "video_id"], table.at[index, "path"])
    return excluded


def _probe_row(path: str) -> dict[str, object]:
    from slic.data.video import VideoDecodeError, probe

    if Path(path).is_symlink() and not Path(path).exists():
        return {**_MISSING, "excluded": f"broken link: it points to {os.readlink(path)}, which does not exist"}
    try:
        info = probe(path)
    except VideoDecodeError as exc:
        return {"frames": 0, "fps": 0.0, "width": 0, "height": 0, "duration": 0.0,
                "excluded": f"unreadable: {exc.cause}"}
    return {"frames": info.frames, "fps": round(info.fps, 4), "width": info.width, "height": info.height,
            "duration": round(info.duration, 4), "excluded": "", "variable_rate": info.variable_rate}


_MISSING = {"frames": 0, "fps": 0.0, "width": 0, "height": 0, "duration": 0.0, "excluded": "missing file"}


def carve_validation(table: pd.DataFrame, fraction: float, seed: int, by_group: bool) -> pd.Series:
    """Move a seeded `fraction` of the train videos to 'val': whole group numbers if `by_group`.

    By group, when most group names recur across classes, the same names go to val in every class (as
    UCF101's test split holds out g01-g07 in every class): clips of one source video stay on one side, and a
    scene a group shares across classes never appears in both train and val. A class left without a val (or
    train) video that way gets a share of its own groups, as does every class when fewer than half the names
    recur (a folder's recordings named by manifest.group_pattern; HMDB51's films, 12% of which give clips to
    several classes). Otherwise a share of each class's videos.
    """
    return _carve(table, fraction, np.random.default_rng(seed), by_group, "val")


def _carve(table: pd.DataFrame, fraction: float, rng: np.random.Generator, by_group: bool, into: str) -> pd.Series:
    """`carve_validation`'s draw, moving the chosen train videos `into` that split (val, or test)."""
    split = table["split"].copy()
    if fraction <= 0:
        return split
    usable = (table["split"] == "train") & (table["excluded"] == "")
    if by_group:  # group names the classes share (UCF101's g08 in every class) are drawn for all classes at once;
        # a few names recurring by chance (HMDB51: 12% of its films give clips to several classes) are not
        numbers = table["group"].astype(str).str.rsplit("/", n=1).str[-1]  # "Class/g08" -> "g08"
        groups = sorted(numbers[usable].unique())
        recur = bool((table.loc[usable, "class"].groupby(numbers[usable]).nunique() > 1).mean() >= 0.5)
        if recur and len(groups) >= 2:
            count = min(len(groups) - 1, max(1, round(fraction * len(groups))))
            chosen = set(rng.choice(np.array(groups, dtype=object), size=count, replace=False).tolist())
            split.loc[usable & numbers.isin(chosen)] = into
    for _, rows in table[usable].groupby("class", sort=True):
        sides = set(split.loc[rows.index])
        if by_group and sides == {"train", into}:
            continue
        split.loc[rows.index] = "train"
        units = sorted(rows["group"].unique()) if by_group else list(rows.index)
        if len(units) < 2:
            continue
        count = min(len(units) - 1, max(1, round(fraction * len(units))))
        chosen = set(rng.choice(np.array(units, dtype=object), size=count, replace=False).tolist())
        picked = rows.index[rows["group"].isin(chosen)] if by_group else pd.Index(sorted(chosen))
        split.loc[picked] = into
    return split


def carves_by_group(layout: str, group_pattern: str = "") -> bool:
    """Whether val is carved by whole groups in `layout` (ucf101, synthetic: a group is one source video; hmdb51:
    one source film; folder with a `group_pattern`, csv: one recording, a video of its own where none is named)."""
    return layout in ("ucf101", "synthetic", "hmdb51", "csv") or (layout == "folder" and bool(group_pattern))


def _draw_test_split(table: pd.DataFrame, seed: int, by_group: bool = False, fraction: float = 0.3) -> pd.Series:
    """For class-folder datasets with no split files: a seeded, per-class test share of the usable videos (an
    excluded one drawn for test would leave its class short there); `by_group`, a share of the recordings that
    manifest.group_pattern names, as the val carve draws groups (a recording never on both sides)."""
    if by_group:
        return _carve(table, fraction, np.random.default_rng([seed, 1]), True, "test")
    split = table["split"].copy()
    rng = np.random.default_rng([seed, 1])
    for _, rows in table[table["excluded"] == ""].groupby("class", sort=True):
        count = round(fraction * len(rows)) if len(rows) > 1 else 0
        picked = rng.choice(rows.index.to_numpy(), size=count, replace=False)
        split.loc[picked] = "test"
    return split


def build_manifest(config: ManifestConfig, progress: Callable[[int], None] | None = None,
                   target_fps: float = 0.0) -> pd.DataFrame:
    """List, probe and split every video of the configured dataset into the manifest table.

    Raises `DatasetError` (one line naming the file) for a missing split file, an unknown class
    or a listed video that does not exist. Unreadable or too-short videos stay in the table with
    the reason in `excluded`, so the report can name them. `target_fps` (extract.fps): min_frames
    counts the frames extract will store at that rate (0: the file's own frames).
    """
    if config.group_pattern and config.layout not in GROUP_PATTERN_LAYOUTS:
        raise DatasetError(f"manifest.group_pattern = '{config.group_pattern}' applies to layouts folder and "
                           f"unlabelled only (layout is {config.layout}: ucf101 and synthetic name their groups, "
                           "hmdb51 and kinetics ship their splits); remove it, or set manifest.layout: folder")
    if 0 < config.segment_seconds < 1:
        raise DatasetError(f"manifest.segment_seconds = {config.segment_seconds:g}: a segment must be 1 second or "
                           "longer (0 keeps a row per video)")
    classes, entries = list_videos(config)
    missing = {str(e.path) for e in entries if not e.path.is_file() and not e.path.is_symlink()}  # a broken link
    # is there: probed, it is excluded with the link's target named
    if missing and config.on_missing == "error":
        listed = ", ".join(sorted(missing)[:3])
        raise DatasetError(f"{len(missing)} listed video(s) do not exist under {config.root}, e.g. {listed}; "
                           "fix manifest.root or the split files, or set manifest.on_missing: exclude")
    paths = [str(e.path) for e in entries if str(e.path) not in missing]
    if config.workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(max_workers=config.workers) as pool:
            probed = []
            for row in pool.map(_probe_row, paths, chunksize=16):
                probed.append(row)
                if progress:
                    progress(1)
    else:
        probed = []
        for path in paths:
            probed.append(_probe_row(path))
            if progress:
                progress(1)
    info_by_path = dict(zip(paths, probed))
    info_by_path.update({path: _MISSING for path in missing})
    root = Path(config.root)
    label = {name: index for index, name in enumerate(classes)}
    table = pd.DataFrame([
        {"video_id": _video_id(e.path, root), "path": str(e.path), "class": e.class_name,
         "label": label.get(e.class_name, UNLABELLED), "split": e.split, "group": e.group, **info}
        for e in entries for info in [info_by_path[str(e.path)]]
    ], columns=COLUMNS)
    table["video_id"] = _distinct_ids(table)
    table["excluded"] = _excluded_as_too_short(table, config.min_frames, target_fps=target_fps)
    table["excluded"] = _excluded_as_the_same_file(table)
    by_group = carves_by_group(config.layout, config.group_pattern)
    listed_splits = config.layout == "csv" and bool((table["split"] != "").any())
    if config.layout == "csv":  # a row without a split trains, unless no row has one: then test is drawn
        table["split"] = table["split"].replace("", "train")
    if config.layout == "folder" or (config.layout == "csv" and not listed_splits):
        table["split"] = _draw_test_split(table, config.seed, by_group)
    given_val = config.layout == "csv" and bool((table["split"] == "val").any())  # the labels file's own val
    if config.layout != "unlabelled" and not given_val:  # no labels: nothing to validate on, every video trains
        table["split"] = carve_validation(table, config.val_fraction, config.seed, by_group)
    if config.segment_seconds > 0:  # after the splits: a video's segments stay on its side
        variable = {path for path, info in info_by_path.items() if info.get("variable_rate")}
        table = segmented(table, config.segment_seconds, variable)
        table["excluded"] = _excluded_as_too_short(table, config.min_frames, f" (a segment of "
                                                   f"manifest.segment_seconds {config.segment_seconds:g})",
                                                   target_fps)
    return table.sort_values("video_id", kind="stable").reset_index(drop=True)


def collection_summary(table: pd.DataFrame) -> dict[str, Any]:
    """What the usable videos are, at a glance (the manifest stage's report and line): how many, from how many
    files (segments share one), the hours, the durations' range and median, and the commonest frame sizes and
    frame rates, so a user sees their folder as the pipeline will before anything trains."""
    usable = table[table["excluded"] == ""]
    if usable.empty:
        return {"videos": 0}
    durations = usable["duration"].astype(float)
    sizes = (usable["width"].astype(str) + "x" + usable["height"].astype(str)).value_counts()
    rates = usable["fps"].astype(float).round(2).value_counts()
    return {"videos": len(usable), "files": int(usable["path"].nunique()), "hours": round(durations.sum() / 3600, 3),
            "duration_seconds": {"min": round(durations.min(), 2), "median": round(durations.median(), 2),
                                 "max": round(durations.max(), 2)},
            "frame_sizes": {size: int(n) for size, n in sizes.head(5).items()},
            "fps": {f"{rate:g}": int(n) for rate, n in rates.head(3).items()},
            # the videos of the sizes and rates past those shown: said as such, not left out of the line
            "other_frame_sizes": {"sizes": max(0, len(sizes) - 5), "videos": int(sizes.iloc[5:].sum())},
            "other_fps": {"rates": max(0, len(rates) - 3), "videos": int(rates.iloc[3:].sum())}}


def summary_line(summary: dict[str, Any]) -> str:
    """`collection_summary` in one line: 731 usable videos (55.5 min), 1.1-29.0 s (median 6.1 s), 320x240 (731)."""
    if not summary.get("videos"):
        return "no usable video"
    spread = summary["duration_seconds"]
    files = "" if summary["files"] == summary["videos"] else f" from {summary['files']} files"
    sizes = ", ".join(f"{size} ({n})" for size, n in summary["frame_sizes"].items()) + _others(
        summary.get("other_frame_sizes"), "size")
    rates = ", ".join(f"{rate} ({n})" for rate, n in summary["fps"].items()) + _others(summary.get("other_fps"), "rate")
    seconds = summary["hours"] * 3600
    total = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else \
        f"{seconds:.0f} s"
    videos = f"{summary['videos']} usable video{'s' if summary['videos'] != 1 else ''}"
    if summary["videos"] == 1:  # its own duration (the total is rounded to hours), no spread
        return f"{videos}{files} ({spread['max']:.1f} s); frame size {sizes}; fps {rates}"
    return (f"{videos}{files} ({total}), {spread['min']:.1f}-{spread['max']:.1f} s (median "
            f"{spread['median']:.1f} s); frame sizes {sizes}; fps {rates}")


def _others(other: dict[str, int] | None, what: str) -> str:
    """', 2 other rates (3)': the sizes or rates a summary line leaves out, counted ('' when none)."""
    if not other or not other[f"{what}s"]:
        return ""
    return f", {other[f'{what}s']} other {what}{'s' if other[f'{what}s'] != 1 else ''} ({other['videos']})"


LONG_VIDEO_SECONDS = 60.0  # the trimmed clips SLIC assumes last seconds (UCF101: 7 s on average)


def segment_advice(table: pd.DataFrame, segment_seconds: float) -> str:
    """A line for the manifest stage when usable videos are long and not cut into segments: each is then one
    embedding, the mean of clips spread over all of it, in which one action is diluted by the rest; empty when
    nothing is that long or segments are on."""
    usable = table[table["excluded"] == ""]
    long = usable[usable["duration"] > LONG_VIDEO_SECONDS]
    if segment_seconds > 0 or long.empty:
        return ""
    return (f"{len(long)} of {len(usable)} usable videos are longer than {LONG_VIDEO_SECONDS:.0f} s (the longest "
            f"{long['duration'].max() / 60:.1f} min): each is one embedding, from clips spread over all of it; for "
            "untrimmed recordings set manifest.segment_seconds (4 to 8 found actions best on ucf101_6: "
            "docs/pipeline.md) to train on, index and search them in segments")


MIXED_FPS_RATIO = 1.5  # frame rates further apart than this make clips of one length span unlike times


def frame_rate_advice(table: pd.DataFrame, target_fps: float = 0.0) -> str:
    """A line for the manifest stage when the usable videos' frame rates differ by more than MIXED_FPS_RATIO and
    extract keeps native frames (`target_fps`, extract.fps, is 0): a clip then spans a different time (and a motion
    looks faster or slower) in each, and the rate can become what tells videos apart; empty otherwise. Each file
    counts once (however many segments it is cut into), and a variable-rate file not at all: its stated rate says
    little (`variable_rate_advice` names those)."""
    usable = table[(table["excluded"] == "") & ~variable_rate_rows(table)]
    usable = usable.drop_duplicates("path") if "path" in usable else usable
    rates = usable["fps"].astype(float).round(2)
    rates = rates[rates > 0]
    if target_fps > 0 or rates.empty or rates.max() <= MIXED_FPS_RATIO * rates.min():
        return ""
    low, high = rates.min(), rates.max()
    common = rates.round(2).mode().iloc[0]
    return (f"frame rates range from {low:g} to {high:g} fps (most often {common:g}: {(rates.round(2) == common).sum()}"
            f" of the {len(rates)} usable videos of a constant rate): clips take native frames, so a clip spans "
            f"{high / low:.1f}x less time at {high:g} fps than at {low:g} and a motion looks slower there; set "
            f"extract.fps: {common:g} to resample every video to one rate when frames are extracted")


def variable_rate_advice(table: pd.DataFrame, target_fps: float = 0.0) -> str:
    """A line for the manifest stage when usable videos have a variable frame rate (frames not evenly spaced: a
    phone in low light, an AVI that skips frames) and extract keeps native frames: a clip of native frames then
    spans uneven times; empty when there are none or extract.fps resamples them by time."""
    usable = table[(table["excluded"] == "") & variable_rate_rows(table)]
    if target_fps > 0 or usable.empty:
        return ""
    files = usable.drop_duplicates("path")
    example = table[table["path"] == files.iloc[0]["path"]]  # all its rows: the file's frames and seconds
    shown = ", e.g. " + f"{Path(files.iloc[0]['path']).name} ({example['frames'].sum()} frames over " \
        f"{example['duration'].sum():.1f} s, {files.iloc[0]['fps']:.4g} fps stated)"
    return (f"{len(files)} usable video file(s) have a variable frame rate{shown}: native frames are not evenly spaced "
            "in time, so their clips span uneven times; set extract.fps (e.g. 25) to resample them by their "
            "timestamps")


_TRAILING_COUNTER = re.compile(r"^(.+?)([ _.-]*(?:c|clip|part|seg|segment|take|shot)?[ _.-]*)(\d+)$", re.IGNORECASE)


def grouping_advice(table: pd.DataFrame, root: str, layout: str, group_pattern: str,
                    key: str = "manifest.group_pattern") -> str:
    """A line for the manifest stage on how a class-folder dataset at `root` is split into recordings: without
    manifest.group_pattern (`key`), the name families that look like clips of one recording, with a pattern that
    groups them; with one, what it made of the folder (or of an unlabelled one) when that needs saying; for HMDB51,
    the videos not named as its clips are (their films unknown). Empty for other layouts, or when there is nothing
    to say."""
    if layout == "unlabelled":
        return (_recordings_line(table, root, group_pattern, key, classes=False) if group_pattern
                else _name_families_line(table, key, split=False, root=root))
    if layout == "hmdb51":
        return _hmdb51_names_line(table)
    if layout != "folder":
        return ""
    return (_recordings_line(table, root, group_pattern, key) if group_pattern
            else _name_families_line(table, key, root=root))


def recordings_summary(table: pd.DataFrame, key: str = "manifest.group_pattern") -> tuple[dict[str, Any], str]:
    """What a group_pattern (`key`) made of a table's usable videos, as a report entry (count, the largest
    recording and its clips) and a line to print: a regex is easy to get subtly wrong, and the count shows it."""
    usable = table[table["excluded"] == ""].drop_duplicates("path")
    clips = usable.groupby("group").size()
    largest = str(clips.idxmax()) if len(clips) else ""
    entry = {"count": int(len(clips)), "largest": int(clips.max()) if len(clips) else 0, "example": largest}
    return entry, (f"{key} names {entry['count']} recordings of the {len(usable)} usable videos (the largest, "
                   f"{largest}, has {entry['largest']})")


def _hmdb51_names_line(table: pd.DataFrame) -> str:
    """HMDB51 videos whose names do not follow its naming (`hmdb51_source`): each is a film of its own, so the val
    carve cannot keep it with its film's other clips; empty when every name follows it."""
    usable = table[(table["excluded"] == "") & (table["split"] != "unused")]
    odd = [Path(path).name for path, c in zip(usable["path"], usable["class"])
           if hmdb51_source(c, Path(path).name) is None]
    if not odd:
        return ""
    return (f"{len(odd)} of {len(usable)} videos are not named as HMDB51 names its clips "
            f"(<film>_<class>_<4 tags>_<n>.avi, e.g. {odd[0]}): each counts as a film of its own, so val may hold a "
            "clip whose film's other clips train; keep HMDB51's file names to carve val by film")


def _recordings_line(table: pd.DataFrame, root: str, group_pattern: str, key: str, classes: bool = True) -> str:
    """What manifest.group_pattern made of the folder, when it needs saying: videos it does not match (each a
    recording of its own), and classes it leaves with one recording (all of it trains: such a class has no test or
    val video, and validate stops). `classes` False: an unlabelled folder, its paths read under `root`."""
    regex = re.compile(group_pattern)
    usable = table[table["excluded"] == ""].drop_duplicates("path")
    unmatched = [path for path, c in zip(usable["path"], usable["class"])
                 if recording_of(Path(path).relative_to(Path(root) / c).as_posix(), regex) is None]
    alone = sorted(c for c, n in usable.groupby("class")["group"].nunique().items() if n < 2) if classes else []
    said = []
    if unmatched:
        said.append(f"{len(unmatched)} of {len(usable)} usable videos do not match {key} '{group_pattern}' (e.g. "
                    f"{Path(unmatched[0]).name}): each is a recording of its own")
    if alone:
        said.append(f"class(es) {', '.join(alone[:5])} have a single recording under {key}: all of it trains, so "
                    "they get no test or val video")
    return "; ".join(said)


def _name_families_line(table: pd.DataFrame, key: str, split: bool = True, root: str = "") -> str:
    """Name families in a folder split per video: videos of one class and folder whose names differ only in a
    trailing number (v_Archery_g01_c01, _c02: UCF101's clips of one recording). If they are one recording, a
    per-video split puts it in train and test, and retrieval then finds the scene, not the action. A family counts
    with 2 or more videos and less than its whole class; the line appears when families hold a fifth of the usable
    videos or more. A camera's running number is not a clip number: a number written with 4 digits or more
    (IMG_0042, DSC_1234, GOPR0042) is none, and a family's numbers must stay under 100; the pattern suggested takes
    1 to 3 digits, so those files stay recordings of their own. `split` False (an unlabelled folder, one class): no
    split to leak into, but `slic search` and `evaluate` would count each clip a recording of its own. `root`
    (the dataset's) names the recording the pattern gives the example, as the manifest will."""
    usable = table[table["excluded"] == ""].drop_duplicates("path")
    families: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
    suffix_of: dict[str, str] = {}
    for class_name, path in zip(usable["class"], usable["path"]):
        match = _TRAILING_COUNTER.match(Path(path).stem)
        if match and re.search(r"[^\W\d_]", match.group(1)) and len(match.group(3)) < 4:  # a name (not 001.mp4)
            families.setdefault((class_name, str(Path(path).parent), match.group(1)), []).append(
                (path, int(match.group(3))))
            suffix_of[path] = match.group(2)
    sizes = usable.groupby("class").size()
    counted = [(class_name, [path for path, _ in members]) for (class_name, _, _), members in families.items()
               if 2 <= len(members) < sizes[class_name] and max(number for _, number in members) < 100]
    videos = sum(len(paths) for _, paths in counted)
    if not counted or videos < 0.2 * len(usable):
        return ""
    class_name, paths = max(counted, key=lambda family: len(family[1]))
    example = sorted(paths)[:2]
    pattern = "^(.*?)" + re.escape(suffix_of[example[0]]) + r"\d{1,3}\.\w+$"
    recording = _TRAILING_COUNTER.match(Path(example[0]).stem).group(1)
    if root:
        relative = Path(example[0]).relative_to(Path(root) / class_name).as_posix()
        recording = recording_of(relative, re.compile(pattern)) or recording
    names = ", ".join(Path(path).name for path in example)
    families_said = f"{len(counted)} such {'families' if len(counted) != 1 else 'family'}"
    family = (f"{videos} of {len(usable)} videos share their name with others {'of their class ' if split else ''}"
              f"but for a trailing number (e.g. {names}; {families_said}): if each family is clips of one recording, ")
    set_it = f"set {key}: '{pattern}' (names {Path(example[0]).name}'s recording {recording!r})"
    if not split:
        return (family + "`slic search --other-recordings` and `--per-recording` and evaluate's neighbours count "
                f"each clip a recording of its own; {set_it} to count each family as one")
    return (family + "the per-video split puts recordings in train and test and recall measures the scene; "
            f"{set_it} to split by recording")


def short_at_rate_advice(table: pd.DataFrame, min_frames: int, target_fps: float) -> str:
    """A line for the manifest stage when extract.fps (`target_fps`) excludes videos that would be long enough at
    their own rate: resampling to fewer frames a second leaves them under manifest.min_frames; empty otherwise."""
    if target_fps <= 0:
        return ""
    short = table["excluded"].str.startswith("too short") & (table["frames"] >= min_frames)
    if not short.any():
        return ""
    return (f"{int(short.sum())} of {len(table)} videos are too short only at extract.fps {target_fps:g} (they have "
            f"{min_frames} frames or more at their own rate): lower manifest.min_frames or raise extract.fps to "
            "keep them")


def segmented(table: pd.DataFrame, seconds: float, variable: set[str] | frozenset[str] = frozenset()) -> pd.DataFrame:
    """The manifest with each video cut into segments (`segment_bounds`), a row each: `video_id@<start>s`, the
    source's path, class, split and group (so a video's segments stay on one side of every split), its frames
    [start_frame, stop_frame) of the file and where they lie in it [start_s, end_s); a video of one segment keeps
    its id, as a whole row. The files of `variable` (probed as variable-rate) are demuxed again for their frames'
    timestamps, which cut and time their segments (`FrameClock`); the others are timed at frame / fps."""
    from slic.data.video import FrameClock, file_clock, segment_bounds, segment_id

    rows = []
    for row in table.to_dict("records"):
        frames, fps = int(row["frames"]), float(row["fps"])
        clock = FrameClock(frames, fps)
        if row["excluded"] == "" and row["path"] in variable:
            found = file_clock(row["path"])
            clock = found if found.frames == frames else clock  # changed since it was probed: as probed
        bounds = segment_bounds(frames, fps, seconds, clock) if row["excluded"] == "" else [(0, frames)]
        for start, stop in bounds:
            start_s, end_s = clock.seconds(start), clock.seconds(stop)
            named = row["video_id"] if len(bounds) == 1 else segment_id(row["video_id"], start_s)
            duration = round((end_s - start_s) if clock.variable else (stop - start) / fps, 4) if fps else \
                row["duration"]
            rows.append({**row, "video_id": named, "frames": stop - start, "duration": duration,
                         "start_frame": start, "stop_frame": stop, "start_s": round(start_s, 4),
                         "end_s": round(end_s, 4)})
    return pd.DataFrame(rows, columns=COLUMNS + SEGMENT_COLUMNS + SEGMENT_TIME_COLUMNS)


def segment_seconds_of(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(start_s, end_s) of each row of a segmented manifest: its columns, or frame / fps in a manifest from before
    them (NaN where the rate is unknown)."""
    if set(SEGMENT_TIME_COLUMNS) <= set(table.columns):
        return table["start_s"].astype(float), table["end_s"].astype(float)
    fps = table["fps"].astype(float).replace(0.0, float("nan"))
    return table["start_frame"].astype(int) / fps, table["stop_frame"].astype(int) / fps


def segment_spans(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """(start_s, end_s) of each row whose file is cut into several rows (manifest.segment_seconds): where a hit
    lies in its file, as the index's rows and the retrieval report show it; NaN for a file of one row (its path
    says it all) and in a manifest without segments."""
    if not is_segmented(table):
        return pd.Series(np.nan, index=table.index), pd.Series(np.nan, index=table.index)
    whole = table.groupby("path")["video_id"].transform("size") == 1
    start_s, end_s = segment_seconds_of(table)
    return start_s.mask(whole), end_s.mask(whole)


def is_segmented(table: pd.DataFrame) -> bool:
    """Whether the manifest's rows are segments of their files (manifest.segment_seconds > 0)."""
    return set(SEGMENT_COLUMNS) <= set(table.columns)


def _distinct_ids(table: pd.DataFrame) -> pd.Series:
    """The rows' video ids, each keeping its file's extension where two files share a name but for it (clip.mp4 and
    clip.mkv: two videos, `clip.mp4` and `clip.mkv`); an id stays as it was everywhere else. One file listed twice
    keeps its one id, for validate to name."""
    ids = table["video_id"].astype(str).copy()
    clash = ids.duplicated(keep=False) & ~table["path"].duplicated(keep=False)
    ids[clash] = [f"{video_id}{Path(path).suffix}" for video_id, path in zip(ids[clash], table.loc[clash, "path"])]
    return ids


def _video_id(path: Path, root: Path) -> str:
    """A stable id: the path under the dataset root without its extension."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = Path(path.parent.name) / path.name
    return str(relative.with_suffix(""))


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Load a manifest CSV written by `build_manifest` with its column types."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: manifest not found; run the stages before this one first (`dvc repro`)")
    return pd.read_csv(path, dtype={"excluded": str, "group": str, "video_id": str, "class": str},
                       keep_default_na=False)
