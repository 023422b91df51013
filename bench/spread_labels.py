"""How many videos must a user label before the `spread_labels` stage names the rest rightly, and do its way of
naming and its suggestions of what to label next beat the obvious alternatives?

On ucf101_6, where the six classes are known, every video (all splits) is an unlabelled archive, grouped as the
`clusters` stage groups it (FINCH down to 20). A simulated user labels in rounds of 20 with the true classes:
round 0 the stage's first list (each group's most typical video), then each round the stage's `label_next` (the
most typical video of each k-means group no label reaches, k = the labels after the round), up to `--rounds`
rounds; each video not labelled takes its most similar labelled video's class. Beside it:
- `with_checks`: the stage with `spread_labels.checks: 4`: of each round's 20, 4 drawn at random and 16 suggested
  (the checks reach no group); its `estimate` is the share of checks the other labels name rightly, to compare
  with `rest_accuracy` (every video not labelled);
- `label_spreading`: the same picks, classes spread over the graph of each video's 10 nearest videos (Zhou et al.
  2004, alpha 0.9, 30 steps; positive cosine cubed as weights);
- `linear_probe`: the same picks, a logistic regression on the labelled videos' embeddings (scikit-learn, C 10:
  the best of 0.1, 1 and 10 on the train and val videos) naming the rest;
- `least_sure`: from round 1 the 20 videos whose two likeliest classes are nearest alike (uncertainty sampling);
- `random_picks`: as many videos drawn at random (mean over `--draws` draws).
Each round gives the share of the videos not labelled that get their true class, over the test split's videos (no
setting was chosen on them) and over the train and val videos (where the way of naming and of suggesting were
chosen), the stage's leave-one-out estimate beside it, and how far the margin sorts right from wrong (the accuracy
of the surer and of the less sure half). Encoders: bench/real.py's stored cells (`--rows`, seeds 7, 8, 9).

Writes reports/bench/spread_labels.json: per encoder and round the numbers, per row and round mean and std over
seeds, and per round the per-seed paired differences of test accuracy (stage - each alternative).

    python bench/spread_labels.py            # reuses bench/real.py's cells in data/bench/real
    python bench/spread_labels.py --seeds 7 --rows slic --rounds 2
    python bench/spread_labels.py --markdown   # the docs' tables and figures from the stored report, no rerun
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, spread, write_report  # noqa: E402
from bench.real import cells_parser, each_stored_cell, open_bench, printed_markdown  # noqa: E402

DEFAULT_ROWS = ("random_init", "intra_video", "slic", "slic_video")
DEFAULT_OUT = ROOT / "reports" / "bench" / "spread_labels.json"
GROUPS = 20  # params.yaml's clusters.groups
PER_ROUND = 20  # params.yaml's spread_labels.suggest
WAYS = ("stage", "with_checks", "label_spreading", "linear_probe", "least_sure", "random_picks")
CHECKS = 4  # with_checks: of each round's 20, drawn at random (spread_labels.checks)
KEYS = ("test_accuracy", "trainval_accuracy", "rest_accuracy", "estimate", "surer_half", "less_sure_half")
TRAINED = ("intra_video", "slic", "slic_video")  # the docs' pooled figures: the encoders trained without labels
WAY_NAMES = {"stage": "stage: these suggestions, nearest labelled",
             "with_checks": f"stage with `checks: {CHECKS}` ({PER_ROUND - CHECKS} suggested + {CHECKS} random a round)",
             "label_spreading": "same picks, label spreading", "linear_probe": "same picks, logistic regression",
             "least_sure": "least sure picks, nearest labelled", "random_picks": "random picks, nearest labelled"}


def archive_from(embeddings: Path, rows: np.ndarray | None = None) -> tuple[Any, np.ndarray]:
    """The stage's Archive of every video of `embeddings` (or of its `rows`), grouped as the clusters stage does,
    and their classes."""
    from slic.archive_clusters import group_embeddings
    from slic.label_spreading import Archive
    from slic.retrieval import normalize_rows

    data = np.load(embeddings)
    rows = np.arange(len(data["video_id"])) if rows is None else rows
    vectors = data["embedding"][rows]
    grouping = group_embeddings(vectors, method="finch", groups=GROUPS, seed=7)
    empty = np.full(len(rows), "", dtype=object)
    archive = Archive(ids=data["video_id"][rows].astype(str), unit=normalize_rows(vectors).astype(np.float64),
                      group=grouping.labels, rank=grouping.rank, split=data["split"][rows].astype(str).astype(object),
                      manifest_class=empty, path=empty, start_s=empty, end_s=empty)
    return archive, data["label"][rows].astype(np.int64)


def measured(archive: Any, truth: np.ndarray, labelled: np.ndarray, named: np.ndarray, sureness: np.ndarray,
             estimate: float | None) -> dict[str, float | None]:
    """Accuracy of the class numbers `named` on the videos not labelled (test, and train with val), the estimate,
    and the accuracy of the surer and of the less sure half of them by `sureness`."""
    rest = np.ones(len(truth), dtype=bool)
    rest[labelled] = False
    right = named == truth
    test = archive.split == "test"
    order = np.flatnonzero(rest)[np.argsort(-sureness[rest], kind="stable")]
    half = len(order) // 2
    return {"test_accuracy": float(right[rest & test].mean()), "trainval_accuracy": float(right[rest & ~test].mean()),
            "rest_accuracy": float(right[rest].mean()), "estimate": estimate, "surer_half": float(right[order[:half]].mean()),
            "less_sure_half": float(right[order[half:]].mean())}


def label_spreading(unit: np.ndarray, labelled: np.ndarray, label: np.ndarray, classes: int, *, neighbours: int = 10,
                    alpha: float = 0.9, steps: int = 30) -> np.ndarray:
    """Per video the share of each class after label spreading (Zhou et al. 2004) from the labelled rows over the
    symmetrically normalised graph of each video's `neighbours` most similar videos: the alternative to naming
    each video by its most similar labelled one."""
    import scipy.sparse as sparse

    from slic.retrieval import nearest_others

    n = len(unit)
    index, similarity = nearest_others(unit, neighbours)
    weight = np.maximum(similarity.astype(np.float64), 0.0) ** 3
    graph = sparse.csr_matrix((weight.ravel(), (np.repeat(np.arange(n), index.shape[1]), index.ravel())), (n, n))
    graph = graph + graph.T
    degree = np.asarray(graph.sum(axis=1)).ravel()
    scale = sparse.diags(1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)))
    graph = scale @ graph @ scale
    seeds = np.zeros((n, classes))
    seeds[labelled, label] = 1.0
    scores = seeds.copy()
    for _ in range(steps):
        scores = alpha * (graph @ scores) + (1.0 - alpha) * seeds
    return scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-12)


def linear_probe(unit: np.ndarray, labelled: np.ndarray, label: np.ndarray, strength: float = 10.0) -> np.ndarray:
    """Per video the probability of each class (columns: class numbers 0..max) from a logistic regression fitted
    on the labelled rows: the other obvious way to name the rest from a few labels."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=strength, max_iter=2000).fit(unit[labelled], label)
    shares = np.zeros((len(unit), int(label.max()) + 1))
    shares[:, model.classes_] = model.predict_proba(unit)
    return shares


