"""Find similar motion from Python, with the encoder and index that `dvc repro` made (slic.api).

After `make run` (or `dvc repro` on your own videos), from the checkout:

    .venv/bin/python examples/search_videos.py path/to/query.mp4            # the index of params.yaml (data/index)
    .venv/bin/python examples/search_videos.py query.mp4 --index data/index -k 5

It makes each call of slic.api once: open the index, search a file, search a stretch of it among other files,
embed files for a vector store of your own and look those vectors up again, and catch a file that cannot be decoded.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from slic.api import SlicError, UndecodableVideos, VideoSearch


def main(argv: list[str] | None = None) -> int:
    """Search the index with one video, each way slic.api offers; 2 when the index or the query cannot be used."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", help="a video file")
    parser.add_argument("--index", default=None, help="index folder (default: index.out of params.yaml)")
    parser.add_argument("-k", type=int, default=5, help="hits per search")
    args = parser.parse_args(argv)
    try:
        search = VideoSearch(args.index)  # the index and the encoder that embedded it, read once
        print(f"{len(search)} videos indexed, embedded with {search.checkpoint}")

        answer = search.search(args.query, k=args.k)  # 1. the k indexed videos most like the query
        print(f"\nmost like {answer.query}:")
        for hit in answer.hits:
            print(f"  {hit.rank}. {hit.similarity:.3f}  {hit.label or '-'}  {hit.path}")
        if answer.named:  # a class from the videos you labelled (labels/given.csv), when there are some
            print(f"  named {answer.named.label}, like {answer.named.like}")

        moment = search.search(args.query, k=args.k, start=0, end=2, other_files=True)  # 2. its first 2 seconds
        print(f"\nits {moment.start_s:.1f}-{moment.end_s:.1f} s, hits from other files only:")
        for hit in moment.hits:
            print(f"  {hit.rank}. {hit.similarity:.3f}  {hit.path}")

        vectors = search.embed([args.query])  # 3. embeddings to keep in a vector store of your own ...
        again = search.search_vectors(vectors, k=args.k)[0]  # ... and looked up in the index again
        same = [hit.path for hit in again] == [hit.path for hit in answer.hits]
        print(f"\nembedded: {vectors.shape[0]} x {vectors.shape[1]} float32; its vector finds the same hits: {same}")
    except SlicError as exc:  # no index, no such file, a time past its end: one line says what to do
        print(f"error: {exc}", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory() as folder:  # 4. a file that is not a video
        broken = Path(folder) / "broken.mp4"
        broken.write_bytes(b"not a video")
        try:
            search.search(broken)
        except UndecodableVideos as exc:
            print(f"\na broken file raises UndecodableVideos: {exc.failures[0][1]}")
        vectors = search.embed([args.query, broken], errors="nan")  # or a row of NaN, the others kept
        print(f"embed(errors='nan'): rows decoded {np.isfinite(vectors).all(axis=1).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
