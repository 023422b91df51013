"""`slic search PATH`: find the indexed videos most similar to a video file or to every video in a folder.

Each query is decoded with PyAV and embedded with the encoder that embedded the index's videos (the checkpoint
named in data/index/index.json, IIC protocol via slic.serving.VideoEncoder), or with the same weights from a
registered MLflow model (`--model models:/slic-encoder@champion`) or another file (`--model path/to/best.pt`;
other weights are refused: their vectors live in another embedding space), then looked up
in the saved FAISS index; `--start`/`--end` embed only that stretch of one file (a moment of a long video),
`--other-files` leaves out the hits made from the query's own file.  A query that cannot be decoded gets one
line on stderr and the others still get answers; the exit code is 1 when any query failed, 2 for usage errors
(no index, no such path, a --model other than the index's encoder, a time outside the file).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from slic.file_hash import file_sha256
from slic.index import IndexBuildError, LoadedIndex, load_index, search

if TYPE_CHECKING:
    from slic.serving import VideoEncoder


class FileEncoder(Protocol):
    """What search needs of an encoder (slic.serving.VideoEncoder): embeddings of video files, in order."""

    def embed_files(self, paths: list[Path], workers: int = 0, spans: list[tuple[int, int] | None] | None = None,
                    ) -> Iterator[tuple[int, np.ndarray | None, str]]:
        """(position, embedding or None, why the file could not be decoded, or the warnings beside an embedding: a
        file shorter than one clip, one decoded past damaged packets) per path (or its frames in spans)."""
        ...


class SearchUsageError(ValueError):
    """A problem with the command line or the files it names; exit code 2."""


def find_videos(path: str | Path, extensions: tuple[str, ...]) -> list[Path]:
    """The file itself, or every file under the folder (recursively) whose extension is a video one, sorted (links
    whose target is gone too: `search_videos` names them among the errors)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SearchUsageError(f"{path}: no such file or folder")
    from slic.data.video import is_video_path

    wanted = {e.lower() for e in extensions}
    videos = sorted(p for p in path.rglob("*") if is_video_path(p, wanted))  # a broken link is a query that fails
    if not videos:
        raise SearchUsageError(f"{path}: no videos ({', '.join(extensions)}) in this folder")
    return videos


def find_each(items: Sequence[str | Path], extensions: tuple[str, ...]) -> tuple[list[Path], list[dict[str, str]]]:
    """(the videos of every item, in order; {query, error} for each item that gives none: not there, a broken link,
    a folder without videos): one missing item of several is named among the errors while the others are searched,
    as an undecodable file is."""
    from slic.data.video import path_problem

    videos: list[Path] = []
    failures: list[dict[str, str]] = []
    for item in (Path(name).expanduser() for name in items):
        try:
            videos += find_videos(item, extensions)
        except SearchUsageError as exc:
            said = str(exc).removeprefix(f"{item}: ")
            failures.append({"query": str(item), "error": said if item.is_dir() else path_problem(item) or said})
    return videos, failures


def index_encoder(loaded: LoadedIndex, warn: Callable[[str], None]) -> VideoEncoder:
    """The index's own checkpoint (the encoder that made the gallery embeddings), with the index's clip count."""
    checkpoint = Path(loaded.meta["checkpoint"])
    if not checkpoint.is_file():
        raise SearchUsageError(f"{checkpoint}: the index's checkpoint is missing; run `dvc repro index` "
                               "or pass --model")
    recorded = loaded.meta.get("checkpoint_sha256", "")
    if recorded and file_sha256(checkpoint) != recorded:
        warn(f"warning: {checkpoint} changed since the index was built; run `dvc repro index` to re-embed it")
    return _checkpoint_file_encoder(checkpoint, int(loaded.meta.get("clips", 10)))


