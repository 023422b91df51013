"""The ablation (stage `ablation`): SLIC against its baselines, trained and evaluated the same way.

Every mode in `ablation.modes` gets the `pretrain` section's settings with only `mode` changed,
then the `embed` stage's protocol and the `evaluate` stage's retrieval. The mode the main
pipeline trained (`pretrain.mode`) is not trained twice: its embeddings from the `embed` stage
are evaluated. The others are trained into `ablation.out/<mode>/` (resumable like `pretrain`).
The report holds recall@k per mode and the paper's finding checked on this data: SLIC's recall@1
at least `min_gain_over_random_init` points above the untrained network and
`min_gain_over_intra_video` points above intra-video positives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from slic.config import Config, to_dict
from slic.distributed import World

log = logging.getLogger(__name__)


def _evaluate(embeddings: str | Path, config: Config) -> dict[str, Any]:
    from slic.retrieval import evaluate_embeddings

    cfg = config.evaluate
    report = evaluate_embeddings(embeddings, query_split=cfg.query_split, gallery_split=cfg.gallery_split,
                                 ks=cfg.ks)
    return {k: v for k, v in report.items() if k.startswith("recall@")}


def run_mode(mode: str, config: Config, world: World) -> dict[str, Any]:
    """Train (unless it is the main pipeline's mode), embed and evaluate one mode; its report row."""
    from slic.embed import embed_dataset
    from slic.pretrain import pretrain
    from slic.tracking import stage_run

    started = time.perf_counter()
    if mode == config.pretrain.mode:
        embeddings = Path(config.embed.out)
        if not embeddings.is_file():
            raise FileNotFoundError(f"{embeddings}: no embeddings of the main `{mode}` run; run `dvc repro embed`")
        row: dict[str, Any] = {"trained_by": "pretrain stage", "checkpoint": config.embed.checkpoint}
        row.update(_evaluate(embeddings, config))
        return row | {"seconds": round(time.perf_counter() - started, 2)}
    out = Path(config.ablation.out) / mode
    pretrain_cfg = replace(config.pretrain, mode=mode, out=str(out))
    embed_cfg = replace(config.embed, checkpoint=str(out / "best.pt"), out=str(out / "embeddings.npz"))
    with stage_run(f"ablation/{mode}", to_dict(pretrain_cfg)) as run:
        trained = pretrain(pretrain_cfg, manifest=config.extract.manifest, frames_dir=config.extract.out,
                           world=world, run=run)
        embed_dataset(embed_cfg, manifest=config.extract.manifest, frames_dir=config.extract.out, world=world)
        row = {"trained_by": "ablation stage", "checkpoint": embed_cfg.checkpoint,
               "best_epoch": trained["best_epoch"], "best_val_recall_at_1": trained["best_val_recall_at_1"]}
        row.update(_evaluate(embed_cfg.out, config))
        run.log_metrics({k: v for k, v in row.items() if k.startswith("recall@")})
    return row | {"seconds": round(time.perf_counter() - started, 2)}


def findings(rows: dict[str, dict[str, Any]], *, min_gain_over_random_init: float,
             min_gain_over_intra_video: float) -> dict[str, Any]:
    """SLIC's recall@1 gains (in points) over each baseline present, and whether each meets its bar."""
    if "slic" not in rows:
        return {}
    slic = 100 * rows["slic"]["recall@1"]
    result: dict[str, Any] = {}
    for baseline, bar in (("random_init", min_gain_over_random_init), ("intra_video", min_gain_over_intra_video)):
        if baseline in rows:
            gain = round(slic - 100 * rows[baseline]["recall@1"], 2)
            result[f"slic_minus_{baseline}_points"] = gain
            result[f"slic_beats_{baseline}_by_{bar:g}"] = gain >= bar
    result["paper_finding_holds"] = all(v for k, v in result.items() if k.startswith("slic_beats_"))
    return result


def run_ablation(config: Config, world: World) -> dict[str, Any]:
    """Every mode of `ablation.modes`, main mode first; the report of reports/ablation.json."""
    from slic.tracking import stage_run

    cfg = config.ablation
    modes = sorted(cfg.modes, key=lambda m: m != config.pretrain.mode)
    rows: dict[str, dict[str, Any]] = {}
    with stage_run("ablation", {**to_dict(cfg), "pretrain.mode": config.pretrain.mode}) as parent:
        for mode in modes:
            log.info("ablation: %s", mode)
            rows[mode] = run_mode(mode, config, world)
            parent.log_metrics({f"{mode}.{k}": v for k, v in rows[mode].items() if k.startswith("recall@")})
        result = findings(rows, min_gain_over_random_init=cfg.min_gain_over_random_init,
                          min_gain_over_intra_video=cfg.min_gain_over_intra_video)
        parent.set_tags({"paper_finding_holds": result.get("paper_finding_holds", "n/a")})
        run_id = parent.run_id
    return {"modes": rows, "findings": result, "query_split": config.evaluate.query_split,
            "gallery_split": config.evaluate.gallery_split, "mlflow_run_id": run_id}
