"""The stages of an evaluation set, as `slic eval-data NAME`, `slic transfer NAME` and `slic classify NAME`
run them (see slic.transfer and slic.transfer_classify).

Each writes its report under reports/transfer/<name>/; transfer and classify each open one MLflow run
('transfer <name> <model>', 'classify <name> <model>') whose input dataset is the eval set, so the runs
table shows which set a recall or an accuracy was measured on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from slic.config import Config, to_dict
from slic.encoder_lineage import record_stage_encoder
from slic.transfer import data_dir, eval_set, evaluate_transfer, prepare_eval_data, reports_dir


def run_eval_data(config: Config, name: str) -> dict[str, Any]:
    """Stage eval_data@<name>: the set's manifest, its Great Expectations check and its frame shards."""
    report = prepare_eval_data(config, name)  # EvalDataInvalid: the caller writes its report and says so
    print(f"eval_data {name}: {report['usable_videos']} usable of {report['videos']} videos, {report['classes']} "
          f"classes, splits {report['splits']} -> {data_dir(name)}")
    return report


def run_transfer(config: Config, name: str, world: Any) -> dict[str, Any]:
    """Stage transfer@<name>: retrieval on the set with the pretrained encoder and with random_init."""
    from slic.report import write_retrieval_html
    from slic.tracking import stage_run

    report = evaluate_transfer(config, name, world)
    report["pretraining_twins"], warning = _pretraining_twins(config, name)
    if warning:
        report["advice"] = [warning]
        print(f"transfer {name}: warning: {warning}", file=sys.stderr)
    pretrained = report["pretrained"]
    html = reports_dir(name) / "retrieval.html"
    domain = report["in_domain_recall@1"]
    intro = (f"Transfer: the encoder {report['encoder']} ({config.embed.checkpoint}) never trained on these videos; "
             f"eval set {name} ({eval_set(config, name).root}). recall@1 {100 * pretrained['recall@1']:.1f}% against "
             f"{100 * report['random_init']['recall@1']:.1f}% for the same network untrained "
             f"({report['gain_over_random_init_points']:+.1f} points)" +
             (f"; in its training set's own test split: {100 * domain:.1f}%." if domain is not None else "."))
    page = write_retrieval_html(str(html), pretrained, embeddings=pretrained["embeddings"],
                                frames_dir=str(data_dir(name) / "frames"), manifest=str(data_dir(name) / "validated.csv"),
                                queries=config.evaluate.html_queries, k=config.evaluate.html_k,
                                seed=config.evaluate.html_seed, title=f"Transfer report: eval set {name}",
                                intro=intro, baseline=report["random_init"])
    report["html"] = str(html)
    params = {**to_dict(eval_set(config, name)), "checkpoint": config.embed.checkpoint, "clips": config.embed.clips}
    with stage_run(f"transfer@{name}", params, name=f"transfer {name} {report['encoder']}") as run:
        record_stage_encoder(run, config, f"transfer@{name}")
        run.log_input(data_dir(name) / "validated.csv", _data_digest(name), splits=("train", "test"),
                      context="evaluation")
        run.log_metrics({**{k: v for k, v in pretrained.items() if k.startswith("recall@")},
                         **{f"random_init_{k}": v for k, v in report["random_init"].items() if k.startswith("recall@")},
                         "gain_over_random_init_points": report["gain_over_random_init_points"]})
        run.log_artifact(html)
        report["mlflow_run_id"] = run.run_id
    print(f"transfer {name}: recall@1 {pretrained['recall@1']:.3f} (random_init {report['random_init']['recall@1']:.3f}, "
          f"{report['gain_over_random_init_points']:+.1f} points)" +
          (f"; in-domain recall@1 {domain:.3f}" if domain is not None else ""))
    if page["missing_thumbnails"]:
        print(f"transfer {name}: warning: no frames for {len(page['missing_thumbnails'])} thumbnails", file=sys.stderr)
    return report


def _pretraining_twins(config: Config, name: str) -> tuple[dict[str, Any], str]:
    """The set's test videos against the videos the encoder trained on (`slic.data.twins.pretraining_twins`), and
    a warning line when 5% or more of them look nearly the same as one (empty otherwise)."""
    from slic.data.datasets import read_manifest
    from slic.data.twins import pretraining_twins, pretraining_twins_warning, write_twin_pairs

    pairs_file = reports_dir(name) / "pretraining_twins.csv"  # a DVC out: written (a header at least) every run
    if not Path(config.extract.manifest).is_file():  # pretrained elsewhere: nothing here to compare with
        empty = {"queries": 0, "with_twin": 0, "share": 0.0, "examples": [], "note": "no pretraining manifest"}
        return write_twin_pairs(empty, pairs_file, {}), ""
    eval_videos = read_manifest(data_dir(name) / "validated.csv")
    pretraining_videos = read_manifest(config.extract.manifest)
    twins = pretraining_twins(eval_videos, data_dir(name) / "frames", pretraining_videos, config.extract.out,
                              workers=config.extract.workers)
    twins = write_twin_pairs(twins, pairs_file, dict(zip(eval_videos["video_id"], eval_videos["path"])),
                             dict(zip(pretraining_videos["video_id"], pretraining_videos["path"])))
    return twins, pretraining_twins_warning(twins)


def run_classify(config: Config, name: str) -> dict[str, Any]:
    """Stage classify@<name>: linear probe and finetune on the set (when eval_sets.<name>.classify), one MLflow run."""
    import torch

    from slic.tracking import stage_run
    from slic.transfer import encoder_name
    from slic.transfer_classify import classify_dir, classify_eval_set, disabled_report, write_classify_splits

    if not eval_set(config, name).classify:
        classify_dir(name).mkdir(parents=True, exist_ok=True)  # the stage's output; earlier checkpoints are kept
        report = disabled_report(name)
        print(f"classify {name}: off ({report['how']})")
        return report
    splits = write_classify_splits(config, name)  # a set that cannot be carved is refused before any loading
    checkpoint = config.embed.checkpoint
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint; run the `pretrain` stage first (dvc repro pretrain)")
    trained = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["config"]
    params = {**to_dict(eval_set(config, name)), "checkpoint": checkpoint}
    with stage_run(f"classify@{name}", params, name=f"classify {name} {encoder_name(trained)}",
                   system_metrics=True) as run:
        record_stage_encoder(run, config, f"classify@{name}")
        report = classify_eval_set(config, name, splits, run)
        run.log_input(splits, _data_digest(name), splits=("train", "val", "test"),
                      context="training")
        pretrained, scratch = report["finetune"]["pretrained"], report["finetune"]["scratch"]
        run.log_metrics({"linear_probe_top1": report["linear_probe"]["top1"], "finetune_pretrained_top1":
                         pretrained["top1"], "finetune_scratch_top1": scratch["top1"],
                         "finetune_gain_over_scratch_points": report["finetune_gain_over_scratch_points"]})
        report["mlflow_run_id"] = run.run_id
    report["encoder"] = encoder_name(trained)
    print(f"classify {name}: linear probe top1 {report['linear_probe']['top1']:.2f}%, finetune top1 "
          f"{pretrained['top1']:.2f}% from {report['encoder']} against {scratch['top1']:.2f}% from scratch "
          f"(chance {report['chance_top1']:.1f}%)")
    return report


def _data_digest(name: str) -> str:
    """The eval set's content fingerprint, from the frame index eval_data@<name> wrote (a declared dependency)."""
    from slic.data.frames import content_fingerprint, content_hashes

    return content_fingerprint(content_hashes(data_dir(name) / "frames"))