def model_encoder(model: str, clips: int = 10) -> VideoEncoder:
    """A checkpoint file written by `pretrain` (e.g. data/models/pretrain/best.pt) or a registered MLflow model
    (e.g. models:/slic-encoder@champion) as a VideoEncoder taking `clips` IIC clips per video; a model that
    cannot be loaded is a SearchUsageError that says how to get one."""
    from slic import registry
    from slic.serving import encoder_of

    if model.endswith(".pt") or Path(model).is_file():
        return _checkpoint_file_encoder(Path(model), clips)
    try:
        encoder = encoder_of(registry.load_model(model))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for an unknown or unreachable model
        raise SearchUsageError(f"cannot load model {model}: {(str(exc).splitlines() or [type(exc).__name__])[0]}; "
                               "`dvc repro promote` registers the champion, or pass a "
                               "checkpoint, e.g. --model data/models/pretrain/best.pt") from exc
    encoder.clips = clips
    return encoder


def require_index_encoder(encoder: VideoEncoder, loaded: LoadedIndex, model: str) -> None:
    """Refuse a --model whose weights are not those that embedded the index: its query vectors would lie in another
    embedding space than the gallery's, and the hits would mean nothing (e.g. a champion that `promote` kept while
    a newer encoder was indexed). An index from before the checkpoint's hash was recorded cannot be checked."""
    recorded = loaded.meta.get("checkpoint_sha256", "")
    if recorded and file_sha256(encoder.checkpoint) != recorded:
        raise SearchUsageError(f"--model {model} is another encoder than the one that embedded the index "
                               f"({loaded.meta['checkpoint']}): its query vectors cannot be compared with the index's; "
                               "search without --model, or index the archive with that encoder (embed.checkpoint, "
                               "then `dvc repro index`)")


def _checkpoint_file_encoder(checkpoint: Path, clips: int) -> VideoEncoder:
    """A pretrain checkpoint as a VideoEncoder (IIC protocol, `clips` clips), on the GPU when there is one."""
    from slic.serving import VideoEncoder

    if not checkpoint.is_file():
        raise SearchUsageError(f"{checkpoint}: no such checkpoint; `dvc repro pretrain` writes "
                               "data/models/pretrain/best.pt")
    try:
        return VideoEncoder.on_best_device(checkpoint, clips)
    except Exception as exc:  # noqa: BLE001 - torch.load and load_state_dict raise many types for a wrong file
        raise SearchUsageError(f"{checkpoint}: not a slic encoder checkpoint ({type(exc).__name__}: "
                               f"{(str(exc).splitlines() or [''])[0]}); pass a file written by `slic pretrain`, "
                               "e.g. data/models/pretrain/best.pt") from exc


