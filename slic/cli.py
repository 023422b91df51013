"""`slic <stage>`: parse arguments, load params.yaml, run the stage, write reports/<stage>.json.

Heavy libraries (torch, Great Expectations, MLflow) are imported inside the stage that needs
them, so `slic --help` and config errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

TELEMETRY_OFF = {"DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "MLFLOW_DISABLE_TELEMETRY": "true", "DVC_NO_ANALYTICS": "1",
                 "GX_ANALYTICS_ENABLED": "false"}


def write_report(name: str, report: dict[str, Any], reports_dir: str | Path = "reports") -> Path:
    """Write reports/<name>.json (sorted keys, indented) and return its path."""
    path = Path(reports_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    return path


def _progress(total: int, desc: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit="video", disable=not sys.stderr.isatty())
    return bar.update, bar.close


def run_synth(config: Any) -> dict[str, Any]:
    """Stage `synth`: generate the synthetic motion dataset."""
    return _synthesize(config.synth, "synth")


def run_synth_transfer(config: Any) -> dict[str, Any]:
    """Stage `synth_transfer`: the motions `synth` never shows, as the eval set of the synthetic world."""
    return _synthesize(config.synth_transfer, "synth_transfer")


def _synthesize(section: Any, stage: str) -> dict[str, Any]:
    from slic.data import synthetic

    update, close = _progress(len(synthetic.clip_specs(section)), stage)
    try:
        report = synthetic.generate(section, progress=update)
    finally:
        close()
    print(f"{stage}: {report['videos']} videos, {report['classes']} classes -> {section.out}")
    return report


def run_manifest(config: Any) -> dict[str, Any]:
    """Stage `manifest`: list, probe and split the dataset into data/manifests/manifest.csv."""
    from slic.data import datasets

    table = datasets.build_manifest(config.manifest, target_fps=config.extract.fps)
    out = Path(config.manifest.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    excluded = table[table["excluded"] != ""]
    usable = table[table["excluded"] == ""]
    report = {
        "videos": len(table), "usable": len(usable), "classes": int(table.loc[table["class"] != "", "class"].nunique()),
        "splits": {k: int(v) for k, v in usable["split"].value_counts().sort_index().items()},
        "excluded": [{"video_id": v, "path": p, "reason": r}  # the file, so two ids alike are told apart
                     for v, p, r in zip(excluded["video_id"], excluded["path"], excluded["excluded"])],
        "layout": config.manifest.layout, "root": config.manifest.root,
    }
    report["summary"] = datasets.collection_summary(table)
    print(f"manifest: {len(table)} videos ({len(excluded)} excluded), splits {report['splits']} -> {out}")
    print(f"manifest: {datasets.summary_line(report['summary'])}")
    if config.manifest.group_pattern:  # what the user's regex made of the folder, to check at a glance
        report["recordings"], line = datasets.recordings_summary(table)
        print(f"manifest: {line}")
    for item in report["excluded"][:10]:
        print(f"  excluded {item['path']}: {item['reason']}")
    if len(excluded) > 10:
        print(f"  and {len(excluded) - 10} more excluded: reports/manifest.json lists each with its reason")
    advice = [line for line in (datasets.segment_advice(table, config.manifest.segment_seconds),
                                datasets.frame_rate_advice(table, config.extract.fps),
                                datasets.variable_rate_advice(table, config.extract.fps),
                                datasets.short_at_rate_advice(table, config.manifest.min_frames, config.extract.fps),
                                datasets.grouping_advice(table, config.manifest.root, config.manifest.layout,
                                                         config.manifest.group_pattern),
                                datasets.unwatched_splits_advice(config.manifest.root, config.manifest.layout,
                                                                 config.manifest.splits_dir))
              if line]
    if advice:
        report["advice"] = advice
        for line in advice:
            print(f"manifest: note: {line}")
    if datasets.unwatched_splits_advice(config.manifest.root, config.manifest.layout, config.manifest.splits_dir):
        # DVC cannot see an edit there: the fingerprint lets `slic summary` (report_freshness) see it
        report["unwatched_splits"] = {"dir": config.manifest.splits_dir,
                                      "fingerprint": datasets.splits_fingerprint(config.manifest.splits_dir)}
    if usable.empty:  # nothing to train on: stop here, with the reasons, rather than at validate
        write_report("manifest", report)
        reasons = Counter(str(item["reason"]).split(":")[0] for item in report["excluded"])
        why = f" ({', '.join(f'{reason} {count}' for reason, count in reasons.most_common())})" if reasons else ""
        raise StageFailed(f"no usable video among the {len(table)} found under {config.manifest.root} (layout "
                          f"{config.manifest.layout}){why}: check manifest.root and manifest.layout; "
                          "reports/manifest.json names each file with its reason")
    return report


def run_validate(config: Any) -> dict[str, Any]:
    """Stage `validate`: Great Expectations on the manifest; writes the usable rows on success."""
    from slic.data.datasets import read_manifest
    from slic.data.validate import validate_manifest

    manifest = read_manifest(config.validate.manifest)
    result = validate_manifest(manifest, min_frames=config.manifest.min_frames,
                               max_examples=config.validate.max_examples,
                               data_docs=config.validate.data_docs or None,
                               labelled=config.manifest.layout != "unlabelled", target_fps=config.extract.fps)
    report = {"success": result.success, "statistics": result.statistics,
              "failures": [vars(f) for f in result.failures], "results": result.results}
    if not result.success:
        write_report("validate", report)
        raise StageFailed(result.summary() + "\nfull result: reports/validate.json")
    usable = manifest[(manifest["excluded"] == "") & (manifest["split"] != "unused")]
    out = Path(config.validate.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    usable.to_csv(out, index=False)
    print(result.summary() + f"; {len(usable)} usable video{'' if len(usable) == 1 else 's'} -> {out}")
    return report


def run_extract(config: Any) -> dict[str, Any]:
    """Stage `extract`: one JPEG shard per video under data/frames, with index.csv."""
    from slic.data.datasets import read_manifest
    from slic.data.frames import extract_as_configured
    from slic.data.twins import archive_twins, archive_twins_warning, near_twins, twins_warning, write_twin_pairs
    from slic.data.validate import frames_report

    cfg = config.extract
    manifest = read_manifest(cfg.manifest)
    report = extract_as_configured(manifest, cfg)
    report["manifest"] = cfg.manifest  # with content_fingerprint: the input dataset of its MLflow record
    print(f"extract: {report['extracted']} extracted, {report['reused']} reused, {len(report['failed'])} failed; "
          f"{report['frames']} frames, {report['bytes'] / 1e6:.1f} MB, {report['frames_per_s']} frames/s"
          + (f" (of the run that extracted them, {report['throughput_from']})" if report["all_reused"] else ""))
    for item in report["failed"]:
        print(f"  failed {item['path']}: {item['error']}")
    for item in report["damaged"]:
        print(f"  damaged {item['path']}: {item['note']}")
    checked = frames_report(manifest, cfg.out, splits=("train", "val", "test"))
    report["validation"] = checked
    if not checked["success"]:  # the shards stay: a rerun reuses every intact one
        write_report("extract", report)
        raise StageFailed(checked["summary"] + "\nfull result: reports/extract.json")
    print(f"extract: {checked['summary']}")  # with its warnings (videos that failed) and what to do
    labelled = bool((manifest["label"].astype(int) >= 0).any())
    # labelled: test videos against train; an unlabelled archive has no split: twins of other recordings (copies,
    # unnamed clips of one recording)
    twins = (near_twins if labelled else archive_twins)(manifest, cfg.out, workers=cfg.workers)
    report["near_twins"] = write_twin_pairs(twins, Path("reports/near_twins.csv"),  # a report, not in the frames
                                            dict(zip(manifest["video_id"], manifest["path"])))  # folder: no retraining
    warning = (twins_warning(report["near_twins"], "for a class folder set manifest.group_pattern (the manifest "
                                                   "stage suggests one), otherwise check the split files")
               if labelled else archive_twins_warning(report["near_twins"]))
    if warning:
        report["advice"] = [warning]
        print(f"extract: warning: {warning}", file=sys.stderr)
    return report


def run_flow(config: Any) -> dict[str, Any]:
    """Stage `flow`: TV-L1 flow (u only) of the chosen splits' videos, one shard per video under data/flow.

    Only with `flow.enabled` (pretrain's flow view reads it); otherwise nothing is computed, so `pretrain`
    does not wait for flow it never reads, and `ablation_flow` computes the flow it needs itself.
    """
    from slic.ablation import compute_flow, skipped_flow

    cfg = config.flow
    if not cfg.enabled:
        report = skipped_flow(cfg.out)
        print(f"flow: {report['note']}")
        return report
    report = compute_flow(config, cfg.out)
    report["manifest"] = cfg.manifest
    print(f"flow ({report['method']} on {report['device']}): {report['computed']} computed, {report['reused']} "
          f"reused, {len(report['failed'])} failed; {report['pairs_per_s']} pairs/s, {report['seconds']} s")
    for item in report["failed"]:
        print(f"  failed {item['video_id']}: {item['error']}")
    return report


def _tracked(stage: str, params: dict[str, Any], world: Any, system_metrics: bool = True, *, name: str | None = None,
             defer: bool = False) -> Any:
    """An MLflow run for the stage on the main rank (named `name`, see tracking.stage_run); a null context elsewhere."""
    from contextlib import nullcontext

    from slic.tracking import stage_run

    if not world.is_main:
        return nullcontext(None)
    return stage_run(stage, params, system_metrics=system_metrics, name=name, defer=defer)


def _checkpoint_config(checkpoint: str | Path) -> dict[str, Any]:
    """The pretrain settings saved in a checkpoint ({} when it cannot be read: callers only name things)."""
    import torch

    try:
        return dict(torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)["config"])
    except Exception:  # noqa: BLE001 - a missing or foreign file: the stage itself reports it properly
        return {}


def _model_summary(config: dict[str, Any], fallback: str | Path) -> str:
    """What an encoder is, for run names: 'slic r3d_18_tiny 32px' (the checkpoint's name if unknown)."""
    if {"mode", "backbone", "size"} <= set(config):
        return f"{config['mode']} {config['backbone']} {config['size']}px"
    return Path(fallback).name


ENCODER_SAID = ("mode", "backbone", "size", "clip_len", "frame_step", "objective", "optimizer", "epochs", "seed")


def _encoder_said(model: dict[str, Any]) -> dict[str, Any]:
    """What evaluate's report says of the encoder it measured (its checkpoint's settings, `model`): `encoder` (what it
    is, the seed too) and `differs_from_paper` (the pretraining settings that are not the paper's configuration),
    so a recall read from reports/retrieval.json alone says what made it; {} for embeddings not the checkpoint's."""
    from slic.presets import paper_differences

    if not model:
        return {}
    return {"encoder": {key: model[key] for key in ENCODER_SAID if key in model},
            "differs_from_paper": paper_differences(model)}


def _log_videos_input(run: Any, config: Any, splits: tuple[str, ...], context: str, min_frames: int = 0,
                      frame_step: int = 1) -> str:
    """Log the validated manifest's rows of `splits` as the run's input, with the content fingerprint of
    those videos' frame shards (pretrain.data_fingerprint) as its digest; returns the fingerprint."""
    from slic.data.clips import load_videos
    from slic.pretrain import data_fingerprint

    manifest, frames = config.extract.manifest, config.extract.out
    videos = [load_videos(manifest, frames, splits=[split], min_frames=min_frames, frame_step=frame_step)
              for split in splits]
    digest = data_fingerprint(*videos, frames_dir=frames)
    run.log_input(manifest, digest, splits=splits, context=context)
    run.set_tags({"slic.data_fingerprint": digest})
    return digest


def _log_plot(run: Any, name: str, make: Callable[..., Path], *args: Any) -> None:
    """Draw one PNG with slic.plots into a temporary folder and log it under the run's plots/."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        run.log_artifact(make(*args, Path(tmp) / f"{name}.png"), "plots")


def machine_tags(device: Any) -> dict[str, Any]:
    """`slic.machine.machine_info` as MLflow tags (machine.cpu_model, machine.torch, ...): where a run trained."""
    from slic.machine import machine_info

    return {f"machine.{k}": v for k, v in machine_info(device).items()}


def run_pretrain(config: Any) -> dict[str, Any]:
    """Stage `pretrain`: SLIC (or a baseline) on the train split; checkpoints in data/models/pretrain."""
    from slic.config import to_dict
    from slic.distributed import close_world, init_world
    from slic.ablation import flow_view
    from slic.data.frames import frame_rate_of
    from slic.pretrain import pretrain

    world = init_world(config.pretrain.device)
    try:
        # frame_rate: the rate the shards were resampled to (extract.fps; 0.0 native), as the checkpoint keeps it
        params = {**to_dict(config.pretrain), "flow.enabled": config.flow.enabled, "flow.p": config.flow.p,
                  "frame_rate": frame_rate_of(config.extract.out)}
        cfg = config.pretrain
        name = f"pretrain {cfg.mode} {cfg.backbone} {cfg.size}px" + (" +flow" if config.flow.enabled else "")
        with _tracked("pretrain", params, world, name=name, defer=True) as run:
            if run is not None:  # logged by pretrain's resume step, with the data's content fingerprint
                run.expect_input(config.extract.manifest, splits=("train", "val"), context="training")
            report = pretrain(config.pretrain, manifest=config.extract.manifest, frames_dir=config.extract.out,
                              world=world, run=run, flow=flow_view(config))
            if run is not None:
                run.log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
                run.set_tags(machine_tags(world.device))
                if cfg.mode == "labels":  # which labels trained this encoder, kept with it
                    run.log_artifact(Path(cfg.labels), "labels")
                report["mlflow_run_id"] = run.run_id
                history = Path(config.pretrain.out) / "history.json"
                if history.is_file():
                    from slic.plots import training_curves

                    _log_plot(run, "training_curves", training_curves, json.loads(history.read_text()))
    finally:
        close_world()
    if "labelled_train_videos" in report:
        print(f"pretrain (labels): trained on {report['labelled_train_videos']} labelled train videos of "
              f"{report['label_classes']} classes from {report['labels_file']}")
        if note := unwatched_note("pretrain.labels", cfg.labels, TRAINING_LABELS_FOLDER, "pretrain"):
            report["watch_note"] = note
            print(f"pretrain: note: {note}")
    if report["labelled"]:
        print(f"pretrain ({report['mode']}): best val recall@1 {report['best_val_recall_at_1']:.3f} at epoch "
              f"{report['best_epoch']}, {report['seconds']} s")
    else:
        print(f"pretrain ({report['mode']}): no labels, the last epoch ({report['best_epoch']}) is best.pt, "
              f"{report['seconds']} s")
    if "short_run_note" in report:
        print(f"pretrain: note: {report['short_run_note']}")
    return report if world.is_main else {}


def run_embed(config: Any) -> dict[str, Any]:
    """Stage `embed`: IIC-protocol embeddings of every video with the best checkpoint."""
    from slic.config import to_dict
    from slic.distributed import close_world, init_world
    from slic.embed import embed_dataset
    from slic.encoder_lineage import record_stage_encoder

    world = init_world(config.embed.device)
    model = _checkpoint_config(config.embed.checkpoint)
    name = f"embed {_model_summary(model, config.embed.checkpoint)} {config.embed.clips} clips"
    try:
        with _tracked("embed", to_dict(config.embed), world, system_metrics=False, name=name) as run:
            report = embed_dataset(config.embed, manifest=config.extract.manifest, frames_dir=config.extract.out,
                                   world=world)
            record_stage_encoder(run, config, "embed")
            if run is not None:
                _log_videos_input(run, config, ("train", "val", "test"), "inference",
                                  min_frames=int(model.get("clip_len", 0)), frame_step=int(model.get("frame_step", 1)))
            if run is not None:
                run.log_metrics({k: v for k, v in report.items() if isinstance(v, (int, float))})
    finally:
        close_world()
    print(f"embed: {report['videos']} videos, {report['videos_per_s']} videos/s -> {config.embed.out}")
    return report


def run_evaluate(config: Any) -> dict[str, Any]:
    """Stage `evaluate`: retrieval recall@k (test queries, train gallery), overall and per class.

    Also writes the HTML report (cfg.html) with thumbnails from extract.out's frame shards. On videos without
    classes there is no recall: each gallery video queries the others, the report holds what needs no labels
    (slic.retrieval.unlabelled_neighbours), the page shows neighbours, and the recall curve is its header only.
    """
    from slic.config import to_dict
    from slic.encoder_lineage import record_stage_encoder
    from slic.plots import embedding_projection, recall_curve
    from slic.published import published_retrieval
    from slic.report import write_neighbours_html, write_retrieval_html
    from slic.retrieval import evaluate_embeddings, source_units, unlabelled_neighbours, write_recall_curve
    from slic.tracking import stage_run

    cfg = config.evaluate
    labelled = _embeddings_have_labels(cfg.embeddings)
    model = _checkpoint_config(config.embed.checkpoint) if cfg.embeddings == config.embed.out else {}
    if labelled:
        report = evaluate_embeddings(cfg.embeddings, query_split=cfg.query_split, gallery_split=cfg.gallery_split,
                                     ks=cfg.ks) | _encoder_said(model)
        splits, what = (cfg.query_split, *cfg.gallery_split.split("+")), "vs " + cfg.gallery_split
        published = published_retrieval(report, config.manifest.layout, config.manifest.split)
        write_page = partial(write_retrieval_html, published=published)
        metrics = {k: v for k, v in report.items() if k.startswith("recall@")}
    else:
        units, unit = source_units(config.extract.manifest)  # segments: other files; clips: other recordings
        report = unlabelled_neighbours(cfg.embeddings, split=cfg.gallery_split, ks=cfg.ks, files=units,
                                       unit=unit) | _encoder_said(model)
        splits, what, write_page = (cfg.gallery_split,), "no labels", write_neighbours_html
        metrics = {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    write_recall_curve(report if labelled else {}, cfg.curve)
    page = write_page(cfg.html, report, embeddings=cfg.embeddings, frames_dir=config.extract.out,
                      manifest=config.extract.manifest, queries=cfg.html_queries, k=cfg.html_k, seed=cfg.html_seed)
    name = f"evaluate {_model_summary(model, cfg.embeddings)} {splits[0]} {what}"
    with stage_run("evaluate", to_dict(cfg), name=name) as run:
        record_stage_encoder(run, config, "evaluate")
        _log_videos_input(run, config, splits, "evaluation",
                          min_frames=int(model.get("clip_len", 0)), frame_step=int(model.get("frame_step", 1)))
        run.log_metrics(metrics)
        report["mlflow_run_id"] = run.run_id  # the seeds' spread (`slic summary`) starts from this run
        if labelled:
            run.log_artifact(cfg.curve)
        else:
            run.set_tags({"slic.labelled": "false"})
        run.log_artifact(cfg.html)
        if labelled:
            _log_plot(run, "recall_at_k", recall_curve, report)
        _log_plot(run, "embeddings_pca", embedding_projection, cfg.embeddings)
    if labelled:
        print("evaluate: " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
        if published:
            print(f"evaluate: published on {published['set']}, recall@1 %: "
                  + ", ".join(f"{name} {row['recall@1']}" for name, row in published["published"].items())
                  + f"; this run {published['this_run']['recall@1']} (reports/retrieval.html)")
            for note in published.get("notes", []):
                print(f"evaluate: note: {note}")
    else:
        nearest = next(key for key in report if key.startswith("neighbour_cosine@"))  # the smallest k of evaluate.ks
        print(f"evaluate: no class labels, so no recall; {report['protocol']}: {nearest}={report[nearest]:.3f} "
              f"mean_pairwise_cosine={report['mean_pairwise_cosine']:.3f} "
              f"effective_rank={report['effective_rank']:.1f} of {report['embedding_dim']}")
        if "warning" in report:
            print(f"evaluate: warning: {report['warning']}", file=sys.stderr)
    shown = "queries x top" if labelled else "videos x their top"
    print(f"evaluate: {page['path']} ({page['queries_shown']} {shown}-{page['k_shown']}"
          f"{'' if labelled else ' neighbours'}, {page['bytes'] / 1e6:.2f} MB)")
    if page["missing_thumbnails"]:
        print(f"evaluate: warning: no frames for {len(page['missing_thumbnails'])} thumbnails (placeholders): "
              + ", ".join(page["missing_thumbnails"][:5]), file=sys.stderr)
    return report


def run_clusters(config: Any) -> dict[str, Any]:
    """Stage `clusters`: the embedded videos grouped by the encoder (FINCH down to clusters.groups, or k-means),
    every video's group in a CSV and the largest groups as a page of thumbnails; with classes, how far the groups
    follow them (AMI, NMI, purity) as MLflow metrics."""
    from slic.archive_clusters import cluster_archive
    from slic.config import to_dict
    from slic.encoder_lineage import record_stage_encoder
    from slic.tracking import stage_run

    cfg = config.clusters
    report = cluster_archive(cfg.embeddings, manifest=config.extract.manifest, frames_dir=config.extract.out,
                             method=cfg.method, groups=cfg.groups, split=cfg.split, seed=cfg.seed, table=cfg.table,
                             page=cfg.html, html_groups=cfg.html_groups, html_members=cfg.html_members)
    model = _checkpoint_config(config.embed.checkpoint) if cfg.embeddings == config.embed.out else {}
    name = f"clusters {_model_summary(model, cfg.embeddings)} {report['groups']} groups"
    with stage_run("clusters", to_dict(cfg), name=name) as run:
        record_stage_encoder(run, config, "clusters")
        splits = ("train", "val", "test") if cfg.split == "all" else (cfg.split,)
        _log_videos_input(run, config, splits, "evaluation",
                          min_frames=int(model.get("clip_len", 0)), frame_step=int(model.get("frame_step", 1)))
        run.log_metrics({key: report[key] for key in ("groups", "largest_group", "single_video_groups",
                                                      "mean_centre_cosine", "ami", "nmi", "purity") if key in report})
        run.log_artifact(cfg.table)
        run.log_artifact(cfg.html)
    agreement = (f", AMI with the classes {report['ami']:.3f}, purity {report['purity']:.3f}"
                 if report["labelled"] else "")
    print(f"clusters: {report['videos']} videos in {report['groups']} groups (largest {report['largest_group']})"
          f"{agreement} -> {cfg.table}, {cfg.html}")
    if "note" in report:
        print(f"clusters: {report['note']}")
    if report["missing_thumbnails"]:
        print(f"clusters: warning: no frames for {len(report['missing_thumbnails'])} thumbnails (placeholders): "
              + ", ".join(report["missing_thumbnails"][:5]), file=sys.stderr)
    return report


TRAINING_LABELS_FOLDER = "labels/train"  # what dvc.yaml lists for pretrain.labels and promote.labels


def unwatched_note(key: str, path: str, folder: str, stage: str) -> str:
    """A line saying that the labels file `path` (params key `key`) lies outside `folder`, the folder dvc.yaml lists
    as `stage`'s dependency, so DVC does not see it change; empty when it lies inside."""
    from slic.data.datasets import is_within

    if is_within(path, folder):
        return ""
    return (f"{key} {path} is outside {folder}/, the folder dvc.yaml watches: after editing it run "
            f"`dvc repro --single-item --force {stage}`")


def run_spread_labels(config: Any) -> dict[str, Any]:
    """Stage `spread_labels`: every grouped video named by its most similar video of spread_labels.given, and the
    videos to label next; with labels, an MLflow run with the leave-one-out share, both tables and the page."""
    from slic.config import to_dict
    from slic.encoder_lineage import record_stage_encoder
    from slic.label_spreading import LABELS_FOLDER, checked_line, spread_archive
    from slic.tracking import stage_run

    cfg = config.spread_labels
    report = spread_archive(embeddings=config.clusters.embeddings, clusters_table=config.clusters.table,
                            given=cfg.given, suggest=cfg.suggest, table=cfg.table, next_table=cfg.next_table,
                            page=cfg.html, frames_dir=config.extract.out, manifest=config.extract.manifest,
                            checks=cfg.checks)
    if note := unwatched_note("spread_labels.given", cfg.given, LABELS_FOLDER, "spread_labels"):
        report["watch_note"] = note
        print(f"spread_labels: note: {note}")
    if report["given"]:
        with stage_run("spread_labels", to_dict(cfg), name=f"spread_labels {report['given']} given") as run:
            record_stage_encoder(run, config, "spread_labels")
            run.log_metrics({key: report[key] for key in ("given", "classes", "videos", "unsure_share",
                                                          "leave_one_out_accuracy", "agreement_with_manifest",
                                                          "labels_trained_on")
                             if report.get(key) is not None})
            if "checked" in report:
                run.log_metrics({"checks": report["checked"]["checks"], "checked_share": report["checked"]["share"]})
            for path in (cfg.table, cfg.next_table, cfg.html):
                run.log_artifact(path)
        estimate = report["leave_one_out_accuracy"]
        among = (f" the encoder did not train on (it trained on {report['labels_trained_on']})"
                 if report.get("labels_trained_on") else "")
        said = (f"; {100 * estimate:.0f}% of the labelled videos{among} are named rightly from the others"
                if estimate is not None else "")
        print(f"spread_labels: {report['given']} labelled videos ({report['classes']} classes) name all "
              f"{report['videos']} by the most similar{said} -> {cfg.table}")
        if "checked" in report:
            print(f"spread_labels: {checked_line(report['checked'])}")
    if "note" in report:
        print(f"spread_labels: {report['note']}")
    print(f"spread_labels: {report['suggested']} videos to label next -> {cfg.next_table}, {cfg.html}")
    return report


def _embeddings_have_labels(embeddings: str | Path) -> bool:
    """Whether any embedded video has a class (an unlabelled layout's videos all have label -1); a missing
    file counts as labelled, so evaluate_embeddings says which stage makes it."""
    import numpy as np

    return not Path(embeddings).is_file() or bool((np.load(embeddings)["label"] >= 0).any())


def _in_world(config: Any, run: Callable[[Any, Any], dict[str, Any]]) -> dict[str, Any]:
    """run(config, world) inside the process group of `pretrain.device` (a no-op group without torchrun)."""
    from slic.distributed import close_world, init_world

    world = init_world(config.pretrain.device)
    try:
        return run(config, world)
    finally:
        close_world()


def _recalls(row: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("recall@"))


def run_ablation_flow(config: Any) -> dict[str, Any]:
    """Stage `ablation_flow`: SLIC RGB-only against SLIC with the flow view, trained and evaluated alike."""
    from slic.ablation import run_flow_ablation

    report = _in_world(config, run_flow_ablation)
    for name in ("rgb", "rgb_flow"):
        print(f"ablation_flow {name:9s} {_recalls(report[name])}")
    print(f"ablation_flow: flow - rgb recall@1 = {report['flow_minus_rgb_recall_at_1_points']} points")
    return report


def run_ablation(config: Any) -> dict[str, Any]:
    """Stage `ablation`: slic, intra_video and random_init trained and evaluated alike."""
    from slic.ablation import run_ablation as ablation

    report = _in_world(config, ablation)
    for mode, row in report["modes"].items():
        print(f"ablation {mode:12s} {_recalls(row)}")
    findings = report["findings"]
    if findings:
        print("ablation: " + ", ".join(f"{k}={v}" for k, v in findings.items()))
    return report


def run_promote(config: Any) -> dict[str, Any]:
    """Stage `promote`: register the encoder; move the alias only when it beats the champion."""
    from slic.ablation import flow_view
    from slic.promote import promote

    report = promote(config.promote, manifest=config.extract.manifest, frames_dir=config.extract.out,
                     flow=flow_view(config))
    again = "" if report["new_version"] else " (registered before: the same weights)"
    print(f"promote: {report['model_name']} version {report['version']}{again} {report['decision']}: "
          f"{report['reason']}; @{report['alias']} -> version {report['alias_version']}")
    if "labels_file" in report and (note := unwatched_note("promote.labels", config.promote.labels,
                                                          TRAINING_LABELS_FOLDER, "promote")):
        report["watch_note"] = note
        print(f"promote: note: {note}")
    return report


def run_index(config: Any) -> dict[str, Any]:
    """Stage `index`: a FAISS index over the gallery split's embeddings in data/index, for `slic search`."""
    from slic.added_videos import added_videos
    from slic.index import build_stage

    cfg = config.index
    extra = added_videos(cfg.add_videos, manifest_root=config.manifest.root, extensions=config.manifest.extensions,
                         checkpoint=config.embed.checkpoint, clips=config.embed.clips, index_dir=cfg.out,
                         workers=config.embed.workers, segment_seconds=config.manifest.segment_seconds)
    report = build_stage(cfg, embeddings=config.embed.out, checkpoint=config.embed.checkpoint,
                         clips=config.embed.clips, frames_dir=config.extract.out, added=extra)
    added = (f" + {report['added']} added from {cfg.add_videos} ({report['added_embedded_now']} embedded now, "
             f"{report['added_reused']} reused)") if extra else ""
    print(f"index: {report['kind']} over {report['gallery_videos']} {report['gallery_split']} videos{added} "
          f"({report['dim']}-d) on {report['device']} in {report['build_seconds']} s -> {report['out']}")
    for note in report["notes"]:
        print(f"  note: {note}")
    for failure in report.get("added_failed", []):
        advice = "" if "re-encode" in failure["error"] else "; fix or remove the file"  # said once
        print(f"  not added: {failure['path']}: {failure['error']}{advice}", file=sys.stderr)
    if noted := report.get("added_notes"):  # indexed, but a still image's hits match what it shows, not its motion
        print(f"  note: {len(noted)} added video(s) indexed with a warning, e.g. {noted[0]['path']}: "
              f"{noted[0]['note']}", file=sys.stderr)
    return report


def run_linear_probe_stage(config: Any) -> dict[str, Any]:
    """Stage `linear_probe`: a linear classifier on the frozen pretrained backbone -> reports/linear_probe.json."""
    from slic.config import to_dict
    from slic.encoder_lineage import record_stage_encoder
    from slic.finetune_stages import run_linear_probe
    from slic.published import top5_shown

    cfg = config.linear_probe
    with stage_run_for("linear_probe", to_dict(cfg), _named("linear_probe", cfg.checkpoint)) as run:
        record_stage_encoder(run, config, "linear_probe")
        report = run_linear_probe(config.linear_probe, manifest=config.extract.manifest,
                                  frames_dir=config.extract.out, run=run)
        _log_videos_input(run, config, ("train", "val", "test"), "training", min_frames=cfg.clip_len,
                          frame_step=cfg.frame_step)
        run.set_tags(machine_tags(report["device"]))
        report["mlflow_run_id"] = run.run_id
    top5 = f" top5 {report['top5']:.2f}%" if top5_shown(report["classes"]) else ""
    print(f"linear_probe: test top1 {report['top1']:.2f}%{top5} (best val top1 "
          f"{report['best_val_top1']:.2f}% at epoch {report['best_epoch']}), {report['seconds']} s")
    return report


def run_finetune_stage(config: Any) -> dict[str, Any]:
    """Stage `finetune`: whole network from pretrained and from random weights -> reports/finetune.json."""
    from slic.config import to_dict
    from slic.encoder_lineage import record_stage_encoder
    from slic.finetune_stages import run_finetune
    from slic.published import finetune_line, top5_shown

    cfg = config.finetune
    with stage_run_for("finetune", to_dict(cfg), _named("finetune", cfg.checkpoint)) as run:
        record_stage_encoder(run, config, "finetune")
        report = run_finetune(config.finetune, manifest=config.extract.manifest, frames_dir=config.extract.out,
                              run=run)
        _log_videos_input(run, config, ("train", "val", "test"), "training", min_frames=cfg.clip_len,
                          frame_step=cfg.frame_step)
        run.set_tags(machine_tags(report["pretrained"]["device"]))
    for name, row in report.items():
        top5 = f" top5 {row['top5']:.2f}%" if top5_shown(row["classes"]) else ""
        print(f"finetune {name:12s} test top1 {row['top1']:.2f}%{top5}")
    if line := finetune_line("finetune", report["pretrained"]["top1"], config.manifest.layout, config.manifest.split,
                             report["pretrained"]["classes"]):
        print(line)
    return report


def stage_run_for(stage: str, params: dict[str, Any], name: str | None = None) -> Any:
    """The MLflow run of a single-process stage (imported lazily: MLflow is slow to import)."""
    from slic.tracking import stage_run

    return stage_run(stage, params, system_metrics=True, name=name)


def _named(stage: str, checkpoint: str) -> str:
    """A run name for a stage that starts from a pretrained checkpoint: 'finetune slic r3d_18_tiny 32px'."""
    return f"{stage} {_model_summary(_checkpoint_config(checkpoint), checkpoint)}"


STAGES: dict[str, tuple[Callable[[Any], dict[str, Any]], str]] = {
    "synth": (run_synth, "generate the synthetic motion dataset (UCF101 layout)"),
    "synth-transfer": (run_synth_transfer, "generate the motions synth never shows (the synthetic transfer set)"),
    "manifest": (run_manifest, "list, probe and split the dataset into one manifest table"),
    "validate": (run_validate, "check the manifest with Great Expectations"),
    "extract": (run_extract, "decode every video once into one JPEG shard per video"),
    "flow": (run_flow, "TV-L1 optical flow (u) of the training videos, one shard per video"),
    "pretrain": (run_pretrain, "SLIC pretraining with iterative clustering (torchrun for several GPUs)"),
    "embed": (run_embed, "embed every video with the best checkpoint (IIC protocol)"),
    "evaluate": (run_evaluate, "retrieval recall@k of test queries against the train gallery"),
    "clusters": (run_clusters, "the videos grouped by the encoder: a CSV, and a page of the largest groups"),
    "spread-labels": (run_spread_labels, "your classes for a few videos spread to all; the videos to label next"),
    "ablation": (run_ablation, "slic against intra_video and random_init, trained and evaluated alike"),
    "ablation-flow": (run_ablation_flow, "SLIC RGB-only against SLIC with the optical-flow view"),
    "promote": (run_promote, "register the encoder; move the champion alias only when it is better"),
    "index": (run_index, "FAISS index over the gallery split's embeddings, for `slic search`"),
    "linear-probe": (run_linear_probe_stage, "linear classifier on the frozen pretrained backbone (test top-1/5)"),
    "finetune": (run_finetune_stage, "finetune every layer, from pretrained and from random weights (+ linear probe)"),
}


NAMED_STAGES = {"eval-data": "NAME: the manifest, Great Expectations check and frames of eval_sets.NAME",
                "transfer": "NAME: retrieval on eval_sets.NAME with best.pt and with random_init",
                "classify": "NAME: linear probe and finetune on eval_sets.NAME (when its classify is true)"}
REPORT_NAMES = {"evaluate": "retrieval", "promote": "promotion", "synth-transfer": "synth_transfer",
                "linear-probe": "linear_probe", "ablation-flow": "ablation_flow",
                "spread-labels": "spread_labels"}  # reports/<name>.json when it is not the stage's name
CLASS_STAGES: dict[str, Callable[[Any], str]] = {  # stages that only measure against classes: their output folder
    "ablation": lambda config: config.ablation.out, "ablation-flow": lambda config: config.ablation_flow.out,
    "linear-probe": lambda config: config.linear_probe.out, "finetune": lambda config: config.finetune.out}
TRAINING_STAGES = ("pretrain", "embed", "ablation", "ablation-flow", "linear-probe")
FIXED_KEY_REPORTS = ("finetune",)  # top-level keys are exactly the trainings: no stage_seconds added


def _manifest_has_labels(manifest: str | Path) -> bool:
    """slic.data.datasets.manifest_has_labels, imported only when a class stage runs (pandas is slow to import)."""
    from slic.data.datasets import manifest_has_labels

    return manifest_has_labels(manifest)


def skip_without_labels(stage: str, manifest: str | Path, out: str | Path) -> dict[str, Any]:
    """The report of a stage that measures against classes, run on videos that have none: it trains nothing
    and says so, here, in `out`/skipped.json (the stage's output folder; what it held stays) and on stdout,
    so `dvc repro` and `slic pipeline` go on to the stages that need no labels."""
    report = {"skipped": True, "labelled": False,
              "reason": f"{manifest} has no class labels (manifest.layout unlabelled) and stage {stage} "
                        "measures against classes",
              "what_to_do": "measure the encoder on a labelled set instead: add it to eval_sets (stages "
                            "transfer@NAME and classify@NAME), or point the manifest at a labelled set"}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "skipped.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{stage}: skipped: {report['reason']}; {report['what_to_do']}")
    return report


def run_pipeline(argv: list[str]) -> int:
    """`slic pipeline`: the stages as the Prefect flow of flows/pipeline.py, in a child process.

    slic itself never imports Prefect: the flow lives in the checkout's flows/ folder.
    """
    import subprocess

    checkout = Path.cwd()
    if not (checkout / "flows" / "pipeline.py").is_file():
        print(f"slic pipeline: error: {checkout}/flows/pipeline.py not found; run from the project checkout",
              file=sys.stderr)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(checkout), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "flows.pipeline", *argv], cwd=checkout, env=env).returncode


