"""Are videos added with `index.add_videos` (no retraining) as good in the index as videos the embed stage saw?

On ucf101_6, with the encoders bench/real.py trains (`--rows`, default slic, seeds 7, 8, 9; its stored cells
in data/bench/real are reused, missing ones trained there), the `index` stage is run through `slic index`
as a user runs it: the gallery is the train split (the embed stage's embeddings, from the frame shards), and
add_to_index/ holds the 202 test videos (links to the files in ../shared, which pretraining never read).
Measured against the same test videos embedded by the embed stage, which is what retraining with them in
the archive would give without changing the encoder:

- the cosine between each added video's vector and its embed-stage vector;
- test recall@1: each test video's nearest train video shares its class, its added vector against its
  embed-stage vector (the reported number);
- val queries against train + test: recall@1 and the share of top-1 hits that are test videos, with the
  test videos added against embedded by the stage, and how often the top-1 video is the same;
- the time of the first run (embeds every added video) with decoding in the stage's process and with
  `embed.workers` loader processes, of a second run (reuses them all), and what bench/real.py recorded for
  training that cell (the alternative: put the videos into the archive and retrain);
- `slic search` over a folder of the 92 val videos (queries neither trained on nor indexed) against that
  index (train + added test): seconds with the queries decoded one at a time here and with `embed.workers`
  loader processes, whether both give the same answers, and recall@1 of the search's top hits.

Writes reports/bench/added_videos.json.

    python bench/added_videos.py                  # reuses bench/real.py's cells in data/bench/real
    python bench/added_videos.py --seeds 7 --rows slic intra_video
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, write_report  # noqa: E402
from bench.real import cells_parser, each_stored_cell, open_bench  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "added_videos.json"
ADDED_SPLIT = "test"
QUERY_SPLIT = "val"  # `slic search` queries: videos neither trained on nor indexed


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine as inner product)."""
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def link_added(folder: Path, manifest: Path, split: str) -> dict[str, str]:
    """Links under `folder` to the `split` videos of `manifest`, named <video_id><suffix>; added id -> video_id."""
    import pandas as pd

    shutil.rmtree(folder, ignore_errors=True)
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    names = {}
    for video_id, path in zip(table["video_id"][table["split"] == split], table["path"][table["split"] == split]):
        link = folder / f"{video_id}{Path(path).suffix}"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(path).resolve())
        names[f"added/{link.relative_to(folder).as_posix()}"] = video_id
    return names


def run_index(params: dict[str, Any], folder: Path) -> tuple[dict[str, Any], float]:
    """`slic index` run in `folder` (its params.yaml and reports/ there, not the checkout's): report, seconds."""
    from slic.cli import main

    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    previous = Path.cwd()
    os.chdir(folder)
    try:
        started = time.perf_counter()
        code = main(["index"])
        seconds = time.perf_counter() - started
    finally:
        os.chdir(previous)
    if code != 0:
        raise SystemExit(f"bench/added_videos.py: slic index exited {code}")
    return json.loads((folder / "reports" / "index.json").read_text()), seconds


def run_search(folder: Path, queries: Path, workers: int) -> tuple[dict[str, Any], float]:
    """`slic search QUERIES --json` in `folder` against its index, with `workers` decoding: document, seconds."""
    import contextlib
    import io

    from slic.cli import main

    previous, out = Path.cwd(), io.StringIO()
    os.chdir(folder)
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = main(["search", str(queries), "--json", "-k", "10", "--workers", str(workers)])
        seconds = time.perf_counter() - started
    finally:
        os.chdir(previous)
    if code != 0:
        raise SystemExit(f"bench/added_videos.py: slic search exited {code}")
    return json.loads(out.getvalue()), seconds


def search_folder(folder: Path, manifest: Path, workers: int) -> dict[str, Any]:
    """`slic search` over a folder of the val videos (queries the index never holds), decoding them one at a
    time against `workers` loader processes: seconds each, whether the answers agree, and recall@1."""
    import pandas as pd

    link_added(folder / "queries", manifest, QUERY_SPLIT)  # named <video_id><suffix>, as the added videos
    classes = pd.read_csv(manifest, dtype=str, keep_default_na=False).set_index("video_id")["class"]
    here, here_seconds = run_search(folder, folder / "queries", 0)
    loaded, loaded_seconds = run_search(folder, folder / "queries", workers)

    def video_id(name: str) -> str:  # <video_id><suffix>, as link_added named it
        return Path(name).with_suffix("").as_posix()

    top = [a["results"][0]["video_id"] for a in loaded["queries"]]
    top = [video_id(v.removeprefix("added/")) if v.startswith("added/") else v for v in top]
    hits = [classes[video] == classes[video_id(str(Path(a["query"]).relative_to(folder / "queries")))]
            for video, a in zip(top, loaded["queries"])]
    return {"search_queries": len(loaded["queries"]), "search_seconds_0_workers": round(here_seconds, 2),
            "search_seconds": round(loaded_seconds, 2),
            "search_same_answers": here["queries"] == loaded["queries"] and here["errors"] == loaded["errors"],
            "search_val_recall@1": round(float(np.mean(hits)), 4)}


