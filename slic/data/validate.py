"""Great Expectations suites on the manifest (stage `validate`) and on extract's frame index (`validate_frames`,
inside stage `extract`), run before anything trains.

Two batches are checked: the manifest itself (one row per video, with three derived columns:
whether the file exists, whether its group also appears on the other side of the train/test
line, and how many frames extract stores at extract.fps) and a coverage table (one row per class
and split, with its number of usable videos).
A failure yields a short report naming the expectation, how many rows and a few examples. The frame index
is checked for what decoding can break and the manifest cannot show: shards on disk, and every class still
with a video in each split once the videos that failed to decode are left out.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from slic.data.datasets import (COLUMNS, SEGMENT_COLUMNS, SEGMENT_TIME_COLUMNS, extracted_frame_counts,
                                is_segmented)

SPLITS = ("train", "val", "test")
DERIVED = ["file_exists", "group_crosses_test", "extracted_frames"]


@dataclass
class Failure:
    """One failed expectation, summarised for a person."""

    expectation: str
    column: str | None
    unexpected_count: int
    examples: list[Any] = field(default_factory=list)
    hint: str = ""

    def line(self) -> str:
        where = f" on {self.column!r}" if self.column else ""
        shown = ", ".join(str(e) for e in self.examples)
        advice = f"\n  what to do: {self.hint}" if self.hint else ""
        return f"- {self.expectation}{where}: {self.unexpected_count} row(s), e.g. {shown}{advice}"


REBUILD = "rebuild the table with `dvc repro manifest` instead of editing it by hand"
HINTS: dict[str | None, str] = {  # by the failed expectation's column: what a person can do (else REBUILD)
    None: "the table is not a manifest slic wrote (columns or no rows): check manifest.root, manifest.layout "
          "and manifest.extensions, then " + REBUILD,
    "video_id": "two files give the same video id (the same name with another extension, or the same clip "
                "twice): remove or rename one of them",
    "label": "labels must number the classes 0..n-1 (-1 and no class for layout unlabelled): " + REBUILD,
    "class": "layout unlabelled lists no classes: set manifest.layout to the reader of your labels, or "
             + REBUILD,
    "file_exists": "these files moved or were deleted since the manifest was built: put them back, or run "
                   "`dvc repro manifest` to list what is there now",
    "group_crosses_test": "a group (the clips cut from one source video) sits both in test and in train/val, so "
                          "test would be seen in training: fix the split files so that each group is on one side",
    "extracted_frames": "a video of fewer frames than manifest.min_frames, counted at extract.fps when it is set, "
                        "was not excluded: " + REBUILD,
    "fps": "the container gives no frame rate: re-mux the file (ffmpeg -i IN -c copy OUT.mp4) or remove it",
    "start_frame": "a segment's frame range is not a range of its file: " + REBUILD,
    "stop_frame": "a segment's frame range is empty or reversed: " + REBUILD,
    "end_s": "a segment's time range is empty or reversed: " + REBUILD,
}
COVERAGE_HINT = ("every class needs a usable video in each split named: add videos to those classes, remove "
                 "their folders (or lines of the split files), or lower manifest.min_frames (or raise extract.fps) if "
                 "their videos were excluded as too short (reports/manifest.json lists each exclusion with its reason)")
UNLABELLED_COVERAGE_HINT = ("pretraining needs at least two usable videos: check manifest.root and "
                            "manifest.extensions, or lower manifest.min_frames or raise extract.fps "
                            "(reports/manifest.json says why each video was excluded)")


FRAMES_HINTS: dict[str | None, str] = {  # the extracted frames' index (`validate_frames`), by column
    "video_id": "data/frames/index.csv lists a video twice: run `dvc repro extract` again (intact shards are reused)",
    "shard_exists": "shards that index.csv lists are gone from the frames folder: run `dvc repro extract` again "
                    "(intact shards are reused, the missing ones extracted)",
    "extracted": "these videos were listed but not extracted: they could not be decoded, or were gone by then (the "
                 "error of each is in reports/extract.json, `failed`): re-encode, restore or remove them; the stages "
                 "after extract go on without them",
}
FRAMES_COVERAGE_HINT = ("after extraction a class has no video left in a split named (its videos could not be "
                        "decoded: reports/extract.json lists each under `failed`): re-encode or replace those files, "
                        "or remove the class")
UNLABELLED_FRAMES_COVERAGE_HINT = ("pretraining needs at least two extracted videos, and too few could be decoded "
                                   "(reports/extract.json lists each failure): re-encode or replace those files")
WARNING_COLUMNS = ("extracted",)  # reported, not blocking: a video that failed to decode is left out, by name


@dataclass
class ValidationReport:
    """What a validation found: overall success, failures (blocking) and warnings (reported only), and the full
    per-expectation results. `subject` names what was checked in its summary."""

    success: bool
    failures: list[Failure]
    results: list[dict[str, Any]]
    statistics: dict[str, Any]
    warnings: list[Failure] = field(default_factory=list)
    subject: str = "manifest"

    def summary(self) -> str:
        lines = [f"{self.subject} valid: {self.statistics['evaluated_expectations']} expectations met"
                 if self.success else f"{self.subject} invalid: {len(self.failures)} of "
                 f"{self.statistics['evaluated_expectations']} expectations failed"]
        lines += [f.line() for f in self.failures]
        if self.warnings:
            lines.append(f"{len(self.warnings)} warning(s), not blocking:")
            lines += [f.line() for f in self.warnings]
        return "\n".join(lines)


def with_derived_columns(manifest: pd.DataFrame, target_fps: float = 0.0) -> pd.DataFrame:
    """The manifest plus `file_exists`, `group_crosses_test` (a group in test and train/val) and
    `extracted_frames` (the frames extract stores for the row at extract.fps, `target_fps`; 0: its frames)."""
    table = manifest.copy()
    table["extracted_frames"] = extracted_frame_counts(manifest, target_fps)
    table["file_exists"] = [os.path.isfile(p) for p in table["path"]]
    sides = table[table["split"].isin(SPLITS)].assign(is_test=lambda t: t["split"] == "test")
    crossing = sides.groupby("group")["is_test"].nunique()
    crossing_groups = set(crossing[crossing > 1].index)
    table["group_crosses_test"] = table["group"].isin(crossing_groups) & table["split"].isin(SPLITS)
    return table


def coverage_table(manifest: pd.DataFrame, splits: tuple[str, ...] = SPLITS) -> pd.DataFrame:
    """Usable videos per (class, split), zeros included, so a class absent from a split shows up."""
    usable = manifest[manifest["excluded"] == ""]
    counts = usable.groupby(["class", "split"]).size()
    classes = sorted(manifest["class"].unique())
    return pd.DataFrame([{"class": c, "split": s, "videos": int(counts.get((c, s), 0)),
                          "case": f"{c or 'unlabelled'} in {s}"} for c in classes for s in splits])


def _label_expectations(gxe: Any, n_classes: int, labelled: bool) -> list[Any]:
    """Labels 0..n_classes-1; or, for the unlabelled layout, label -1 and an empty class on every row."""
    if labelled:
        return [gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=n_classes - 1)]
    return [gxe.ExpectColumnValuesToBeInSet(column="label", value_set=[-1]),
            gxe.ExpectColumnValuesToBeInSet(column="class", value_set=[""])]


def _manifest_suite(gxe: Any, n_classes: int, min_frames: int, labelled: bool = True,
                    segments: bool = False, timed: bool = False) -> list[Any]:
    from great_expectations.expectations.row_conditions import Column

    usable = Column("excluded") == ""  # excluded videos carry their reason instead
    times = SEGMENT_TIME_COLUMNS if segments and timed else []  # a segmented manifest from before them has none
    columns = COLUMNS + SEGMENT_COLUMNS + times if segments else COLUMNS
    suite = [
        gxe.ExpectTableColumnsToMatchSet(column_set=columns + DERIVED, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="video_id"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=[*SPLITS, "unused"]),
        *_label_expectations(gxe, n_classes, labelled),
        # only where a video is used: a row excluded as a missing file or a broken link (manifest.on_missing:
        # exclude, as Kinetics needs) names why it is gone
        gxe.ExpectColumnValuesToBeInSet(column="file_exists", value_set=[True], row_condition=usable),
        gxe.ExpectColumnValuesToBeInSet(column="group_crosses_test", value_set=[False]),
        gxe.ExpectColumnValuesToBeBetween(column="extracted_frames", min_value=min_frames, row_condition=usable),
        gxe.ExpectColumnValuesToBeBetween(column="fps", min_value=0, strict_min=True, row_condition=usable),
    ]
    suite += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]
    if segments:  # each row a non-empty frame range of its file
        suite += [gxe.ExpectColumnValuesToBeBetween(column="start_frame", min_value=0),
                  gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="stop_frame", column_B="start_frame",
                                                              row_condition=usable)]
    for column in ("label", "frames", "width", "height", *(SEGMENT_COLUMNS if segments else ())):
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=["int64", "int32"]))
    if times:  # and where it lies in the file, in seconds
        suite.append(gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="end_s", column_B="start_s",
                                                                 row_condition=usable))
    for column in ("fps", "duration", *times):
        suite.append(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=["float64", "float32"]))
    return suite


def _run(gx: Any, context: Any, name: str, frame: pd.DataFrame, expectations: list[Any],
         index_column: str) -> Any:
    source = context.data_sources.add_pandas(f"{name}_source")
    batch = source.add_dataframe_asset(name=name).add_batch_definition_whole_dataframe(f"{name}_batch")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite", expectations=expectations))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_validation", data=batch, suite=suite))
    return definition.run(batch_parameters={"dataframe": frame},
                          result_format={"result_format": "COMPLETE",
                                         "unexpected_index_column_names": [index_column]})


def _hint(column: str | None, index_column: str, labelled: bool, frames: bool = False) -> str:
    """What a person can do about a failed expectation on `column` (coverage's column is `videos`); `frames`: of
    the extracted frames' index rather than the manifest."""
    if index_column == "case":
        if frames:
            return FRAMES_COVERAGE_HINT if labelled else UNLABELLED_FRAMES_COVERAGE_HINT
        return COVERAGE_HINT if labelled else UNLABELLED_COVERAGE_HINT
    return FRAMES_HINTS.get(column, REBUILD) if frames else HINTS.get(column, REBUILD)


def _failures(result: Any, index_column: str, max_examples: int, labelled: bool = True,
              frames: bool = False) -> list[Failure]:
    failures = []
    for item in result.results:
        if item.success:
            continue
        config, details = item.expectation_config, item.result or {}
        column = config.kwargs.get("column") or config.kwargs.get("column_A")
        examples: list[Any] = []
        for entry in details.get("unexpected_index_list") or []:
            label = entry.get(index_column) if isinstance(entry, dict) else entry
            value = entry.get(column) if isinstance(entry, dict) and column else None
            value = value.item() if hasattr(value, "item") else value  # numpy scalar -> plain
            examples.append(f"{label} ({column}={value!r})" if value is not None else label)
        if not examples:
            examples = list(details.get("partial_unexpected_list") or [])
        if not examples and details.get("details"):
            examples = [details["details"]]
        if item.exception_info and item.exception_info.get("raised_exception"):
            examples = [item.exception_info.get("exception_message")]
        count = details.get("unexpected_count")
        failures.append(Failure(config.type, column, int(count) if count is not None else 1, examples[:max_examples],
                                _hint(column, index_column, labelled, frames)))
    return failures


def validate_manifest(manifest: pd.DataFrame, *, min_frames: int, max_examples: int = 5,
                      data_docs: str | Path | None = None, labelled: bool = True,
                      splits: tuple[str, ...] = SPLITS, target_fps: float = 0.0) -> ValidationReport:
    """Run the manifest and coverage suites; optionally build Great Expectations' HTML data docs.

    `labelled=False` (layout unlabelled): every label -1 and class empty, and coverage asks only for at
    least two usable train videos (what pretraining needs), since there are no classes, val or test.
    `splits`: the splits every class must have a usable video in (an eval set has no val: train and test).
    `target_fps` (extract.fps): min_frames counts the frames extract stores at that rate.
    """
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = _quiet_context(gx)
    n_classes = max(1, manifest["class"].nunique()) if len(manifest) else 1
    runs = [
        _run(gx, context, "manifest", with_derived_columns(manifest, target_fps),
             _manifest_suite(gxe, n_classes, min_frames, labelled, is_segmented(manifest),
                             set(SEGMENT_TIME_COLUMNS) <= set(manifest.columns)), "video_id"),
        _run(gx, context, "coverage", coverage_table(manifest, splits if labelled else ("train",)),
             [gxe.ExpectColumnValuesToBeBetween(column="videos", min_value=1 if labelled else 2)], "case"),
    ]
    if data_docs:
        docs = Path(data_docs).resolve()
        context.add_data_docs_site("slic", {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
        context.build_data_docs()
    failures = [f for run, key in zip(runs, ("video_id", "case"))
                for f in _failures(run, key, max_examples, labelled)]
    results = [r for run in runs for r in run.to_json_dict()["results"]]
    evaluated = sum(run.statistics["evaluated_expectations"] for run in runs)
    statistics = {"evaluated_expectations": evaluated, "failed_expectations": len(failures),
                  "videos": int(len(manifest)), "usable_videos": int((manifest["excluded"] == "").sum())}
    return ValidationReport(not failures, failures, results, statistics)


def _quiet_context(gx: Any) -> Any:
    """An ephemeral Great Expectations context without progress bars or its loggers' notices."""
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")] + [
            "great_expectations"]:  # GX sets levels on its own child loggers: quiet each (its temp-dir notices)
        logging.getLogger(name).setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def frames_table(manifest: pd.DataFrame, index: pd.DataFrame, frames_dir: str | Path) -> pd.DataFrame:
    """One row per manifest row that extract was given, and one per index row it was not: whether its shard was
    written (`extracted`: not a decode failure) and is still in `frames_dir` (`shard_exists`), with its split and
    class, so that what training will find can be checked before it starts."""
    listed = manifest[["video_id", "split", "class"]].assign(listed=True)
    shards = index[["video_id", "shard", "frames"]].assign(extracted=True)
    table = listed.merge(shards, on="video_id", how="outer")
    table["listed"] = table["listed"].astype("boolean").fillna(False).astype(bool)
    table["extracted"] = table["extracted"].astype("boolean").fillna(False).astype(bool)
    table["shard_exists"] = [bool(isinstance(shard, str) and (Path(frames_dir) / shard).is_file())
                             for shard in table["shard"]]
    return table.fillna({"split": "", "class": "", "shard": ""})


def validate_frames(manifest: pd.DataFrame, index: pd.DataFrame, frames_dir: str | Path, *, labelled: bool = True,
                    splits: tuple[str, ...] = SPLITS, max_examples: int = 5) -> ValidationReport:
    """Great Expectations on the extracted frames' index before anything trains: no video listed twice, every
    listed shard on disk, and every class still with a video in each of `splits` (unlabelled: at least two train
    videos) once the videos that could not be decoded are left out. Those are named as a warning, not a failure:
    extract reports each with its error and the stages after it go on without them."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    context = _quiet_context(gx)
    table = frames_table(manifest, index, frames_dir)
    written = Column("extracted") == True  # noqa: E712 - GX's condition, not a Python comparison
    suite = [gxe.ExpectColumnValuesToBeUnique(column="video_id"),
             gxe.ExpectColumnValuesToBeInSet(column="shard_exists", value_set=[True], row_condition=written),
             gxe.ExpectColumnValuesToBeInSet(column="extracted", value_set=[True])]
    listed = table[table["listed"]]  # a class whose every video failed still counts, with none left
    listed = listed.assign(excluded=["" if done else "not extracted" for done in listed["extracted"]])
    runs = [_run(gx, context, "frames", table, suite, "video_id"),
            _run(gx, context, "frames_coverage", coverage_table(listed, splits if labelled else ("train",)),
                 [gxe.ExpectColumnValuesToBeBetween(column="videos", min_value=1 if labelled else 2)], "case")]
    found = [f for run, key in zip(runs, ("video_id", "case"))
             for f in _failures(run, key, max_examples, labelled, frames=True)]
    failures = [f for f in found if f.column not in WARNING_COLUMNS]
    statistics = {"evaluated_expectations": sum(run.statistics["evaluated_expectations"] for run in runs),
                  "failed_expectations": len(failures), "videos": int(table["listed"].sum()),
                  "extracted_videos": int((listed["excluded"] == "").sum())}
    return ValidationReport(not failures, failures, [r for run in runs for r in run.to_json_dict()["results"]],
                            statistics, [f for f in found if f.column in WARNING_COLUMNS], "frame index")


def frames_report(manifest: pd.DataFrame, frames_dir: str | Path, splits: tuple[str, ...] = SPLITS) -> dict[str, Any]:
    """`validate_frames` on the index extract wrote into `frames_dir` for `manifest`, as a section of the stage's
    report: success, statistics, failures, warnings and the summary to print. When every listed video has one
    shard, on disk, the index is the validated manifest's (whose coverage `validate` checked) and nothing can
    fail: that is said without starting Great Expectations (a 4-5 s import on every extract)."""
    from slic.data.datasets import has_labels
    from slic.data.frames import read_index

    index = read_index(frames_dir)
    table = frames_table(manifest, index, frames_dir)
    if len(table) == len(manifest) == len(index) and bool((table["listed"] & table["shard_exists"]).all()):
        return {"success": True, "evaluated_expectations": 0, "failed_expectations": 0, "videos": len(manifest),
                "extracted_videos": len(index), "failures": [], "warnings": [],
                "summary": f"frame index complete: all {len(index)} listed videos extracted, each shard on disk"}
    checked = validate_frames(manifest, index, frames_dir, labelled=has_labels(manifest), splits=splits)
    return {"success": checked.success, **checked.statistics, "failures": [vars(f) for f in checked.failures],
            "warnings": [vars(f) for f in checked.warnings], "summary": checked.summary()}
