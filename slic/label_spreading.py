"""Stage `spread_labels`: the classes a user gave a few videos, spread to every video of the archive by the
encoder, and the videos worth labelling next.

A user with an unlabelled archive looks at the `clusters` stage's groups, names the classes of some videos in a
CSV (`spread_labels.given`, by default labels/given.csv: `video_id` or `path`, and `class`) and reruns. Every video
then takes the class of its most similar labelled video (cosine of the embeddings), and says which one: a reason a
user can check by looking at the two. Its margin (how much nearer that video is than the nearest labelled video of
any other class) sorts the likely right from the likely wrong. What to label next: before any label, each
`clusters` group's most typical video; after, the archive is split by k-means into as many groups as there will be
labels, and the most typical video of each group no label reaches is next (the least sure videos fill a short
list). On ucf101_6 (bench/spread_labels.py) label spreading over the neighbour graph named no more videos rightly,
and these suggestions beat labelling the least sure videos and labelling at random.

How well it names the rest is estimated from the user's own labels (each labelled video named from the others),
and, when the manifest has classes, measured against them.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slic.labels_table import GivenLabels, LabelsError, read_labels_table
from slic.retrieval import normalize_rows

LABELS_FOLDER = "labels"  # the folder dvc.yaml lists as the stage's dependency: the given labels live here
MIN_FOR_ESTIMATE = 10  # labelled videos (of classes labelled twice or more) before the leave-one-out share
LABEL_NEXT_COLUMNS = ["video_id", "class", "guess", "margin", "why", "check", "group", "path", "start_s",
                      "end_s"]


class SpreadError(RuntimeError):
    """The given labels, or an input of the stage, cannot be used; the message names the file, line and fix."""


@dataclass(frozen=True)
class Archive:
    """The videos of the clusters table, in its order, with their embeddings (unit rows) and groups."""

    ids: np.ndarray
    unit: np.ndarray
    group: np.ndarray
    rank: np.ndarray
    split: np.ndarray
    manifest_class: np.ndarray
    path: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray


def load_archive(embeddings: str | Path, clusters_table: str | Path) -> Archive:
    """The videos the clusters stage grouped (its CSV), with their embeddings from `embeddings`."""
    for path, stage in ((embeddings, "embed"), (clusters_table, "clusters")):
        if not Path(path).is_file():
            raise SpreadError(f"{path} not found: the {stage} stage writes it; run `dvc repro {stage}` first")
    with Path(clusters_table).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise SpreadError(f"{clusters_table} lists no video: rerun `dvc repro clusters` (see reports/clusters.json)")
    vectors = vectors_of(embeddings, [row["video_id"] for row in rows], f"{clusters_table} names",
                         "the two are from different runs; run `dvc repro clusters`")

    def column(name: str) -> np.ndarray:
        return np.array([row.get(name, "") or "" for row in rows], dtype=object)

    return Archive(ids=column("video_id").astype(str), unit=normalize_rows(vectors).astype(np.float64),
                   group=np.array([int(row["group"]) for row in rows]),
                   rank=np.array([int(row["rank_in_group"]) for row in rows]), split=column("split"),
                   manifest_class=column("class"), path=column("path"), start_s=column("start_s"),
                   end_s=column("end_s"))


def vectors_of(embeddings: str | Path, ids: Sequence[str], named_in: str, advice: str) -> np.ndarray:
    """The embedding rows of `ids`, in their order, from the embed stage's `embeddings`; a SpreadError naming the
    first missing one ('<named_in> N videos <embeddings> lacks', then `advice`) when the two are from other runs."""
    data = np.load(embeddings)
    where = {str(video_id): i for i, video_id in enumerate(np.asarray(data["video_id"]).astype(str))}
    missing = [video_id for video_id in ids if video_id not in where]
    if missing:
        raise SpreadError(f"{named_in} {len(missing)} videos {embeddings} lacks (e.g. {missing[0]}): {advice}")
    return data["embedding"][[where[video_id] for video_id in ids]]


def encoder_trained_on(embeddings: str | Path) -> set[str]:
    """The videos whose given class the encoder of `embeddings` trained on (pretrain.mode labels; the embed stage
    keeps them from the checkpoint); empty for an encoder trained without labels, or embeddings from before."""
    data = np.load(embeddings)
    return set(np.asarray(data["trained_on"]).astype(str).tolist()) if "trained_on" in data.files else set()


def read_given_labels(given: str | Path, archive: Archive) -> GivenLabels:
    """The user's CSV of classes (slic.labels_table says what it may hold) for the videos of the clusters table: a
    `video_id` column names them by the ids of reports/clusters.csv, a `path` column by their files (every segment
    of a long file takes its class)."""
    try:
        return read_labels_table(given, archive.ids.tolist(), archive.path.tolist(), videos="grouped videos",
                                 listed_in="reports/clusters.csv", purpose="spreading")
    except LabelsError as exc:
        raise SpreadError(str(exc)) from None


@dataclass(frozen=True)
class Named:
    """Each video's class from its most similar labelled video: the class number, that video (a row of the
    archive), the cosine similarity to it, the next likeliest class and the margin between the two (the nearest
    labelled video of the class against the nearest of any other; 0: a tie)."""

    label: np.ndarray
    source: np.ndarray
    similarity: np.ndarray
    runner_up: np.ndarray
    margin: np.ndarray


def name_by_nearest(unit: np.ndarray, index: np.ndarray, label: np.ndarray, classes: int, *,
                    block: int = 4096) -> Named:
    """Every row of `unit` named by its most cosine-similar labelled row (`index`, with class numbers `label`), in
    blocks of rows so an archive of any size fits in memory. A labelled row finds itself. With one class, the
    runner-up is that class and the margin its similarity plus one."""
    named = name_by_vectors(unit, unit[index], label, classes, block=block)
    return Named(label=named.label, source=index[named.source], similarity=named.similarity,
                 runner_up=named.runner_up, margin=named.margin)


def name_by_vectors(unit: np.ndarray, labelled: np.ndarray, label: np.ndarray, classes: int, *,
                    block: int = 4096) -> Named:
    """`name_by_nearest` against labelled unit vectors given apart (`labelled`, class numbers `label`): `source`
    is then a position in `labelled`. What names a query that is not a video of the archive."""
    n = len(unit)
    best = np.full((n, classes), -np.inf)
    source = np.zeros((n, classes), dtype=np.int64)
    members_of = [np.flatnonzero(label == c) for c in range(classes)]
    for start in range(0, n, block):
        sims = unit[start:start + block] @ labelled.T
        for c, members in enumerate(members_of):
            if len(members):
                at = np.argmax(sims[:, members], axis=1)
                best[start:start + block, c] = sims[np.arange(len(sims)), members[at]]
                source[start:start + block, c] = members[at]
    order = np.argsort(-best, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1] if classes > 1 else order[:, 0]
    rows = np.arange(n)
    similarity = best[rows, top]
    other = best[rows, second] if classes > 1 else np.full(n, -1.0)
    return Named(label=top, source=source[rows, top], similarity=similarity, runner_up=second,
                 margin=similarity - np.where(np.isfinite(other), other, -1.0))


@dataclass(frozen=True)
class LabelledVectors:
    """The labelled videos of a spread_labels table with their embeddings (unit rows): what names a new video."""

    ids: np.ndarray
    unit: np.ndarray
    label: np.ndarray
    names: list[str]


def labelled_vectors(table: str | Path, embeddings: str | Path) -> LabelledVectors | None:
    """The given videos of the spread_labels stage's `table` with their vectors from the embed stage's
    `embeddings` (the encoder the index was built with). None when the table is absent or lists no given video;
    a SpreadError when the embeddings lack one of them (the two are from different runs)."""
    if not Path(table).is_file():
        return None
    with Path(table).open(newline="", encoding="utf-8") as handle:
        given = [(row["video_id"], row["class"]) for row in csv.DictReader(handle) if row.get("source") == "given"]
    if not given:
        return None
    if not Path(embeddings).is_file():
        raise SpreadError(f"{embeddings} not found: the labelled videos of {table} have no vectors to name a query by")
    vectors = vectors_of(embeddings, [video_id for video_id, _ in given], f"{table} names",
                         "run `dvc repro` so the two come from one run")
    names = sorted({name for _, name in given})
    return LabelledVectors(ids=np.array([video_id for video_id, _ in given]),
                           unit=normalize_rows(vectors).astype(np.float64),
                           label=np.array([names.index(name) for _, name in given]), names=names)


def name_queries(queries: np.ndarray, labelled: LabelledVectors) -> list[dict[str, Any]]:
    """Each query vector named as the stage names an archive video: the class of its most similar labelled
    video, that video, the similarity, the runner-up class and the margin."""
    named = name_by_vectors(normalize_rows(queries).astype(np.float64), labelled.unit, labelled.label,
                            len(labelled.names))
    return [{"class": labelled.names[named.label[i]], "like": str(labelled.ids[named.source[i]]),
             "similarity": round(float(named.similarity[i]), 4),
             "runner_up": labelled.names[named.runner_up[i]] if len(labelled.names) > 1 else None,
             "margin": round(float(named.margin[i]), 4)} for i in range(len(queries))]


def named_by_the_others(unit: np.ndarray, given: GivenLabels, rows: np.ndarray) -> np.ndarray:
    """The class numbers the other labelled videos give the labelled videos at positions `rows` of `given` (each
    by its most similar labelled video but itself): how the leave-one-out share and the checks are measured."""
    sims = unit[given.index[rows]] @ unit[given.index].T
    sims[np.arange(len(rows)), rows] = -np.inf
    return given.label[np.argmax(sims, axis=1)]


def leave_one_out_accuracy(unit: np.ndarray, given: GivenLabels, counted: np.ndarray | None = None) -> float | None:
    """The share of labelled videos named rightly from the other labelled videos: an estimate from the user's own
    labels. A video whose class has no other label cannot be named rightly and is not counted (a class labelled
    once), nor is one outside `counted` (a mask over the labelled videos: those the encoder did not train on);
    None below MIN_FOR_ESTIMATE counted videos."""
    counts = np.bincount(given.label, minlength=len(given.names))
    rows = np.flatnonzero((counts[given.label] > 1) & (True if counted is None else counted))
    if len(rows) < MIN_FOR_ESTIMATE:
        return None
    return float((named_by_the_others(unit, given, rows) == given.label[rows]).mean())


def checked_accuracy(unit: np.ndarray, given: GivenLabels) -> dict[str, Any] | None:
    """The share of the random checks (videos label_next drew at random, then labelled) named rightly by all the
    other labels, with its 95% Wilson interval: an estimate of the share of all videos named rightly, unbiased
    where the leave-one-out share is not, because the suggestions never steer around a check. None without checks."""
    if given.check is None or not given.check.any():
        return None
    rows = np.flatnonzero(given.check)
    right = int((named_by_the_others(unit, given, rows) == given.label[rows]).sum())
    n, z = len(rows), 1.96
    share = right / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"checks": n, "right": right, "share": round(share, 4),
            "interval": [round(float(max(0.0, centre - half)), 4), round(float(min(1.0, centre + half)), 4)]}


def random_checks(archive: Archive, taken: set[int], count: int, seed: int) -> list[tuple[int, str]]:
    """`count` videos drawn at random (seeded by `seed`: each round draws anew) from those not in `taken`, each
    with why: once labelled, they measure how often videos are named rightly."""
    free = np.setdiff1d(np.arange(len(archive.ids)), np.array(sorted(taken), dtype=np.int64))
    drawn = np.random.default_rng(seed).choice(free, min(count, len(free)), replace=False)
    return [(int(i), "a random check: labelled, it measures how often videos are named rightly") for i in drawn]


def finer_groups(archive: Archive, labelled: np.ndarray, count: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """The archive split by k-means into as many groups as there will be labels after this round (labelled +
    `count`), with each video's rank by typicality: the groups a next round should reach. (groups, rank).
    Three k-means starts, not the clusters stage's ten: on ucf101_6's train and val videos they chose next
    videos as well (bench/spread_labels.py) at a third of the time (100k videos: 13 s against 41 s)."""
    from slic.archive_clusters import group_embeddings

    grouping = group_embeddings(archive.unit.astype(np.float32), method="kmeans",
                                groups=min(len(labelled) + count, len(archive.ids)), seed=seed, n_init=3)
    return grouping.labels, grouping.rank


def label_next(archive: Archive, labelled: np.ndarray, margin: np.ndarray | None, count: int,
               finer: tuple[np.ndarray, np.ndarray] | None = None,
               exclude: set[int] | None = None, passed_over: set[int] | None = None) -> list[tuple[int, str]]:
    """Up to `count` (video, why) to label next: the most typical video of each group no label reaches, largest
    group first (the clusters stage's groups; with `finer`, those of `finer_groups`), then the unlabelled videos
    whose two likeliest classes are closest (`margin`, when labels exist). `exclude`: videos labelled but not
    counted as reaching their group (the random checks), never suggested; `passed_over`: videos the user left
    without a class (none of their classes, or not to be told), never suggested again: a group whose most typical
    video was passed over is offered its next most typical."""
    passed_over = passed_over or set()
    exclude = (exclude or set()) | passed_over
    groups, rank = finer if finer is not None else (archive.group, archive.rank)
    where = "a group of similar videos" if finer is not None else "group {}"
    covered = set(groups[labelled].tolist())
    sizes = np.bincount(groups)
    picks: list[tuple[int, str]] = []
    typical: dict[int, int] = {}  # group -> its most typical video not passed over
    for i in np.lexsort((rank, groups)):
        if int(groups[i]) not in typical and int(i) not in passed_over:
            typical[int(groups[i])] = int(i)
    for group in sorted(typical, key=lambda g: (-sizes[g], typical[g])):  # ties: by the video, as listed
        if group not in covered and typical[group] not in exclude and len(picks) < count:
            i = typical[group]
            which = "most typical video" if rank[i] == 0 else "most typical video you have not passed over"
            picks.append((i, f"the {which} of {where.format(group)}, where no video is labelled"))
    if margin is not None:
        taken = set(labelled.tolist()) | exclude | {i for i, _ in picks}
        for i in np.argsort(margin, kind="stable"):
            if len(picks) >= count:
                break
            if int(i) not in taken:
                picks.append((int(i), f"least sure: its two likeliest classes {margin[i]:.2f} apart"))
    return picks


def _write_csv(out: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return out


TABLE_COLUMNS = ["video_id", "class", "source", "like", "similarity", "runner_up", "margin", "group", "split", "path",
                 "start_s", "end_s"]
UNSURE_MARGIN = 0.05  # below it, the two likeliest classes' nearest labelled videos are about as similar


def spread_archive(*, embeddings: str | Path, clusters_table: str | Path, given: str | Path, suggest: int,
                   table: str | Path, next_table: str | Path, page: str | Path, frames_dir: str | Path,
                   manifest: str | Path, checks: int = 0) -> dict[str, Any]:
    """The stage: read the archive and the user's labels (none when `given` is absent), name every video by its
    most similar labelled video, write every video's class (`table`: given ones first in each class, then the
    surest), what to label next (`next_table`, and `page` with thumbnails; `checks` of the `suggest` drawn at
    random, marked in its check column); returns the report."""
    archive = load_archive(embeddings, clusters_table)
    n = len(archive.ids)
    report: dict[str, Any] = {"given_file": str(given), "videos": n}
    labels = read_given_labels(given, archive) if Path(given).is_file() else None
    report["given"] = 0 if labels is None else int(len(labels.index))
    blank = np.full(n, "", dtype=object)
    guess, source, like, runner_up = blank.copy(), blank.copy(), blank.copy(), blank.copy()
    similarity, margin = np.zeros(n), None
    labelled = np.zeros(0, dtype=np.int64)
    checked = np.zeros(0, dtype=bool)
    if labels is None or not len(labels.index):
        report["note"] = (f"no labels in {given} yet: fill in the class column of {next_table} (each group's most "
                          f"typical video; {page} shows them), save it as {given}, then `dvc repro`")
    else:
        named = name_by_nearest(archive.unit, labels.index, labels.label, len(labels.names))
        names = np.array(labels.names, dtype=object)
        guess, runner_up = names[named.label], names[named.runner_up]
        similarity, margin = named.similarity, named.margin
        like = archive.ids[named.source].astype(object)
        guess[labels.index] = names[labels.label]
        source[:] = "nearest"
        source[labels.index] = "given"
        like[labels.index] = ""
        labelled = labels.index
        checked = labels.check if labels.check is not None else np.zeros(len(labelled), dtype=bool)
        trained = np.isin(archive.ids[labelled], sorted(encoder_trained_on(embeddings)))
        rest = source == "nearest"
        report.update({
            "rows_without_class": labels.rows_without_class, "classes": len(labels.names),
            "per_class": {name: {"given": int((labels.label == c).sum()), "named": int((guess[rest] == name).sum())}
                          for c, name in enumerate(labels.names)},
            "unsure_share": round(float((margin[rest] < UNSURE_MARGIN).mean()), 4) if rest.any() else None,
            "leave_one_out_accuracy": leave_one_out_accuracy(archive.unit, labels, ~trained)})
        if trained.any():  # the encoder pulled these together: naming them from each other would flatter it
            report["labels_trained_on"] = int(trained.sum())
        measured = checked_accuracy(archive.unit, labels)
        if measured is not None:
            report["checked"] = measured
        if report["leave_one_out_accuracy"] is None and trained.any():
            report["note"] = (f"the encoder trained on {int(trained.sum())} of your {len(labelled)} labels "
                              "(pretrain.mode labels), and naming them from each other would flatter it: too few "
                              f"others ({MIN_FOR_ESTIMATE} needed) for the leave-one-out share; random checks "
                              "(spread_labels.checks), never trained on, measure it")
        elif report["leave_one_out_accuracy"] is None:
            report["note"] = (f"{len(labels.index)} labels: too few to estimate the accuracy (it needs "
                              f"{MIN_FOR_ESTIMATE} videos of classes labelled more than once); label the videos "
                              f"of {next_table}")
        known = rest & np.isin(archive.manifest_class, labels.names)
        if known.any():  # a labelled dataset: the manifest's classes judge the named ones
            report["agreement_with_manifest"] = round(float((guess[known] == archive.manifest_class[known]).mean()), 4)
            report["videos_with_manifest_class"] = int(known.sum())
    order = np.lexsort((-(margin if margin is not None else np.zeros(n)), source != "given", guess.astype(str)))
    named_rows = source == "nearest"  # a given video's own columns stay empty: its class is the user's
    report["table"] = str(_write_csv(table, TABLE_COLUMNS, [
        [archive.ids[i], guess[i], source[i], like[i], f"{similarity[i]:.4f}" if named_rows[i] else "",
         runner_up[i] if named_rows[i] else "", f"{margin[i]:.4f}" if named_rows[i] else "", archive.group[i],
         archive.split[i], archive.path[i], archive.start_s[i], archive.end_s[i]] for i in order]))
    drawn = min(checks, suggest)
    reaching = labelled[~checked]  # a random check does not count as reaching its group: nothing steers round it
    finer = finer_groups(archive, reaching, suggest - drawn) if len(labelled) and suggest > drawn else None
    passed_over = set() if labels is None else set(labels.passed_over.tolist())  # rows left without a class
    picks = label_next(archive, reaching, margin, suggest - drawn, finer, exclude=set(labelled.tolist()),
                       passed_over=passed_over)
    random_picks = random_checks(archive, set(labelled.tolist()) | passed_over | {i for i, _ in picks}, drawn,
                                 seed=len(labelled))
    picks += random_picks
    is_check = {i for i, _ in random_picks}
    report["next_table"] = str(_write_csv(next_table, LABEL_NEXT_COLUMNS, [
        [archive.ids[i], "", guess[i], f"{margin[i]:.4f}" if margin is not None else "", why,
         "yes" if i in is_check else "", archive.group[i], archive.path[i], archive.start_s[i], archive.end_s[i]]
        for i, why in picks]))
    report["suggested"] = len(picks)
    report["label_next"] = [{"video_id": str(archive.ids[i]), "why": why} for i, why in picks[:10]]
    shown = _write_next_page(page, report, archive, picks, guess, like, frames_dir, manifest)
    report["html"], report["missing_thumbnails"] = shown["path"], shown["missing_thumbnails"]
    return report


def checked_line(checked: Mapping[str, Any]) -> str:
    """The random checks' measurement in words: 'the other labels name 15 of 20 random checks rightly (75%, 95%
    interval 53-89%)'."""
    low, high = checked["interval"]
    return (f"the other labels name {checked['right']} of {checked['checks']} random checks rightly "
            f"({100 * checked['share']:.0f}%, 95% interval {100 * low:.0f}-{100 * high:.0f}%)")


