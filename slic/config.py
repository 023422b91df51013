"""params.yaml -> frozen dataclasses, one per stage, checked key by key.

Every stage reads only its own section, so DVC re-runs only the stages whose section changed.
A wrong key, type or value stops with one line naming the file, the key path, the value and
what is allowed (``ConfigError``), before any work starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from slic.config_check import ConfigError, build_section


DATASET_LAYOUTS = ("synthetic", "ucf101", "hmdb51", "kinetics", "folder", "csv", "unlabelled")


def _spec(default: Any, *, low: float | None = None, high: float | None = None,
          choices: tuple[Any, ...] | None = None, help: str = "") -> Any:
    """A dataclass field with its allowed range or choices attached as metadata."""
    return field(default=default, metadata={"low": low, "high": high, "choices": choices, "help": help})


# What a folder of a user's videos may hold: containers PyAV (FFmpeg) decodes, camcorders' .mts/.m2ts and
# phones' .3gp included; matched without regard to case.
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                    ".wmv", ".flv", ".3gp", ".ogv")


@dataclass(frozen=True)
class SynthConfig:
    """The synthetic motion dataset (stage `synth`)."""

    out: str = _spec("data/raw/synthetic", help="folder the UCF101-style dataset is written to")
    classes: int = _spec(10, low=2, high=16, help="number of motion classes")
    groups: int = _spec(24, low=4, high=1000, help="groups per class (scenes), split by group")
    clips_per_group: int = _spec(3, low=1, high=100)
    scale: float = _spec(1.0, low=0.1, high=1000.0, help="multiplies the number of groups")
    frames: int = _spec(48, low=32, high=1000)
    width: int = _spec(96, low=32, high=1920)
    height: int = _spec(72, low=32, high=1080)
    fps: int = _spec(25, low=1, high=120)
    codec: str = _spec("mpeg4", choices=("mpeg4", "libx264", "ffv1"))
    appearance_bias: float = _spec(0.5, low=0.0, high=1.0,
                                   help="chance a (class, group) draws its scene from the class's family "
                                        "instead of the pool shared by every class")
    workers: int = _spec(2, low=1, high=256)
    seed: int = _spec(7, low=0)
    first_class: int = _spec(0, low=0, high=14, help="the motions are the classes first_class.. first_class + "
                                                     "classes - 1 of the 16 (the transfer set takes the unseen ones)")
    pool_scenes: str = _spec("group", choices=("group", "class_group"),
                             help="a scene from the shared pool: group, group g's scene in every class (one scene "
                                  "per group number); class_group, each (class, group) its own scene from the "
                                  "class-blind pool (as in UCF101, where group g of two classes are other videos)")


@dataclass(frozen=True)
class SynthTransferConfig(SynthConfig):
    """A second synthetic set of motions the first never shows: the HMDB51 of the synthetic world (stage
    `synth_transfer`), evaluated as the eval set `synthetic_unseen` of the encoder pretrained on `synth`."""

    out: str = _spec("data/raw/synthetic_transfer", help="folder the UCF101-style dataset is written to")
    classes: int = _spec(6, low=2, high=16, help="number of motion classes")
    groups: int = _spec(12, low=4, high=1000, help="groups per class (scenes), split by group")
    seed: int = _spec(8, low=0)
    first_class: int = _spec(10, low=0, high=14, help="the first motion (after synth's 10)")


EVAL_SET_LAYOUTS = tuple(layout for layout in DATASET_LAYOUTS if layout != "unlabelled")


@dataclass(frozen=True)
class EvalSetConfig:
    """One labelled evaluation set beside the training set: `eval_sets.<name>` (stages eval_data@<name>,
    transfer@<name>, classify@<name>). Retrieval only embeds its videos with the pretrained encoder; with
    `classify` the linear probe and finetuning (pretrained against scratch) also train on its train split."""

    root: str = _spec("", help="the set's videos (required)")
    layout: str = _spec("ucf101", choices=EVAL_SET_LAYOUTS)
    splits_dir: str = _spec("", help="folder with the split files (layout csv: labels.csv); empty: the root")
    split: int = _spec(1, low=1, high=3)
    min_frames: int = _spec(32, low=1)
    group_pattern: str = _spec("", help="layout folder: what names a recording in a video's path (manifest.group_pattern)")
    on_missing: str = _spec("error", choices=("error", "exclude"),
                            help="a listed video that does not exist: stop, or exclude it by name (Kinetics' takedowns)")
    extensions: tuple[str, ...] = _spec(VIDEO_EXTENSIONS)
    classify: bool = _spec(False, help="classify@<name> trains the linear probe and finetune on this set "
                                       "(the paper finetunes its UCF101 encoder on HMDB51)")
    val_fraction: float = _spec(0.15, low=0.05, high=0.5,
                                help="share of its train groups (or videos) the classifiers pick their epoch on")
    seed: int = _spec(7, low=0, help="seed of that val carve")


@dataclass(frozen=True)
class ManifestConfig:
    """Which dataset to read and how to split it (stage `manifest`)."""

    root: str = _spec("data/raw/synthetic", help="dataset root folder")
    layout: str = _spec("synthetic", choices=DATASET_LAYOUTS)
    splits_dir: str = _spec("", help="folder with the split files (layout csv: labels.csv); empty: the "
                            "dataset root")
    split: int = _spec(1, low=1, high=3)
    val_fraction: float = _spec(0.15, low=0.0, high=0.5,
                                help="share of train groups (or videos) carved into val")
    min_frames: int = _spec(32, low=1, help="shorter videos are excluded with a reason (frames counted at "
                                           "extract.fps when it resamples)")
    segment_seconds: float = _spec(0.0, low=0.0, high=3600.0,
                                   help="0: a row per video; > 0: a video of 1.5 x this or longer is cut into "
                                        "segments of 0.75-1.25 x this many seconds, a row each (untrimmed videos)")
    on_missing: str = _spec("error", choices=("error", "exclude"),
                            help="a listed video that does not exist: stop, or exclude it by name")
    group_pattern: str = _spec("", help="layouts folder and unlabelled: a regular expression searched in each "
                                        "video's path under its class folder (unlabelled: under root); videos with the "
                                        "same match (its first group, if it has one) are clips of one recording: they "
                                        "stay on one side of the test and val splits, and `slic search "
                                        "--per-recording` counts them as one")
    extensions: tuple[str, ...] = _spec(VIDEO_EXTENSIONS)
    workers: int = _spec(2, low=1, high=256)
    out: str = _spec("data/manifests/manifest.csv")
    seed: int = _spec(7, low=0)


@dataclass(frozen=True)
class ValidateConfig:
    """Great Expectations checks on the manifest (stage `validate`)."""

    manifest: str = _spec("data/manifests/manifest.csv")
    out: str = _spec("data/manifests/validated.csv", help="the manifest rows that may be used")
    max_examples: int = _spec(5, low=1, high=100)
    data_docs: str = _spec("data/validation/docs", help="folder for Great Expectations' HTML data docs")


@dataclass(frozen=True)
class ExtractConfig:
    """Frame shards: one JPEG-sequence file per video (stage `extract`)."""

    manifest: str = _spec("data/manifests/validated.csv")
    out: str = _spec("data/frames")
    short_side: int = _spec(64, low=16, high=1080)
    quality: int = _spec(4, low=2, high=31, help="JPEG qscale: 2 best, 31 worst")
    workers: int = _spec(2, low=1, high=256)
    fail_fast: bool = _spec(False)
    fps: float = _spec(0.0, low=0.0, high=240.0,
                       help="0: every decoded frame (native rate); > 0: every video resampled to this rate (frames "
                            "dropped or repeated by time), so a clip spans the same time in a 25, 30 or 60 fps video")


@dataclass(frozen=True)
class FlowConfig:
    """TV-L1 optical flow (u only) of the chosen splits' videos from their frame shards (stage `flow`).

    The TV-L1 keys default to a CPU-sized run; OpenCV's (and the paper's) values are in the help.
    """

    enabled: bool = _spec(False, help="pretraining's flow view (SLIC.md); RGB-only is the default")
    p: float = _spec(0.25, low=0.0, high=1.0, help="chance that the positive (and, apart, the second anchor "
                                                    "view) is replaced by its flow; paper 0.25")
    manifest: str = _spec("data/manifests/validated.csv", help="its split column picks the videos")
    frames: str = _spec("data/frames", help="the frame shards of stage extract")
    out: str = _spec("data/flow")
    splits: tuple[str, ...] = _spec(("train",), choices=("train", "val", "test"),
                                    help="pretraining reads only train")
    method: str = _spec("torch", choices=("torch", "opencv"),
                        help="torch: batched, CPU or CUDA; opencv: cv2.optflow.DualTVL1OpticalFlow")
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"), help="torch method only")
    bound: float = _spec(20.0, low=0.5, high=1000.0, help="u clipped to [-bound, bound] px, then 0..255")
    quality: int = _spec(95, low=1, high=100, help="JPEG quality of the stored u frames")
    tau: float = _spec(0.25, low=0.001, high=0.25, help="OpenCV 0.25")
    lambda_: float = _spec(0.15, low=0.0001, high=100.0, help="data term weight; OpenCV 0.15")
    theta: float = _spec(0.3, low=0.001, high=10.0, help="OpenCV 0.3")
    nscales: int = _spec(3, low=1, high=20, help="pyramid levels; OpenCV 5")
    scale_step: float = _spec(0.5, low=0.1, high=0.99, help="OpenCV 0.8; IPOL 0.5")
    warps: int = _spec(2, low=1, high=50, help="OpenCV 5")
    epsilon: float = _spec(0.01, low=0.0, high=10.0, help="stopping threshold; OpenCV 0.01")
    inner_iterations: int = _spec(15, low=1, high=1000, help="OpenCV 30")
    outer_iterations: int = _spec(1, low=1, high=1000, help="OpenCV 10")
    median_filtering: int = _spec(5, choices=(1, 3, 5), help="median kernel; 1: none; OpenCV 5")
    batch_pairs: int = _spec(32, low=1, high=1 << 20,
                             help="frame pairs per torch batch; small on CPU (cache), thousands on a GPU")
    workers: int = _spec(2, low=1, high=256, help="processes on CPU; CUDA runs in one")
    fail_fast: bool = _spec(False)

    def tvl1(self) -> Any:
        """The TV-L1 keys as `slic.tvl1.TVL1Params`."""
        from slic.tvl1 import TVL1Params

        return TVL1Params(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TVL1Params)})


@dataclass(frozen=True)
class PretrainConfig:
    """SLIC pretraining (stage `pretrain`). Paper values in comments where the CPU default differs."""

    mode: str = _spec("slic", choices=("slic", "intra_video", "random_init", "oracle", "labels"),
                      help="oracle: the true classes as pseudo-labels (the ceiling of perfect clustering); labels: "
                           "your classes from pretrain.labels, every other video trained alone")
    labels: str = _spec("labels/train/given.csv", help="mode labels: the CSV of classes to train on (video_id or "
                                                       "path, and class; copy labels/given.csv here)")
    backbone: str = _spec("r3d_18_tiny", choices=("r3d_18", "r2plus1d_18", "r3d_18_reference", "r3d_18_narrow", "r3d_18_tiny"))
    hidden_dim: int = _spec(512, low=16, high=8192, help="projection head hidden width (paper 2048)")
    out_dim: int = _spec(128, low=8, high=4096)
    head_output_norm: bool = _spec(True, help="BatchNorm1d without affine after the head (not in the paper): "
                                              "removes the offset shared by every output")
    clip_len: int = _spec(8, low=2, high=128, help="frames per clip (paper 16)")
    frame_step: int = _spec(2, low=1, high=16, help="a clip takes every frame_step-th decoded frame, so 8 frames "
                                                     "span 15 (paper 1: 16 consecutive frames)")
    size: int = _spec(32, low=16, high=512, help="crop size (paper 128)")
    batch_size: int = _spec(32, low=2, high=4096, help="global batch; split across ranks (paper 32)")
    epochs: int = _spec(24, low=0, high=100000, help="paper: 600 (UCF101)")
    optimizer: str = _spec("adamw", choices=("sgd", "adamw"), help="paper: sgd")
    lr: float = _spec(0.001, low=0.0, high=10.0, help="paper: 0.1 with sgd")
    momentum: float = _spec(0.5, low=0.0, high=1.0, help="sgd only")
    weight_decay: float = _spec(0.0001, low=0.0, high=1.0, help="paper: 0")
    p_intra: float = _spec(0.2, low=0.0, high=1.0, help="chance the positive comes from the anchor's own video")
    p_intra_schedule: str = _spec("fixed", choices=("fixed", "agreement"),
                                  help="slic: fixed, p_intra throughout; agreement, max(p_intra, 1 - AMI between "
                                       "this clustering round and the last): intra-video positives while the "
                                       "clusters still move (label-free)")
    random_anchor: bool = _spec(True, help="random anchor start instead of the first frames (reference: false)")
    crop_min_scale: float = _spec(0.6, low=0.01, high=1.0, help="RandomResizedCrop area scale (min, 1); paper 0.25")
    color_jitter: float = _spec(0.5, low=0.0, high=1.0, help="ColorJitter strength (hue capped at 0.5); paper 0.5")
    color_jitter_p: float = _spec(0.0, low=0.0, high=1.0, help="chance of colour jitter per clip; paper 0.8")
    grayscale_p: float = _spec(0.0, low=0.0, high=1.0, help="chance of grayscale per clip; paper 0.2")
    blur_p: float = _spec(0.0, low=0.0, high=1.0, help="chance of Gaussian blur (15, sigma 2) per clip; paper 0.2")
    cluster_views: str = _spec("rgb", choices=("rgb", "rgb_flow"),
                               help="slic: what a clustering round clusters: rgb, each video's centre-clip "
                                    "embedding (paper); rgb_flow, that and the embedding of the same clip's TV-L1 "
                                    "flow, each L2-normalised, side by side (needs flow.enabled; flow.p 0 "
                                    "clusters on flow without training on it)")
    cluster_method: str = _spec("finch", choices=("finch", "kmeans"))
    cluster_k: int = _spec(1000, low=2, help="k for k-means")
    cluster_interval: int = _spec(4, low=1, help="re-cluster every this many epochs, from epoch 0")
    cluster_start_epoch: int = _spec(0, low=0, help="slic: epochs of intra-video positives (each video its own "
                                                    "pseudo-label) before the first clustering round; 0: cluster "
                                                    "from epoch 0 (paper)")
    positive_pool: str = _spec("cluster", choices=("cluster", "nearest"),
                               help="slic: a cross-video positive from any member of the anchor's cluster (paper), or "
                                    "from its nearest_k most similar members (purer positives)")
    nearest_k: int = _spec(3, low=1, high=1000, help="positive_pool nearest: members a positive may come from")
    shuffle_clusters: bool = _spec(False, help="control: each round's cluster ids permuted across the training "
                                               "videos (sizes kept, content random): what the clusters are worth")
    objective: str = _spec("proxy", choices=("triplet", "proxy", "nce"),
                           help="triplet: SLIC's (paper); proxy: cross-entropy against one learnable proxy per "
                                "pseudo-label, re-initialised at the cluster centroids every round; nce: NT-Xent "
                                "over the batch's anchor-positive pairs, in-batch negatives")
    proxy_temperature: float = _spec(0.1, low=0.001, high=10.0, help="proxy objective only")
    proxy_lr_scale: float = _spec(1.0, low=0.001, high=1000.0,
                                  help="proxy objective: the proxies' learning rate is lr x this (Proxy-NCA "
                                       "trains its proxies faster than the network)")
    nce_temperature: float = _spec(0.1, low=0.001, high=10.0, help="nce objective only")
    nce_positives: str = _spec("pair", choices=("pair", "label"),
                               help="nce objective: pair, a clip's target is its partner and its pseudo-label's "
                                    "other clips leave the denominator; label, they are targets too (SupCon)")
    proxy_per: str = _spec("label", choices=("label", "video"),
                           help="proxy objective: label, one proxy per pseudo-label, reset at every clustering "
                                "round; video, one proxy per training video, set once and kept, and a "
                                "cross-video positive is classified as its anchor's video (SLIC's pull acts)")
    proxy_carry: str = _spec("reset", choices=("reset", "matched"),
                             help="slic, proxy_per label: at a new round, reset, every proxy starts at its "
                                  "cluster's centroid (DeepCluster's fresh head); matched, a new cluster most of "
                                  "whose members came from one old cluster keeps that cluster's proxy")
    mining: str = _spec("batch_all", choices=("mined", "batch_all"),
                        help="triplet objective: mined, the paper's one random semi-hard/hard negative per "
                             "pair; batch_all, every violating triplet of the batch")
    triplet_margin: float = _spec(0.2, low=0.0, high=2.0)
    temporal_margin: float = _spec(0.04, low=0.0, high=2.0)
    temporal_weight: float = _spec(0.0, low=0.0, high=100.0, help="paper 1.0; 0 skips the second anchor view")
    gather_embeddings: bool = _spec(True, help="mine triplets over the batch of all ranks")
    eval_interval: int = _spec(4, low=1, help="validation retrieval every this many epochs (best checkpoint)")
    workers: int = _spec(2, low=0, high=256)
    frame_cache_mb: int = _spec(1024, low=0, help="decoded training frames kept in memory (MiB); 0: decode every clip")
    prefetch: bool = _spec(True, help="CUDA: each batch copied to the device and normalised on a side stream one "
                                      "step ahead (overlaps the step before it); no effect on the CPU")
    gpu_decode: bool = _spec(False, help="decode and augment the clips on the training device (nvJPEG on CUDA) "
                                         "instead of in the loader workers; no flow view")
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"))
    bf16: bool = _spec(True, help="bf16 autocast on CUDA (ignored on CPU)")
    compile: bool = _spec(False, help="torch.compile the model on CUDA")
    cudnn_benchmark: bool = _spec(True, help="CUDA: cuDNN times its convolution algorithms once per shape and keeps "
                                             "the fastest (false: a reproducible choice); no effect on the CPU")
    seed: int = _spec(7, low=0)
    out: str = _spec("data/models/pretrain")


@dataclass(frozen=True)
class EmbedConfig:
    """Embeddings of every video with the best checkpoint, IIC protocol (stage `embed`)."""

    checkpoint: str = _spec("data/models/pretrain/best.pt")
    clips: int = _spec(10, low=1, high=100, help="clips per video, centred at linspace(8, n - 8)")
    batch_size: int = _spec(16, low=1, high=4096, help="videos per forward pass")
    workers: int = _spec(2, low=0, high=256)
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"))
    out: str = _spec("data/embeddings/embeddings.npz")


@dataclass(frozen=True)
class EvaluateConfig:
    """Retrieval evaluation: test queries against the train gallery (stage `evaluate`)."""

    embeddings: str = _spec("data/embeddings/embeddings.npz")
    query_split: str = _spec("test", choices=("test", "val", "train"))
    gallery_split: str = _spec("train", choices=("train", "val", "test", "train+val"),
                               help="train+val: the official train list (our val is carved from it), the IIC "
                                    "protocol's gallery, as the published numbers use")
    ks: tuple[int, ...] = _spec((1, 5, 10, 20, 50), low=1)
    curve: str = _spec("reports/retrieval_recall.csv", help="recall@k table for `dvc plots`")
    html: str = _spec("reports/retrieval.html", help="HTML report: recall tables, sampled queries with their neighbours")
    html_queries: int = _spec(12, low=1, high=1000, help="queries shown in the HTML report (seeded, stratified draw)")
    html_k: int = _spec(5, low=1, high=20, help="neighbours shown per query in the HTML report")
    html_seed: int = _spec(7, low=0, help="seed of the HTML report's query sample")


@dataclass(frozen=True)
class ClustersConfig:
    """The embedded videos grouped by the encoder, to browse and to label the most typical first (stage `clusters`)."""

    embeddings: str = _spec("data/embeddings/embeddings.npz")
    split: str = _spec("all", choices=("all", "train", "val", "test"), help="which embedded videos are grouped")
    method: str = _spec("finch", choices=("finch", "kmeans"), help="finch: FINCH's level above `groups`, merged "
                        "a closest pair at a time; kmeans: k-means")
    groups: int = _spec(20, low=1, high=1 << 20, help="how many groups (fewer only when there are fewer videos, or "
                        "fewer clusters in FINCH's first partition)")
    seed: int = _spec(7, low=0, help="k-means seed")
    table: str = _spec("reports/clusters.csv", help="every video's group, most typical first")
    html: str = _spec("reports/clusters.html", help="the largest groups with thumbnails of their most typical videos")
    html_groups: int = _spec(30, low=1, high=1000, help="groups shown on the page, largest first")
    html_members: int = _spec(8, low=1, high=100, help="videos shown per group, most typical first")


@dataclass(frozen=True)
class SpreadLabelsConfig:
    """Classes given to a few videos, spread to every grouped video (each takes its most similar labelled video's
    class), and what to label next (stage `spread_labels`; it reads the clusters stage's table and embeddings)."""

    given: str = _spec("labels/given.csv", help="your classes for some videos: a CSV with columns video_id (or path) "
                       "and class; absent: the stage lists what to label first")
    suggest: int = _spec(20, low=1, high=10000, help="videos listed to label next")
    checks: int = _spec(0, low=0, high=10000, help="of those, drawn at random and marked in the check column: "
                        "labelled, they measure how often videos are named rightly")
    table: str = _spec("reports/spread_labels.csv", help="every video's class, given or its most similar labelled "
                       "video's")
    next_table: str = _spec("reports/label_next.csv", help="the videos to label next, with an empty class column")
    html: str = _spec("reports/label_next.html", help="the videos to label next as animated thumbnails")


@dataclass(frozen=True)
class IndexConfig:
    """FAISS similarity-search index over the gallery split's embeddings (stage `index`)."""

    manifest: str = _spec("data/manifests/validated.csv", help="video_id -> path and class of each indexed video")
    gallery_split: str = _spec("train", choices=("train", "val", "test", "train+val", "all"),
                               help="split whose videos are indexed; all: every video of the manifest, to search "
                                    "a labelled collection whole")
    kind: str = _spec("flat", choices=("flat", "ivf_flat", "ivf_pq", "hnsw"), help="flat is exact")
    metric: str = _spec("cosine", choices=("cosine", "inner_product"),
                        help="cosine: inner product on L2-normalised vectors")
    nlist: int = _spec(1024, low=1, high=1 << 20, help="IVF lists (clamped to vectors // 39 on small galleries)")
    nprobe: int = _spec(16, low=1, high=1 << 20, help="IVF lists visited per query")
    pq_m: int = _spec(16, low=1, high=512, help="ivf_pq sub-quantizers (must divide the dimension)")
    pq_nbits: int = _spec(8, low=1, high=16, help="ivf_pq bits per sub-quantizer code")
    hnsw_m: int = _spec(32, low=2, high=256, help="hnsw neighbours per node")
    ef_search: int = _spec(64, low=1, high=1 << 16, help="hnsw candidate list at search time")
    ef_construction: int = _spec(80, low=1, high=1 << 16, help="hnsw candidate list at build time")
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"), help="auto: GPU when faiss has one (not hnsw)")
    add_videos: str = _spec("add_to_index", help="folder of videos indexed beside the gallery, embedded with the "
                            "trained encoder, never trained on (empty: none)")
    out: str = _spec("data/index", help="folder for index.faiss, rows.csv and index.json")


@dataclass(frozen=True)
class AblationConfig:
    """SLIC against its baselines on the same data and settings (stage `ablation`)."""

    modes: tuple[str, ...] = _spec(("slic", "intra_video", "random_init", "oracle"),
                                   choices=("slic", "intra_video", "random_init", "oracle"))
    out: str = _spec("data/models/ablation", help="checkpoints and embeddings of the modes trained here")
    min_gain_over_random_init: float = _spec(10.0, low=-100.0, high=100.0, help="recall@1 points (the project's bar)")
    min_gain_over_intra_video: float = _spec(5.0, low=-100.0, high=100.0, help="recall@1 points (the project's bar)")


@dataclass(frozen=True)
class AblationFlowConfig:
    """RGB-only against RGB + flow views, otherwise the `pretrain` settings (stage `ablation_flow`)."""

    out: str = _spec("data/models/ablation_flow", help="checkpoints and embeddings of the variants trained here")


@dataclass(frozen=True)
class PromoteConfig:
    """Registry promotion of the pretrained encoder on a validation metric (stage `promote`)."""

    checkpoint: str = _spec("data/models/pretrain/best.pt", help="the candidate encoder")
    metric: str = _spec("best_val_recall_at_1", help="validation metric of reports/pretrain.json (never test)")
    higher_is_better: bool = _spec(True)
    min_delta: float = _spec(0.0, low=0.0, help="the candidate must beat the champion by more than this")
    model_name: str = _spec("slic-encoder", help="registered model name")
    alias: str = _spec("champion")
    labels: str = _spec("labels/train/given.csv", help="videos without classes: the candidate and the champion are "
                                                      "compared on the labelled videos of this CSV neither trained on")


@dataclass(frozen=True)
class ClassifierTrainingConfig:
    """Action classification on the pretrained backbone (SLIC.md, Evaluation); paper values in `help`."""

    checkpoint: str = _spec("data/models/pretrain/best.pt", help="the pretrained encoder")
    clip_len: int = _spec(8, low=1, high=128, help="frames per clip and per test window (paper 16)")
    frame_step: int = _spec(2, low=1, high=16, help="every frame_step-th decoded frame, as the encoder was pretrained "
                                                     "(paper 1)")
    size: int = _spec(32, low=16, high=512, help="crop size (paper 128)")
    dropout: float = _spec(0.5, low=0.0, high=0.99, help="dropout before the linear layer (paper 0.9; 0.5 chosen on val "
                                                          "for the few CPU steps)")
    epochs: int = _spec(6, low=0, high=100000, help="paper: 150")
    milestones: tuple[int, ...] = _spec((2, 4), low=1, help="epochs where lr is multiplied by lr_gamma (paper 60, 100)")
    lr_gamma: float = _spec(0.1, low=0.0, high=1.0, help="paper 0.1")
    lr: float = _spec(0.01, low=0.0, high=10.0, help="Adam learning rate (paper 1e-3; 0.01 chosen on val for the "
                                                      "few CPU steps)")
    weight_decay: float = _spec(0.001, low=0.0, high=1.0, help="Adam weight decay (paper 1e-3)")
    batch_size: int = _spec(32, low=1, high=4096, help="paper 32")
    crop_min_scale: float = _spec(0.2, low=0.01, high=1.0, help="random-area crop scale (min, 1); paper 0.2")
    color_jitter: float = _spec(0.4, low=0.0, high=1.0, help="ColorJitter brightness, contrast, saturation (paper 0.4)")
    hue: float = _spec(0.1, low=0.0, high=0.5, help="ColorJitter hue (paper 0.1)")
    color_jitter_p: float = _spec(0.3, low=0.0, high=1.0, help="chance of colour jitter per clip (paper 0.3)")
    flip_p: float = _spec(0.5, low=0.0, high=1.0, help="chance of a horizontal flip per clip")
    val_views: str = _spec("centre", choices=("centre", "ten"),
                           help="validation views per window: the centre crop, or 5 crops x 2 flips as at test")
    test_stride: int = _spec(16, low=1, high=1000, help="frames between test windows (reference 7)")
    test_resize: float = _spec(1.143, low=1.0, high=4.0,
                               help="test frames' short side = size x this, then 5 crops of size x size")
    eval_batch_size: int = _spec(128, low=1, high=65536, help="clips per forward pass when evaluating")
    workers: int = _spec(2, low=0, high=256)
    device: str = _spec("auto", choices=("auto", "cpu", "cuda"))
    bf16: bool = _spec(True, help="bf16 autocast on CUDA (ignored on CPU)")
    seed: int = _spec(7, low=0)
    out: str = _spec("data/models/classifier")


@dataclass(frozen=True)
class LinearProbeConfig(ClassifierTrainingConfig):
    """Linear probe (stage `linear_probe`): only the linear layer trains; the backbone (BatchNorm too) is frozen."""

    out: str = _spec("data/models/linear_probe")


@dataclass(frozen=True)
class FinetuneConfig(ClassifierTrainingConfig):
    """End-to-end finetuning from the pretrained and from random weights (stage `finetune`)."""

    epochs: int = _spec(4, low=0, high=100000, help="paper: 150")
    milestones: tuple[int, ...] = _spec((2, 3), low=1, help="epochs where lr is multiplied by lr_gamma (paper 60, 100)")
    backbone_lr_scale: float = _spec(0.1, low=0.0, high=10.0, help="backbone lr = lr x this (paper 0.1)")
    linear_probe_report: str = _spec("reports/linear_probe.json", help="the linear_probe stage's report, "
                                     "copied into reports/finetune.json")
    out: str = _spec("data/models/finetune")


@dataclass(frozen=True)
class Config:
    """All sections of params.yaml."""

    synth: SynthConfig = field(default_factory=SynthConfig)
    synth_transfer: SynthTransferConfig = field(default_factory=SynthTransferConfig)
    manifest: ManifestConfig = field(default_factory=ManifestConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    clusters: ClustersConfig = field(default_factory=ClustersConfig)
    spread_labels: SpreadLabelsConfig = field(default_factory=SpreadLabelsConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    ablation_flow: AblationFlowConfig = field(default_factory=AblationFlowConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval_sets: dict[str, EvalSetConfig] = field(default_factory=lambda: {
        "synthetic_unseen": EvalSetConfig(root="data/raw/synthetic_transfer", layout="synthetic",
                                          classify=True)})


def load(path: str | Path = "params.yaml") -> Config:
    """Read params.yaml into a `Config`; raise `ConfigError` naming the key on any problem.

    Sections that DVC uses for other tools (any key not a stage) are refused, so a typo such as
    ``extrct:`` never silently falls back to defaults.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: file not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        said = " ".join(str(exc).split())
        if "unknown escape character" in said:  # a regular expression (manifest.group_pattern) in double quotes
            said += "; inside double quotes YAML reads a backslash as an escape: put a regular expression in single " \
                    "quotes ('^(.*?)_c\\d+')"
        raise ConfigError(f"{path}: not valid YAML: {said}") from exc
    return build_section(Config, raw, "", str(path))


def changed_settings(stored: dict[str, Any], now: dict[str, Any], defaults: dict[str, Any]) -> list[str]:
    """Keys whose value in `stored` (settings saved with a result or checkpoint) is not the one in `now`.

    A key missing from `stored` is unchanged when `now` holds its value in `defaults`: a setting slic gained
    after the result was saved keeps the old behaviour at its default. A key only `stored` has is changed.
    """
    keys = sorted(set(stored) | set(now))
    return [k for k in keys if k not in now or (stored[k] != now[k] if k in stored
                                                    else k not in defaults or defaults[k] != now[k])]


def flat_settings(config: Config) -> dict[str, str]:
    """Every setting as 'section.key' -> its value as text ('eval_sets.<name>.<key>' for an eval set), defaults
    included: the params of a pipeline's MLflow run, so two pipeline runs compare setting by setting."""
    flat: dict[str, str] = {}
    for section in dataclasses.fields(config):
        for key, value in to_dict(getattr(config, section.name)).items():
            if isinstance(value, dict):  # a named section's entry (eval_sets.<name>)
                flat.update({f"{section.name}.{key}.{inner}": str(v) for inner, v in value.items()})
            else:
                flat[f"{section.name}.{key}"] = str(value)
    return flat


def to_dict(section: Any) -> dict[str, Any]:
    """A section as plain data (tuples as lists), for reports and MLflow params; named sections (eval_sets) too."""
    if isinstance(section, dict):
        return {name: to_dict(value) for name, value in section.items()}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}
