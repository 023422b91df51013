"""slic from Python: search the index and embed videos in your own code, with the encoder the pipeline trained.

    from slic.api import VideoSearch

    search = VideoSearch("data/index")          # the index `dvc repro` built, and its encoder, held in memory
    answer = search.search("clip.mp4", k=5)     # the 5 indexed videos most like it
    for hit in answer.hits:
        print(hit.rank, round(hit.similarity, 3), hit.label, hit.path)
    vectors = search.embed(["a.mp4", "b.avi"])  # (2, d) float32, embedded as the index's videos were
    search.search_vectors(vectors, k=3)         # vectors of your own (a vector store's, say) looked up in the index

`slic search` (a command) and `slic serve` (HTTP) answer from the same code: one query's hits are the same in all
three. Without an index, `load_encoder("models:/slic-encoder@champion")` (or a checkpoint file) embeds videos.
Everything a caller can fix (no index, a wrong model, a time past a file's end, a file that cannot be decoded)
raises `SlicError` (a ValueError) with one line saying what is wrong and what to do.  examples/search_videos.py
runs every call of this module on an index.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from slic.config import ConfigError
from slic.index import META_FILE, IndexBuildError, LoadedIndex, load_index
from slic.index import search as index_search
from slic.search import (QueryNamer, QuerySpan, SearchUsageError, find_each, find_videos, index_encoder,
                         model_encoder, params_defaults, parse_time, query_namer, query_span, ranked_hits,
                         require_index_encoder, search_videos, with_given_classes)

if TYPE_CHECKING:  # the encoder's module imports torch: loaded with the first encoder, not with this module
    from slic.serving import VideoEncoder

CHAMPION = "models:/slic-encoder@champion"
log = logging.getLogger(__name__)
USAGE_ERRORS = (ConfigError, IndexBuildError, SearchUsageError)


class SlicError(ValueError):
    """Something the caller can fix; the message names the file, key or value and what to do."""


class UndecodableVideos(SlicError):
    """Videos that could not be decoded: `failures` lists (path, why) for each, `vectors` holds every row
    (NaN for the failed ones) so the others' work is not lost."""

    def __init__(self, failures: list[tuple[str, str]], vectors: np.ndarray | None = None) -> None:
        named = "; ".join(f"{path}: {why}" for path, why in failures[:3])
        more = f" (and {len(failures) - 3} more)" if len(failures) > 3 else ""
        super().__init__(f"{len(failures)} video(s) could not be decoded: {named}{more}")
        self.failures, self.vectors = failures, vectors


def embedded_rows(encoder: VideoEncoder, paths: list[Path], workers: int = 0,
                  ) -> tuple[np.ndarray, dict[int, str], dict[int, str]]:
    """(the (n, dim) float32 rows, a row of NaN for each file that failed; why each failed, by position; the warning
    each embedded file came with, by position: shorter than one clip): `Encoder.embed` and `slic embed-video`."""
    vectors = np.full((len(paths), encoder.dim), np.nan, dtype=np.float32)
    failed: dict[int, str] = {}
    warned: dict[int, str] = {}
    for position, vector, said in encoder.embed_files(paths, workers):  # a broken link or a folder says so too
        if vector is None:
            failed[position] = said
        else:
            vectors[position] = vector
            if said:
                warned[position] = said
    return vectors, failed, warned


def checked_count(name: str, value: Any, least: int) -> int:
    """`value` when it is an integer of at least `least` (k, per_file, per_recording), else SearchUsageError."""
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise SearchUsageError(f"{name} = {value!r}: expected an integer, {least} or more"
                               + (" (0: no limit)" if least == 0 else ""))
    return value


@contextmanager
def _said_plainly() -> Iterator[None]:
    """The library's usage errors (config, index, search) as SlicError, their message kept."""
    try:
        yield
    except USAGE_ERRORS as exc:
        raise SlicError(str(exc)) from exc