def _write_next_page(out: str | Path, report: Mapping[str, Any], archive: Archive, picks: list[tuple[int, str]],
                     guess: np.ndarray, like: np.ndarray, frames_dir: str | Path,
                     manifest: str | Path) -> dict[str, Any]:
    """The page to label from: each video to label next as an animated thumbnail with why, and the class its most
    similar labelled video would give it."""
    from slic.report import STYLE, VideoCells, video_captions, write_page

    cells = VideoCells(archive.ids, frames_dir, video_captions(Path(manifest)))
    items = []
    for number, (i, why) in enumerate(picks, start=1):
        said = html.escape(why) + (f"<br>guess: {html.escape(str(guess[i]))}, like "
                                   f"<code>{html.escape(str(like[i]))}</code>" if guess[i] else "")
        items.append(cells(i, "member", said, mark=f"#{number}"))  # #n: row n of the next table; the path below
    if report["given"]:
        state = (f"{report['given']} videos labelled in <code>{html.escape(report['given_file'])}</code>; every "
                 f"video named by its most similar labelled one in <code>{html.escape(report['table'])}</code>")
        estimate = report.get("leave_one_out_accuracy")
        trained = report.get("labels_trained_on")
        if estimate is not None:
            state += (f"; {100 * estimate:.0f}% of your labelled videos"
                      f"{' the encoder did not train on' if trained else ''} are named rightly from the others (on "
                      "ucf101_6 this ran below the share of the rest named rightly)")
        if trained:
            state += f"; the encoder trained on {trained} of them (pretrain.mode labels)"
        if "checked" in report:
            state += "; " + checked_line(report["checked"])
    else:
        state = "no video is labelled yet: these are the groups' most typical videos"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Videos to label next</title>'
            f"<style>{STYLE}.mark.member {{ background: #59636e; }} ol.next {{ display: flex; flex-wrap: wrap; "
            f"gap: 8px; list-style: none; padding: 0; }}</style></head><body><h1>Videos to label next</h1>"
            f'<p id="state">{state}.</p><p>Write each one\'s class in the class column of '
            f"<code>{html.escape(report['next_table'])}</code> (leave a row's class empty to pass it over: it is "
            "not suggested again), add the rows to "
            f"<code>{html.escape(report['given_file'])}</code> and run <code>dvc repro</code>.</p>"
            f'<ol class="next">{"".join(items)}</ol></body></html>\n')
    return write_page(out, page, cells, queries_shown=len(items), k_shown=1)
