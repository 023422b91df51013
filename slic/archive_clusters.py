"""Stage `clusters`: the embedded videos grouped by what the encoder sees in them, to browse an archive by motion
and to pick the videos worth labelling first.

FINCH (`slic.clustering.finch_groups`, the clustering SLIC trains with) on the embeddings: the coarsest level of its
hierarchy with at least `clusters.groups` clusters, merged one closest pair at a time down to that many (or k-means
with that many). Groups are numbered largest first; inside a group the members are ranked by cosine similarity to
the group's mean direction, so its first member is its most typical video. Writes every video's group to a CSV, a
JSON report (the levels, the sizes and, when the videos have classes, how far the groups agree with them) and an
HTML page of the largest groups with animated thumbnails of their most typical members.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slic.clustering import cluster_agreement, cluster_sums, finch_groups, kmeans
from slic.faiss_backend import l2_normalize
from slic.report import STYLE, VideoCells, video_captions, write_page

GROUPS_IN_REPORT = 10  # the largest groups described in the JSON report (all of them are in the CSV)


class ClustersError(RuntimeError):
    """The stage cannot group these embeddings; the message names the file or key and what to do."""


@dataclass(frozen=True)
class Grouping:
    """Each video's group (0 = the largest), its cosine similarity to the group's mean direction and its rank in
    the group (0 = the most typical); with FINCH, the number of groups at each level and the level used."""

    labels: np.ndarray
    centre_cosine: np.ndarray
    rank: np.ndarray
    level_counts: tuple[int, ...] = ()
    level: int | None = None

    @property
    def sizes(self) -> np.ndarray:
        """Members per group, group 0 first (largest first)."""
        return np.bincount(self.labels, minlength=int(self.labels.max(initial=-1)) + 1)


def largest_first(labels: np.ndarray) -> np.ndarray:
    """Group ids renumbered by size, largest first; equal sizes keep the order of their smallest member."""
    labels = np.asarray(labels, dtype=np.int64)
    sizes = np.bincount(labels)
    first = np.full(len(sizes), len(labels), dtype=np.int64)
    np.minimum.at(first, labels, np.arange(len(labels)))
    present = np.flatnonzero(sizes)
    order = present[np.lexsort((first[present], -sizes[present]))]
    new_id = np.empty(len(sizes), dtype=np.int64)
    new_id[order] = np.arange(len(order))
    return new_id[labels]


def typicality(unit: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unit vector's cosine similarity to its group's mean direction, and its rank in the group by that
    (0 = nearest the centre; ties by position)."""
    count = int(labels.max(initial=-1)) + 1
    centres = l2_normalize(cluster_sums(unit, labels))
    cosine = np.einsum("nd,nd->n", unit.astype(np.float64), centres[labels].astype(np.float64))
    order = np.lexsort((np.arange(len(labels)), -cosine, labels))
    rank = np.empty(len(labels), dtype=np.int64)
    starts = np.searchsorted(labels[order], np.arange(count))
    rank[order] = np.arange(len(labels)) - np.repeat(starts, np.bincount(labels, minlength=count))
    return cosine.astype(np.float32), rank


def group_embeddings(vectors: np.ndarray, *, method: str, groups: int, seed: int = 7,
                     use_gpu: bool | None = None, n_init: int = 10) -> Grouping:
    """Group the videos' embeddings into `groups` (fewer when FINCH's first partition has fewer clusters, or there
    are fewer videos): `finch` merges its hierarchy's level above `groups` one closest pair at a time, `kmeans`
    runs k-means (the best of `n_init` starts)."""
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    unit = l2_normalize(vectors)
    if len(unit) == 0:
        raise ValueError("no embedded video to group")
    level_counts: tuple[int, ...] = ()
    level = None
    if method == "finch":
        labels, counts, level = finch_groups(unit, groups, use_gpu=use_gpu)
        level_counts = tuple(counts)
    elif method == "kmeans":
        labels = kmeans(unit, min(groups, len(unit)), n_init=n_init, seed=seed, use_gpu=use_gpu)
    else:
        raise ValueError(f"unknown method {method!r}; expected finch or kmeans")
    labels = largest_first(labels)
    cosine, rank = typicality(unit, labels)
    return Grouping(labels, cosine, rank, level_counts, level)