def search_videos(videos: list[Path], encoder: FileEncoder, loaded: LoadedIndex, k: int, workers: int = 0,
                  spans: list[QuerySpan | None] | None = None, other_files: bool = False, per_file: int = 0,
                  other_recordings: bool = False, per_recording: int = 0,
                  namer: QueryNamer | None = None,
                  ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(answers, errors): the k nearest indexed videos per query that could be embedded, an error per other,
    both in the order of `videos`.  `workers` loader processes decode the next queries while the encoder embeds
    (a folder of queries); all the embedded queries are then looked up in one batched FAISS search.  A query's
    `spans` entry embeds only that stretch of its file (`query_span`); `other_files` leaves out the hits from
    the query's own file (the moments around a stretch of an indexed recording, or the indexed file itself);
    `per_file` > 0 keeps at most that many hits from any one file (the best moments of k different recordings,
    not k neighbouring segments of one), searching deeper until k are found or the index is exhausted.
    `other_recordings` and `per_recording` do the same by recording (`_row_recordings`: UCF101's group, the clips
    manifest.group_pattern names one recording, a file's segments): the query file's own recording is that of its
    indexed rows, so an indexed clip's sibling clips are left out with it. `namer` (`query_namer`) gives each
    answer a `named` class from the videos the user labelled."""
    spans = spans if spans is not None else [None] * len(videos)
    frames = [None if span is None else (span.start_frame, span.stop_frame) for span in spans]
    embedded: list[tuple[int, np.ndarray]] = []
    errors = []
    notes: dict[int, str] = {}  # shorter than one clip, damaged packets passed over: answered, with the warning
    for position, vector, error in encoder.embed_files(videos, workers, frames):
        if vector is None:
            errors.append({"query": str(videos[position]), "error": error})
            continue
        if error:
            notes[position] = error
        if vector.shape[-1] != loaded.index.d:
            raise SearchUsageError(f"the encoder gives {vector.shape[-1]}-d embeddings but the index holds "
                                   f"{loaded.index.d}-d ones; use the index's checkpoint or rebuild the index")
        embedded.append((position, vector))
    if not embedded:
        return [], errors
    file_of = _row_files(loaded) if other_files or per_file or other_recordings or per_recording else {}
    recording_of = _row_recordings(loaded, file_of) if other_recordings or per_recording else {}
    rows_of_file = _rows_of(file_of) if other_files or other_recordings else {}
    rows_of_recording = _rows_of(recording_of) if other_recordings else {}
    file_rows = [rows_of_file.get(os.path.realpath(videos[position]), set()) for position, _ in embedded]
    own_rows = [_own_rows(rows, recording_of, rows_of_recording) for rows in file_rows]
    caps = [(unit_of, cap) for unit_of, cap in ((file_of, per_file), (recording_of, per_recording)) if cap > 0]
    normalize = loaded.meta.get("metric", "cosine") == "cosine"
    queries = np.stack([v for _, v in embedded]).astype(np.float32)
    depth = min(k + max(len(rows) for rows in own_rows), loaded.index.ntotal)
    while True:
        sims, ids = search(loaded.index, queries, depth, normalize=normalize)
        kept_all = [_kept(row_ids, row_sims, own, caps, k) for row_ids, row_sims, own in zip(ids, sims, own_rows)]
        if not caps or depth >= loaded.index.ntotal or all(len(kept) == k for kept in kept_all):
            break
        depth = min(4 * depth, loaded.index.ntotal)  # a file's segments (a recording's clips) filled the list
    names = namer(queries) if namer is not None else [None] * len(embedded)
    answers = []
    for (position, _), kept, named, rows in zip(embedded, kept_all, names, file_rows):
        span = spans[position]
        answers.append({"query": str(videos[position]), **({"named": named} if named is not None else {}),
                        **({"note": notes[position]} if position in notes else {}),
                        **({"in_index": bool(rows)} if other_recordings else {}),  # else its recording is unknown
                        "start_s": None if span is None else span.start_s,
                        "end_s": None if span is None else span.end_s,
                        "results": with_given_classes(ranked_hits(
                            loaded, np.array([i for i, _ in kept], dtype=np.int64),
                            np.array([s for _, s in kept], dtype=np.float32)), namer)})
    return answers, errors


@dataclass(frozen=True)
class QuerySpan:
    """A stretch of a query file: its frames [start_frame, stop_frame) and where they lie, in seconds."""

    start_frame: int
    stop_frame: int
    start_s: float
    end_s: float


def parse_time(text: str, flag: str) -> float:
    """Seconds from `SS[.s]`, `MM:SS[.s]` or `HH:MM:SS[.s]`: a time in a video, written as search prints one."""
    parts = text.strip().split(":")
    try:
        values = [float(part) for part in parts]
        if (len(values) > 3 or not all(math.isfinite(v) and v >= 0 for v in values)
                or any(v >= 60 for v in values[1:])):  # nan and inf parse as floats
            raise ValueError(text)
    except ValueError:
        raise SearchUsageError(f"{flag} {text!r}: expected seconds (176.9) or [hh:]mm:ss[.s] (2:56.9)") from None
    seconds = 0.0
    for value in values:
        seconds = seconds * 60 + value
    return seconds


def query_span(video: Path, start_s: float | None, end_s: float | None,
               names: tuple[str, str] = ("--start", "--end")) -> QuerySpan:
    """The frames of `video` from `start_s` to `end_s` (its start and its end when None), by its frames' times
    (`FrameClock`: a variable-rate file's timestamps, as the index times its segments); a time past the file's end,
    or an end before the start, is a SearchUsageError that gives the file's length and names the option (`names`:
    the command's flags, or `slic serve`'s keys)."""
    from slic.data.video import DECODE_ERRORS, clock, clock_of, decode_error_line, file_timeline, time_span

    try:
        line = file_timeline(video)
    except DECODE_ERRORS as exc:
        raise SearchUsageError(f"{video}: {decode_error_line(video, exc)}") from exc
    if not line.fps or not line.frames:
        raise SearchUsageError(f"{video}: the file gives no frame rate or no frames, so no time in it can be "
                               "found; search it whole (without --start and --end)")
    frames = clock_of(line)
    length = frames.length
    start = 0.0 if start_s is None else start_s
    end = length if end_s is None else min(end_s, length)
    if start >= length:
        raise SearchUsageError(f"{names[0]} {clock(start)} is past the end of {video} ({clock(length)} long)")
    if end <= start:
        raise SearchUsageError(f"{names[1]} must come after {names[0]} (got {time_span(start, end)}) in {video}")
    first = min(frames.frame(start), line.frames - 1)
    stop = max(first + 1, min(frames.frame(end), line.frames))
    return QuerySpan(first, stop, round(frames.seconds(first), 3), round(frames.seconds(stop), 3))


def _kept(row_ids: np.ndarray, row_sims: np.ndarray, own: set[int], caps: list[tuple[dict[int, str], int]],
          k: int) -> list[tuple[int, float]]:
    """The first k of one query's ranked (row, similarity), leaving out `own` rows and, for each (unit of a row,
    cap) in `caps` (a row's file, its recording), the rows of a unit once it has `cap` hits (FAISS's -1 ids are
    passed on: `ranked_hits` drops them)."""
    kept: list[tuple[int, float]] = []
    counts: list[dict[str, int]] = [{} for _ in caps]
    for row, sim in zip(row_ids, row_sims):
        row = int(row)
        if row in own:
            continue
        if row >= 0:
            units = [unit_of.get(row, "") for unit_of, _ in caps]
            if any(count.get(unit, 0) >= cap for unit, count, (_, cap) in zip(units, counts, caps)):
                continue
            for unit, count in zip(units, counts):
                count[unit] = count.get(unit, 0) + 1
        kept.append((row, float(sim)))
        if len(kept) == k:
            break
    return kept


def _row_files(loaded: LoadedIndex) -> dict[int, str]:
    """Each index row's (a whole video's or a segment's) file, by its real path (a link resolves to its target; a
    copy under another name is another file)."""
    return {int(row): os.path.realpath(path) for row, path in zip(loaded.rows.index, loaded.rows["path"].astype(str))}


def _row_recordings(loaded: LoadedIndex, file_of: dict[int, str]) -> dict[int, str]:
    """Each index row's recording: the manifest's group the index stage stored (rows.csv `recording`: UCF101's
    class and g number, what manifest.group_pattern names, else the file), or its file (`file_of`) where there is
    none (an added video, an index built before recordings were stored)."""
    column = loaded.rows["recording"].astype(str) if "recording" in loaded.rows.columns else None
    recordings = {}
    for position, row in enumerate(loaded.rows.index):
        named = "" if column is None else column.iloc[position]
        recordings[int(row)] = f"recording:{named}" if named else f"file:{file_of[int(row)]}"
    return recordings


def _rows_of(unit_of: dict[int, str]) -> dict[str, set[int]]:
    """The rows of each unit (a file, a recording): `unit_of` turned around."""
    rows: dict[str, set[int]] = {}
    for row, unit in unit_of.items():
        rows.setdefault(unit, set()).add(row)
    return rows


def _own_rows(file_rows: set[int], recording_of: dict[int, str], rows_of_recording: dict[str, set[int]]) -> set[int]:
    """The rows of the query's own file (`file_rows`), and every row of their recordings when `rows_of_recording`
    is given (--other-recordings)."""
    if not rows_of_recording:
        return file_rows
    return file_rows.union(*(rows_of_recording[recording_of[row]] for row in file_rows))


def ranked_hits(loaded: LoadedIndex, ids: np.ndarray, sims: np.ndarray) -> list[dict[str, Any]]:
    """One query's ranked neighbours (FAISS's -1 ids, fewer indexed videos than k, left out); a segment of a long
    video (manifest.segment_seconds) says where in its file it lies, in seconds (null for a whole video)."""
    recorded = "recording" in loaded.rows.columns
    return [{"rank": rank, "video_id": loaded.rows.at[i, "video_id"], "path": loaded.rows.at[i, "path"],
             "class": loaded.rows.at[i, "class"] or None, "similarity": round(float(s), 6),
             "start_s": _seconds(loaded.rows, i, "start_s"), "end_s": _seconds(loaded.rows, i, "end_s"),
             "recording": (loaded.rows.at[i, "recording"] or None) if recorded else None}
            for rank, (i, s) in enumerate(((int(i), s) for i, s in zip(ids, sims) if i >= 0), start=1)]


def _seconds(rows: Any, row: int, column: str) -> float | None:
    """A row's time in its file, or None (a whole video, an added one, or an index without segments)."""
    if column not in rows.columns:
        return None
    value = pd.to_numeric(rows.at[row, column], errors="coerce")
    return None if pd.isna(value) else float(value)


