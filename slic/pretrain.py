"""SLIC pretraining: iterative clustering of all training videos, triplets from pseudo-labels.

Every `cluster_interval` epochs from epoch 0 (in slic, from `cluster_start_epoch`), each training
video is embedded with one centre clip (model in eval mode, gathered across ranks in dataset order)
and clustered (FINCH partition 0 or k-means, on FAISS); the cluster ids are the pseudo-labels until
the next round. Modes:
`slic` (cross-video positives from clusters), `intra_video` (positives only from the same video,
mining labels = video ids; the baseline), `random_init` (no training; the untrained encoder) and
`oracle` (the true classes as pseudo-labels: the ceiling perfect clustering would give; its own
clusters are computed for monitoring only). `objective: triplet` is SLIC's: the paper's mining
(`mining: mined`) or every violating triplet of the batch (`mining: batch_all`); `objective: proxy`
replaces the triplet by a cross-entropy against one learnable proxy per pseudo-label, set at the
label centroids whenever the labels change (`slic.proxies`; with `proxy_carry: matched` a cluster that
descends from one of the last round's keeps its proxy); with `proxy_per: video` one proxy per
training video instead, set once, and each pair labelled with the anchor's video, so that a positive
from another video of the cluster is pulled to the anchor. `objective: nce` is NT-Xent over the batch's
anchor-positive pairs (`slic.losses.nce_loss_with_stats`). `shuffle_clusters` is a control: each
round's clusters dealt to the videos at random, sizes kept.

Robustness: a checkpoint is written atomically after every epoch; running again resumes from it
and, because every random draw derives from (seed, epoch, step or sample), reaches the same
weights as a run that was never interrupted. The best checkpoint is chosen on the validation
split (val queries against the train gallery, recall@1), never on test.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from slic.config import PretrainConfig
from slic.config_check import ConfigError
from slic.data.augment import Augmentation
from slic.clustering import rounds_agreement
from slic.data.clips import EvalClips, FlowView, PretrainClips, ShardCache, VideoShard, collate_encoded, load_videos
from slic.data.datasets import DatasetError
from slic.data.device_batches import device_batches, prepare_batch
from slic.data.frames import frame_rate_of
from slic.distributed import World, barrier, broadcast_object, gather_tensor, gather_with_grad
from slic.embed import embed_clips
from slic.labels_table import read_training_labels
from slic.models import Encoder, to_device
from slic.progress import EpochClock
from slic.pretrain_state import (RESUMABLE_ACROSS, TrainState, _what_changed, data_fingerprint,  # noqa: F401
                                  fingerprint, given_labels_fingerprint, resume_state, same_fingerprint,
                                  save_checkpoint)
from slic.proxies import PseudoLabelProxies, contiguous_labels

log = logging.getLogger(__name__)


def augmentation_of(cfg: PretrainConfig) -> Augmentation:
    """The training augmentation strengths of `cfg` (the paper's unless params.yaml says otherwise)."""
    return Augmentation(crop_min_scale=cfg.crop_min_scale, jitter=cfg.color_jitter, jitter_p=cfg.color_jitter_p,
                        grayscale_p=cfg.grayscale_p, blur_p=cfg.blur_p)


def build_encoder(cfg: PretrainConfig) -> Encoder:
    """The encoder of `cfg`, initialised from `cfg.seed` (so random_init is reproducible)."""
    torch.manual_seed(cfg.seed)
    return Encoder(backbone=cfg.backbone, hidden_dim=cfg.hidden_dim, out_dim=cfg.out_dim,
                   head_output_norm=cfg.head_output_norm)


def build_optimizer(model: torch.nn.Module, cfg: PretrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum as in the paper, or AdamW (far fewer steps to learn: the CPU default)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def embed_videos(model: torch.nn.Module, videos: list[VideoShard], *, protocol: str, cfg: PretrainConfig,
                 world: World, batch_size: int = 32, cache: ShardCache | None = None,
                 flow_dir: str | None = None) -> np.ndarray:
    """Embeddings (n, out_dim) of `videos` in their order with one `protocol` clip set per video (of their
    flow with `flow_dir`)."""
    dataset = EvalClips(videos, protocol=protocol, clip_len=cfg.clip_len, size=cfg.size, cache=cache,
                        flow_dir=flow_dir)
    return embed_clips(model, dataset, world=world, batch_size=batch_size, workers=cfg.workers, bf16=cfg.bf16)


def _autocast(cfg: PretrainConfig, world: World) -> torch.autocast:
    enabled = cfg.bf16 and world.device.type == "cuda"
    return torch.autocast(device_type=world.device.type, dtype=torch.bfloat16, enabled=enabled)


def cluster_round(model: torch.nn.Module, train: list[VideoShard], cfg: PretrainConfig,
                  world: World, cache: ShardCache | None = None,
                  flow_dir: str | None = None) -> tuple[np.ndarray, dict[str, float], np.ndarray]:
    """Embed every training video (centre clip), cluster on rank 0, share the labels with every rank.

    With `flow_dir` (`cluster_views: rgb_flow`) each video is clustered on its clip's embedding and its
    flow's, each L2-normalised, side by side. Returns the labels (0..K-1), the cluster statistics
    (agreement with the classes only when the videos have classes) and the RGB embeddings (the space
    the proxies and nearest members live in).
    """
    from slic.clustering import cluster_agreement, cluster_pseudo_labels, cluster_sizes_summary
    from slic.faiss_backend import l2_normalize

    embeddings = embed_videos(model, train, protocol="centre", cfg=cfg, world=world, cache=cache)
    clustered = embeddings
    if flow_dir is not None:
        flow = embed_videos(model, train, protocol="centre", cfg=cfg, world=world, flow_dir=flow_dir)
        clustered = np.concatenate([l2_normalize(embeddings), l2_normalize(flow)], axis=1)
    if world.is_main:
        labels = contiguous_labels(cluster_pseudo_labels(clustered, method=cfg.cluster_method,
                                                         k=min(cfg.cluster_k, len(train)), seed=cfg.seed))
        classes = np.array([v.label for v in train])
        stats = {**cluster_sizes_summary(labels), **(cluster_agreement(classes, labels) if labelled(train) else {})}
        result = (labels, {k: float(v) for k, v in stats.items()})
    else:
        result = None
    labels, stats = broadcast_object(result)
    return labels, stats, embeddings


def nearest_members(embeddings: np.ndarray, labels: np.ndarray, k: int) -> list[np.ndarray]:
    """Per video, the indices of the (at most) k other members of its cluster most cosine-similar to it."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-8)
    partners: list[np.ndarray] = [np.zeros(0, np.int64)] * len(labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        similarity = unit[members] @ unit[members].T
        np.fill_diagonal(similarity, -np.inf)
        nearest = np.argsort(-similarity, axis=1, kind="stable")[:, :min(k, len(members) - 1)]
        for row, index in enumerate(members):
            partners[index] = members[nearest[row]]
    return partners


def labelled(videos: list[VideoShard]) -> bool:
    """Whether the videos have classes (the unlabelled layout gives every video label -1)."""
    return any(v.label >= 0 for v in videos)


def validation_recall(model: torch.nn.Module, val: list[VideoShard], train: list[VideoShard],
                      cfg: PretrainConfig, world: World, cache: ShardCache | None = None) -> float:
    """Recall@1 of validation queries against the training gallery (centre clips)."""
    from slic.retrieval import recall_at_k

    queries = embed_videos(model, val, protocol="centre", cfg=cfg, world=world, cache=cache)
    gallery = embed_videos(model, train, protocol="centre", cfg=cfg, world=world, cache=cache)
    return recall_at_k(queries, np.array([v.label for v in val]), gallery, np.array([v.label for v in train]),
                       ks=(1,))["recall@1"]


def initial_labels(mode: str, train: list[VideoShard], state: TrainState,
                   given: Mapping[str, int] | None = None) -> np.ndarray:
    """The pseudo-labels training starts (or resumes) with, one per training video.

    oracle: the true classes (the ceiling perfect clustering would give), or with `given` (video id -> class
    number) those classes, a video not in it its own label (positives from itself only); labels: `given` (the
    user's classes) in the same way; intra_video: the video ids (positives only from the anchor's own video); slic:
    the last clustering round's labels when resuming, else video ids until the first round (which runs before the
    first step, or before epoch `cluster_start_epoch`).
    """
    if mode in ("oracle", "labels") and given is not None:
        alone = max(given.values(), default=-1) + 1  # after every given class: one label per other video
        return np.array([given.get(v.video_id, alone + k) for k, v in enumerate(train)], dtype=np.int64)
    if mode == "oracle":
        return np.array([v.label for v in train], dtype=np.int64)
    if mode == "slic" and state.labels:
        return np.array(state.labels, dtype=np.int64)
    return np.arange(len(train), dtype=np.int64)


def is_cluster_epoch(cfg: PretrainConfig, epoch: int) -> bool:
    """Whether a clustering round runs before `epoch`: every `cluster_interval` epochs, for slic from
    `cluster_start_epoch` on (the epochs before it train on intra-video positives), for oracle and labels from 0
    (there only to monitor the embedding's clusters against the true classes)."""
    if cfg.mode in ("oracle", "labels"):
        return epoch % cfg.cluster_interval == 0
    if cfg.mode != "slic" or epoch < cfg.cluster_start_epoch:
        return False
    return (epoch - cfg.cluster_start_epoch) % cfg.cluster_interval == 0


def shuffled_clusters(labels: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The control `shuffle_clusters`: the cluster ids dealt to the videos in a random order (seeded by the round),
    so every cluster keeps its size and loses its content."""
    return np.asarray(labels)[np.random.default_rng([seed, epoch, 101]).permutation(len(labels))]


def proxies_need_reset(cfg: PretrainConfig, ready: bool, *, new_labels: bool) -> bool:
    """Whether the proxies are (re)set before this epoch: when none exist yet, and in slic with one proxy per
    pseudo-label after every clustering round (`new_labels`); per-video proxies are set once and kept."""
    return not ready or (cfg.mode == "slic" and cfg.proxy_per == "label" and new_labels)


def carries_proxies(cfg: PretrainConfig) -> bool:
    """Whether a new round's proxies keep the matched old ones (slic, one proxy per pseudo-label, proxy_carry)."""
    return cfg.mode == "slic" and cfg.proxy_per == "label" and cfg.proxy_carry == "matched"


def proxy_labels(cfg: PretrainConfig, labels: np.ndarray) -> np.ndarray:
    """The label of each training video that owns a proxy: its pseudo-label, or (proxy_per video) itself."""
    return np.arange(len(labels), dtype=np.int64) if cfg.proxy_per == "video" else np.asarray(labels)


def _step_generator(cfg: PretrainConfig, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, epoch, step]).generate_state(1)[0]))