@dataclass(frozen=True)
class Hit:
    """One indexed video (or a segment of one: `start_s`/`end_s` in its file) found for a query, best first."""

    rank: int
    path: str
    similarity: float  # cosine similarity of the two embeddings (inner product for an index built without cosine)
    video_id: str
    label: str | None  # its class, where the index's videos have classes, or the one you gave it (`labelled`)
    recording: str | None  # the recording it was cut from (UCF101's group, manifest.group_pattern), where known
    start_s: float | None = None
    end_s: float | None = None
    labelled: bool = False  # `label` is yours (labels/given.csv of an archive without classes)

    @classmethod
    def of(cls, hit: dict[str, Any]) -> Hit:
        """From one entry of a search document's `results` (`slic search --json`)."""
        return cls(rank=int(hit["rank"]), path=str(hit["path"]), similarity=float(hit["similarity"]),
                   video_id=str(hit["video_id"]), label=hit["class"], recording=hit.get("recording"),
                   start_s=hit.get("start_s"), end_s=hit.get("end_s"), labelled=bool(hit.get("labelled")))


@dataclass(frozen=True)
class Naming:
    """A query named by the videos you labelled (spread_labels' labels/given.csv): the class of its most similar
    labelled video (`like`), how similar, and by how much it beat the runner-up class."""

    label: str
    like: str
    similarity: float
    margin: float
    runner_up: str | None


@dataclass(frozen=True)
class Answer:
    """One query's hits; `start_s`/`end_s` the stretch of it that was searched (None: the whole file)."""

    query: str
    hits: tuple[Hit, ...]
    start_s: float | None = None
    end_s: float | None = None
    named: Naming | None = None
    in_index: bool | None = None  # other_recordings: whether the query is an indexed file (else its recording unknown)
    note: str = ""  # warnings: shorter than one clip (a still image: it matches by what it shows), decoded past
    # damaged packets (the lost frames hold the frame before)

    @classmethod
    def of(cls, answer: dict[str, Any]) -> Answer:
        """From one entry of a search document's `queries`."""
        named = answer.get("named")
        return cls(query=str(answer["query"]), hits=tuple(Hit.of(hit) for hit in answer["results"]),
                   start_s=answer.get("start_s"), end_s=answer.get("end_s"),
                   named=None if named is None else Naming(label=named["class"], like=named["like"],
                                                           similarity=named["similarity"], margin=named["margin"],
                                                           runner_up=named["runner_up"]),
                   in_index=answer.get("in_index"), note=answer.get("note", ""))


class Encoder:
    """A trained encoder that turns video files into embedding rows, as the pipeline embedded its videos (the IIC
    protocol: `clips` clips a video, decoded with PyAV, their embeddings averaged)."""

    def __init__(self, encoder: VideoEncoder) -> None:
        self.video_encoder = encoder

    @property
    def dim(self) -> int:
        """Length of one embedding."""
        return self.video_encoder.dim

    @property
    def checkpoint(self) -> Path:
        """The file of its weights (a registered model's: its copy in the MLflow store)."""
        return self.video_encoder.checkpoint

    @property
    def settings(self) -> dict[str, Any]:
        """The pretrain settings saved with the weights (mode, seed, clip_len, size, ...)."""
        return dict(self.video_encoder.config)

    def embed(self, videos: Iterable[str | Path], *, errors: str = "raise", workers: int = 0) -> np.ndarray:
        """(n, dim) float32 embeddings, a row per video in order. A file that cannot be decoded raises
        UndecodableVideos after the others are embedded (errors="raise"; they are on the exception as `vectors`),
        or gets a row of NaN (errors="nan"). `workers` processes decode the next videos while one is embedded."""
        if errors not in ("raise", "nan"):
            raise SlicError(f"errors = {errors!r}: expected 'raise' or 'nan'")
        videos = [videos] if isinstance(videos, (str, Path)) else videos  # one file, not its characters
        paths = [Path(video).expanduser() for video in videos]
        vectors, failed, warned = embedded_rows(self.video_encoder, paths, workers)
        for position, said in warned.items():  # shorter than one clip (a still image): as `slic embed-video` says
            log.warning("%s: %s", paths[position], said)
        if failed and errors == "raise":
            raise UndecodableVideos([(str(paths[position]), why) for position, why in sorted(failed.items())],
                                    vectors)
        return vectors


def load_encoder(model: str | Path = CHAMPION, *, clips: int = 10) -> Encoder:
    """A checkpoint written by `slic pretrain` (e.g. data/models/pretrain/best.pt) or a registered MLflow model
    (the default: the registry's champion) as an Encoder, on the GPU when there is one."""
    with _said_plainly():
        return Encoder(model_encoder(str(model), clips))


@dataclass
class _Loaded:
    """The index in memory, what embeds its queries, what names them, and the stat of the index.json read."""

    index: LoadedIndex
    encoder: VideoEncoder
    namer: QueryNamer | None
    stamp: tuple[int, int, int]
    warnings: list[str]


