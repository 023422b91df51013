"""Presets: presets/paper_ucf101.yaml holds the paper's values, and `slic preset` writes them safely."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from slic.cli import main
from slic.config import ConfigError, load, to_dict
from slic.presets import PresetError, apply_preset, list_presets, load_preset, show

ROOT = Path(__file__).resolve().parents[1]
SLIC_MD = Path(__file__).resolve().parents[2] / "shared" / "SLIC.md"  # absent when the repo is cloned elsewhere

# Every paper value of ../shared/SLIC.md that has a params.yaml key: (key, paper value, text of SLIC.md that
# says so, whitespace collapsed). The comment names the SLIC.md section.
PAPER: list[tuple[str, Any, str]] = [
    ("manifest.layout", "ucf101", "UCF101: `<root>/<Class>/v_<Class>_g<GG>_c<CC>.avi`"),  # Data
    ("manifest.split", 1, "gallery = train split videos (split 1)"),  # Evaluation
    ("manifest.min_frames", 32, "Videos shorter than 32 frames are dropped"),  # Input and sampling
    ("extract.short_side", 240, "ffmpeg at short side 240"),  # Data
    ("flow.enabled", True, "RGB-only is the paper's ablation"),  # Input and sampling
    ("flow.p", 0.25, "Flow view: with probability 0.25"),  # Input and sampling
    ("pretrain.mode", "slic", "use the cluster ids as pseudo-labels"),  # Iterative clustering
    ("pretrain.backbone", "r3d_18_reference", "the reference stem as a backbone option (the paper-faithful choice)"),  # Network
    ("pretrain.hidden_dim", 2048, "Linear(512, 2048) -> BatchNorm1d -> ReLU -> Linear(2048, 128)"),  # Network
    ("pretrain.out_dim", 128, "Linear(2048, 128)"),  # Network
    ("pretrain.head_output_norm", False, "-> Linear(2048, 128). Not L2-normalised in the net"),  # Network
    ("pretrain.clip_len", 16, "Clip: 16 consecutive frames at stride 1"),  # Input and sampling
    ("pretrain.frame_step", 1, "16 consecutive frames at stride 1"),  # Input and sampling
    ("pretrain.size", 128, "at stride 1, 128x128 (paper)"),  # Input and sampling
    ("pretrain.batch_size", 32, "Batch 32 (2 GPUs x 16) for UCF101"),  # Optimisation
    ("pretrain.epochs", 600, "for UCF101, 600 epochs"),  # Optimisation
    ("pretrain.optimizer", "sgd", "SGD, lr 0.1"),  # Optimisation
    ("pretrain.lr", 0.1, "SGD, lr 0.1"),  # Optimisation
    ("pretrain.momentum", 0.5, "momentum 0.5"),  # Optimisation
    ("pretrain.weight_decay", 0.0, "no weight decay"),  # Optimisation
    ("pretrain.p_intra", 0.2, "`p_intra` (0.2 for UCF101"),  # Input and sampling
    ("pretrain.random_anchor", False, "Anchor: the first 16 frames of the video in the reference code"),  # Input and sampling
    ("pretrain.crop_min_scale", 0.25, "RandomResizedCrop to 128, scale (0.25, 1)"),  # Input and sampling
    ("pretrain.color_jitter", 0.5, "ColorJitter (0.5, 0.5, 0.5, 0.5) with p=0.8"),  # Input and sampling
    ("pretrain.color_jitter_p", 0.8, "(0.5, 0.5, 0.5, 0.5) with p=0.8"),  # Input and sampling
    ("pretrain.grayscale_p", 0.2, "grayscale p=0.2"),  # Input and sampling
    ("pretrain.blur_p", 0.2, "Gaussian blur (kernel 15, sigma 2) p=0.2"),  # Input and sampling
    ("pretrain.cluster_method", "finch", "SLIC configs cluster with FINCH, partition 0"),  # Iterative clustering
    ("pretrain.cluster_interval", 5, "Every `interval` = 5 epochs starting at epoch 0"),  # Iterative clustering
    ("pretrain.objective", "triplet", "Triplet loss with in-batch mining"),  # Losses
    ("pretrain.mining", "mined", "the negative is drawn at random among different-label embeddings"),  # Losses
    ("pretrain.triplet_margin", 0.2, "mean(relu(d_ap - d_an + 0.2))"),  # Losses
    ("pretrain.temporal_margin", 0.04, "max(0, d(a, a2) - d(a, p) + 0.04)"),  # Losses
    ("pretrain.temporal_weight", 1.0, "+ 0.04), weight 1.0"),  # Losses
    ("pretrain.seed", 7, "no schedule; seed 7"),  # Optimisation
    ("embed.clips", 10, "10 clips of 16 frames per video"),  # Evaluation
    ("evaluate.query_split", "test", "queries = test split videos"),  # Evaluation
    ("evaluate.gallery_split", "train+val", "gallery = train split videos"),  # Evaluation (the whole official list)
    ("evaluate.ks", [1, 5, 10, 20, 50], "Report top-1/5/10/20/50 recall"),  # Evaluation
]
# Finetuning and the linear probe share the protocol (SLIC.md: Evaluation; clip and size as pretrained).
for _section in ("linear_probe", "finetune"):
    PAPER += [
        (f"{_section}.clip_len", 16, "Test: 16-frame windows"),  # Evaluation
        (f"{_section}.frame_step", 1, "16 consecutive frames at stride 1"),  # Input and sampling (as pretrained)
        (f"{_section}.size", 128, "at stride 1, 128x128 (paper)"),  # Input and sampling (as pretrained)
        (f"{_section}.dropout", 0.9, "Dropout(0.9), Linear(512, classes)"),  # Evaluation
        (f"{_section}.epochs", 150, "150 epochs, lr /10 at epochs 60 and 100"),  # Evaluation
        (f"{_section}.milestones", [60, 100], "lr /10 at epochs 60 and 100"),  # Evaluation
        (f"{_section}.lr_gamma", 0.1, "lr /10 at epochs 60 and 100"),  # Evaluation
        (f"{_section}.lr", 0.001, "Adam lr 1e-3"),  # Evaluation
        (f"{_section}.weight_decay", 0.001, "weight decay 1e-3"),  # Evaluation
        (f"{_section}.batch_size", 32, "weight decay 1e-3, batch 32"),  # Evaluation
        (f"{_section}.crop_min_scale", 0.2, "random-area crop (0.2-1)"),  # Evaluation
        (f"{_section}.color_jitter", 0.4, "ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.3"),  # Evaluation
        (f"{_section}.hue", 0.1, "ColorJitter(0.4, 0.4, 0.4, 0.1)"),  # Evaluation
        (f"{_section}.color_jitter_p", 0.3, "ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.3"),  # Evaluation
        (f"{_section}.flip_p", 0.5, "horizontal flip p=0.5"),  # Input and sampling (p), Evaluation (per sample)
        (f"{_section}.test_stride", 7, "stride 7 in the reference"),  # Evaluation
    ]
PAPER.append(("finetune.backbone_lr_scale", 0.1, "backbone at lr/10"))  # Evaluation

# In the preset but not from SLIC.md: TV-L1 at OpenCV's defaults (SLIC.md names no parameters; params.yaml's
# flow comment gives them) and the GPU run settings.
NOT_FROM_SLIC_MD: dict[str, Any] = {
    "flow.tau": 0.25, "flow.lambda_": 0.15, "flow.theta": 0.3, "flow.nscales": 5, "flow.scale_step": 0.8,
    "flow.warps": 5, "flow.epsilon": 0.01, "flow.inner_iterations": 30, "flow.outer_iterations": 10,
    "flow.median_filtering": 5, "ablation.modes": ["slic", "random_init"],  # the project's baselines left out
    **{f"{s}.{k}": v for s in ("pretrain", "linear_probe", "finetune") for k, v in (("device", "auto"), ("bf16", True))},
}


def flat(preset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {f"{section}.{key}": value for section, values in preset.items() for key, value in values.items()}


def same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (a bool is not an int; 0 and 0.0 are the same number)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return isinstance(a, bool) == isinstance(b, bool) and a == b


@pytest.fixture(scope="module")
def preset() -> dict[str, Any]:
    return flat(load_preset("paper_ucf101"))


@pytest.fixture()
def params(tmp_path: Path) -> Path:
    """A copy of the repository's params.yaml."""
    return Path(shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml"))


@pytest.mark.parametrize(("key", "value", "evidence"), PAPER, ids=[row[0] for row in PAPER])
def test_preset_holds_the_paper_value(preset: dict[str, Any], key: str, value: Any, evidence: str) -> None:
    assert key in preset, f"{key} is missing from presets/paper_ucf101.yaml"
    assert same(preset[key], value), f"{key}: preset {preset[key]!r}, paper {value!r}"


def test_slic_md_says_so() -> None:
    if not SLIC_MD.is_file():
        pytest.skip(f"{SLIC_MD} not found (the repository is checked out alone)")
    text = " ".join(SLIC_MD.read_text().split())
    missing = [f"{key}: {evidence!r}" for key, _, evidence in PAPER if evidence not in text]
    assert not missing, "SLIC.md no longer says: " + "; ".join(missing)


def test_preset_holds_nothing_else(preset: dict[str, Any]) -> None:
    expected = {key: value for key, value, _ in PAPER} | NOT_FROM_SLIC_MD
    assert set(preset) == set(expected), f"only in the preset: {sorted(set(preset) - set(expected))}"
    assert all(same(preset[k], v) for k, v in NOT_FROM_SLIC_MD.items())
    assert "root" not in preset and "manifest.splits_dir" not in preset  # the user's folders
    assert "paper_ucf101" in list_presets()


def test_every_value_carries_its_source() -> None:
    lines = (ROOT / "presets" / "paper_ucf101.yaml").read_text().splitlines()
    values = [line for line in lines if re.match(r"^  \w+:", line)]
    unsourced = [line for line in values if not re.search(r"# (SLIC\.md: \w|OpenCV default|GPU run)", line)]
    assert values and not unsourced


def test_apply_writes_the_values_and_keeps_the_rest(params: Path, preset: dict[str, Any]) -> None:
    before_text = params.read_text()
    before = load(params)
    changes = apply_preset(load_preset("paper_ucf101"), params)
    after_text = params.read_text()
    after = load(params)  # slic.config accepts the result
    for key, value in preset.items():
        section, name = key.split(".")
        assert same(getattr(getattr(after, section), name), value), key
    changed = {key for key, _, _ in changes}
    assert changed and changed <= set(preset)
    for key, old, new in changes:
        section, name = key.split(".")
        assert same(dataclasses.asdict(getattr(before, section))[name], old) and not same(old, new)
    for section in dataclasses.fields(after):  # every value outside the preset as it was
        for name, value in to_dict(getattr(after, section.name)).items():
            if f"{section.name}.{name}" not in preset:
                assert value == to_dict(getattr(before, section.name))[name], f"{section.name}.{name}"
    # Comments, key order and every line of an unchanged key stay byte for byte; only changed keys' values move.
    old_lines, new_lines = before_text.splitlines(), after_text.splitlines()
    assert len(old_lines) == len(new_lines)
    assert "# One section per stage; each stage reads only its own section" in after_text
    section = ""
    for old, new in zip(old_lines, new_lines):
        section = old.split(":")[0] if re.match(r"^\w", old) else section
        key = re.match(r"^  (\w+):", old)
        if key and f"{section}.{key.group(1)}" in changed:
            assert new.split(":")[0] == old.split(":")[0] and new.partition("#")[2] == old.partition("#")[2], new
        else:
            assert new == old
    assert "  backbone: r3d_18_reference # paper: r3d_18_reference" in after_text
    assert "  milestones: [60, 100]     # lr x lr_gamma" in after_text
    assert apply_preset(load_preset("paper_ucf101"), params) == []  # a second time: nothing to change
    assert params.read_text() == after_text


def test_keys_missing_from_params_are_added(tmp_path: Path, preset: dict[str, Any]) -> None:
    sparse = tmp_path / "params.yaml"
    sparse.write_text("extract:  # frames\n  workers: 1\n")
    changes = apply_preset(load_preset("paper_ucf101"), sparse)
    assert ("linear_probe.milestones", [2, 4], [60, 100]) in changes  # old: slic.config's default
    text = sparse.read_text()
    assert text.startswith("extract:  # frames\n  workers: 1\n") and "  milestones: [60, 100]\n" in text
    after = load(sparse)
    assert after.extract.workers == 1 and after.pretrain.lr == 0.1 and after.evaluate.ks == (1, 5, 10, 20, 50)


def test_dry_run_changes_nothing(params: Path) -> None:
    before = params.read_bytes()
    changes = apply_preset(load_preset("paper_ucf101"), params, dry_run=True)
    assert changes and params.read_bytes() == before
    assert [p.name for p in params.parent.iterdir()] == ["params.yaml"]  # no temporary file left
    assert main(["preset", "paper_ucf101", "--params", str(params), "--dry-run"]) == 0
    assert params.read_bytes() == before


@pytest.mark.parametrize(("text", "key"), [
    ("pretrain:\n  lr: 0.1\n  learning_rate: 0.1\n", "pretrain.learning_rate"),
    ("pretrian:\n  lr: 0.1\n", "pretrian"),
], ids=["key", "section"])
def test_unknown_key_is_refused_by_name(params: Path, tmp_path: Path, capsys, text: str, key: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    before = params.read_bytes()
    with pytest.raises(PresetError, match=f"unknown key '{key}'"):
        load_preset(str(bad))
    assert main(["preset", str(bad), "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unknown key '{key}'" in err
    assert params.read_bytes() == before


def test_invalid_value_leaves_the_file_as_it_was(params: Path, tmp_path: Path, capsys) -> None:
    before = params.read_bytes()
    with pytest.raises(ConfigError, match=re.escape(f"{params}: pretrain.lr = 20.0: expected a number")):
        apply_preset({"pretrain": {"optimizer": "sgd", "lr": 20.0}}, params)
    assert params.read_bytes() == before and len(list(tmp_path.iterdir())) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("pretrain:\n  lr: 20.0\n")
    assert main(["preset", str(bad), "--params", str(params)]) == 2
    assert "pretrain.lr = 20.0" in capsys.readouterr().err
    assert params.read_bytes() == before


def test_cli_end_to_end(params: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["preset", "--list"]) == 0
    assert capsys.readouterr().out.startswith("paper_ucf101\tThe paper's UCF101 configuration")
    before = load(params).pretrain
    assert main(["preset", "paper_ucf101"]) == 0  # params.yaml of the working directory
    out = capsys.readouterr().out.splitlines()
    assert f"pretrain.lr: {show(before.lr)} -> 0.1" in out
    assert f"pretrain.backbone: {show(before.backbone)} -> r3d_18_reference" in out
    assert any(line.startswith("preset paper_ucf101: ") and "written to params.yaml" in line for line in out)
    assert out[-1].startswith("next: set manifest.root")
    assert load(params).pretrain.objective == "triplet"
    other = tmp_path / "other.yaml"
    shutil.copy(ROOT / "params.yaml", other)
    assert main(["--params", str(other), "preset", "paper_ucf101", "--dry-run"]) == 0  # the global --params too
    assert "dry run, nothing written" in capsys.readouterr().out
    assert other.read_bytes() == (ROOT / "params.yaml").read_bytes()
    assert main(["preset", "no_such_preset"]) == 2
    assert "no preset 'no_such_preset'" in capsys.readouterr().err
