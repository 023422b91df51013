"""SLIC's losses as small pure functions on tensors.

All distances are cosine distances (1 - cosine similarity, in [0, 2]): the projection head does not
L2-normalise its output, so the losses normalise internally and are invariant to embedding scale.

- `triplet_loss`: triplet loss with in-batch mining over the 2B embeddings (anchors and positives),
  labels being cluster ids (or video ids for the intra-video baseline). Every same-label pair is an
  anchor-positive pair; its negative is drawn uniformly among the semi-hard or hard different-label
  samples, falling back to the closest different-label sample when there is none.
- `temporal_loss`: a second augmented view of the anchor's own frames must be closer to the anchor
  than the (temporally non-overlapping) positive.
- `proxy_loss_with_stats`: the proxy-based alternative to the triplet term: each embedding's
  cosine to one learnable proxy per pseudo-label, as a softmax cross-entropy (normalised softmax,
  "NormFace"/Proxy-NCA family). With true labels it learns motion as fast as a classifier does,
  where the in-batch triplet needs three times the steps (README: pretrain).
- `nce_loss_with_stats`: NT-Xent (InfoNCE) over the batch's anchor-positive pairs: each clip's target is
  its own partner (SLIC's positive, from another video of the cluster or from its own video), the other
  clips of the batch are its negatives, except those sharing its pseudo-label, which are left out
  (`positives="pair"`) or are positives too (`positives="label"`, SupCon).
- `slic_loss`: the total, triplet (or proxy, or NCE) + temporal_weight * temporal, with diagnostics.

Diagnostics ("stats") are detached 0-dim tensors on the embeddings' device, not floats: turning one into
a float waits for the device to finish the step, so the training loop sums them on the device and reads
them once an epoch. No loss makes the host wait for the device (tested) when its labels come from the
host, as the loader gives them: the paper's mined triplet then sizes its pairs there.

Mining is vectorised (no Python loop over pairs) and runs on the embeddings' device. It builds a
(P, N) candidate mask for P pairs and N samples, so memory is O(P * N); P is at most N (N - 1) / 2.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

_EPS = 1e-8
Stats = dict[str, Tensor]  # detached 0-dim tensors on the loss's device


def cosine_distance_matrix(x: Tensor, *, eps: float = _EPS) -> Tensor:
    """(N, D) -> (N, N) matrix of 1 - cosine similarity.

    Rows are normalised with `eps` in the norm so zero vectors give finite values (distance 1 to
    everything) instead of NaN. Differentiable; values lie in [0, 2] up to rounding.
    """
    if x.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {tuple(x.shape)}")
    unit = F.normalize(x, dim=1, eps=eps)
    return 1.0 - unit @ unit.T


def cosine_distance(a: Tensor, b: Tensor, *, eps: float = _EPS) -> Tensor:
    """Row-wise cosine distance: (B, D), (B, D) -> (B,), 1 - cos(a_i, b_i).

    The paired counterpart of `cosine_distance_matrix`, with the same eps-safe normalisation.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return 1.0 - (F.normalize(a, dim=1, eps=eps) * F.normalize(b, dim=1, eps=eps)).sum(dim=1)