class VideoSearch:
    """The index of `index` (default: index.out of `params`, data/index) and the encoder that embedded its videos,
    held in memory: each search decodes and embeds only its query. A rebuilt index (`dvc repro index` after videos
    were added) is read again at the next search. `model` names other weights to embed queries with (a checkpoint
    or models:/ URI), refused unless they are the index's own. Thread-safe: searches run one at a time."""

    def __init__(self, index: str | Path | None = None, *, model: str = "", params: str | Path | None = None,
                 workers: int = 0) -> None:
        if params is not None and not Path(params).is_file():
            raise SlicError(f"params = {str(params)!r}: no such file (leave it out: params.yaml of the working "
                            "directory when there is one, else the defaults)")
        with _said_plainly():
            self.extensions, default_index, _, self.labels_table = params_defaults(str(params or "params.yaml"))
        self.index_dir = Path(index if index is not None else default_index)
        self.model, self.workers = model, workers
        self.lock = threading.RLock()
        self._loaded: _Loaded | None = None
        with _said_plainly():
            self._loaded = self._load()

    def _stamp(self) -> tuple[int, int, int]:
        try:
            stat = (self.index_dir / META_FILE).stat()
        except OSError:
            return (0, 0, 0)
        return (stat.st_mtime_ns, stat.st_size, stat.st_ino)

    def _load(self) -> _Loaded:
        """Read the index and make its encoder (the one already loaded when the index's checkpoint is the same)."""
        stamp = self._stamp()
        warnings: list[str] = []
        index = load_index(self.index_dir)
        previous = self._loaded
        clips = int(index.meta.get("clips", 10))
        if previous is not None and previous.index.meta.get("checkpoint_sha256") == index.meta.get(
                "checkpoint_sha256") and previous.index.meta.get("clips") == index.meta.get("clips"):
            encoder = previous.encoder  # videos added to the index: the same encoder embeds the queries
        elif self.model:
            encoder = model_encoder(self.model, clips)
            require_index_encoder(encoder, index, self.model)
        else:
            encoder = index_encoder(index, warnings.append)
        namer = query_namer(self.labels_table, index, self.model, warnings.append)
        return _Loaded(index, encoder, namer, stamp, warnings)

    def current(self) -> _Loaded:
        """The index as it is on disk now: read again when its index.json changed since it was loaded. A rebuild
        that left no readable index raises SlicError (the one in memory stays, for the next try). Waits for a
        running search only when the index must be read again."""
        loaded = self._loaded
        assert loaded is not None
        if self._stamp() == loaded.stamp:
            return loaded
        with self.lock:
            assert self._loaded is not None
            if self._stamp() != self._loaded.stamp:  # not read again by another thread meanwhile
                try:
                    self._loaded = self._load()
                except USAGE_ERRORS as exc:
                    raise SlicError(f"the index at {self.index_dir} changed and cannot be read: {exc}") from exc
            return self._loaded

    def __len__(self) -> int:
        """How many videos (or segments of videos) the index holds."""
        return int(self.current().index.index.ntotal)

    @property
    def encoder(self) -> Encoder:
        """The encoder that embeds queries: the index's own weights."""
        return Encoder(self.current().encoder)

    @property
    def warnings(self) -> list[str]:
        """What loading the index noticed (a checkpoint changed since the index was built, labels not usable)."""
        return list(self.current().warnings)

    @property
    def checkpoint(self) -> str:
        """The checkpoint the index's videos were embedded with, as index.json names it."""
        return str(self.current().index.meta["checkpoint"])

    def find(self, videos: list[Path], *, k: int = 10, spans: list[QuerySpan | None] | None = None,
             other_files: bool = False, per_file: int = 0, other_recordings: bool = False, per_recording: int = 0,
             ) -> tuple[_Loaded, list[dict[str, Any]], list[dict[str, str]]]:
        """(the index searched, each answer as `slic search --json` writes it, each query that failed): the core of
        `search`, `search_many` and `slic serve`. SearchUsageError for a bad option, a file or time not found."""
        for name, value, least in (("k", k, 1), ("per_file", per_file, 0), ("per_recording", per_recording, 0)):
            checked_count(name, value, least)
        with self.lock:
            loaded = self.current()
            answers, errors = search_videos(videos, loaded.encoder, loaded.index, k, self.workers, spans=spans,
                                            other_files=other_files, per_file=per_file,
                                            other_recordings=other_recordings, per_recording=per_recording,
                                            namer=loaded.namer)
        return loaded, answers, errors

    def search(self, video: str | Path, *, k: int = 10, start: str | float | None = None,
               end: str | float | None = None, other_files: bool = False, per_file: int = 0,
               other_recordings: bool = False, per_recording: int = 0) -> Answer:
        """The k indexed videos most similar to one video file (or to its stretch from `start` to `end`: seconds, or
        "[hh:]mm:ss[.s]"). `other_files` leaves out hits from the query's own file, `other_recordings` from its
        recording; `per_file`/`per_recording` > 0 keep at most that many hits from any one file/recording. A file
        that cannot be decoded raises UndecodableVideos."""
        path = Path(video).expanduser()
        if path.is_dir():
            raise SlicError(f"{path} is a folder: search() takes one video file; search_many() takes a folder")
        with _said_plainly():
            videos = find_videos(path, self.extensions)
            spans = None
            if start is not None or end is not None:
                spans = [query_span(path, None if start is None else parse_time(str(start), "start"),
                                    None if end is None else parse_time(str(end), "end"), names=("start", "end"))]
            _, answers, errors = self.find(videos, k=k, spans=spans, other_files=other_files, per_file=per_file,
                                           other_recordings=other_recordings, per_recording=per_recording)
        if errors:
            raise UndecodableVideos([(error["query"], error["error"]) for error in errors])
        return Answer.of(answers[0])

    def search_many(self, videos: str | Path | Iterable[str | Path], *, k: int = 10, other_files: bool = False,
                    per_file: int = 0, other_recordings: bool = False, per_recording: int = 0,
                    ) -> tuple[list[Answer], list[tuple[str, str]]]:
        """(answers, failures) for every video of a folder (searched recursively for video files) or of a list of
        files and folders: the answers in order, and (path, why) for each file that could not be decoded, and each
        item that gives no video (not there, a broken link, a folder without videos): the others are still answered.
        The queries are embedded one by one, then looked up in one batched search."""
        named = [videos] if isinstance(videos, (str, Path)) else list(videos)
        files, missing = find_each(named, self.extensions)  # an item without videos: a failure, as a bad file is
        with _said_plainly():
            _, answers, errors = self.find(files, k=k, other_files=other_files, per_file=per_file,
                                           other_recordings=other_recordings, per_recording=per_recording)
        return [Answer.of(answer) for answer in answers], [(error["query"], error["error"])
                                                           for error in [*missing, *errors]]

    def search_vectors(self, vectors: np.ndarray, *, k: int = 10) -> list[tuple[Hit, ...]]:
        """The k indexed videos nearest each row of `vectors` (one vector, or (n, d)): embeddings made by this
        index's encoder (`embed`, `slic embed-video`, the embed stage's npz), kept in a vector store of your own."""
        queries = np.asarray(vectors, dtype=np.float32)
        queries = queries[None, :] if queries.ndim == 1 else queries
        loaded = self.current()
        if queries.ndim != 2 or queries.shape[1] != loaded.index.index.d:
            raise SlicError(f"vectors of shape {np.shape(vectors)}: expected ({loaded.index.index.d},) or "
                            f"(n, {loaded.index.index.d}), embeddings of the index's encoder {self.checkpoint}")
        bad = np.flatnonzero(~np.isfinite(queries).all(axis=1))
        if bad.size:
            raise SlicError(f"row {int(bad[0])} of the vectors is not finite (NaN: a video embed(errors='nan') could "
                            "not decode); leave such rows out")
        with _said_plainly():
            checked_count("k", k, 1)
        with self.lock:
            sims, ids = index_search(loaded.index.index, queries, k,
                                     normalize=loaded.index.meta.get("metric", "cosine") == "cosine")
        return [tuple(Hit.of(hit) for hit in with_given_classes(ranked_hits(loaded.index, row_ids, row_sims),
                                                                loaded.namer))
                for row_ids, row_sims in zip(ids, sims)]

    def embed(self, videos: Iterable[str | Path], *, errors: str = "raise") -> np.ndarray:
        """(n, d) float32 embeddings of video files with the index's encoder, as its videos were embedded: what
        `search_vectors` takes (see Encoder.embed for `errors`)."""
        with self.lock:
            return self.encoder.embed(videos, errors=errors, workers=self.workers)