def simulate(archive: Any, truth: np.ndarray, *, rounds: int, draws: int, seed: int,
             check_seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    """Per way of WAYS, per round, the labelled count and `measured` (random_picks: mean over `draws`; with_checks
    draws its checks seeded by `check_seed` and the labels so far)."""
    from slic.label_spreading import (GivenLabels, checked_accuracy, finer_groups, label_next, leave_one_out_accuracy,
                                      name_by_nearest, random_checks)

    classes = int(truth.max()) + 1

    def by_nearest(labelled: np.ndarray) -> dict[str, Any]:
        named = name_by_nearest(archive.unit, labelled, truth[labelled], classes)
        given = GivenLabels(index=labelled, label=truth[labelled], names=[str(c) for c in range(classes)],
                            rows_without_class=0)
        return {"named": named, "row": {"labelled": len(labelled), **measured(
            archive, truth, labelled, named.label, named.margin, leave_one_out_accuracy(archive.unit, given))}}

    out: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    labelled = np.array([i for i, _ in label_next(archive, np.zeros(0, dtype=np.int64), None, PER_ROUND)])
    unsure = labelled
    first = [i for i, _ in label_next(archive, np.zeros(0, dtype=np.int64), None, PER_ROUND - CHECKS)]
    # The stage seeds a round's draw by the labels so far; here by `check_seed` too, so that each encoder's
    # checks are other videos and the estimate's error is measured over as many draws as encoders, not one.
    drawn = [i for i, _ in random_checks(archive, set(first), CHECKS, seed=1000 * check_seed)]
    with_checks, checked = np.array(first + drawn), np.array([False] * len(first) + [True] * len(drawn))
    rng = np.random.default_rng(seed)
    for _ in range(rounds):
        stage = by_nearest(labelled)
        out["stage"].append(stage["row"])
        named = name_by_nearest(archive.unit, with_checks, truth[with_checks], classes)
        given = GivenLabels(index=with_checks, label=truth[with_checks], names=[str(c) for c in range(classes)],
                            rows_without_class=0, check=checked)
        out["with_checks"].append({"labelled": len(with_checks), **measured(
            archive, truth, with_checks, named.label, named.margin, checked_accuracy(archive.unit, given)["share"])})
        reaching = with_checks[~checked]
        picks = [i for i, _ in label_next(archive, reaching, named.margin, PER_ROUND - CHECKS,
                                          finer_groups(archive, reaching, PER_ROUND - CHECKS),
                                          exclude=set(with_checks.tolist()))]
        drawn = [i for i, _ in random_checks(archive, set(with_checks.tolist()) | set(picks), CHECKS,
                                             seed=1000 * check_seed + len(with_checks))]
        with_checks = np.concatenate([with_checks, picks, drawn]).astype(np.int64)
        checked = np.concatenate([checked, [False] * len(picks), [True] * len(drawn)])
        shares = label_spreading(archive.unit, labelled, truth[labelled], classes)
        top = np.sort(shares, axis=1)
        out["label_spreading"].append({"labelled": len(labelled), **measured(
            archive, truth, labelled, shares.argmax(axis=1), top[:, -1] - top[:, -2], None)})
        probe = linear_probe(archive.unit, labelled, truth[labelled])
        top = np.sort(probe, axis=1)
        out["linear_probe"].append({"labelled": len(labelled), **measured(
            archive, truth, labelled, probe.argmax(axis=1), top[:, -1] - top[:, -2], None)})
        least = by_nearest(unsure)
        out["least_sure"].append(least["row"])
        each = [by_nearest(rng.choice(len(truth), len(labelled), replace=False))["row"] for _ in range(draws)]
        out["random_picks"].append({"labelled": len(labelled), **{
            key: (float(np.mean([e[key] for e in each])) if all(e[key] is not None for e in each) else None)
            for key in KEYS}})
        picks = label_next(archive, labelled, stage["named"].margin, PER_ROUND,
                           finer_groups(archive, labelled, PER_ROUND))
        labelled = np.concatenate([labelled, [i for i, _ in picks]])
        candidates = np.setdiff1d(np.arange(len(truth)), unsure)
        margin = least["named"].margin
        unsure = np.concatenate([unsure, candidates[np.argsort(margin[candidates], kind="stable")[:PER_ROUND]]])
    return out


def pooled(report: dict[str, Any], way: str, key: str, at: int, rows: tuple[str, ...] = TRAINED) -> float:
    """Mean of `key` for `way` at round `at` over the runs (encoder x seed) of `rows`."""
    return float(np.mean([e[way][at][key] for e in report["encoders"] if e["row"] in rows]))


def paired(report: dict[str, Any], way: str, at: int, key: str = "test_accuracy",
           rows: tuple[str, ...] = TRAINED) -> str:
    """'+m ± s (w of n)': the stage minus `way` at round `at`, in points, over the runs of `rows`."""
    diffs = np.array([e["stage"][at][key] - e[way][at][key] for e in report["encoders"] if e["row"] in rows]) * 100
    return f"{diffs.mean():+.1f} ± {diffs.std(ddof=1):.1f} ({int((diffs > 0).sum())} of {len(diffs)})"


def markdown(report: dict[str, Any]) -> str:
    """The docs' tables (docs/experiments.md, docs/pipeline.md) and the figures their text quotes, from a report."""
    rounds = range(report["rounds"])
    last, rows, summary = report["rounds"] - 1, report["rows"], report["row_summary"]
    labels = [summary[rows[0]]["stage"][r]["labelled"] for r in rounds]
    lines = ["| encoder | labelled by, named by | " + " | ".join(map(str, labels)) + " | train+val "
             + " | ".join(str(labels[r]) for r in (0, last // 2, last)) + " |", "|---" * (len(labels) + 5) + "|"]
    for row in rows:
        for way in WAYS:
            cells = summary[row][way]
            lines.append(f"| {row} | {WAY_NAMES[way]} | " + " | ".join(
                f"{c['test_accuracy']['mean'] * 100:.1f} ± {c['test_accuracy']['std'] * 100:.1f}" for c in cells)
                + " | " + " | ".join(f"{cells[r]['trainval_accuracy']['mean'] * 100:.1f}" for r in (0, last // 2, last))
                + " |")
    lines += ["", "| labelled videos | " + " | ".join(map(str, labels)) + " |", "|---" * (len(labels) + 1) + "|",
              "| test videos named rightly, % (mean over the three encoders) | "
              + " | ".join(f"{pooled(report, 'stage', 'test_accuracy', r) * 100:.1f}" for r in rounds) + " |"]
    for way, text in (("random_picks", "these suggestions minus as many random videos, points (9 paired runs)"),
                      ("label_spreading", "naming by the nearest labelled video minus label spreading over the "
                                          "neighbour graph"),
                      ("linear_probe", "naming by the nearest labelled video minus a logistic regression on the "
                                       "embeddings")):
        lines.append(f"| {text} | " + " | ".join(paired(report, way, r).split(" (")[0] for r in rounds) + " |")
    per_encoder = [summary[row]["stage"][last]["test_accuracy"]["mean"] * 100 for row in TRAINED]
    first = [summary[row]["stage"][0]["test_accuracy"]["mean"] * 100 for row in TRAINED]
    lines += ["", f"figures at {labels[last]} labels unless said (trained encoders, runs paired by seed):",
              f"- test named rightly: per encoder {min(per_encoder):.1f}-{max(per_encoder):.1f}; at {labels[0]}: "
              f"{min(first):.1f}-{max(first):.1f}; random_init {summary['random_init']['stage'][last]['test_accuracy']['mean'] * 100:.1f} "
              f"(at {labels[0]}: {summary['random_init']['stage'][0]['test_accuracy']['mean'] * 100:.1f})"
              if "random_init" in summary else "",
              "- train+val, pooled: " + ", ".join(f"{way} {pooled(report, way, 'trainval_accuracy', last) * 100:.1f}"
                                                for way in WAYS),
              f"- stage minus random at {labels[0]}: {paired(report, 'random_picks', 0)}; at {labels[last]}: "
              f"{paired(report, 'random_picks', last)}",
              *(f"- stage minus {way}: {paired(report, way, last)}" for way in WAYS[1:5]),
              f"- margin, stage: surer half {pooled(report, 'stage', 'surer_half', last) * 100:.0f}, less sure "
              f"{pooled(report, 'stage', 'less_sure_half', last) * 100:.0f}; random picks "
              f"{pooled(report, 'random_picks', 'surer_half', last) * 100:.0f} and "
              f"{pooled(report, 'random_picks', 'less_sure_half', last) * 100:.0f}",
              *(f"- leave-one-out at {labels[r]}: {pooled(report, 'stage', 'estimate', r) * 100:.0f} against test "
                f"{pooled(report, 'stage', 'test_accuracy', r) * 100:.0f}; random picks "
                f"{pooled(report, 'random_picks', 'estimate', r) * 100:.0f} against "
                f"{pooled(report, 'random_picks', 'test_accuracy', r) * 100:.0f}" for r in (0, last))]
    for r in rounds:
        error = np.array([e["with_checks"][r]["estimate"] - e["with_checks"][r]["rest_accuracy"]
                          for e in report["encoders"] if e["row"] in TRAINED]) * 100
        lines.append(f"- checks at {labels[r]} labels ({CHECKS * (r + 1)} checks): estimate minus truth "
                     f"{error.mean():+.1f} on average, mean absolute error {np.abs(error).mean():.1f}")
    lines.append(f"- with checks: test {pooled(report, 'with_checks', 'test_accuracy', last) * 100:.1f} against "
                 f"{pooled(report, 'stage', 'test_accuracy', last) * 100:.1f}; train+val "
                 f"{pooled(report, 'with_checks', 'trainval_accuracy', last) * 100:.1f} against "
                 f"{pooled(report, 'stage', 'trainval_accuracy', last) * 100:.1f}")
    return "\n".join(line for line in lines if line is not None)


def parse_args(argv: list[str] | None) -> Any:
    parser = cells_parser(__doc__.splitlines()[0], list(DEFAULT_ROWS), DEFAULT_OUT, markdown="tables and figures")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 20 labels (5: up to 100 videos)")
    parser.add_argument("--draws", type=int, default=5, help="random_picks draws per round")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if printed_markdown(args, markdown):
        return
    config, world, work = open_bench(args, "bench/spread_labels.py")
    started = time.perf_counter()
    encoders: list[dict[str, Any]] = []
    for seed, row, cell, result in each_stored_cell(config, world, work, args.seeds, args.rows):
        archive, truth = archive_from(cell / "embeddings.npz")
        ways = simulate(archive, truth, rounds=args.rounds, draws=args.draws, seed=seed,
                        check_seed=10 * seed + args.rows.index(row))
        encoders.append({"row": row, "seed": seed, "test_recall@1": result["recall@1"], **ways})
        print(f"  seed {seed} {row:12s} test accuracy, " + "/".join(WAYS) + ": " + " ".join(
            f"{r[0]['labelled']}: " + "/".join(f"{w['test_accuracy']:.3f}" for w in r)
            for r in zip(*(ways[way] for way in WAYS))), flush=True)
    summary: dict[str, Any] = {}
    for row in args.rows:
        mine = [e for e in encoders if e["row"] == row]
        summary[row] = {way: [{"labelled": mine[0][way][r]["labelled"], **{
            key: spread([e[way][r][key] for e in mine]) for key in KEYS
            if all(e[way][r][key] is not None for e in mine)}} for r in range(args.rounds)] for way in WAYS}
        for other in WAYS[1:]:
            summary[row][f"stage - {other}"] = [spread([e["stage"][r]["test_accuracy"] - e[other][r]["test_accuracy"]
                                                       for e in mine]) for r in range(args.rounds)]
    report = {
        "question": "how many labels before spread_labels names the rest rightly; do its suggestions beat random?",
        "archive": "every video of ucf101_6 (all splits), grouped by FINCH down to 20 as the clusters stage does",
        "chosen_on": "naming by the nearest labelled video and the suggestions were chosen on trainval_accuracy (train "
                     "and val videos); test_accuracy is over the test split's videos not labelled",
        "stage_settings": {"suggest": PER_ROUND, "groups": GROUPS},
        "rows": args.rows, "seeds": args.seeds, "rounds": args.rounds, "draws": args.draws, "encoders": encoders,
        "row_summary": summary, "machine": machine(world.device), "work": shown(work),
        "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    for row in args.rows:
        for way in WAYS:
            print(f"{row:12s} {way:17s} " + " ".join(
                f"{r['labelled']}: {r['test_accuracy']['mean']:.3f}±{r['test_accuracy']['std']:.3f}"
                for r in summary[row][way]), flush=True)
        est = summary[row]["stage"]
        print(f"{row:12s} estimate          " + " ".join(
            f"{r['labelled']}: {r['estimate']['mean']:.3f}" if "estimate" in r else f"{r['labelled']}: -"
            for r in est), flush=True)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
