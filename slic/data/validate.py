"""Great Expectations suites on the manifest, run before anything trains (stage `validate`).

Two batches are checked: the manifest itself (one row per video, with three derived columns:
whether the file exists, whether its group also appears on the other side of the train/test
line, and how many frames extract stores at extract.fps) and a coverage table (one row per class
and split, with its number of usable videos).
A failure yields a short report naming the expectation, how many rows and a few examples.
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


@dataclass
class ValidationReport:
    """What `validate_manifest` found: overall success, failures and the full per-expectation results."""

    success: bool
    failures: list[Failure]
    results: list[dict[str, Any]]
    statistics: dict[str, Any]

    def summary(self) -> str:
        if self.success:
            return f"manifest valid: {self.statistics['evaluated_expectations']} expectations met"
        lines = [f"manifest invalid: {len(self.failures)} of {self.statistics['evaluated_expectations']} "
                 "expectations failed"]
        return "\n".join(lines + [f.line() for f in self.failures])


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


def _hint(column: str | None, index_column: str, labelled: bool) -> str:
    """What a person can do about a failed expectation on `column` (coverage's column is `videos`)."""
    if index_column == "case":
        return COVERAGE_HINT if labelled else UNLABELLED_COVERAGE_HINT
    return HINTS.get(column, REBUILD)


def _failures(result: Any, index_column: str, max_examples: int, labelled: bool = True) -> list[Failure]:
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
                                _hint(column, index_column, labelled)))
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
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in [n for n in logging.root.manager.loggerDict if n.startswith("great_expectations")] + [
            "great_expectations"]:  # GX sets levels on its own child loggers: quiet each (its temp-dir notices)
        logging.getLogger(name).setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
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