def epoch_means(sums: dict[str, Tensor], steps: int) -> dict[str, float]:
    """Each summed stat over `steps`, as floats read from the device in one copy (one wait an epoch)."""
    if not sums:
        return {}
    totals = torch.stack(list(sums.values())).tolist()
    return {key: total / max(steps, 1) for key, total in zip(sums, totals)}


def train_one_epoch(model: torch.nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    cfg: PretrainConfig, world: World, epoch: int,
                    proxies: PseudoLabelProxies | None = None) -> dict[str, float]:
    """One pass over the training triplets; returns mean loss terms, clips/s and data-wait share.

    With `proxies` (the proxy objective) the proxies are trained alongside the model. The loss terms are
    summed on the device and read back once, at the end: reading them every step would make the host wait
    for each step to finish before it could queue the next.
    """
    from slic.losses import slic_loss

    model.train()
    sums: dict[str, Tensor] = {}
    steps, clips, waited = 0, 0, 0.0
    started = tick = time.perf_counter()
    use_view = cfg.temporal_weight > 0  # the second anchor view only feeds the temporal term
    # uint8 clips (or gpu_decode's JPEG bytes) to the device, normalised (decoded) there, the next batch
    # prefetched on a side stream on CUDA (slic.data.device_batches).
    prepare = partial(prepare_batch, device=world.device, size=cfg.size, gpu_decode=cfg.gpu_decode, use_view=use_view)
    for step, (batch, labels, videos) in enumerate(device_batches(loader, prepare, world.device,
                                                                  prefetch=cfg.prefetch)):
        waited += time.perf_counter() - tick
        if proxies is not None and cfg.proxy_per == "video":
            labels = videos  # the anchor's video: a positive from another video is pulled to the anchor's proxy
        with _autocast(cfg, world):
            out = model(batch)  # one pass: anchor, positive and view share BatchNorm statistics
        a, p, *rest = out.float().chunk(3 if use_view else 2)
        v = rest[0] if use_view else None
        if cfg.gather_embeddings and world.size > 1:  # one process: nothing to gather, labels stay on the host
            a, p, labels = gather_with_grad(a), gather_with_grad(p), gather_tensor(labels.to(world.device))
            v = gather_with_grad(v) if v is not None else None
        loss, stats = slic_loss(a, p, v, labels, triplet_margin=cfg.triplet_margin,
                                temporal_margin=cfg.temporal_margin, temporal_weight=cfg.temporal_weight,
                                generator=_step_generator(cfg, epoch, step), mining=cfg.mining,
                                proxies=proxies.weight if proxies is not None else None,
                                proxy_temperature=cfg.proxy_temperature,
                                nce_positives=cfg.nce_positives if cfg.objective == "nce" else None,
                                nce_temperature=cfg.nce_temperature)
        optimizer.zero_grad(set_to_none=True)
        if proxies is not None:
            proxies.zero_grad()
        loss.backward()
        optimizer.step()
        if proxies is not None:
            proxies.step()
        for key, value in stats.items():  # float64, as the sum of Python floats it replaces
            sums[key] = sums[key] + value.double() if key in sums else value.double()
        steps += 1
        clips += batch.shape[0] * world.size
        tick = time.perf_counter()
    metrics = epoch_means(sums, steps)  # waits for the last step, so the time below includes it
    seconds = time.perf_counter() - started
    metrics.update(clips_per_s=clips / seconds if seconds else 0.0, data_wait_fraction=waited / seconds if seconds else 0.0,
                   steps=float(steps), epoch_seconds=seconds)
    return metrics