def measure(config: Any, cell: Path, work: Path, folder: Path) -> dict[str, Any]:
    """The index stage over one cell's encoder with the test videos added; the numbers of the module docstring."""
    from slic.index import load_index

    folder.mkdir(parents=True, exist_ok=True)
    manifest = work / "data" / "validated.csv"
    names = link_added(folder / "add_to_index", manifest, ADDED_SPLIT)
    params = {"manifest": {"root": config.manifest.root, "extensions": list(config.manifest.extensions)},
              "extract": {"out": str(work / "data" / "frames")},
              "embed": {"checkpoint": str(cell / "best.pt"), "clips": config.embed.clips, "workers": 0,
                        "out": str(cell / "embeddings.npz")},
              "index": {"manifest": str(manifest), "gallery_split": "train", "out": str(folder / "index"),
                        "add_videos": str(folder / "add_to_index")}}
    shutil.rmtree(folder / "index", ignore_errors=True)
    _, in_process_seconds = run_index(params, folder)  # decoding in the stage's own process, one video at a time
    shutil.rmtree(folder / "index", ignore_errors=True)
    params["embed"]["workers"] = config.embed.workers  # as the stage runs: embed.workers loader processes decode
    first, first_seconds = run_index(params, folder)
    second, second_seconds = run_index(params, folder)
    loaded = load_index(folder / "index")
    data = np.load(cell / "embeddings.npz")
    position = {v: i for i, v in enumerate(data["video_id"].tolist())}
    labels, split, stage = data["label"], data["split"], unit(data["embedding"].astype(np.float32))
    added_rows = [i for i, v in enumerate(loaded.rows["video_id"]) if v.startswith("added/")]
    added_ids = [names[loaded.rows.at[i, "video_id"]] for i in added_rows]
    added = np.stack([loaded.index.reconstruct(int(i)) for i in added_rows])  # unit length (cosine index)
    same_stage = stage[[position[v] for v in added_ids]]
    train, val = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    added_labels = labels[[position[v] for v in added_ids]]

    def recall_at_1(queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray,
                    gallery_labels: np.ndarray) -> tuple[float, np.ndarray]:
        top = (queries @ gallery.T).argmax(axis=1)
        return float((gallery_labels[top] == query_labels).mean()), top

    test_added, _ = recall_at_1(added, added_labels, stage[train], labels[train])
    test_stage, _ = recall_at_1(same_stage, added_labels, stage[train], labels[train])
    val_train, _ = recall_at_1(stage[val], labels[val], stage[train], labels[train])
    gallery_labels = np.concatenate([labels[train], added_labels])
    val_added, top_added = recall_at_1(stage[val], labels[val], np.concatenate([stage[train], added]), gallery_labels)
    val_stage, top_stage = recall_at_1(stage[val], labels[val], np.concatenate([stage[train], same_stage]),
                                       gallery_labels)
    cosine = (added * same_stage).sum(axis=1)
    embedded = first["added_embedded_now"]
    return {"added": first["added"], "failed": len(first["added_failed"]), "gallery": first["gallery_videos"],
            "cosine_to_embed_stage": {"min": round(float(cosine.min()), 4), "mean": round(float(cosine.mean()), 4)},
            "test_recall@1_added": round(test_added, 4), "test_recall@1_embed_stage": round(test_stage, 4),
            "val_recall@1_train_gallery": round(val_train, 4),
            "val_recall@1_with_test_added": round(val_added, 4),
            "val_recall@1_with_test_embed_stage": round(val_stage, 4),
            "val_top1_in_test_added": round(float((top_added >= len(train)).mean()), 4),
            "val_top1_in_test_embed_stage": round(float((top_stage >= len(train)).mean()), 4),
            "val_top1_same_video": round(float((top_added == top_stage).mean()), 4),
            "first_run_seconds_0_workers": round(in_process_seconds, 2), "workers": config.embed.workers,
            "first_run_seconds": round(first_seconds, 2), "embedded_first_run": embedded,
            "seconds_per_added_video": round(first_seconds / max(embedded, 1), 4),
            "second_run_seconds": round(second_seconds, 2), "embedded_second_run": second["added_embedded_now"],
            **search_folder(folder, manifest, config.embed.workers)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return cells_parser(__doc__.splitlines()[0], ["slic"], DEFAULT_OUT).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config, world, work = open_bench(args, "bench/added_videos.py")
    started = time.perf_counter()
    cells: list[dict[str, Any]] = []
    for seed, row, cell, result in each_stored_cell(config, world, work, args.seeds, args.rows):
        numbers = measure(config, cell, work, work / "added" / f"seed{seed}" / row)
        cells.append({"row": row, "seed": seed, "cell_seconds": result.get("seconds"), **numbers})
        print(f"  seed {seed} {row}: " + " ".join(f"{k}={v}" for k, v in numbers.items()), flush=True)
    keys = [k for k, v in cells[0].items() if isinstance(v, float) and k not in ("seed",)]
    report = {
        "question": "are videos added with index.add_videos (no retraining) as good in the index as videos the "
                    "embed stage saw?",
        "added": f"the {ADDED_SPLIT} split of ucf101_6 (never trained on), as files in add_to_index/",
        "against": "the same videos' embed-stage vectors (frame shards), as retraining with them in the archive "
                   "would give them under the same encoder",
        "cell_seconds": "bench/real.py's seconds for that cell (pretrain, embed, evaluate): what putting the videos "
                        "into the archive would re-run",
        "rows": args.rows, "seeds": args.seeds, "cells": cells,
        "row_means": {row: {k: round(float(np.mean([c[k] for c in cells if c["row"] == row])), 4) for k in keys}
                      for row in args.rows},
        "machine": machine(world.device), "work": shown(work), "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
