"""PNG plots for MLflow: training curves, recall@k, and a 2-D projection of the embeddings.

matplotlib with the Agg backend (no display); each function writes one file and returns its path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: Sequence[Mapping[str, float]], out: str | Path) -> Path:
    """Loss terms per epoch (left) and validation recall@1 (right) from pretrain's history.json."""
    plt = _pyplot()
    epochs = [row["epoch"] for row in history]
    losses = sorted({k for row in history for k in row if "loss" in k})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key in losses:
        left.plot(epochs, [row.get(key, np.nan) for row in history], marker="o", label=key)
    left.set(xlabel="epoch", ylabel="loss", title="training loss")
    if losses:
        left.legend(fontsize=8)
    val = [(row["epoch"], row["val_recall_at_1"]) for row in history if "val_recall_at_1" in row]
    if val:
        right.plot(*zip(*val), marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="recall@1", title="validation recall@1 (val queries, train gallery)",
              ylim=(0, 1))
    fig.tight_layout()
    return _save(fig, out)


def recall_curve(report: Mapping[str, Any], out: str | Path) -> Path:
    """recall@k against k from a retrieval report (keys `recall@<k>`)."""
    plt = _pyplot()
    points = sorted((int(k.split("@")[1]), float(v)) for k, v in report.items()
                    if k.startswith("recall@") and isinstance(v, (int, float)))
    fig, ax = plt.subplots(figsize=(5, 4))
    ks, values = zip(*points) if points else ((), ())
    ax.plot(ks, values, marker="o")
    for k, v in points:
        ax.annotate(f"{v:.2f}", (k, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set(xscale="log", xlabel="k", ylabel="recall@k", ylim=(0, 1.05),
           title=f"retrieval: {report.get('query_split', 'test')} queries vs {report.get('gallery_split', 'train')}")
    ax.set_xticks(list(ks), [str(k) for k in ks])
    fig.tight_layout()
    return _save(fig, out)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows of x onto their first two principal components (n, 2)."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def embedding_projection(embeddings: str | Path, out: str | Path) -> Path:
    """PCA of the L2-normalised embeddings, one point per video, coloured by class, marker by split."""
    plt = _pyplot()
    data = np.load(embeddings)
    x = data["embedding"] / np.maximum(np.linalg.norm(data["embedding"], axis=1, keepdims=True), 1e-12)
    points = pca_2d(x)
    names = data["class_name"] if "class_name" in data.files else data["label"].astype(str)
    classes = sorted(set(names.tolist()))
    colours = plt.get_cmap("tab20", max(len(classes), 1))
    fig, ax = plt.subplots(figsize=(7, 6))
    for marker, split in (("o", "train"), ("s", "val"), ("^", "test")):
        for i, name in enumerate(classes):
            mask = (names == name) & (data["split"] == split)
            if mask.any():
                ax.scatter(points[mask, 0], points[mask, 1], s=18, marker=marker, color=colours(i),
                           label=name if split == "train" else None, alpha=0.8)
    ax.set(title="embeddings, PCA 2-D (colour: class; o train, s val, ^ test)", xlabel="PC 1", ylabel="PC 2")
    if any(classes):  # videos without classes (an unlabelled layout) have one unnamed colour: no legend
        ax.legend(fontsize=7, ncol=2, loc="best")
    fig.tight_layout()
    return _save(fig, out)


def _save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    _pyplot().close(fig)
    return out
