"""A user's classes for some videos of the archive, read from a CSV: what the `spread_labels` stage spreads to every
video, and what `pretrain.mode: labels` trains the encoder on.

The CSV has a `class` column and a `video_id` column (the ids of reports/clusters.csv and of the manifest) or a
`path` column (a video file: every segment of a long file takes its class), read as `layout: csv` reads labels.csv
(any case, a byte-order mark, commas, semicolons or tabs); with both columns a row's id names its video, or its
file where the id is empty; a relative path may be the end of one file's path (its folders under manifest.root, as
`trip/day1/clip.mp4`). Rows with an empty class are skipped (a label_next.csv partly filled in). A row naming no
video (or a path ending more than one file's), one video given two classes, or one class spelled two ways stops
with the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHECK_MARKS = ("yes", "y", "true", "1", "x")  # a check column's value that marks a random check


class LabelsError(ValueError):
    """A labels CSV that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class GivenLabels:
    """The user's labels: positions among the videos they were read against (`index`) and their class numbers
    into `names` (sorted)."""

    index: np.ndarray
    label: np.ndarray
    names: list[str]
    rows_without_class: int
    check: np.ndarray | None = None  # per labelled video: a random check (label_next's check column), or None
    # the videos of the rows left without a class (and labelled on no other row): looked at and passed over, so
    # label_next does not suggest them again
    passed_over: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def path_spellings(path: str) -> list[str]:
    """The spellings of a video path that name the same file: as written, normalised, and absolute."""
    return list(dict.fromkeys([path, os.path.normpath(path), str(Path(path).resolve())])) if path else []


def _rows_ending(by_ending: dict[str, list[int]], paths: Sequence[str], video: str, where: str) -> list[int] | None:
    """The rows of the one file whose path ends with the relative `video` (its folders and name), None when none
    does; a LabelsError naming two when several files do (give more of the path)."""
    rows = by_ending.get(Path(os.path.normpath(video)).as_posix())
    if rows and len({paths[i] for i in rows}) > 1:
        first, second = sorted({paths[i] for i in rows})[:2]
        raise LabelsError(f"{where}: path {video!r} ends the paths of {len({paths[i] for i in rows})} videos (e.g. "
                          f"{first} and {second}); give more of its folders, or the whole path")
    return rows


def read_labels_table(given: str | Path, ids: Sequence[str], paths: Sequence[str], *, videos: str, listed_in: str,
                      purpose: str) -> GivenLabels:
    """The classes of `given` for the videos `ids` (with their files `paths`, in the same order). `videos` names
    those videos in an error ("grouped videos"), `listed_in` the file listing them, and `purpose` what needs two
    classes ("spreading")."""
    from slic.data.datasets import read_table

    given = Path(given)
    header, lines = read_table(given)  # a spreadsheet's: its byte-order mark, ';' or tab between cells
    if "class" not in header or not ({"video_id", "path"} & set(header)):
        raise LabelsError(f"{given}: the header needs a class column and a video_id (or path) column, got "
                          f"{','.join(header) or 'nothing'}; reports/label_next.csv has the columns to fill in")
    by_id: dict[str, list[int]] = {}
    by_path: dict[str, list[int]] = {}
    by_ending: dict[str, list[int]] = {}  # the last 1, 2, ... folders and name of each file: a relative path
    for i, (video_id, path) in enumerate(zip(ids, paths)):
        by_id.setdefault(video_id, []).append(i)
        for spelling in path_spellings(path):
            by_path.setdefault(spelling, []).append(i)
        parts = Path(os.path.normpath(path)).parts if path else ()
        for start in range(1, len(parts)):
            by_ending.setdefault("/".join(parts[start:]), []).append(i)
    chosen: dict[int, tuple[str, int]] = {}
    checks: set[int] = set()
    skipped = 0
    passed: set[int] = set()
    for line, cells in lines:
        # A row names its video by id, or where its id is empty (or the file has none) by its file.
        key = "video_id" if cells.get("video_id") or "path" not in header else "path"
        name, video = cells.get("class", ""), cells.get(key, "")
        spellings, by_key = ([video], by_id) if key == "video_id" else (path_spellings(video), by_path)
        rows = next((by_key[spelling] for spelling in spellings if spelling in by_key), None)
        if rows is None and key == "path" and video and not os.path.isabs(video):
            rows = _rows_ending(by_ending, paths, video, f"{given}:{line}")
        if not name:  # left empty: passed over (a video of none of the classes, one that cannot be told)
            skipped += 1
            passed.update(rows or [])
            continue
        checked = cells.get("check", "").lower() in CHECK_MARKS
        if not rows:
            raise LabelsError(f"{given}:{line}: {key} {video!r} is not among the {len(ids)} {videos} ({listed_in} "
                              f"lists them in its {key} column)")
        for i in rows:
            if i in chosen and chosen[i][0] != name:
                raise LabelsError(f"{given}:{line}: {ids[i]} is given class {name!r} here and {chosen[i][0]!r} on "
                                  f"line {chosen[i][1]}; keep one")
            chosen.setdefault(i, (name, line))
            if checked:
                checks.add(i)
    names = sorted({name for name, _ in chosen.values()})
    first_line = {name: min(line for n, line in chosen.values() if n == name) for name in names}
    spelled: dict[str, str] = {}
    for name in sorted(names, key=first_line.get):  # "Run" and "run " as two classes: one typed two ways
        folded = " ".join(name.lower().split())
        if folded in spelled:
            raise LabelsError(f"{given}:{first_line[name]}: class {name!r} differs from {spelled[folded]!r} (line "
                              f"{first_line[spelled[folded]]}) only in case or spaces; spell one class one way")
        spelled[folded] = name
    if chosen and len(names) < 2:
        raise LabelsError(f"{given}: every labelled video is {names[0]!r}: {purpose} needs at least two classes; "
                          "label a video of another kind (reports/label_next.csv suggests which)")
    index = np.array(sorted(chosen), dtype=np.int64)
    label = np.array([names.index(chosen[i][0]) for i in index], dtype=np.int64)
    return GivenLabels(index=index, label=label, names=names, rows_without_class=skipped,
                       check=np.isin(index, sorted(checks)) if "check" in header else None,
                       passed_over=np.array(sorted(passed - set(chosen)), dtype=np.int64))


