"""Learnable proxies for the proxy objective: one vector per pseudo-label, started at the cluster centroids.

With `pretrain.objective: proxy` the triplet term is replaced by a softmax cross-entropy of each
clip's cosine to every proxy (`slic.losses.proxy_loss_with_stats`). The proxies belong to the
pseudo-labels, not to the network: whenever the labels change (a clustering round in `slic`, the
first epoch in `oracle` and `intra_video`) they are set anew to the normalised mean embedding of
each label's videos, with a fresh optimizer of the run's kind (no weight decay). That start is
what DeepCluster's re-initialised classifier lacks: a proxy begins where its cluster is, so the
first steps after a round refine the clusters instead of chasing random directions. With
`proxy_carry: matched` a cluster that descends from one of the last round's keeps that cluster's
trained proxy instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from slic.config import PretrainConfig


def contiguous_labels(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..K-1 in order of their value (proxy k belongs to label k)."""
    return np.unique(np.asarray(labels), return_inverse=True)[1].astype(np.int64)


def label_centroids(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, D) normalised mean of the L2-normalised embeddings of each label 0..K-1."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(embeddings):
        raise ValueError(f"{len(labels)} labels for {len(embeddings)} embeddings")
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-8)
    sums = np.zeros((int(labels.max()) + 1, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, unit)
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-8)).astype(np.float32)


def matched_proxies(old_weight: np.ndarray, old_labels: np.ndarray, new_labels: np.ndarray,
                    centroids: np.ndarray) -> tuple[np.ndarray, int]:
    """Proxies for a new round that carry the last round's: (K, D) weights and how many were carried.

    New cluster k keeps the proxy of the old cluster that more than half of its members came from; when
    two new clusters descend from one old cluster, the one with more members from it keeps the proxy.
    Every other new cluster starts at its centroid (`centroids`, row k), as at a reset.
    """
    old_labels, new_labels = np.asarray(old_labels, dtype=np.int64), np.asarray(new_labels, dtype=np.int64)
    if len(old_labels) != len(new_labels):
        raise ValueError(f"{len(old_labels)} old labels for {len(new_labels)} new ones")
    pairs, counts = np.unique(np.stack([new_labels, old_labels], axis=1), axis=0, return_counts=True)
    sizes = np.bincount(new_labels, minlength=len(centroids))
    weight, claimed, carried = centroids.copy(), set(), 0
    for order in np.lexsort((pairs[:, 0], -counts)):  # largest descent first; ties by the new label
        (new, old), count = pairs[order], counts[order]
        if 2 * count > sizes[new] and old not in claimed and old < len(old_weight):
            claimed.add(int(old))
            weight[new] = old_weight[old] / max(float(np.linalg.norm(old_weight[old])), 1e-8)
            carried += 1
    return weight.astype(np.float32), carried


class PseudoLabelProxies:
    """The (K, D) proxies of the current pseudo-labels and their optimizer; saved in the checkpoints."""

    def __init__(self, cfg: PretrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.weight: torch.nn.Parameter | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def ready(self) -> bool:
        """Whether proxies exist (they are made at the first epoch, from the embeddings)."""
        return self.weight is not None

    def reset(self, embeddings: np.ndarray, labels: np.ndarray) -> None:
        """Proxies at the centroids of `labels` (0..K-1) in `embeddings`, with a fresh optimizer."""
        self._set(torch.from_numpy(label_centroids(embeddings, labels)))

    def carry(self, embeddings: np.ndarray, labels: np.ndarray, previous_labels: np.ndarray) -> int:
        """Proxies for new `labels` that keep the matched old ones (matched_proxies), with a fresh optimizer;
        returns how many were carried. Without proxies yet this is a reset."""
        centroids = label_centroids(embeddings, labels)
        if self.weight is None:
            self._set(torch.from_numpy(centroids))
            return 0
        weight, carried = matched_proxies(self.weight.detach().cpu().numpy(), previous_labels, labels, centroids)
        self._set(torch.from_numpy(weight))
        return carried

    @property
    def lr(self) -> float:
        """The proxies' learning rate: the network's times `proxy_lr_scale`."""
        return self.cfg.lr * self.cfg.proxy_lr_scale

    def _set(self, weight: torch.Tensor) -> None:
        self.weight = torch.nn.Parameter(weight.to(self.device, torch.float32))
        if self.cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW([self.weight], lr=self.lr, weight_decay=0.0)
        else:
            self.optimizer = torch.optim.SGD([self.weight], lr=self.lr, momentum=self.cfg.momentum)

    def zero_grad(self) -> None:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        if self.optimizer is not None:
            self.optimizer.step()

    def state_dict(self) -> dict[str, Any] | None:
        """The proxies and their optimizer state (None before the first epoch)."""
        if self.weight is None or self.optimizer is None:
            return None
        return {"weight": self.weight.detach().cpu(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore what `state_dict` saved (None: no proxies yet)."""
        if state is None:
            self.weight = self.optimizer = None
            return
        self._set(state["weight"])
        assert self.optimizer is not None
        self.optimizer.load_state_dict(state["optimizer"])
