"""Does promote's comparison on your labels pick the encoder that is better on the test split?

Where the videos have no classes, `promote` compares the candidate and the champion on the labelled videos of
promote.labels that neither trained on (slic.promote_labels.compare_on_labels: recall@1 of each against every other
labelled video, own recording left out, one centre clip per video). This bench asks how often that decision agrees
with the truth, on the pairs bench/labels_stage.py trained (per seed of each split: the slic encoder as the
champion, the one retrained with `pretrain.mode: labels` on 100 labels as the candidate; the truth is their test
recall@1, whose own paired standard error is reported beside it), with three sets of held-out videos:
- `outside_train`: the stage as it runs on ucf101_6: the queries are the labelled videos outside the train split
  (about 40 of the 100; the candidate trained on the others);
- `checks_20`, `checks_40`: as in an archive of the `unlabelled` layout, where every video is a train video and only
  random checks are held out: 20 or 40 videos drawn at random from the videos neither labelled nor of the test
  split, labelled with their true classes and marked `check`, are the only queries (the 100 labels stay in the
  gallery), over `--draws` draws per pair;
and four judges on each: the stage's (`labelled_r1`), mean average precision over the same gallery
(`labelled_map`), and both with a gallery of the held-out videos alone (`held_r1`, `held_map`: no video the
candidate trained on is anyone's neighbour). For each: how often the alias would move, how often the decision
agrees with the test split (promote when the candidate's test recall@1 is higher; a tie of the judge keeps the
champion), over all pairs and over those whose test lead is at least twice its standard error, and the test
recall@1 of the encoder served under the rule against never moving the alias (the behaviour before) and always
moving it; for the recall@1 judges also how often the decisions whose sign test gives p < 0.05 (as the stage's
reason prints it) agree. The stage's own function is run on `outside_train` and must give the `labelled_r1` numbers.

Reads the folders of bench/labels_stage.py (run `make bench-labels-stage` first, any splits); computes nothing
there. Checkpoints from before `trained_labels` was kept get the labels pretrain would have recorded
(slic.labels_table.read_training_labels on the same files). Writes reports/bench/promote_labels.json.

    python bench/promote_labels.py                     # about 25 s a pair on 2 idle cores
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, spread, write_report  # noqa: E402
from bench.labels_stage import DEFAULT_WORK, classes_of  # noqa: E402
from slic.promote_labels import sign_test_p  # noqa: E402

DEFAULT_OUT = ROOT / "reports" / "bench" / "promote_labels.json"
CHECKS = (20, 40)


def pairs_in(work: Path) -> list[Path]:
    """The seed folders of bench/labels_stage.py under `work` that hold a finished pair (their result.json)."""
    return sorted(folder for folder in work.iterdir() if (folder / "result.json").is_file())


def encoders(folder: Path, frames: Path) -> tuple[Any, Any]:
    """(candidate, champion): the labels encoder and the slic encoder of a labels_stage pair, each with the given
    labels it trained on (filled in from the labels file for a checkpoint from before they were kept)."""
    from slic.data.clips import load_videos
    from slic.labels_table import read_training_labels
    from slic.serving import VideoEncoder

    candidate = VideoEncoder(folder / "labels" / "data" / "models" / "pretrain" / "best.pt")
    champion = VideoEncoder(folder / "slic" / "data" / "models" / "pretrain" / "best.pt")
    manifest = folder / "slic" / "data" / "manifests" / "validated.csv"
    train = load_videos(manifest, frames, splits=["train"], min_frames=2 * candidate.clip_len,
                        frame_step=candidate.frame_step)
    would = read_training_labels(folder / "labels" / "labels" / "train" / "given.csv", manifest,
                                 [v.video_id for v in train]).by_video
    if candidate.trained_labels and set(candidate.trained_labels) != set(would):
        raise RuntimeError(f"{folder}: the checkpoint's trained labels differ from what its labels file gives")
    candidate.trained_labels = candidate.trained_labels or would
    return candidate, champion


def checks_drawn(given: list[str], truth: dict[str, str], split: dict[str, str], count: int,
                 rng: np.random.Generator) -> list[str]:
    """`count` random videos neither in `given` nor of the test split: random checks a user labelled."""
    labelled = set(given)
    return rng.choice(sorted(v for v in truth if v not in labelled and split[v] != "test"), size=count,
                      replace=False).tolist()


def ranked_relevance(vectors: np.ndarray, labels: np.ndarray, recordings: np.ndarray, query: int,
                     gallery: np.ndarray) -> np.ndarray:
    """Whether each `gallery` row shares the `query` row's class, nearest first, the query's own recording left
    out (itself included)."""
    similarity = vectors[gallery] @ vectors[query]
    kept = recordings[gallery] != recordings[query]
    order = np.argsort(-similarity[kept], kind="stable")
    return labels[gallery[kept][order]] == labels[query]


def judged(vectors: np.ndarray, labels: np.ndarray, recordings: np.ndarray, queries: list[int],
           gallery: list[int]) -> dict[str, np.ndarray]:
    """Per query: recall@1 (its nearest gallery video has its class) and average precision over `gallery`."""
    hits, precision = [], []
    for query in queries:
        relevant = ranked_relevance(vectors, labels, recordings, query, np.array(gallery))
        hits.append(bool(relevant[0]))
        ranks = np.flatnonzero(relevant) + 1
        precision.append(float((np.arange(1, len(ranks) + 1) / ranks).mean()) if len(ranks) else 0.0)
    return {"r1": np.array(hits), "map": np.array(precision)}


def truth_on_test(folder: Path, recorded: dict[str, float]) -> dict[str, float]:
    """Each encoder's test recall@1 (test queries against the train gallery, from the pair's embeddings) and the
    paired standard error of their difference, in points; `recorded` (the evaluate stage's recall@1 of each, from
    the pair's result.json) must be what this computes."""
    from slic.retrieval import hits_at_k, nearest_gallery

    hits = {}
    for name in ("slic", "labels"):
        data = np.load(folder / name / "data" / "embeddings" / "embeddings.npz")
        test, train = data["split"] == "test", data["split"] == "train"
        nearest = nearest_gallery(data["embedding"][test], data["embedding"][train], 1)
        hits[name] = hits_at_k(data["label"][test], data["label"][train], nearest, (1,))[1].astype(float)
        if not np.isclose(hits[name].mean(), recorded[name]):
            raise RuntimeError(f"{folder}: test recall@1 of {name} {hits[name].mean()} is not evaluate's "
                               f"{recorded[name]}")
    lead = hits["labels"] - hits["slic"]
    return {"slic": float(100 * hits["slic"].mean()), "labels": float(100 * hits["labels"].mean()),
            "lead": float(100 * lead.mean()),
            "lead_se": float(100 * lead.std(ddof=1) / np.sqrt(len(lead))), "queries": int(len(lead))}


def judge_pair(folder: Path, frames: Path, draws: int, seed: int) -> dict[str, Any]:
    """Every judge's numbers (candidate, champion, in %) on each held-out set of one pair, and the test's truth."""
    from slic.data.clips import load_videos
    from slic.promote_labels import centre_embeddings, compare_on_labels
    from slic.retrieval import normalize_rows, source_units

    result = json.loads((folder / "result.json").read_text())
    manifest = folder / "slic" / "data" / "manifests" / "validated.csv"
    labels_file = folder / "labels" / "labels" / "train" / "given.csv"
    truth, split = classes_of(manifest)
    candidate, champion = encoders(folder, frames)
    started = time.perf_counter()
    with labels_file.open(newline="") as handle:
        given = [row["video_id"] for row in csv.DictReader(handle)]
    every = load_videos(manifest, frames, splits=sorted(set(split.values())), min_frames=candidate.clip_len,
                        frame_step=candidate.frame_step)
    shards = [v for v in every if split[v.video_id] != "test" or v.video_id in given]  # labelled, or a check to draw
    row_of = {v.video_id: i for i, v in enumerate(shards)}
    names = sorted(set(truth.values()))
    labels = np.array([names.index(truth[v.video_id]) for v in shards])
    units, _ = source_units(manifest)
    recordings = np.array([units[v.video_id] for v in shards])
    vectors = {who: normalize_rows(centre_embeddings(encoder, shards))
               for who, encoder in (("candidate", candidate), ("champion", champion))}
    labelled = [row_of[v] for v in given if v in row_of]
    held = [row_of[v] for v in given if v in row_of and v not in candidate.trained_labels]
    rng = np.random.default_rng([seed, int(result["seed"]), len(folder.name)])
    sets = {"outside_train": [held]}
    for count in CHECKS:
        sets[f"checks_{count}"] = [[row_of[v] for v in checks_drawn(given, truth, split, count, rng)]
                                   for _ in range(draws)]
    out: dict[str, Any] = {}
    for name, drawn in sets.items():
        out[name] = []
        for queries in drawn:
            each: dict[str, Any] = {"held_out": len(queries)}
            for gallery, rows in (("labelled", sorted(set(labelled) | set(queries))), ("held", queries)):
                per = {who: judged(vectors[who], labels, recordings, queries, rows) for who in vectors}
                for stat in ("r1", "map"):
                    each[f"{gallery}_{stat}"] = {who: 100 * float(per[who][stat].mean()) for who in per}
                ours, theirs = per["candidate"]["r1"], per["champion"]["r1"]  # what the sign test weighs
                each[f"{gallery}_r1"].update(only_candidate=int((ours & ~theirs).sum()),
                                             only_champion=int((theirs & ~ours).sum()))
            out[name].append(each)
    stage = compare_on_labels(labels_file, candidate, champion, manifest, frames)  # the stage on outside_train
    mine = out["outside_train"][0]["labelled_r1"]
    if (round(100 * stage.candidate, 6), round(100 * stage.champion, 6), stage.only_candidate,
            stage.only_champion) != (round(mine["candidate"], 6), round(mine["champion"], 6), mine["only_candidate"],
                                     mine["only_champion"]):
        raise RuntimeError(f"{folder}: the stage gives {stage}, this bench {mine}")
    return {"pair": folder.name, "test": truth_on_test(folder, result["test_recall_at_1"]), "judged": out,
            "seconds": round(time.perf_counter() - started, 1)}


def summary(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per held-out set and judge: the share of decisions that promote, that agree with the test split (all, and
    where the test's lead is at least twice its standard error), and the test recall@1 (%) of the encoder served
    under the rule, beside never and always moving the alias and the test's own choice."""
    truth = [(p["test"]["labels"], p["test"]["slic"]) for p in pairs]
    clear = [bool(abs(p["test"]["lead"]) >= 2 * p["test"]["lead_se"]) for p in pairs]
    out: dict[str, Any] = {
        "pairs": len(pairs), "candidate_better_on_test": sum(c > s for c, s in truth),
        "test_lead": spread([p["test"]["lead"] for p in pairs]),
        "test_lead_se": spread([p["test"]["lead_se"] for p in pairs]), "pairs_clear_on_test": sum(clear),
        "served_test_recall_at_1": {"never_move": spread([s for _, s in truth]),
                                    "always_move": spread([c for c, _ in truth]),
                                    "best_on_test": spread([max(c, s) for c, s in truth])}}
    for held_out in pairs[0]["judged"]:
        for judge in pairs[0]["judged"][held_out][0]:
            if judge == "held_out":
                continue
            moves, agreed, agreed_clear, agreed_sure, served, lead = [], [], [], [], [], []
            for pair, (ours, theirs), sure in zip(pairs, truth, clear):
                for found in pair["judged"][held_out]:
                    move = found[judge]["candidate"] > found[judge]["champion"]
                    moves.append(move)
                    agreed.append(move == (ours > theirs))
                    if sure:
                        agreed_clear.append(move == (ours > theirs))
                    if "only_candidate" in found[judge] and sign_test_p(found[judge]["only_candidate"],
                                                                        found[judge]["only_champion"]) < 0.05:
                        agreed_sure.append(move == (ours > theirs))
                    served.append(ours if move else theirs)
                    lead.append(found[judge]["candidate"] - found[judge]["champion"])
            out.setdefault(held_out, {})[judge] = {
                "decisions": len(moves), "promoted_share": float(np.mean(moves)),
                "agrees_with_test_share": float(np.mean(agreed)),
                "agrees_where_test_is_clear": float(np.mean(agreed_clear)) if agreed_clear else None,
                "judged_lead_points": spread(lead), "served_test_recall_at_1": spread(served)}
            if judge.endswith("_r1"):  # the decisions whose sign test says p < 0.05, as the stage's reason gives it
                out[held_out][judge].update(sign_test_below_05=len(agreed_sure), agrees_where_sign_test_below_05=(
                    float(np.mean(agreed_sure)) if agreed_sure else None))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="bench/labels_stage.py's work folders")
    parser.add_argument("--draws", type=int, default=5, help="random draws of the checks per pair")
    parser.add_argument("--seed", type=int, default=0, help="seeds the draws of the checks")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)
    work = Path(args.work)
    folders = pairs_in(work) if work.is_dir() else []
    if not folders:
        parser.error(f"no finished pair under {work}: run `make bench-labels-stage` (any --split) first")
    pairs = []
    for folder in folders:
        pairs.append(judge_pair(folder, work / "frames", args.draws, args.seed))
        stage, test = pairs[-1]["judged"]["outside_train"][0], pairs[-1]["test"]
        print(f"{folder.name}: test recall@1 slic {test['slic']:.1f} labels {test['labels']:.1f} (lead "
              f"{test['lead']:+.1f} +- {test['lead_se']:.1f}); on the {stage['held_out']} labelled videos outside "
              f"train: champion {stage['labelled_r1']['champion']:.1f} candidate "
              f"{stage['labelled_r1']['candidate']:.1f}", flush=True)
    import torch

    report = {"bench": "promote_labels", "work": Path(args.work).name, "draws": args.draws, "checks": list(CHECKS),
              "seed": args.seed,
              "machine": machine(torch.device("cpu")), "per_pair": pairs, **summary(pairs)}
    print(f"wrote {write_report(report, args.out)}")


if __name__ == "__main__":
    main()
