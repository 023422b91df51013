"""Do the label-free numbers of `evaluate` on unlabelled videos rank encoders as class recall does?

On videos without classes `evaluate` reports neighbour similarity, the mean pairwise cosine, the effective
rank (RankMe) and hubness (slic.retrieval.unlabelled_neighbours). A user comparing encoders or settings on
such an archive can only read those. This bench asks whether they agree with recall on ucf101_6, where the
classes are known: the encoders of bench/real.py (`--rows`, default the four modes and slic_video, over
seeds 7, 8, 9; trained or reused from the same stored cells under `--work`), each measured

- without labels, as an unlabelled archive would be: every video (all splits) queries the others;
- with labels: val recall@1 (val queries against the train gallery, the split settings are chosen on) and
  test recall@1 (test against train, the reported number), from the same embeddings (the `embed` protocol).

Writes reports/bench/label_free.json: per encoder both kinds of number, per row the means, and for each
label-free number Spearman's rank correlation with val and with test recall@1 over all encoders, and over
the trained encoders only (random_init left out: an untrained network can be spread without being useful);
and, for scale, how well val recall@1 itself ranks the encoders as test recall@1 does.

    python bench/label_free.py                  # reuses bench/real.py's cells in data/bench/real
    python bench/label_free.py --seeds 7 --rows random_init slic
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, write_report  # noqa: E402
from bench.real import cells_parser, each_stored_cell, open_bench  # noqa: E402

DEFAULT_ROWS = ("random_init", "intra_video", "slic", "slic_video", "oracle")
DEFAULT_OUT = ROOT / "reports" / "bench" / "label_free.json"
HUB_K = 10


def label_free_numbers(embeddings: Path) -> dict[str, float]:
    """evaluate's numbers on videos without classes, over every video of `embeddings` (splits ignored, as in an
    unlabelled archive every video is the gallery)."""
    from slic.retrieval import unlabelled_neighbours

    report = unlabelled_neighbours(embeddings, split=None, ks=(1, 10), hub_k=HUB_K)
    return {"neighbour_cosine@1": report["neighbour_cosine@1"], "neighbour_cosine@10": report["neighbour_cosine@10"],
            "mean_pairwise_cosine": report["mean_pairwise_cosine"], "effective_rank": report["effective_rank"],
            f"never_in_top{HUB_K}": report[f"never_in_top{HUB_K}"],
            "top_hub_share": report["hubs"][0]["share_of_queries"]}


def labelled_numbers(embeddings: Path) -> dict[str, float]:
    """val and test recall@1 against the train gallery, and the leave-one-out top-1 class agreement over every
    video (the labelled twin of neighbour_cosine@1)."""
    from slic.retrieval import evaluate_embeddings, nearest_others

    data = np.load(embeddings)
    neighbours, _ = nearest_others(data["embedding"], 1)
    return {"val_recall@1": evaluate_embeddings(embeddings, query_split="val", ks=(1,))["recall@1"],
            "test_recall@1": evaluate_embeddings(embeddings, query_split="test", ks=(1,))["recall@1"],
            "all_top1_same_class": float((data["label"][neighbours[:, 0]] == data["label"]).mean())}


def correlations(encoders: list[dict[str, Any]], label_free: list[str]) -> dict[str, dict[str, float]]:
    """Spearman's rho of each label-free number with val and test recall@1 over `encoders`."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, float]] = {}
    for key in label_free:
        values = [e[key] for e in encoders]
        out[key] = {target: round(float(spearmanr(values, [e[target] for e in encoders]).statistic), 3)
                    for target in ("val_recall@1", "test_recall@1")}
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return cells_parser(__doc__.splitlines()[0], list(DEFAULT_ROWS), DEFAULT_OUT).parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config, world, work = open_bench(args, "bench/label_free.py")
    started = time.perf_counter()
    encoders: list[dict[str, Any]] = []
    for seed, row, cell, _ in each_stored_cell(config, world, work, args.seeds, args.rows):
        embeddings = cell / "embeddings.npz"
        encoders.append({"row": row, "seed": seed, **labelled_numbers(embeddings), **label_free_numbers(embeddings)})
        print(f"  seed {seed} {row:12s} " + " ".join(f"{k}={v:.3f}" for k, v in encoders[-1].items()
                                                    if isinstance(v, float)), flush=True)
    label_free = ["neighbour_cosine@1", "neighbour_cosine@10", "mean_pairwise_cosine", "effective_rank",
                  f"never_in_top{HUB_K}", "top_hub_share"]
    trained = [e for e in encoders if e["row"] != "random_init"]
    report = {
        "question": "do evaluate's label-free numbers rank encoders as class recall does (ucf101_6)?",
        "label_free_over": "every video of ucf101_6 (all splits), leave-one-out, as an unlabelled archive",
        "recall": "val and test queries against the train gallery, the embed protocol's embeddings",
        "rows": args.rows, "seeds": args.seeds, "encoders": encoders,
        "row_means": {row: {key: round(float(np.mean([e[key] for e in encoders if e["row"] == row])), 4)
                            for key in encoders[0] if key not in ("row", "seed")} for row in args.rows},
        "spearman_all": correlations(encoders, label_free),
        "spearman_trained": correlations(trained, label_free) if len(trained) > 2 else {},
        "spearman_val_with_test": {  # how far val itself ranks encoders as test does: the ceiling of any criterion
            "all": correlations(encoders, ["val_recall@1"])["val_recall@1"]["test_recall@1"],
            "trained": correlations(trained, ["val_recall@1"])["val_recall@1"]["test_recall@1"] if len(trained) > 2
            else None},
        "n_all": len(encoders), "n_trained": len(trained), "machine": machine(world.device), "work": shown(work),
        "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    for key, rho in report["spearman_all"].items():
        within = report["spearman_trained"].get(key)
        print(f"{key:22s} rho with val {rho['val_recall@1']:+.2f} test {rho['test_recall@1']:+.2f}; trained only: "
              + (f"val {within['val_recall@1']:+.2f} test {within['test_recall@1']:+.2f}" if within else "-"),
              flush=True)
    print(f"val recall@1 itself: rho with test {report['spearman_val_with_test']['all']:+.2f} "
          f"(trained only {report['spearman_val_with_test']['trained']})", flush=True)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
