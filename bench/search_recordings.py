"""Benchmark: what `slic search` returns for an indexed clip when its recording's other clips are in the index.

A collection of clips cut from recordings (UCF101's groups; a folder's recordings named by manifest.group_pattern)
puts a clip's sibling clips in the index beside it. A user who queries with an indexed clip to find similar motion
elsewhere gets the siblings first. This measures, over a checkout's built index (`dvc repro index`), each indexed
video as a query (its embed-stage vector, so no decoding) under the ways `slic search` can choose hits:

    plain               the k nearest (the query itself first)
    other_files         --other-files: the query's own file left out
    per_recording_1     --other-files --per-recording 1: at most one clip of any recording
    other_recordings    --other-recordings: the query's whole recording left out
    other_recordings_per_recording_1    and at most one clip of any other recording

and, for reference, the test videos as queries (recordings the index never holds: a new video's view).
Per mode at k: own_recording_share (hits from the query's recording), distinct_recordings (among the k hits),
class_precision (hits of the query's class: siblings share it, so it flatters), top1_class_hit.

    python bench/search_recordings.py --checkout ../realrun    # a checkout with data/index and embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from slic.machine import machine_info  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "search_recordings.json"
MODES = {"plain": {}, "other_files": {"other_files": True},
         "per_recording_1": {"other_files": True, "per_recording": 1},
         "other_recordings": {"other_recordings": True},
         "other_recordings_per_recording_1": {"other_recordings": True, "per_recording": 1}}


class StoredVectors:
    """Stands in for the encoder: each query file's vector from the embed stage's npz (by its real path)."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def embed_files(self, paths: list[Path], workers: int = 0,
                    spans: list[tuple[int, int] | None] | None = None) -> Iterator[tuple[int, np.ndarray, str]]:
        for position, path in enumerate(paths):
            yield position, self.vectors[os.path.realpath(path)], ""


def measure(answers: list[dict[str, Any]], recording_of_query: list[str], class_of_query: list[str],
            k: int) -> dict[str, float]:
    """The mean over queries of each figure named in the module's docstring."""
    own, distinct, precision, top1 = [], [], [], []
    for answer, recording, name in zip(answers, recording_of_query, class_of_query):
        hits = answer["results"][:k]
        own.append(np.mean([h["recording"] == recording for h in hits]))
        distinct.append(len({h["recording"] for h in hits}))
        precision.append(np.mean([h["class"] == name for h in hits]))
        top1.append(float(hits[0]["class"] == name))
    return {"own_recording_share": round(float(np.mean(own)), 4),
            "distinct_recordings": round(float(np.mean(distinct)), 2),
            "class_precision": round(float(np.mean(precision)), 4), "top1_class_hit": round(float(np.mean(top1)), 4)}


def run(checkout: Path, k: int) -> dict[str, Any]:
    """Every mode over the checkout's index, and its test videos as the reference."""
    from slic.config import load
    from slic.index import load_index
    from slic.search import search_videos

    previous = Path.cwd()
    os.chdir(checkout)  # the index's and the manifest's relative paths are under the checkout
    try:
        config = load("params.yaml")
        loaded = load_index(config.index.out)
        if "recording" not in loaded.rows.columns:
            raise SystemExit(f"{checkout / config.index.out}: no recordings in rows.csv; run `dvc repro index`")
        data = np.load(config.embed.out)
        manifest = pd.read_csv(config.index.manifest, dtype=str, keep_default_na=False).set_index("video_id")
        ids = data["video_id"].astype(str)
        paths = [os.path.realpath(manifest.at[v, "path"]) for v in ids]
        encoder = StoredVectors(dict(zip(paths, data["embedding"])))
        report: dict[str, Any] = {"manifest_root": config.manifest.root,
                                  "layout": config.manifest.layout, "pretrain_mode": config.pretrain.mode,
                                  "pretrain_seed": config.pretrain.seed, "k": k, "indexed": int(loaded.index.ntotal),
                                  "recordings": int(loaded.rows["recording"].nunique()), "modes": {}}
        for split, modes in ((config.index.gallery_split, MODES), ("test", {"plain": {}})):
            chosen = [i for i, s in enumerate(data["split"].astype(str)) if s == split]
            queries = [Path(paths[i]) for i in chosen]
            recordings = [manifest.at[ids[i], "group"] for i in chosen]
            classes = [manifest.at[ids[i], "class"] for i in chosen]
            for mode, options in modes.items():
                answers, errors = search_videos(queries, encoder, loaded, k, **options)
                assert not errors, errors
                name = mode if split == config.index.gallery_split else f"{split}_queries"
                report["modes"][name] = {"queries": len(queries), **measure(answers, recordings, classes, k)}
        return report
    finally:
        os.chdir(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=ROOT, help="a checkout with a built index (default: here)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    report = {**run(args.checkout.resolve(), args.k), "machine": machine_info()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for mode, figures in report["modes"].items():
        print(f"{mode:>32}: " + ", ".join(f"{key} {value}" for key, value in figures.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
