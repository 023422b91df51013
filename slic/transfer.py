"""Evaluation sets beside the training set: the paper's transfer protocol (pretrain on one dataset, retrieve on another).

Each `eval_sets.<name>` of params.yaml is a labelled dataset the encoder never trains on. Two DVC stages per set:
`eval_data@<name>` lists, validates (Great Expectations) and extracts it into data/eval/<name>/ with the main
`extract` settings; `transfer@<name>` embeds it with the pretrained checkpoint and with the same network untrained
(random_init, the floor), evaluates retrieval (its test queries against its train gallery, the IIC protocol of
`evaluate`) and writes reports/transfer/<name>/ (retrieval.json beside the in-domain recall, retrieval.html).
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

from slic.config import Config, EvalSetConfig, ManifestConfig

def eval_set(config: Config, name: str) -> EvalSetConfig:
    """The settings of eval set `name`, or a one-line error that lists the names params.yaml has."""
    from slic.config import ConfigError

    if name not in config.eval_sets:
        known = ", ".join(sorted(config.eval_sets)) or "none"
        raise ConfigError(f"no eval set {name!r} in params.yaml's eval_sets (it has: {known})")
    return config.eval_sets[name]


def data_dir(name: str) -> Path:
    """data/eval/<name>: the set's manifest, validated rows and frame shards (the output of eval_data@<name>)."""
    return Path("data/eval") / name


def reports_dir(name: str) -> Path:
    """reports/transfer/<name>: data.json, near_twins.csv, retrieval.json, retrieval.html, pretraining_twins.csv."""
    return Path("reports/transfer") / name


def manifest_config(config: Config, name: str) -> ManifestConfig:
    """The manifest settings of an eval set: its own dataset keys, no validation carve (train is the gallery)."""
    chosen = eval_set(config, name)
    return ManifestConfig(root=chosen.root, layout=chosen.layout, splits_dir=chosen.splits_dir, split=chosen.split,
                          min_frames=chosen.min_frames, group_pattern=chosen.group_pattern,
                          on_missing=chosen.on_missing, extensions=chosen.extensions, val_fraction=0.0,
                          workers=config.manifest.workers, out=str(data_dir(name) / "manifest.csv"),
                          seed=config.manifest.seed)


def eval_set_keys(message: str, name: str) -> str:
    """A manifest message about an eval set, with the `manifest.<key>` it names as the set's own key
    (`eval_sets.<name>.<key>`) wherever the set has that key, so the user edits the right line of params.yaml."""
    keys = "|".join(f.name for f in dataclasses.fields(EvalSetConfig))
    return re.sub(rf"\bmanifest\.({keys})\b", rf"eval_sets.{name}.\1", message)