class Triplets(NamedTuple):
    """Mined triplets as (P,) index tensors into the batch, plus which pairs used the fallback."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor
    fallback: Tensor  # bool: no semi-hard/hard negative existed, the closest different-label one was used


def mine_triplets(distances: Tensor, labels: Tensor, *, margin: float = 0.2,
                  generator: torch.Generator | None = None) -> Triplets:
    """Choose SLIC's triplets from an (N, N) distance matrix and (N,) labels.

    Every same-label pair (i, j), i < j, is taken once with i as the anchor. Its negative is drawn
    uniformly (with `generator`) among different-label samples n with d(i, n) < d(i, j) + margin
    (semi-hard or hard); if there is none, the closest different-label sample to the anchor is used.
    Needs at least one pair and two distinct labels (see `triplet_loss_with_stats`). No gradients.
    The pairs are found where the labels are: on the host (as the loader gives them) the distances' device
    is never waited for; labels already on the device make the host wait there (nonzero).
    """
    n = distances.shape[0]
    if distances.shape != (n, n):
        raise ValueError(f"expected a square distance matrix, got shape {tuple(distances.shape)}")
    labels = labels.reshape(-1)
    if labels.numel() != n:
        raise ValueError(f"{labels.numel()} labels for {n} samples")
    with torch.no_grad():
        dist = distances.detach()
        same_here = labels[:, None] == labels[None, :]
        anchor, positive = torch.triu(same_here, diagonal=1).nonzero(as_tuple=True)
        anchor, positive, same = (to_device_nonblocking(t, dist.device)
                                  for t in (anchor, positive, same_here))
        d_ap = dist[anchor, positive]                                   # (P,)
        d_a = dist[anchor]                                              # (P, N)
        other = ~same[anchor]                                           # (P, N) different-label samples
        candidate = other & (d_a < (d_ap + margin)[:, None])
        # Uniform choice among candidates: argmax of i.i.d. uniform scores, -inf where not a candidate.
        draw_device = generator.device if generator is not None else dist.device
        scores = torch.rand(candidate.shape, generator=generator, device=draw_device)
        scores = to_device_nonblocking(scores, dist.device)
        random_pick = scores.masked_fill(~candidate, float("-inf")).argmax(dim=1)
        # Fallback: the closest sample among the different-label ones, indexed in the full batch.
        closest_other = d_a.masked_fill(~other, float("inf")).argmin(dim=1)
        fallback = ~candidate.any(dim=1)
        negative = torch.where(fallback, closest_other, random_pick)
    return Triplets(anchor, positive, negative, fallback)


def to_device_nonblocking(tensor: Tensor, device: torch.device) -> Tensor:
    """`tensor` on `device`. From the host to CUDA the copy goes through pinned memory and does not block:
    a copy from pageable memory would make the host wait for everything queued on the device first."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _checked_labels(embeddings: Tensor, labels: Tensor, *, move: bool = True) -> Tensor:
    """`labels` as (N,), on the embeddings' device unless not `move`; a ValueError names the shapes when
    they do not fit."""
    if embeddings.ndim != 2:
        raise ValueError(f"expected (N, D) embeddings, got shape {tuple(embeddings.shape)}")
    labels = labels.reshape(-1)
    if labels.numel() != embeddings.shape[0]:
        raise ValueError(f"{labels.numel()} labels for {embeddings.shape[0]} embeddings")
    return to_device_nonblocking(labels, embeddings.device) if move else labels


def _scalars(like: Tensor, **values: float | Tensor) -> Stats:
    """Stats as detached float32 0-dim tensors on `like`'s device (a float is filled in there, no copy waited on)."""
    return {key: (value.detach().float() if isinstance(value, Tensor) else like.new_full((), value, dtype=torch.float32))
            for key, value in values.items()}


def triplet_loss_with_stats(embeddings: Tensor, labels: Tensor, *, margin: float = 0.2,
                            generator: torch.Generator | None = None) -> tuple[Tensor, Stats]:
    """SLIC's mined triplet loss plus mining diagnostics.

    loss = mean over anchor-positive pairs of relu(d(a, p) - d(a, n) + margin), cosine distance,
    with triplets from `mine_triplets`. With no same-label pair or no second label, the loss is a
    zero that still carries grad (never NaN). Stats: "pairs" (count), "fallback_fraction" (pairs with
    no semi-hard/hard negative) and "active_fraction" (triplets with a non-zero loss).
    """
    labels = _checked_labels(embeddings, labels, move=False)  # mining finds the pairs where the labels are
    zero = embeddings.sum() * 0.0
    empty = _scalars(embeddings, pairs=0.0, fallback_fraction=0.0, active_fraction=0.0)
    if labels.numel() < 2 or bool((labels == labels[0]).all()):
        return zero, empty                                   # no different-label sample for any anchor
    dist = cosine_distance_matrix(embeddings)
    triplets = mine_triplets(dist, labels, margin=margin, generator=generator)
    pairs = triplets.anchor.numel()
    if pairs == 0:
        return zero, empty
    per_triplet = F.relu(dist[triplets.anchor, triplets.positive] - dist[triplets.anchor, triplets.negative] + margin)
    stats = _scalars(embeddings, pairs=float(pairs), fallback_fraction=triplets.fallback.float().mean(),
                     active_fraction=(per_triplet.detach() > 0).float().mean())
    return per_triplet.mean(), stats