def steps_per_epoch(videos: int, batch_size: int, world_size: int) -> int:
    """Training steps in one epoch over `videos` train videos: each rank takes whole batches of
    max(2, batch_size // world_size) of its share and drops a partial last one (the loss needs whole batches)."""
    return videos // world_size // max(2, batch_size // world_size)


MEASURED_STEPS = 312  # the CPU default's steps (24 epochs x 13 on the synthetic set): where the defaults were chosen


def short_run_note(train_videos: int, epochs: int, batch_size: int, world_size: int) -> str:
    """A line for a run of fewer steps than the defaults were measured at (a small archive: few steps an epoch),
    naming the `pretrain.epochs` that trains as long; empty when the run is long enough."""
    per_epoch = steps_per_epoch(train_videos, batch_size, world_size)
    steps = epochs * per_epoch
    if per_epoch == 0 or steps >= MEASURED_STEPS:
        return ""
    of_steps = f"{epochs} epoch{'s' if epochs != 1 else ''} of {per_epoch} step{'s' if per_epoch != 1 else ''}"
    return (f"{steps} training steps in all ({of_steps}: {train_videos} train videos at batch "
            f"{batch_size}), fewer than the {MEASURED_STEPS} the defaults were chosen at; up to 4x those steps, val "
            f"recall rose or held in every mode measured (docs/clusters.md), so for as many steps set "
            f"pretrain.epochs: {math.ceil(MEASURED_STEPS / per_epoch)}")


