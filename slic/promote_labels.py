"""Promote's comparison where the videos have no classes: the candidate and the champion judged on your labels.

An archive of the `unlabelled` layout gives pretrain no validation metric, so `promote` could only keep the alias
where it was. Once you have labelled some videos (labels/README.md), the labels file `promote.labels` (by default
labels/train/given.csv, the one `pretrain.mode: labels` trains on) holds a fair judge: the labelled videos that
neither encoder trained on (each checkpoint keeps the labels it trained on; random checks, the `check` column, are
never trained on). Each of those is a query, every other labelled video the gallery (leaving out its own recording,
as `slic search --other-recordings`), embedded with one centre clip as pretrain's validation does; recall@1 is the
share whose nearest labelled video has its class. Both encoders are measured on the same queries and gallery, the
frames on disk now, so the two numbers compare whatever data either was trained on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MIN_HELD_OUT = 10  # fewer labelled videos neither encoder trained on: no comparison (one video would be 10 points)


@dataclass(frozen=True)
class LabelsComparison:
    """Recall@1 of the held-out labelled videos for both encoders, or why there is none (`why_not`)."""

    candidate: float | None
    champion: float | None
    held_out: int  # the queries: labelled videos with frames that neither encoder trained on
    labelled: int  # labelled videos with frames for both encoders: the gallery
    classes: int  # classes among them
    why_not: str = ""
    only_candidate: int = 0  # queries the candidate names rightly and the champion does not: what the lead rests on
    only_champion: int = 0  # and the other way round
    # mean pairwise cosine of each encoder's embeddings of the labelled videos: near 1, an untrained or collapsed one
    candidate_alike: float | None = None
    champion_alike: float | None = None


def sign_test_p(only_candidate: int, only_champion: int) -> float:
    """Two-sided exact sign test (McNemar's) over the held-out videos only one encoder names rightly: the chance of a
    split at least this uneven if both were as good. 1.0 when none differ."""
    from math import comb

    differing = only_candidate + only_champion
    fewer = min(only_candidate, only_champion)
    tail = sum(comb(differing, k) for k in range(fewer + 1)) / 2**differing
    return min(1.0, 2 * tail)


def no_labels_file(labels_file: str | Path) -> str:
    """Why there is nothing to compare on when `labels_file` is missing, and the command that fills it."""
    return (f"there is no {labels_file} (promote.labels) to compare the encoders on: label videos (labels/README.md) "
            f"and cp labels/given.csv {labels_file}")


def labelled_shards(labels_file: str | Path, manifest: str | Path, frames_dir: str | Path, *, clip_len: int,
                    frame_step: int) -> tuple[list[Any], list[str]]:
    """The videos of `labels_file` that have frames in `frames_dir` (any split; at least one clip of `clip_len` at
    `frame_step`), each with its given class number as label, and the class names. Reads the labels file as
    `spread_labels` and `pretrain` do, so its errors are theirs (slic.labels_table.LabelsError)."""
    from slic.data.clips import load_videos
    from slic.data.datasets import read_manifest
    from slic.labels_table import read_labels_table

    table = read_manifest(manifest)
    given = read_labels_table(labels_file, table["video_id"].astype(str).tolist(), table["path"].astype(str).tolist(),
                              videos="videos of the manifest", listed_in=str(manifest), purpose="comparing encoders")
    classes = {str(table["video_id"].iloc[i]): int(c) for i, c in zip(given.index, given.label)}
    shards = load_videos(manifest, frames_dir, splits=sorted(set(table["split"].astype(str))), min_frames=clip_len,
                         frame_step=frame_step)
    return [dataclasses.replace(v, label=classes[v.video_id], class_name=given.names[classes[v.video_id]])
            for v in shards if v.video_id in classes], given.names


def centre_embeddings(encoder: Any, shards: list[Any]) -> np.ndarray:
    """(n, d) embeddings of `shards` by `encoder` (a slic.serving.VideoEncoder), one centre clip each: pretrain's
    validation protocol, at the encoder's own clip length and size."""
    from slic.config import PretrainConfig
    from slic.distributed import World
    from slic.pretrain import embed_videos

    device = next(encoder.model.parameters()).device
    cfg = PretrainConfig(clip_len=encoder.clip_len, size=encoder.size, workers=0,
                         bf16=bool(encoder.config.get("bf16", True)))
    return embed_videos(encoder.model, shards, protocol="centre", cfg=cfg, world=World(0, 1, 0, device))


def held_out_hits(encoder: Any, shards: list[Any], queries: np.ndarray, recordings: np.ndarray | None,
                  embeddings: np.ndarray | None = None) -> np.ndarray:
    """For each of the `queries` rows of `shards` (their given classes as labels), whether its nearest other row has
    its class, a query's own recording left out (`recordings`, each row's; None: only itself), embedded by
    `encoder` (centre_embeddings; or `embeddings` already made so). Its mean is the held-out recall@1."""
    from slic.retrieval import nearest_others

    rows = np.flatnonzero(queries)
    vectors = centre_embeddings(encoder, shards) if embeddings is None else embeddings
    nearest, _ = nearest_others(vectors, 1, rows=rows, files=recordings)
    labels = np.array([v.label for v in shards])
    return labels[nearest[:, 0]] == labels[rows]


def compare_on_labels(labels_file: str | Path, candidate: Any, champion: Any, manifest: str | Path,
                      frames_dir: str | Path) -> LabelsComparison:
    """Both encoders (slic.serving.VideoEncoder, each with the `trained_labels` of its checkpoint) on the labelled
    videos of `labels_file` that neither trained on; `why_not` says what is missing when that cannot be done."""
    from slic.retrieval import files_of, mean_pairwise_cosine, normalize_rows, source_units

    labels_file = Path(labels_file)
    if not labels_file.is_file():
        return LabelsComparison(None, None, 0, 0, 0, no_labels_file(labels_file))
    sampling = [(e.clip_len, e.frame_step) for e in (candidate, champion)]
    read = {(clip_len, step): labelled_shards(labels_file, manifest, frames_dir, clip_len=clip_len, frame_step=step)
            for clip_len, step in set(sampling)}  # read once when both encoders sample clips alike
    each = [read[key] for key in sampling]
    both = {v.video_id for v in each[0][0]} & {v.video_id for v in each[1][0]}
    shards = [[v for v in found if v.video_id in both] for found, _ in each]
    trained = set(candidate.trained_labels) | set(champion.trained_labels)
    queries = np.array([v.video_id not in trained for v in shards[0]], dtype=bool)
    classes = len({v.label for v in shards[0]})
    counts = (int(queries.sum()), len(shards[0]), classes)
    if counts[0] < MIN_HELD_OUT or classes < 2:
        return LabelsComparison(None, None, *counts, (
            f"{counts[0]} of the {counts[1]} labelled videos of {labels_file} with frames ({classes} classes) are "
            f"held out (neither encoder trained on their labels); comparing needs {MIN_HELD_OUT} or more of two or "
            "more classes: mark random checks (spread_labels.checks) or label more videos"))
    units, _ = source_units(manifest)
    recordings = files_of(np.array([v.video_id for v in shards[0]]), units)
    vectors = [centre_embeddings(encoder, found) for encoder, found in zip((candidate, champion), shards)]
    ours, theirs = (held_out_hits(encoder, found, queries, recordings, embeddings=v)
                    for encoder, found, v in zip((candidate, champion), shards, vectors))
    alike = [round(mean_pairwise_cosine(normalize_rows(v)), 4) for v in vectors]
    return LabelsComparison(float(ours.mean()), float(theirs.mean()), *counts,
                            only_candidate=int((ours & ~theirs).sum()), only_champion=int((theirs & ~ours).sum()),
                            candidate_alike=alike[0], champion_alike=alike[1])