def batch_all_triplet_loss_with_stats(embeddings: Tensor, labels: Tensor, *,
                                      margin: float = 0.2) -> tuple[Tensor, Stats]:
    """Batch-all triplet loss: mean of relu(d(a, p) - d(a, n) + margin) over the triplets where it is > 0.

    Every ordered same-label pair (a, p), a != p, with every different-label n of the batch (Hermans
    et al., 2017), cosine distance. Not the paper's mining (one random semi-hard/hard negative per
    pair, `triplet_loss_with_stats`): with a narrow network at initialisation one negative per pair
    gives a gradient too noisy to separate classes in a CPU-sized run, while averaging over all
    violating triplets learns (measured in the README). Same stats keys as the mined loss, with
    "active_fraction" the share of all valid triplets that violate the margin. Memory is O(N^3)
    for N embeddings: fine for per-GPU batches of a few hundred clips; use `mined` beyond that.
    With no valid triplet (no pair, or one label) the loss is a zero that carries grad. No host sync.
    """
    labels = _checked_labels(embeddings, labels)
    same = labels[:, None] == labels[None, :]
    positive_pair = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    dist = cosine_distance_matrix(embeddings)
    valid = positive_pair[:, :, None] & ~same[:, None, :]                 # (a, p, n)
    per_triplet = F.relu(dist[:, :, None] - dist[:, None, :] + margin) * valid
    active = (per_triplet.detach() > 0) & valid
    count = active.sum()
    loss = per_triplet.sum() / count.clamp_min(1)  # no active triplet: every term is 0, so the loss is 0
    pairs = positive_pair.sum() * (~same).any()  # a batch of one label has no triplet, so no pair counts
    stats = _scalars(embeddings, pairs=pairs, fallback_fraction=0.0, active_fraction=count / valid.sum().clamp_min(1))
    return loss, stats


def proxy_loss_with_stats(embeddings: Tensor, labels: Tensor, proxies: Tensor, *,
                          temperature: float = 0.1) -> tuple[Tensor, Stats]:
    """Cross-entropy of cos(embedding, proxy_k) / temperature over the K proxies, target = the label.

    `proxies` (K, D) holds one learnable vector per pseudo-label (row k for label k; labels must be
    in 0..K-1). Unlike a triplet, each step compares every sample with every class at once through
    proxies that remember earlier batches, so the gradient is neither pinned at a margin nor limited
    to the pairs a batch happens to hold. Stats: "proxy_accuracy" (nearest proxy = own label).
    The labels' range is checked where they are (no wait on the device for host labels), then they move.
    """
    labels = _checked_labels(embeddings, labels, move=False)
    if proxies.ndim != 2 or proxies.shape[1] != embeddings.shape[1]:
        raise ValueError(f"proxies must be (K, {embeddings.shape[1]}), got {tuple(proxies.shape)}")
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())  # host labels (as the loader gives them): no device wait
        if low < 0 or high >= proxies.shape[0]:
            raise ValueError(f"labels must lie in 0..{proxies.shape[0] - 1} (one proxy each), got {low}..{high}")
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature}: must be > 0")
    labels = to_device_nonblocking(labels, embeddings.device)
    logits = F.normalize(embeddings, dim=1, eps=_EPS) @ F.normalize(proxies, dim=1, eps=_EPS).T / temperature
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return loss, _scalars(embeddings, proxy_accuracy=accuracy)


NCE_POSITIVES = ("pair", "label")