def format_table(answer: dict[str, Any]) -> str:
    """One query's ranked neighbours as an aligned text table."""
    hits = answer["results"]
    classes = [h["class"] or "-" for h in hits]  # "-": an unlabelled video has no class
    width = max([len("class")] + [len(name) for name in classes])
    lines = [f"query: {answer['query']}{_span(answer)}"]
    named = answer.get("named")
    if named:  # the class of its most similar labelled video (spread_labels)
        runner_up = f", runner-up {named['runner_up']}" if named["runner_up"] else ""
        lines.append(f"named: {named['class']} (like {named['like']}, similarity {named['similarity']:.4f}, "
                     f"margin {named['margin']:.4f}{runner_up})")
    lines.append(f"{'rank':>4}  {'similarity':>10}  {'class':<{width}}  path")
    lines += [f"{h['rank']:>4}  {h['similarity']:>10.4f}  {name:<{width}}  {h['path']}{_span(h)}"
              for h, name in zip(hits, classes)]
    return "\n".join(lines)


def _span(hit: dict[str, Any]) -> str:
    """Where a segment (or a query's stretch) lies in its file, as ` [mm:ss-mm:ss]` (nothing for a whole video)."""
    from slic.data.video import time_span

    return "" if hit.get("start_s") is None else f" [{time_span(hit['start_s'], hit['end_s'])}]"


