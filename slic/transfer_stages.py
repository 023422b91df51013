"""The stages of an evaluation set, as `slic eval-data NAME` and `slic transfer NAME` run them (see slic.transfer).

Each writes its report under reports/transfer/<name>/ and, for transfer, one MLflow run named
'transfer <name> <model>' whose input dataset is the eval set's manifest, so the runs table shows which
set a recall was measured on.
"""

from __future__ import annotations

import sys
from typing import Any

from slic.config import Config, to_dict
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
    pretrained = report["pretrained"]
    html = reports_dir(name) / "retrieval.html"
    page = write_retrieval_html(str(html), pretrained, embeddings=pretrained["embeddings"],
                                frames_dir=str(data_dir(name) / "frames"), manifest=str(data_dir(name) / "validated.csv"),
                                queries=config.evaluate.html_queries, k=config.evaluate.html_k,
                                seed=config.evaluate.html_seed)
    report["html"] = str(html)
    params = {**to_dict(eval_set(config, name)), "checkpoint": config.embed.checkpoint, "clips": config.embed.clips}
    with stage_run(f"transfer@{name}", params, name=f"transfer {name} {report['encoder']}") as run:
        run.log_input(data_dir(name) / "validated.csv", _data_digest(name), splits=("train", "test"),
                      context="evaluation")
        run.log_metrics({**{k: v for k, v in pretrained.items() if k.startswith("recall@")},
                         **{f"random_init_{k}": v for k, v in report["random_init"].items() if k.startswith("recall@")},
                         "gain_over_random_init_points": report["gain_over_random_init_points"]})
        run.log_artifact(html)
        report["mlflow_run_id"] = run.run_id
    domain = report["in_domain_recall@1"]
    print(f"transfer {name}: recall@1 {pretrained['recall@1']:.3f} (random_init {report['random_init']['recall@1']:.3f}, "
          f"{report['gain_over_random_init_points']:+.1f} points)" +
          (f"; in-domain recall@1 {domain:.3f}" if domain is not None else ""))
    if page["missing_thumbnails"]:
        print(f"transfer {name}: warning: no frames for {len(page['missing_thumbnails'])} thumbnails", file=sys.stderr)
    return report


def _data_digest(name: str) -> str:
    """The eval set's content fingerprint, from the frame index eval_data@<name> wrote (a declared dependency)."""
    from slic.data.frames import content_fingerprint, content_hashes

    return content_fingerprint(content_hashes(data_dir(name) / "frames"))