def run_embed_video(argv: list[str]) -> int:
    """`slic embed-video [--model URI|CHECKPOINT] [--out FILE.npy] VIDEO...`: embed video files with an encoder.

    Row i of --out is video i; a video that cannot be decoded (or is not there: a broken link, a folder, a typo)
    gets a row of NaN, a line on stderr naming it, and exit code 1, so the others' rows are kept and stay aligned;
    --out is written even when every file failed to decode. When no path names a file at all: exit code 2.
    """
    import numpy as np

    from slic.api import embedded_rows
    from slic.config import ConfigError
    from slic.data.video import path_problem
    from slic.search import SearchUsageError, model_encoder, params_defaults

    parser = argparse.ArgumentParser(prog="slic embed-video", description="embed video files with a registered "
                                     "encoder or a pretrain checkpoint")
    parser.add_argument("--model", default="models:/slic-encoder@champion",
                        help="an MLflow model URI (default: models:/slic-encoder@champion) or a checkpoint file "
                        "written by `slic pretrain`, e.g. data/models/pretrain/best.pt")
    parser.add_argument("--out", default="", help="write the (videos, dim) array to this .npy file")
    parser.add_argument("--workers", type=int, default=None, help="processes decoding the next videos while the "
                        "encoder embeds one (default: embed.workers of params.yaml; 0: none)")
    parser.add_argument("videos", nargs="+", help="video files (anything PyAV decodes)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 0:
        parser.error(f"--workers must be >= 0, got {args.workers}")
    paths = [Path(video) for video in args.videos]
    problems = {position: problem for position, path in enumerate(paths) if (problem := path_problem(path))}
    if len(problems) == len(paths):  # nothing to embed: said before the encoder is loaded
        for position, problem in problems.items():
            print(f"slic embed-video: error: {paths[position]}: {problem}", file=sys.stderr)
        return 2
    try:
        workers = params_defaults("params.yaml")[2] if args.workers is None else args.workers
        encoder = model_encoder(args.model)
    except (ConfigError, SearchUsageError) as exc:
        print(f"slic embed-video: error: {exc}", file=sys.stderr)
        return 2
    vectors, problems, warned = embedded_rows(encoder, paths, workers)  # a row of NaN for each file that fails
    for position, said in warned.items():  # shorter than one clip: embedded, with a warning
        print(f"slic embed-video: warning: {paths[position]}: {said}", file=sys.stderr)
    for position in sorted(problems):  # one line each, in the order given; the others' rows stay aligned
        print(f"slic embed-video: error: {paths[position]}: {problems[position]}", file=sys.stderr)
    if args.out:
        np.save(args.out, vectors)  # written even when every file failed: an older array never stays behind
    for video, row in zip(args.videos, vectors):
        print(f"{video}\t{np.linalg.norm(row):.4f}\t" + " ".join(f"{v:.4f}" for v in row[:4]) + " ...")
    return 1 if problems else 0


def _run_named_stage(stage: str, config: Any, name: str, started: float) -> int:
    """`slic eval-data|transfer|classify NAME`: reports/transfer/NAME/{data,retrieval,classify}.json."""
    from slic.transfer import EvalDataInvalid, eval_set
    from slic.transfer_stages import run_classify, run_eval_data, run_transfer

    eval_set(config, name)  # an unknown name: one line naming the ones params.yaml has
    try:
        if stage == "eval-data":
            report, kind = run_eval_data(config, name), "data"
        elif stage == "classify":
            report, kind = run_classify(config, name), "classify"
            if report["enabled"]:  # trained numbers differ across CPU types: where they were made
                from slic.machine import machine_info
                from slic.published import finetune_line

                report["machine"] = machine_info(report["linear_probe"]["device"])
                chosen = eval_set(config, name)
                finetuned = report["finetune"]["pretrained"]
                if line := finetune_line(f"classify {name}", finetuned["top1"], chosen.layout, chosen.split,
                                         finetuned["classes"]):
                    print(line)
        else:
            from slic.distributed import close_world, init_world

            world = init_world(config.embed.device)
            try:
                report, kind = run_transfer(config, name, world), "retrieval"
            finally:
                close_world()
            from slic.machine import machine_info

            report["machine"] = machine_info(world.device)
    except EvalDataInvalid as exc:
        write_report(f"transfer/{name}/data", exc.report)
        print(f"slic {stage}: {exc}\nfull result: reports/transfer/{name}/data.json", file=sys.stderr)
        return 1
    report["stage_seconds"] = round(time.perf_counter() - started, 3)
    write_report(f"transfer/{name}/{kind}", report)
    return 0


class StageFailed(RuntimeError):
    """A stage that ran and found the data unusable; its message is the report for the user."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `slic` console script."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    parser = argparse.ArgumentParser(prog="slic", description="SLIC video embeddings: pipeline stages")
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text)
    for name, help_text in NAMED_STAGES.items():
        sub.add_parser(name, add_help=False, help=help_text)
    sub.add_parser("pipeline", add_help=False,
                   help="every stage as a Prefect flow (options: slic pipeline --help)")
    sub.add_parser("embed-video", add_help=False,
                   help="embed video files with models:/slic-encoder@champion or a checkpoint "
                   "(slic embed-video --help)")
    sub.add_parser("search", add_help=False,
                   help="find the indexed videos most similar to a video or folder (slic search --help)")
    sub.add_parser("serve", add_help=False,
                   help="answer searches of the index over HTTP, holding it in memory (slic serve --help)")
    sub.add_parser("preset", add_help=False,
                   help="write a preset's values into params.yaml, e.g. paper_ucf101 (slic preset --help)")
    sub.add_parser("summary", help="what the pipeline made, from reports/: the numbers and where to look")
    args, rest = parser.parse_known_args(argv)
    if args.stage == "search":
        from slic.search import run_search

        return run_search(rest, args.params)
    if args.stage == "serve":
        from slic.search_service import run_serve

        return run_serve(rest, args.params)
    if args.stage == "pipeline":
        return run_pipeline(rest)
    if args.stage == "embed-video":
        return run_embed_video(rest)
    if args.stage == "preset":
        from slic.presets import run_preset

        return run_preset(rest, args.params)
    if args.stage == "summary":
        from slic.mlflow_store import tracking_uri
        from slic.report_freshness import stale_reports
        from slic.summary import format_summary, summary_lines

        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        try:
            print(format_summary(summary_lines("reports", tracking_uri(), stale_reports("."))))
        except BrokenPipeError:  # `slic summary | head`: the reader left
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter's final flush quiet
        return 0
    eval_name = ""
    if args.stage in NAMED_STAGES:
        if len(rest) != 1 or rest[0].startswith("-"):
            parser.error(f"slic {args.stage} takes one eval set name (a key of eval_sets in params.yaml)")
        eval_name, rest = rest[0], []
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    import logging

    from slic.archive_clusters import ClustersError
    from slic.config import ConfigError, load
    from slic.data.datasets import DatasetError
    from slic.data.frames import ExtractError
    from slic.data.flow import FlowError
    from slic.finetune_stages import FinetuneError
    from slic.index import IndexBuildError
    from slic.label_spreading import SpreadError
    from slic.labels_table import LabelsError
    from slic.promote import PromoteError
    from slic.tracking import TrackingError, run_context, using_run_context

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("mlflow", "alembic", "great_expectations", "urllib3", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    started = time.perf_counter()
    try:
        config = load(args.params)
        with using_run_context(run_context(config, args.params, eval_name)):  # its runs: dataset, seed, params file
            if eval_name:
                return _run_named_stage(args.stage, config, eval_name, started)
            if args.stage in CLASS_STAGES and not _manifest_has_labels(config.extract.manifest):
                report = skip_without_labels(args.stage, config.extract.manifest, CLASS_STAGES[args.stage](config))
            else:
                if args.stage in CLASS_STAGES:  # a skip recorded when the videos had no classes no longer holds
                    (Path(CLASS_STAGES[args.stage](config)) / "skipped.json").unlink(missing_ok=True)
                report = STAGES[args.stage][0](config)
    except (ConfigError, DatasetError, ExtractError, FlowError, FileNotFoundError, TrackingError, PromoteError,
            IndexBuildError, FinetuneError, ClustersError, SpreadError, LabelsError) as exc:
        print(f"slic {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    except StageFailed as exc:
        print(f"slic {args.stage}: {exc}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, only the main rank reports
        if args.stage not in FIXED_KEY_REPORTS:
            report["stage_seconds"] = round(time.perf_counter() - started, 3)
            if args.stage in TRAINING_STAGES and not report.get("skipped"):  # numbers that differ across CPU types
                from slic.machine import machine_info

                report["machine"] = machine_info(report.get("device"))
        write_report(REPORT_NAMES.get(args.stage, args.stage), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