@dataclass(frozen=True)
class TrainingLabels:
    """The classes `pretrain.mode: labels` trains on: video id -> class number (train videos only), the class
    names, and a summary of what was read for the stage's report."""

    by_video: dict[str, int]
    names: list[str]
    summary: dict[str, object]


def read_training_labels(given: str | Path, manifest: str | Path, train_ids: Sequence[str]) -> TrainingLabels:
    """The classes of the labels CSV `given` for the videos `train_ids` train on (the manifest's train videos long
    enough to train). Labels of val, test and unused videos are read and counted but never trained on, so the
    videos evaluation measures stay unseen, and neither are random checks (`check` column, spread_labels.checks),
    so they still measure the names the new encoder gives; a LabelsError when train videos of fewer than two
    classes are left."""
    from slic.data.datasets import read_manifest

    given = Path(given)
    if not given.is_file():
        raise LabelsError(f"{given} not found: pretrain.mode labels trains on the classes of pretrain.labels; copy "
                          "your labels there (cp labels/given.csv labels/train/given.csv) or set another mode")
    table = read_manifest(manifest)
    read = read_labels_table(given, table["video_id"].astype(str).tolist(), table["path"].astype(str).tolist(),
                             videos="videos of the manifest", listed_in=str(manifest), purpose="training on labels")
    trainable = set(train_ids)
    ids, splits = table["video_id"].astype(str).to_numpy(), table["split"].astype(str).to_numpy()
    checks = read.check if read.check is not None else np.zeros(len(read.index), dtype=bool)
    by_video = {str(ids[i]): int(c) for i, c, checked in zip(read.index, read.label, checks)
                if ids[i] in trainable and not checked}
    used = sorted({read.names[c] for c in by_video.values()})
    if len(used) < 2:
        where = ", ".join(f"{s} {n}" for s, n in zip(*np.unique(splits[read.index], return_counts=True)))
        raise LabelsError(f"{given}: {len(by_video)} of its {len(read.index)} labelled videos ({where or 'none'}) "
                          f"are train videos long enough to train, of {len(used)} class(es): training on labels needs "
                          "train videos of at least two classes; label more of them (reports/label_next.csv)")
    renumber = {read.names.index(name): k for k, name in enumerate(used)}  # the classes of train videos, 0..K-1
    by_video = {video: renumber[c] for video, c in by_video.items()}
    outside = splits[read.index] != "train"
    summary = {"labels_file": str(given), "labelled_videos": int(len(read.index)),
               "labelled_train_videos": len(by_video), "label_classes": len(used),
               "labelled_outside_train": int(outside.sum()), "checks_left_out": int((checks & ~outside).sum()),
               "labelled_too_short": int((~outside & ~checks).sum()) - len(by_video)}
    return TrainingLabels(by_video=by_video, names=used, summary=summary)