def params_defaults(params: str) -> tuple[tuple[str, ...], str, int, str]:
    """Video extensions, index folder, decoding workers (embed.workers) and the spread_labels table from
    params.yaml (the built-in defaults when there is no file)."""
    from slic.config import Config, load

    config = load(params) if Path(params).is_file() else Config()
    return config.manifest.extensions, config.index.out, config.embed.workers, config.spread_labels.table


@dataclass(frozen=True)
class QueryNamer:
    """Names query vectors by the videos the user labelled (`name_queries`), and knows those videos' classes: a hit
    that is one of them shows its class where the index has none (an unlabelled archive)."""

    labelled: Any  # slic.label_spreading.LabelledVectors

    def __call__(self, queries: np.ndarray) -> list[dict[str, Any]]:
        from slic.label_spreading import name_queries

        return name_queries(queries, self.labelled)

    @functools.cached_property
    def given_classes(self) -> dict[str, str]:
        """video_id -> the class the user gave it (made once, read for every hit)."""
        return {str(i): self.labelled.names[c] for i, c in zip(self.labelled.ids, self.labelled.label)}


def with_given_classes(hits: list[dict[str, Any]], namer: QueryNamer | None) -> list[dict[str, Any]]:
    """`hits` where a video without a class in the index is one the user labelled: its class is theirs, marked
    `"labelled": true` (before, every hit of an unlabelled archive read `-`, those the user named too)."""
    given = namer.given_classes if namer is not None else {}
    for hit in hits:
        if hit["class"] is None and hit["video_id"] in given:
            hit["class"], hit["labelled"] = given[hit["video_id"]], True
    return hits