def pretrain(cfg: PretrainConfig, *, manifest: str | Path, frames_dir: str | Path, world: World,
             run: Any = None, flow: FlowView | None = None,
             given_labels: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Train (or, for random_init, just initialise) the encoder; checkpoints in cfg.out.

    Returns the stage report. `run` is a tracking.StageRun (or None) that receives per-epoch metrics.
    `flow` turns on SLIC's flow view (positive and second anchor view sometimes replaced by their flow).
    `given_labels` (mode oracle; video id -> class number): train on those classes instead of the manifest's,
    each train video not in it its own label (bench/retrain_labels.py: a user's few labels). Mode labels reads them
    from the CSV `cfg.labels` (train videos only). Validation still measures against the manifest's classes.
    """
    if given_labels is not None and cfg.mode != "oracle":
        raise ConfigError(f"given labels train in pretrain.mode oracle, not {cfg.mode}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    last, best = out / "last.pt", out / "best.pt"
    train = load_videos(manifest, frames_dir, splits=["train"], min_frames=2 * cfg.clip_len, frame_step=cfg.frame_step)
    val = load_videos(manifest, frames_dir, splits=["val"], min_frames=cfg.clip_len, frame_step=cfg.frame_step)
    has_labels = labelled(train)
    if len(train) < 2 or (has_labels and not val):
        needed = "2 train and 1 val video" if has_labels else "2 videos"  # an unlabelled archive has no val split
        found = f"{len(train)} and {len(val)}" if has_labels else f"{len(train)}"
        raise DatasetError(f"pretraining needs at least {needed} of {cfg.clip_len} frames or more "
                           f"(pretrain.clip_len), extracted; found {found} such in {manifest}")
    if cfg.mode != "random_init" and cfg.epochs > 0 and steps_per_epoch(len(train), cfg.batch_size, world.size) == 0:
        fits = len(train) // world.size * world.size
        raise DatasetError(f"pretrain.batch_size {cfg.batch_size} is more than the {len(train)} usable train videos of "
                           f"{manifest}{f' over {world.size} ranks' if world.size > 1 else ''}: every batch would be "
                           f"partial and dropped, so no step would train; set pretrain.batch_size to {fits} or less, "
                           "or add videos")
    training_labels = None
    if cfg.mode == "labels":
        training_labels = read_training_labels(cfg.labels, manifest, [v.video_id for v in train])
        given_labels = training_labels.by_video
        log.info("pretrain.mode labels: %d train videos of %d classes from %s (%d labelled videos outside train, "
                 "not trained on)", len(given_labels), len(training_labels.names), cfg.labels,
                 training_labels.summary["labelled_outside_train"])
    if cfg.mode == "oracle" and not has_labels:
        raise DatasetError(f"pretrain.mode oracle trains on the true classes and {manifest} has none (manifest.layout "
                         "unlabelled); use mode slic or intra_video")
    if cfg.mode == "slic" and 0 < cfg.epochs <= cfg.cluster_start_epoch:
        raise ConfigError(f"pretrain.cluster_start_epoch {cfg.cluster_start_epoch} leaves no clustering round in "
                         f"pretrain.epochs {cfg.epochs}: set it below the epochs (0 clusters from the start), or "
                         "use mode intra_video")
    if cfg.cluster_views == "rgb_flow" and cfg.mode == "slic" and flow is None:
        raise ConfigError("pretrain.cluster_views rgb_flow clusters on each video's flow too and no flow was given: "
                         "set flow.enabled: true (with flow.p: 0 the flow is clustered on but never trained on), "
                         "or cluster_views: rgb")
    clustered_flow = flow.flow_dir if flow is not None and cfg.cluster_views == "rgb_flow" else None
    if flow is not None:
        from slic.data.flow import require_flow

        require_flow(flow.flow_dir, [v.video_id for v in train], cfg.frame_step)
    model = to_device(build_encoder(cfg), world.device)
    optimizer = build_optimizer(model, cfg)
    data = data_fingerprint(train, val, frames_dir=frames_dir, flow=flow)
    if given_labels is not None:  # other labels, other training: never resume one from the other
        data = given_labels_fingerprint(data, given_labels)
    frame_rate = frame_rate_of(frames_dir)  # extract.fps, kept with the weights: serving decodes files at it
    kept = {"frame_rate": frame_rate, "trained_labels": given_labels}  # what every checkpoint keeps beside the weights
    proxies = PseudoLabelProxies(cfg, world.device) if cfg.objective == "proxy" else None
    state = resume_state(last, cfg, data, model, optimizer, run, proxies)
    if state.epoch == 0 and best.is_file():
        best.unlink()  # from a run with other settings: never let it pass for this run's best
    resumed_from = state.epoch
    epochs = 0 if cfg.mode == "random_init" else cfg.epochs
    trained = model
    if world.size > 1:
        trained = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[world.device.index] if world.device.type == "cuda" else None)
    if cfg.compile and world.device.type == "cuda":
        trained = torch.compile(trained)
    if world.device.type == "cuda":
        # cuDNN times its 3-D convolution algorithms once per shape and keeps the fastest (the step's shapes
        # are fixed); bench/gpu.py measures the step this way. Off: reproducible algorithm choice.
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    cache = ShardCache(cfg.frame_cache_mb * 2**20)
    if epochs > state.epoch and cfg.frame_cache_mb and not cfg.gpu_decode:
        cached = cache.preload(train + val)  # decoded once here; the loader's forked workers share them
        log.info("frame cache: %d of %d train and val videos decoded in memory (%.0f MiB of frame_cache_mb %d)",
                 cached, len(train) + len(val), cache.cached_bytes / 2**20, cfg.frame_cache_mb)
    dataset = PretrainClips(train, clip_len=cfg.clip_len, size=cfg.size,
                            p_intra=1.0 if cfg.mode == "intra_video" else cfg.p_intra,
                            random_anchor=cfg.random_anchor, seed=cfg.seed, augmentation=augmentation_of(cfg),
                            flow=flow, anchor_view=cfg.temporal_weight > 0, cache=cache, decode=not cfg.gpu_decode,
                            normalise=False,  # uint8 to the device, normalised there
                            max_partners=cfg.nearest_k if cfg.positive_pool == "nearest" else 0)
    dataset.set_labels(contiguous_labels(initial_labels(cfg.mode, train, state, given_labels)))
    if cfg.mode == "slic" and cfg.p_intra_schedule == "agreement" and state.p_intra >= 0:
        dataset.p_intra = state.p_intra  # resumed between rounds: the chance its last round set
    per_rank = max(2, cfg.batch_size // world.size)  # as steps_per_epoch counts
    # One loader for the whole run: its workers persist across epochs (no fork per epoch, which dominated short
    # epochs on a GPU) and read each epoch's labels, partners and draws from the dataset's shared state.
    sampler = DistributedSampler(dataset, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    loader = DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=cfg.workers,
                        persistent_workers=cfg.workers > 0, drop_last=True,
                        pin_memory=world.device.type == "cuda" and not cfg.gpu_decode,
                        collate_fn=collate_encoded if cfg.gpu_decode else None)
    started, clock, earlier_seconds = time.perf_counter(), EpochClock(), state.seconds
    for epoch in range(state.epoch, epochs):
        metrics: dict[str, float] = {}
        embeddings = None
        previous_labels: np.ndarray | None = None
        if is_cluster_epoch(cfg, epoch) and (cfg.mode == "slic" or has_labels):  # else only to monitor: needs classes
            labels, cluster_stats, embeddings = cluster_round(model, train, cfg, world, cache,
                                                              flow_dir=clustered_flow)
            if cfg.mode == "slic":  # oracle: the clusters of its embedding are only monitored
                labels = shuffled_clusters(labels, cfg.seed, epoch) if cfg.shuffle_clusters else labels
                if cfg.p_intra_schedule == "agreement":
                    settled = rounds_agreement(np.array(state.labels) if state.labels else None, labels)
                    state.p_intra = dataset.p_intra = max(cfg.p_intra, 1.0 - settled)
                    metrics["p_intra"] = dataset.p_intra
                dataset.set_labels(labels)
                if cfg.positive_pool == "nearest":
                    dataset.set_partners(nearest_members(embeddings, labels, cfg.nearest_k))
                previous_labels = np.array(state.labels) if state.labels else None
                state.labels = labels.tolist()
            metrics.update({f"cluster_{k}": v for k, v in cluster_stats.items()})
        if proxies is not None and proxies_need_reset(cfg, proxies.ready, new_labels=embeddings is not None):
            # New pseudo-labels (or none yet): the proxies start at their centroids (per video: each video's own).
            if embeddings is None:
                embeddings = embed_videos(model, train, protocol="centre", cfg=cfg, world=world, cache=cache)
            if carries_proxies(cfg) and previous_labels is not None:
                metrics["proxies_carried"] = proxies.carry(embeddings, dataset.labels, previous_labels)
            else:
                proxies.reset(embeddings, proxy_labels(cfg, dataset.labels))
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        metrics.update(train_one_epoch(trained, loader, optimizer, cfg, world, epoch, proxies))
        state.epoch = epoch + 1
        state.seconds = earlier_seconds + time.perf_counter() - started
        if has_labels and (state.epoch % cfg.eval_interval == 0 or state.epoch == epochs):
            metrics["val_recall_at_1"] = validation_recall(model, val, train, cfg, world, cache)
            if metrics["val_recall_at_1"] > state.best_metric and world.is_main:
                state.best_metric, state.best_epoch = metrics["val_recall_at_1"], state.epoch
                save_checkpoint(best, model, None, state, cfg, data, **kept)
        elif not has_labels and world.is_main:  # nothing to choose on without labels: the latest epoch
            state.best_epoch = state.epoch
            save_checkpoint(best, model, None, state, cfg, data, **kept)
        state.history.append({"epoch": float(state.epoch), **metrics})
        if world.is_main:
            save_checkpoint(last, model, optimizer, state, cfg, data, proxies, **kept)
            if run is not None:
                run.log_metrics(metrics, step=state.epoch)
            log.info("epoch %d/%d eta=%s %s", state.epoch, epochs,
                     clock.epoch_done(epochs - state.epoch),
                     " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        barrier()
    del loader  # its persistent workers end here
    if not best.is_file() and world.is_main:  # random_init, or resumed past the end: still a best
        state.seconds = earlier_seconds + time.perf_counter() - started
        state.best_metric = validation_recall(model, val, train, cfg, world) if has_labels else -1.0
        state.best_epoch = state.epoch
        save_checkpoint(best, model, None, state, cfg, data, **kept)
        save_checkpoint(last, model, optimizer, state, cfg, data, proxies, **kept)
    barrier()
    seconds = time.perf_counter() - started  # this call's: a resumed run's earlier calls are in state.seconds
    final = state.history[-1] if state.history else {}
    rounds = [h["cluster_ami"] for h in state.history if "cluster_ami" in h]
    report = {"mode": cfg.mode, "epochs": epochs, "resumed_from_epoch": resumed_from, "labelled": has_labels,
              "best_epoch": state.best_epoch, "best_val_recall_at_1": state.best_metric if has_labels else None,
              **({} if has_labels else {"checkpoint_choice": "no labels: best.pt is the last epoch; no val recall, "
                                                             "no cluster AMI"}),
              "seconds": round(earlier_seconds + seconds, 2), "seconds_this_call": round(seconds, 2),
              "train_videos": len(train), "val_videos": len(val),
              "world_size": world.size, "device": str(world.device), "flow_view_p": flow.p if flow else 0.0,
              "objective": cfg.objective, "mining": cfg.mining,
              "cluster_rounds": sum("cluster_n_clusters" in h for h in state.history),
              **({"cluster_ami_first": rounds[0], "cluster_ami_last": rounds[-1]} if rounds else {}),
              **(training_labels.summary if training_labels else {}),
              **{f"final_{k}": v for k, v in final.items() if k != "epoch"}}
    if cfg.mode != "random_init" and (note := short_run_note(len(train), cfg.epochs, cfg.batch_size, world.size)):
        report["short_run_note"] = note
    if world.is_main:
        (out / "history.json").write_text(json.dumps(state.history, indent=1))
        if run is not None:
            run.log_artifact(best, "checkpoints")
            run.log_artifact(last, "checkpoints")
    return report