def class_agreement(labels: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
    """How far the groups follow the classes (never used to group): AMI and NMI, purity (the share of videos in
    their group's most common class) and, per group, that class and its share. Videos without a class (empty
    name) are left out."""
    classes = np.asarray(classes, dtype=str)
    known = classes != ""
    kept, names = labels[known], classes[known]
    majority: dict[int, tuple[str, float]] = {}
    for group in np.unique(kept):
        values, counts = np.unique(names[kept == group], return_counts=True)
        best = int(np.argmax(counts))
        majority[int(group)] = (str(values[best]), float(counts[best] / counts.sum()))
    matched = sum(share * int((kept == group).sum()) for group, (_, share) in majority.items())
    return {"videos_with_class": int(known.sum()), "classes": int(len(np.unique(names))),
            **cluster_agreement(names, kept), "purity": float(matched / max(len(kept), 1)), "majority": majority}


def _selected(data: Mapping[str, np.ndarray], split: str) -> np.ndarray:
    """Indices of the embedded videos of `split` (`all`: every one)."""
    if split == "all":
        return np.arange(len(data["video_id"]))
    chosen = np.flatnonzero(np.asarray(data["split"]).astype(str) == split)
    if not len(chosen):
        found = ", ".join(sorted(set(np.asarray(data["split"]).astype(str)))) or "none"
        raise ClustersError(f"clusters.split = {split}: no embedded video is in that split (splits found: {found}); "
                            "set clusters.split to one of them or to all")
    return chosen


def file_spans(manifest: str | Path) -> dict[str, tuple[str, str, str]]:
    """video_id -> (file path, start_s, end_s) from the manifest; the times are empty for a whole file."""
    from slic.data.datasets import read_manifest, segment_spans

    if not Path(manifest).is_file():
        return {}
    table = read_manifest(manifest)
    starts, ends = segment_spans(table)

    def seconds(value: float) -> str:
        return "" if np.isnan(value) else f"{value:.3f}"

    return {video_id: (path, seconds(start), seconds(end))
            for video_id, path, start, end in zip(table["video_id"], table["path"], starts, ends)}


def write_groups_csv(out: str | Path, grouping: Grouping, ids: np.ndarray, splits: np.ndarray, classes: np.ndarray,
                     files: Mapping[str, tuple[str, str, str]]) -> Path:
    """Every video with its group, rank in the group and cosine to the group's centre, group by group (the largest
    first) and inside a group the most typical first: the first row of each group is the video to label first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sizes = grouping.sizes
    order = np.lexsort((grouping.rank, grouping.labels))
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "group", "rank_in_group", "group_size", "centre_cosine", "split", "class", "path",
                         "start_s", "end_s"])
        for i in order:
            path, start, end = files.get(str(ids[i]), ("", "", ""))
            writer.writerow([ids[i], grouping.labels[i], grouping.rank[i], sizes[grouping.labels[i]],
                             f"{grouping.centre_cosine[i]:.4f}", splits[i], classes[i], path, start, end])
    return out


def cluster_archive(embeddings: str | Path, *, manifest: str | Path, frames_dir: str | Path, method: str,
                    groups: int, split: str, seed: int, table: str | Path, page: str | Path, html_groups: int,
                    html_members: int) -> dict[str, Any]:
    """Group the embedded videos of `split`, write the CSV (`table`) and the HTML page (`page`); returns the
    stage's report. The arguments are the `clusters` section of params.yaml and where extract wrote the frames."""
    if not Path(embeddings).is_file():
        raise ClustersError(f"{embeddings} not found: the embed stage writes it; run `dvc repro embed` first (or "
                            "point clusters.embeddings at an embeddings file)")
    data = dict(np.load(embeddings))
    chosen = _selected(data, split)
    if not len(chosen):
        raise ClustersError(f"{embeddings} holds no embedded video: check the embed stage's report "
                            "(reports/embed.json)")
    ids = np.asarray(data["video_id"]).astype(str)[chosen]
    broken = ~np.isfinite(data["embedding"][chosen]).all(axis=1)
    if broken.any():
        raise ClustersError(f"{embeddings}: {int(broken.sum())} of {len(ids)} videos have NaN or infinite embeddings "
                            f"(e.g. {', '.join(ids[broken][:3])}): the encoder diverged (see the loss in "
                            "reports/pretrain.json); retrain, then rerun embed")
    splits = np.asarray(data["split"]).astype(str)[chosen]
    labelled = np.asarray(data["label"])[chosen] >= 0
    classes = np.where(labelled, np.asarray(data["class_name"]).astype(str)[chosen], "")
    grouping = group_embeddings(data["embedding"][chosen], method=method, groups=groups, seed=seed)
    sizes = grouping.sizes
    report: dict[str, Any] = {
        "embeddings": str(embeddings), "split": split, "method": method, "groups_asked": groups,
        "videos": int(len(ids)), "groups": int(len(sizes)), "largest_group": int(sizes.max()),
        "median_group": float(np.median(sizes)), "single_video_groups": int((sizes == 1).sum()),
        "mean_centre_cosine": float(grouping.centre_cosine.mean())}
    if method == "finch":
        report["finch_levels"] = list(grouping.level_counts)
        report["finch_level"] = grouping.level
    if len(sizes) < groups:
        why = ("there are only that many videos" if len(sizes) == len(ids) else
               "FINCH's first partition has only that many clusters (method: kmeans makes more)")
        report["note"] = f"{len(sizes)} groups, not the {groups} of clusters.groups: {why}"
    agreement = class_agreement(grouping.labels, classes) if labelled.any() else None
    report["labelled"] = agreement is not None
    if agreement is not None:
        report.update({key: agreement[key] for key in ("ami", "nmi", "purity", "classes", "videos_with_class")})
    described = []
    for group in range(min(GROUPS_IN_REPORT, len(sizes))):
        members = np.flatnonzero(grouping.labels == group)
        entry: dict[str, Any] = {"group": group, "videos": int(sizes[group]),
                                 "most_typical": str(ids[members[np.argmin(grouping.rank[members])]])}
        if agreement is not None and group in agreement["majority"]:
            entry["majority_class"], entry["majority_share"] = agreement["majority"][group]
        described.append(entry)
    report["largest_groups"] = described
    files = file_spans(manifest)
    report["table"] = str(write_groups_csv(table, grouping, ids, splits, classes, files))
    shown = write_groups_html(page, report, grouping, ids, classes, frames_dir=frames_dir, manifest=manifest,
                              groups_shown=html_groups, members_shown=html_members,
                              majority=agreement["majority"] if agreement else {})
    report["html"] = shown["path"]
    report["missing_thumbnails"] = shown["missing_thumbnails"]
    return report


GROUP_STYLE = (".mark.member { background: #59636e; } .group { margin: 0 0 12px; padding-bottom: 12px; "
               "border-bottom: 1px solid #d0d7de; } .group ol { display: flex; flex-wrap: wrap; gap: 8px; "
               "list-style: none; margin: 0; padding: 0; } .group h2 { font-size: 16px; margin: 0 0 6px; } "
               "#summary td:last-child, #summary th:last-child { text-align: left; }")


def _summary_table(report: Mapping[str, Any]) -> str:
    """The report's numbers as a table, each with what it says."""
    rows = [("videos", report["videos"], "embedded videos grouped"),
            ("groups", report["groups"], f"asked for {report['groups_asked']} (clusters.groups)"),
            ("largest_group", report["largest_group"], "videos in the largest group"),
            ("single_video_groups", report["single_video_groups"], "groups of one video (outliers, or unlike "
             "anything else)"),
            ("mean_centre_cosine", f"{report['mean_centre_cosine']:.3f}", "mean cosine similarity of a video to its "
             "group's mean direction (near 1: tight groups)")]
    if report["labelled"]:
        rows += [("ami", f"{report['ami']:.3f}", f"adjusted mutual information with the {report['classes']} classes "
                  "(0: no more than chance, 1: the classes exactly)"),
                 ("nmi", f"{report['nmi']:.3f}", "normalised mutual information with the classes"),
                 ("purity", f"{report['purity']:.3f}", "share of videos in their group's most common class (rises "
                  "with the number of groups)")]
    body = "".join(f'<tr data-key="{key}"><td>{key}</td><td>{value}</td><td>{html.escape(what)}</td></tr>'
                   for key, value, what in rows)
    return (f'<table id="summary"><thead><tr><th>measure</th><th>value</th><th>what it says</th></tr></thead>'
            f"<tbody>{body}</tbody></table>")


def write_groups_html(out: str | Path, report: Mapping[str, Any], grouping: Grouping, ids: np.ndarray,
                      classes: np.ndarray, *, frames_dir: str | Path, manifest: str | Path, groups_shown: int,
                      members_shown: int, majority: Mapping[int, tuple[str, float]]) -> dict[str, Any]:
    """The page of the `clusters` stage: the report's numbers, then the largest `groups_shown` groups, each with
    its `members_shown` most typical members as animated thumbnails (from the frame shards). Returns what
    `slic.report.write_retrieval_html` returns."""
    paths = video_captions(Path(manifest))
    cells = VideoCells(ids, frames_dir, paths)
    sizes = grouping.sizes
    sections = []
    for group in range(min(groups_shown, len(sizes))):
        members = np.flatnonzero(grouping.labels == group)
        members = members[np.argsort(grouping.rank[members], kind="stable")][:members_shown]
        # numbered as clusters.csv's `group` and `rank_in_group` (and label_next's), so the page and the table agree
        heading = f"Group {group}: {sizes[group]} video{'s' if sizes[group] != 1 else ''}"
        if group in majority:
            name, share = majority[group]
            heading += f", {100 * share:.0f}% {name}"
        more = sizes[group] - len(members)
        tail = f"<p>and {more} more in the table.</p>" if more > 0 else ""
        items = "".join(cells(int(i), "member", f"cos {grouping.centre_cosine[i]:.3f}", mark=f"rank {rank}",
                              class_name=classes[i] or None) for rank, i in enumerate(members))
        sections.append(f'<section class="group" data-group="{group}" data-size="{sizes[group]}">'
                        f"<h2>{html.escape(heading)}</h2><ol>{items}</ol>{tail}</section>")
    how = f"k-means with k = {report['groups']} (clusters.groups = {report['groups_asked']})"
    if report["method"] == "finch":
        level, counts = report["finch_level"], report["finch_levels"]
        how = (f"FINCH (the clustering SLIC trains with): its levels hold {', '.join(map(str, counts))} groups; "
               + (f"level {level} as it is" if counts[level] == report["groups"] else
                  f"level {level} merged one closest pair at a time down to {report['groups']}")
               + f" (clusters.groups = {report['groups_asked']})")
    title = "Groups of videos"
    note = "" if paths else f"<p>{html.escape(str(manifest))} not found: videos are named by id.</p>"
    if "note" in report:
        note += f'<p id="note">{html.escape(report["note"], quote=False)}.</p>'
    which = "all splits" if report["split"] == "all" else html.escape(report["split"]) + " split"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}{GROUP_STYLE}</style></head><body><h1>{title}</h1>"
            f"<p>The {report['videos']} videos of <code>{html.escape(report['embeddings'])}</code> "
            f"({which}) grouped by cosine similarity of their embeddings: "
            f"{html.escape(how)}. Largest group first; in each, the videos nearest the group's mean direction first "
            f"(cos: cosine similarity to it), so the first is the one to look at, or to label, first. Every video's "
            f"group is in <code>{html.escape(report['table'])}</code>.</p>{_summary_table(report)}{note}"
            f'<p id="shown">{len(sections)} of {len(sizes)} groups shown, up to {members_shown} videos each.</p>'
            f"{''.join(sections)}</body></html>\n")
    return write_page(out, page, cells, queries_shown=len(sections), k_shown=members_shown)