def query_namer(labels_table: str, loaded: LoadedIndex, model: str,
                warn: Callable[[str], None]) -> QueryNamer | None:
    """What names each query by the videos the user labelled (the spread_labels stage's `labels_table`, its given
    rows with their vectors from the embeddings the index was built from), as that stage names an archive video;
    None when nothing is labelled, or when --model's weights cannot be checked against the index's (an old index)."""
    table = Path(labels_table)
    base = loaded.meta.get("base_dir")
    if not table.is_absolute() and not table.is_file() and base:  # searched from outside the checkout
        table = Path(base) / table
    if not table.is_file():
        return None
    from slic.label_spreading import SpreadError, labelled_vectors

    try:
        labelled = labelled_vectors(table, loaded.meta.get("embeddings", ""))
    except SpreadError as exc:
        warn(f"queries not named by your labels: {exc}")
        return None
    if labelled is None:
        return None
    if model and not loaded.meta.get("checkpoint_sha256"):  # other weights are refused; here none can be told apart
        warn(f"queries not named by your labels: --model {model} may embed them with another encoder than the "
             f"labelled videos of {table} (the index was built before it recorded its checkpoint's sha256)")
        return None
    return QueryNamer(labelled)


def run_search(argv: list[str], params: str = "params.yaml") -> int:
    """`slic search PATH [-k 10] [--json] [--model URI] [--index DIR]`; returns the exit code."""
    from slic.config import ConfigError

    parser = argparse.ArgumentParser(prog="slic search", description="find the indexed videos most similar "
                                     "to a video file or to every video in a folder")
    parser.add_argument("path", help="a video file, or a folder searched recursively for videos")
    parser.add_argument("-k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--model", default="", help="a checkpoint file or an MLflow model URI, e.g. "
                        "models:/slic-encoder@champion (default: the checkpoint the index was built with)")
    parser.add_argument("--index", default="", help="index folder (default: index.out of params.yaml)")
    parser.add_argument("--workers", type=int, default=None, help="processes decoding the next queries of a "
                        "folder while the encoder embeds one (default: embed.workers of params.yaml; 0: none)")
    parser.add_argument("--start", default=None, help="search with this stretch of one video file only: from "
                        "this time, in seconds (176.9) or [hh:]mm:ss[.s] (2:56.9; default: its start)")
    parser.add_argument("--end", default=None, help="... to this time (default: its end)")
    parser.add_argument("--other-files", action="store_true", help="leave out hits from the query's own file "
                        "(the segments around a stretch of an indexed recording, or the indexed file itself)")
    parser.add_argument("--per-file", type=int, default=0, metavar="N", help="at most N hits from any one file: "
                        "the best moments of different recordings, not neighbouring segments of one (default 0: "
                        "no limit)")
    parser.add_argument("--other-recordings", action="store_true", help="leave out hits from the query's own "
                        "recording: an indexed clip's sibling clips (UCF101's group, what manifest.group_pattern "
                        "names) as well as its file")
    parser.add_argument("--per-recording", type=int, default=0, metavar="N", help="at most N hits from any one "
                        "recording (UCF101's group, what manifest.group_pattern names, a file's segments; default 0: "
                        "no limit)")
    parser.add_argument("--html", default="", metavar="FILE", help="also write the queries and their hits as "
                        "animated thumbnails to this self-contained HTML page")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"-k must be >= 1, got {args.k}")
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    for flag, value in (("--per-file", args.per_file), ("--per-recording", args.per_recording)):
        if value < 0:
            parser.error(f"{flag} must be >= 0 (0: no limit), got {value}")

    def warn(line: str) -> None:
        print(f"slic search: {line}", file=sys.stderr)

    try:
        extensions, index_dir, workers, labels_table = params_defaults(params)
        loaded = load_index(args.index or index_dir)
        videos = find_videos(args.path, extensions)
        spans = _query_spans(args, videos)
        clips = int(loaded.meta.get("clips", 10))  # as the index's videos were embedded
        encoder = model_encoder(args.model, clips) if args.model else index_encoder(loaded, warn)
        if args.model:
            require_index_encoder(encoder, loaded, args.model)
        if (args.other_recordings or args.per_recording) and "recording" not in loaded.rows.columns:
            warn(f"{args.index or index_dir} was built before the index stored recordings: each file counts as a "
                 "recording; run `dvc repro index` to rebuild it")
        answers, errors = search_videos(videos, encoder, loaded, args.k,
                                        workers if args.workers is None else args.workers, spans=spans,
                                        other_files=args.other_files, per_file=args.per_file,
                                        other_recordings=args.other_recordings, per_recording=args.per_recording,
                                        namer=query_namer(labels_table, loaded, args.model, warn))
    except (ConfigError, IndexBuildError, SearchUsageError) as exc:
        warn(f"error: {exc}")
        return 2
    for error in errors:
        warn(f"error: {error['query']}: {error['error']}")
    if noted := [answer for answer in answers if answer.get("note")]:  # one line, however many queries
        which = f"{noted[0]['query']}: " if len(noted) == 1 else (
            f"{len(noted)} of the {len(answers)} queries were embedded with a warning (e.g. {noted[0]['query']}: ")
        warn(f"warning: {which}{noted[0]['note']}{')' if len(noted) > 1 else ''}")
    if outside := [answer["query"] for answer in answers if answer.get("in_index") is False]:
        which, its = ((f"{outside[0]} is", "its") if len(answers) == 1 else
                      (f"{len(outside)} of the {len(answers)} queries (e.g. {outside[0]}) are", "their"))
        warn(f"--other-recordings: {which} not in the index, so {its} recording is unknown there: nothing of {its} "
             f"recording was left out, and clips of it can be among the hits")
    if args.html:
        from slic.search_report import write_search_html

        page = write_search_html(args.html, answers, errors, index=str(args.index or index_dir),
                                 model=args.model or loaded.meta["checkpoint"], chosen=_chosen_options(args))
        queries = f"{page['queries']} {'query' if page['queries'] == 1 else 'queries'}"
        warn(f"wrote {page['path']} ({queries}, {page['thumbnails']} thumbnails, {page['bytes'] / 1e6:.2f} MB)")
    try:
        _print_answers(args, index_dir, loaded, answers, errors)
    except BrokenPipeError:  # e.g. `slic search DIR | head`: the reader left, nothing more to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter's final flush quiet
    return 1 if errors else 0


