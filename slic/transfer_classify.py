"""Classification on an evaluation set (stage classify@<name>): the paper finetunes its UCF101 encoder on HMDB51.

With `eval_sets.<name>.classify: true` the linear probe and finetuning (from the pretrained encoder and from
scratch) train on the set's train split, choose their epoch on a val share carved from it (by group where the
layout has groups, seeded by `eval_sets.<name>.seed`), and report test top-1/top-5. The encoder is `embed.checkpoint`,
the one transfer@<name> retrieves with; every other setting comes from the `linear_probe` and `finetune`
sections. Checkpoints go to data/classify/<name>/ and resume like the main stages'.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from slic.config import Config
from slic.transfer import data_dir, eval_set


def classify_dir(name: str) -> Path:
    """data/classify/<name>: the carved split table and the classifiers' checkpoints (output of classify@<name>)."""
    return Path("data/classify") / name


def write_classify_splits(config: Config, name: str) -> Path:
    """data/classify/<name>/splits.csv: the set's validated rows with a seeded val share carved from its train.

    Retrieval (transfer@<name>) keeps every train video in the gallery; only the classifiers see this carve.
    """
    from slic.data.datasets import carve_validation, carves_by_group, read_manifest
    from slic.finetune_stages import FinetuneError

    chosen = eval_set(config, name)
    validated = data_dir(name) / "validated.csv"
    if not validated.is_file():
        raise FileNotFoundError(f"{validated}: the eval set is not prepared; run `dvc repro eval_data@{name}` first")
    table = read_manifest(validated)
    by_group = carves_by_group(chosen.layout, chosen.group_pattern)
    table["split"] = carve_validation(table, chosen.val_fraction, chosen.seed, by_group)
    counts = table["split"].value_counts()
    empty = [split for split in ("train", "val", "test") if not counts.get(split, 0)]
    if empty:
        raise FinetuneError(f"eval set {name}: no {' or '.join(empty)} videos after carving val from its "
                            f"{int(counts.get('train', 0) + counts.get('val', 0))} train videos; classification needs "
                            f"all three (raise eval_sets.{name}.val_fraction, or give the set more train groups)")
    out = classify_dir(name) / "splits.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    return out


def classify_eval_set(config: Config, name: str, splits: Path, run: Any = None) -> dict[str, Any]:
    """Linear probe and finetune (pretrained, scratch) on eval set `name`; their test top-1/top-5 in percent.

    `splits` is the carved table (write_classify_splits); `run` is the stage's MLflow run: the probe and each
    finetuning get a nested run under it, named `classify@<name>/linear_probe` etc. (`nested_run`).
    """
    from slic.config import to_dict
    from slic.finetune_stages import nested_run, run_finetune, run_linear_probe

    frames, out = data_dir(name) / "frames", classify_dir(name)
    checkpoint = config.embed.checkpoint
    probe_cfg = dataclasses.replace(config.linear_probe, checkpoint=checkpoint, out=str(out / "linear_probe"))
    with nested_run(run, "linear_probe", to_dict(probe_cfg), f"classify@{name}") as child:
        probe = run_linear_probe(probe_cfg, manifest=splits, frames_dir=frames, run=child)
        if child is not None:
            probe["mlflow_run_id"] = child.run_id
    probe_report = out / "linear_probe.json"
    probe_report.write_text(json.dumps(probe, indent=1))
    finetune_cfg = dataclasses.replace(config.finetune, checkpoint=checkpoint, out=str(out / "finetune"),
                                       linear_probe_report=str(probe_report))
    finetuned = run_finetune(finetune_cfg, manifest=splits, frames_dir=frames, run=run, within=f"classify@{name}")
    finetuned.pop("linear_probe")
    pretrained, scratch = finetuned["pretrained"], finetuned["scratch"]
    return {"set": name, "enabled": True, "checkpoint": checkpoint, "splits_table": str(splits),
            "val_fraction": eval_set(config, name).val_fraction,
            "videos": {split: probe[f"{split}_videos"] for split in ("train", "val", "test")},
            "classes": probe["classes"], "chance_top1": round(100.0 / probe["classes"], 2),
            "linear_probe": probe, "finetune": finetuned,
            "finetune_gain_over_scratch_points": round(pretrained["top1"] - scratch["top1"], 2)}


def disabled_report(name: str) -> dict[str, Any]:
    """What classify@<name> writes when the set does not ask for classification: nothing trained, and how to ask."""
    return {"set": name, "enabled": False,
            "how": f"set eval_sets.{name}.classify: true in params.yaml to train the linear probe and finetune on it"}
