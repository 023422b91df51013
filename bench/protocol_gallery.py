"""How much does the gallery change recall: our train split (after the val carve) against the whole train list?

The IIC protocol's gallery is the official train split; `evaluate` ranks the videos of `evaluate.gallery_split`,
`train` by default (the official list less the val videos carved from it, by group) and `train+val` for the
protocol (the paper preset). A bigger gallery holds more videos of each class, so recall can only be compared
on one gallery. This bench measures the difference on real video: every encoder bench/labels_stage.py trained on
ucf101_6 (splits 1-3, `slic` and `labels` modes), its embed-stage vectors evaluated both ways (the test videos
query, exact cosine search: `slic.retrieval.evaluate_embeddings`), the difference paired per encoder.

Reads the folders of bench/labels_stage.py (run `make bench-labels-stage` first); trains nothing, a few seconds.
Writes reports/bench/protocol_gallery.json.

    python bench/protocol_gallery.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, spread, write_report  # noqa: E402
from bench.labels_stage import DEFAULT_WORK  # noqa: E402
from slic.retrieval import evaluate_embeddings  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "protocol_gallery.json"
KS = (1, 5, 10)
GALLERIES = ("train", "train+val")


def encoders_in(work: Path) -> list[tuple[str, str, Path]]:
    """(run folder, mode, embeddings) of every encoder under `work` (a seed folder holds a mode folder each)."""
    return [(npz.parents[3].name, npz.parents[2].name, npz)
            for npz in sorted(work.glob("*/*/data/embeddings/embeddings.npz"))]


def both_galleries(embeddings: Path) -> dict[str, dict[str, Any]]:
    """recall@k (in %) and gallery size of the test queries against each gallery of GALLERIES."""
    found = {}
    for gallery in GALLERIES:
        report = evaluate_embeddings(embeddings, query_split="test", gallery_split=gallery, ks=KS)
        found[gallery] = {"gallery": report["gallery"], "queries": report["queries"],
                          **{f"recall@{k}": 100 * report[f"recall@{k}"] for k in KS}}
    return found


def summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The paired difference (train+val minus train) of each recall@k over `cells`, as mean, std and values."""
    return {f"recall@{k}": spread([cell["train+val"][f"recall@{k}"] - cell["train"][f"recall@{k}"]
                                   for cell in cells]) for k in KS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="bench/labels_stage.py's folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    found = encoders_in(args.work)
    if not found:
        print(f"bench/protocol_gallery.py: no embeddings under {args.work}: run `make bench-labels-stage` first",
              file=sys.stderr)
        return 2
    cells = [{"run": run, "mode": mode, **both_galleries(npz)} for run, mode, npz in found]
    for cell in cells:
        print(f"{cell['run']:16s} {cell['mode']:7s} gallery {cell['train']['gallery']} -> {cell['train+val']['gallery']}"
              f": recall@1 {cell['train']['recall@1']:.1f} -> {cell['train+val']['recall@1']:.1f}")
    modes = sorted({cell["mode"] for cell in cells})
    report = {"question": __doc__.split("\n\n")[0], "work": args.work.name, "ks": list(KS),  # no machine path
              "difference_all": summary(cells),
              "difference_by_mode": {mode: summary([c for c in cells if c["mode"] == mode]) for mode in modes},
              "cells": cells, "machine": machine("cpu")}
    out = write_report(report, args.out)
    lead = report["difference_all"]["recall@1"]
    print(f"train+val minus train, recall@1: {lead['mean']:+.2f} ± {lead['std']:.2f} points over {len(cells)} "
          f"encoders -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