def answers_document(index_dir: str, loaded: LoadedIndex, model: str, chosen: dict[str, Any],
                     answers: list[dict[str, Any]], errors: list[dict[str, str]]) -> dict[str, Any]:
    """The JSON document of a search (`slic search --json`, `slic serve`'s answer): the index, the encoder, how the
    hits were chosen (`chosen`: k and what leaves hits out), every query's hits and every query that failed."""
    return {"index": index_dir, "kind": loaded.meta.get("kind"), "model": model or loaded.meta["checkpoint"],
            **chosen, "queries": answers, "errors": errors}


def _chosen_options(args: argparse.Namespace) -> str:
    """The options that chose the hits, as they were typed (-k and what leaves hits out)."""
    said = [f"-k {args.k}"] + [flag for flag, on in (("--other-files", args.other_files),
                                                     ("--other-recordings", args.other_recordings)) if on]
    said += [f"{flag} {value}" for flag, value in (("--per-file", args.per_file),
                                                   ("--per-recording", args.per_recording)) if value]
    return " ".join(said)


def _query_spans(args: argparse.Namespace, videos: list[Path]) -> list[QuerySpan | None] | None:
    """--start/--end as the one query file's frames (None: every query whole)."""
    if args.start is None and args.end is None:
        return None
    if len(videos) != 1 or Path(args.path).is_dir():
        raise SearchUsageError(f"--start and --end pick a stretch of one video file; {args.path} is a folder "
                               f"({len(videos)} videos): name one of its files")
    start = None if args.start is None else parse_time(args.start, "--start")
    end = None if args.end is None else parse_time(args.end, "--end")
    return [query_span(videos[0], start, end)]


def _print_answers(args: argparse.Namespace, index_dir: str, loaded: LoadedIndex, answers: list[dict[str, Any]],
                   errors: list[dict[str, str]]) -> None:
    """Tables on the terminal, or one JSON document with --json."""
    if args.json:
        chosen = {"k": args.k, "per_file": args.per_file, "per_recording": args.per_recording,
                  "other_files": args.other_files, "other_recordings": args.other_recordings}  # how hits were chosen
        print(json.dumps(answers_document(str(args.index or index_dir), loaded, args.model, chosen, answers, errors),
                         indent=2))
    elif answers:
        print("\n\n".join(format_table(a) for a in answers))