def nce_loss_with_stats(anchor: Tensor, positive: Tensor, labels: Tensor, *, temperature: float = 0.1,
                        positives: str = "pair") -> tuple[Tensor, Stats]:
    """NT-Xent over the 2B clips cat([anchor, positive]): the loss in which SLIC's positive itself is the target.

    Clip i's logits are its cosines to the other 2B - 1 clips over `temperature`. With `positives="pair"`
    the target is its partner (anchor i <-> positive i) and clips that share its pseudo-label (cluster
    mates: likely the same action) are removed from the denominator instead of pushed away; with
    `positives="label"` every clip of its pseudo-label is a positive (SupCon's mean log-likelihood over
    them). Unlike the proxy objective the pull between an anchor and a positive from another video acts
    directly. Stats: "nce_accuracy" (the partner is the nearest other clip).
    """
    if anchor.shape != positive.shape or anchor.ndim != 2:
        raise ValueError("anchor and positive must be (B, D) tensors of equal shape")
    if positives not in NCE_POSITIVES:
        raise ValueError(f"unknown NCE positives {positives!r}; use one of {NCE_POSITIVES}")
    if temperature <= 0:
        raise ValueError(f"temperature = {temperature}: must be > 0")
    b = anchor.shape[0]
    both = F.normalize(torch.cat([anchor, positive]), dim=1, eps=_EPS)
    both_labels = _checked_labels(both, torch.cat([labels.reshape(-1), labels.reshape(-1)]))
    logits = both @ both.T / temperature
    index = torch.arange(2 * b, device=both.device)
    partner = (index + b) % (2 * b)
    self_mask = index[:, None] == index[None, :]
    same_label = (both_labels[:, None] == both_labels[None, :]) & ~self_mask
    is_partner = torch.zeros_like(self_mask)
    is_partner[index, partner] = True
    if positives == "pair":
        targets = is_partner
        excluded = self_mask | (same_label & ~is_partner)
    else:
        targets = same_label | is_partner
        excluded = self_mask
    logits = logits.masked_fill(excluded, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    per_clip = -(log_prob.masked_fill(~targets, 0.0).sum(dim=1) / targets.sum(dim=1))
    nearest = logits.detach().masked_fill(self_mask, float("-inf")).argmax(dim=1)
    return per_clip.mean(), _scalars(both, nce_accuracy=(nearest == partner).float().mean())


def triplet_loss(embeddings: Tensor, labels: Tensor, *, margin: float = 0.2,
                 generator: torch.Generator | None = None) -> Tensor:
    """SLIC's mined triplet loss over (N, D) embeddings with (N,) labels; see `triplet_loss_with_stats`."""
    return triplet_loss_with_stats(embeddings, labels, margin=margin, generator=generator)[0]


def temporal_loss(anchor: Tensor, anchor_view: Tensor, positive: Tensor, *, margin: float = 0.04) -> Tensor:
    """SLIC's temporal discrimination term: mean of relu(d(a, a2) - d(a, p) + margin), cosine distance.

    `anchor_view` (a2) is a second augmentation of the anchor's own frames and `positive` (p) a
    clip of the same video that does not overlap it in time: the same-segment view must be closer.
    """
    return F.relu(cosine_distance(anchor, anchor_view) - cosine_distance(anchor, positive) + margin).mean()


def slic_loss(anchor: Tensor, positive: Tensor, anchor_view: Tensor | None, labels: Tensor, *,
              triplet_margin: float = 0.2, temporal_margin: float = 0.04, temporal_weight: float = 1.0,
              generator: torch.Generator | None = None, mining: str = "mined", proxies: Tensor | None = None,
              proxy_temperature: float = 0.1, nce_positives: str | None = None,
              nce_temperature: float = 0.1) -> tuple[Tensor, Stats]:
    """SLIC's total loss for a batch of (B, D) anchors, positives, anchor views and (B,) pseudo-labels.

    triplet over cat([anchor, positive]) with labels cat([labels, labels]) (a positive shares its
    anchor's label; `anchor_view` takes no part in mining) + temporal_weight * temporal term.
    `mining`: "mined" (the paper's: one random semi-hard/hard negative per pair) or "batch_all".
    With `proxies` (K, D) the first term is `proxy_loss_with_stats` over the same anchors and
    positives instead of a triplet (`mining` is then unused); with `nce_positives` ("pair" or "label") it is
    `nce_loss_with_stats` at `nce_temperature`.
    `anchor_view` may be None when temporal_weight is 0 (the view is then not computed at all).
    Returns the total and its stats (detached 0-dim tensors): "loss", "triplet" (or "proxy", "nce"),
    "temporal" and the term's own.
    """
    if anchor.shape != positive.shape or anchor.ndim != 2 or (anchor_view is not None and
                                                              anchor_view.shape != anchor.shape):
        raise ValueError("anchor, positive and anchor_view must all be (B, D) tensors of equal shape")
    if mining not in ("mined", "batch_all"):
        raise ValueError(f"unknown triplet mining {mining!r}; use 'mined' or 'batch_all'")
    labels = labels.reshape(-1)
    both, both_labels = torch.cat([anchor, positive]), torch.cat([labels, labels])
    if proxies is not None and nce_positives is not None:
        raise ValueError("proxies and nce_positives name two objectives: give one")
    if nce_positives is not None:
        term, stats = nce_loss_with_stats(anchor, positive, labels, temperature=nce_temperature,
                                          positives=nce_positives)
    elif proxies is not None:
        term, stats = proxy_loss_with_stats(both, both_labels, proxies, temperature=proxy_temperature)
    elif mining == "batch_all":
        term, stats = batch_all_triplet_loss_with_stats(both, both_labels, margin=triplet_margin)
    else:
        term, stats = triplet_loss_with_stats(both, both_labels, margin=triplet_margin, generator=generator)
    if anchor_view is None:
        if temporal_weight:
            raise ValueError("the temporal term needs anchor_view (temporal_weight > 0)")
        temporal = term * 0.0
    else:
        temporal = temporal_loss(anchor, anchor_view, positive, margin=temporal_margin)
    total = term + temporal_weight * temporal
    name = "proxy" if proxies is not None else "nce" if nce_positives is not None else "triplet"
    return total, {**_scalars(total, loss=total, temporal=temporal, **{name: term}), **stats}