def prepare_eval_data(config: Config, name: str) -> dict[str, Any]:
    """Stage eval_data@<name>: manifest -> Great Expectations -> frame shards, all under data/eval/<name>.

    Raises `EvalDataInvalid` with the validation summary when the set fails its expectations.
    """
    from slic.data.datasets import (DatasetError, build_manifest, grouping_advice, recordings_summary,
                                    splits_fingerprint, unwatched_splits_advice)
    from slic.data.frames import extract_as_configured
    from slic.data.twins import near_twins, twins_warning, write_twin_pairs
    from slic.data.validate import frames_report, validate_manifest

    chosen = eval_set(config, name)
    folder = data_dir(name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        table = build_manifest(manifest_config(config, name), target_fps=config.extract.fps)
    except DatasetError as exc:
        raise DatasetError(eval_set_keys(str(exc), name)) from None
    table.to_csv(folder / "manifest.csv", index=False)
    checked = validate_manifest(table, min_frames=chosen.min_frames,
                                max_examples=config.validate.max_examples, splits=("train", "test"),
                                target_fps=config.extract.fps)
    report: dict[str, Any] = {"set": name, "root": chosen.root, "layout": chosen.layout,
                              "videos": int(len(table)), "classes": int(table["class"].nunique()),
                              "validation": {"success": checked.success, **checked.statistics,
                                             "failures": [vars(f) for f in checked.failures]}}
    key = f"eval_sets.{name}.group_pattern"  # its note first: it may say why validation failed (a one-recording class)
    if chosen.group_pattern:
        report["recordings"], line = recordings_summary(table, key)
        print(f"eval_data@{name}: {line}")
    notes = [line for line in (grouping_advice(table, chosen.root, chosen.layout, chosen.group_pattern, key),
                               unwatched_splits_advice(chosen.root, chosen.layout, chosen.splits_dir,
                                                       f"eval_data@{name}", f"eval_sets.{name}.splits_dir"))
             if line]
    if notes:
        report["advice"] = notes
        for note in notes:
            print(f"eval_data@{name}: note: {note}")
    if unwatched_splits_advice(chosen.root, chosen.layout, chosen.splits_dir):  # as the manifest stage keeps it
        report["unwatched_splits"] = {"dir": chosen.splits_dir, "fingerprint": splits_fingerprint(chosen.splits_dir)}
    if not checked.success:
        raise EvalDataInvalid(f"eval set {name}: {checked.summary()}", report)
    usable = table[(table["excluded"] == "") & (table["split"] != "unused")]
    usable.to_csv(folder / "validated.csv", index=False)
    extracted = extract_as_configured(usable, config.extract, folder / "frames")
    frames_checked = frames_report(usable, folder / "frames", splits=("train", "test"))
    report["frames_validation"] = frames_checked
    if not frames_checked["success"]:  # its shards stay: a rerun reuses every intact one
        raise EvalDataInvalid(f"eval set {name}: {frames_checked['summary']}", report)
    report["near_twins"] = write_twin_pairs(near_twins(usable, folder / "frames", workers=config.extract.workers),
                                            reports_dir(name) / "near_twins.csv",
                                            dict(zip(usable["video_id"], usable["path"])))
    warning = twins_warning(report["near_twins"], f"for a class folder set {key} (this stage suggests one), "
                                                  "otherwise check the set's split files")
    if warning:
        report.setdefault("advice", []).append(warning)
        print(f"eval_data@{name}: warning: {warning}", file=sys.stderr)
    report.update(usable_videos=int(len(usable)), splits=usable["split"].value_counts().sort_index().to_dict(),
                  extract={k: v for k, v in extracted.items() if not isinstance(v, (list, dict))},
                  manifest=str(folder / "validated.csv"), content_fingerprint=extracted["content_fingerprint"])
    return report


class EvalDataInvalid(ValueError):
    """An eval set that failed its Great Expectations suite; `report` says which expectations and rows."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def random_init_checkpoint(trained: dict[str, Any], out: Path) -> Path:
    """The network of a checkpoint's config `trained` at its seeded initialisation (mode random_init): the floor."""
    from slic.checkpoints import atomic_torch_save
    from slic.config import PretrainConfig
    from slic.pretrain import build_encoder

    saved = {"head_output_norm": False, "frame_step": 1, **trained, "mode": "random_init"}
    cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    atomic_torch_save({"model": build_encoder(cfg).state_dict(), "config": dataclasses.asdict(cfg)}, out)
    return out


def encoder_name(trained: dict[str, Any]) -> str:
    """'slic r3d_18_tiny 32px': a checkpoint's mode, backbone and clip size, for run names and reports."""
    return f"{trained['mode']} {trained['backbone']} {trained['size']}px"


def in_domain_recall(checkpoint: str | Path, reports: str | Path = "reports") -> float | None:
    """recall@1 of the `evaluate` stage (the training set's own test split), shown beside the transfer; None
    unless the `embed` stage's report says its embeddings came from this same checkpoint and the training set
    has classes (on unlabelled videos evaluate measures no recall)."""
    retrieval, embed = Path(reports) / "retrieval.json", Path(reports) / "embed.json"
    if not (retrieval.is_file() and embed.is_file()):
        return None
    if Path(json.loads(embed.read_text()).get("checkpoint", "")) != Path(checkpoint):
        return None
    recall = json.loads(retrieval.read_text()).get("recall@1")
    return None if recall is None else float(recall)


def evaluate_transfer(config: Config, name: str, world: Any) -> dict[str, Any]:
    """Stage transfer@<name>: embed the set with the pretrained and the untrained network, evaluate both.

    Embeddings go to data/transfer/<name>/<encoder>.npz; the report keeps each encoder's recall@k and
    per-class recall, the gain over random_init in points, and the in-domain recall@1 for comparison.
    """
    import torch

    from slic.embed import embed_dataset
    from slic.retrieval import evaluate_embeddings

    data = data_dir(name)
    manifest, frames = data / "validated.csv", data / "frames"
    if not manifest.is_file():
        raise FileNotFoundError(f"{manifest}: the eval set is not prepared; run `dvc repro eval_data@{name}` first")
    checkpoint = Path(config.embed.checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no checkpoint; run the `pretrain` stage first (dvc repro pretrain)")
    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]
    out = Path("data/transfer") / name
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = {"pretrained": checkpoint, "random_init": random_init_checkpoint(trained, out / "random_init.pt")}
    results: dict[str, Any] = {}
    for encoder, path in checkpoints.items():
        cfg = dataclasses.replace(config.embed, checkpoint=str(path), out=str(out / f"{encoder}.npz"))
        embedded = embed_dataset(cfg, manifest=manifest, frames_dir=frames, world=world)
        results[encoder] = {**evaluate_embeddings(cfg.out, query_split="test", gallery_split="train",
                                                  ks=config.evaluate.ks),
                            "videos": embedded["videos"], "embeddings": cfg.out}
    gain = 100 * (results["pretrained"]["recall@1"] - results["random_init"]["recall@1"])
    return {"set": name, "checkpoint": config.embed.checkpoint, "manifest": str(manifest),
            "mode": trained["mode"], "encoder": encoder_name(trained),
            **results, "gain_over_random_init_points": round(gain, 2),
            "in_domain_recall@1": in_domain_recall(config.embed.checkpoint), "chance_recall_at_1": 1.0 / max(1, len(
                results["pretrained"]["per_class"]))}
