"""Published numbers on UCF101 split 1 (../shared/SLIC.md), set beside a run's own where it measured the same thing.

Retrieval follows the IIC protocol: the test split's videos query the train split's (the official train list, of
which our val is a carve, so `evaluate.gallery_split: train+val`), recall@1/5/10/20/50. Finetuning: test top-1.
A run is comparable only on the whole of UCF101 split 1 (101 classes); anything else gets no published row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slic.retrieval import PROTOCOL_GALLERY

SOURCE = "SLIC (Khorasgani et al., CVPR 2022) and the papers it cites, as ../shared/SLIC.md lists them"
RETRIEVAL_KS = (1, 5, 10, 20, 50)
RETRIEVAL_UCF101_SPLIT1: dict[str, tuple[float, ...]] = {  # recall@1/5/10/20/50 in %
    "VCOP (R3D)": (14.1, 30.3, 40.4, 51.1, 66.5),
    "VCP (R3D)": (18.6, 33.6, 42.5, 53.5, 68.1),
    "PacePred (R3D-18)": (23.8, 38.1, 46.4, 56.6, 69.8),
    "IIC (R3D)": (42.4, 60.9, 69.2, 77.1, 86.5),
    "PCL-VCP (R3D-18)": (55.1, 71.2, 78.9, 85.5, 92.3),
    "CoCLR (S3D, UCF101 RGB)": (51.8,),  # top-1 only
}
FINETUNE_TOP1 = {  # test top-1 in %, finetuned on the dataset after pretraining
    "ucf101": {"IIC": 74.4, "PCL-VCP (R3D-18, 112 px)": 83.4, "SLIC": 83.2},
    "hmdb51": {"IIC": 38.3, "PCL-VCP (R3D-18, 112 px)": 48.8, "SLIC": 54.5},
}
UCF101_CLASSES = 101
HMDB51_CLASSES = 51


def is_ucf101_split1(layout: str, split: int, classes: int) -> bool:
    """Whether a manifest is the whole of UCF101 split 1: the only set the published retrieval numbers are on."""
    return layout == "ucf101" and split == 1 and classes == UCF101_CLASSES


def published_retrieval(report: Mapping[str, Any], layout: str, split: int) -> dict[str, Any] | None:
    """The published recall@k beside evaluate's `report` (per_class, query_split, gallery_split, differs_from_paper)
    when it measured UCF101 split 1's test queries; `notes` when its gallery is not the protocol's or its encoder not
    the paper's configuration. None for any other set."""
    classes = len(report.get("per_class") or {})
    if not is_ucf101_split1(layout, split, classes) or report.get("query_split") != "test":
        return None
    ours = {f"recall@{k}": round(100 * float(report[f"recall@{k}"]), 1) for k in RETRIEVAL_KS
            if f"recall@{k}" in report}
    rows = {name: {f"recall@{k}": value for k, value in zip(RETRIEVAL_KS, values)}
            for name, values in RETRIEVAL_UCF101_SPLIT1.items()}
    found = {"set": "UCF101 split 1, the IIC protocol (test queries, train gallery)", "source": SOURCE,
             "this_run": ours, "published": rows}
    notes = []
    if report.get("gallery_split") != PROTOCOL_GALLERY:
        notes.append(f"this run's gallery is the {report.get('gallery_split')} split, not the protocol's whole "
                     f"train list (ours is carved into train and val): set evaluate.gallery_split: "
                     f"{PROTOCOL_GALLERY} to compare on the same gallery")
    if differs := report.get("differs_from_paper"):
        notes.append(f"{encoder_differences(differs)}: the published rows come from their papers' configurations")
    if notes:
        found["notes"] = notes
    return found


def encoder_differences(differs: list[str], shown: int = 4) -> str:
    """'this encoder was not pretrained in the paper's configuration: 17 settings differ, e.g. ...' for a report's
    `differs_from_paper` (slic.presets.paper_differences)."""
    more = (f", and {len(differs) - shown} more (reports/retrieval.json: differs_from_paper)"
            if len(differs) > shown else "")
    return (f"this encoder was not pretrained in the paper's configuration: {len(differs)} setting(s) differ, "
            f"{'e.g. ' if more else ''}{', '.join(differs[:shown])}{more}")


def top5_shown(classes: int) -> bool:
    """Whether a top-5 accuracy says anything: with 10 classes or fewer, five guesses cover half of them or more."""
    return classes > 10


def published_finetune(layout: str, split: int, classes: int) -> dict[str, Any] | None:
    """The published finetuning top-1 on UCF101 or HMDB51 split 1, when a run finetuned on the whole of it (layout
    `ucf101` or `hmdb51`, the official split 1, 101 or 51 classes); None otherwise."""
    whole = {"ucf101": UCF101_CLASSES, "hmdb51": HMDB51_CLASSES}
    if layout not in whole or split != 1 or classes != whole[layout]:
        return None
    return {"set": f"{'UCF101' if layout == 'ucf101' else 'HMDB51'} split 1, test top-1 after finetuning",
            "source": SOURCE, "published": dict(FINETUNE_TOP1[layout])}


def finetune_line(stage: str, top1: float, layout: str, split: int, classes: int) -> str:
    """'<stage>: published on ... : IIC 74.4, ...; this run 71.2' when `published_finetune` has numbers, else ''."""
    found = published_finetune(layout, split, classes)
    if found is None:
        return ""
    rows = ", ".join(f"{name} {value}" for name, value in found["published"].items())
    return f"{stage}: published on {found['set']} %: {rows}; this run (finetuned from the encoder) {top1:.1f}"
