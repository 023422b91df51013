"""What squeezing a video that is not 4:3 into the IIC protocol's 4:3 box costs retrieval, against keeping its shape.

The `embed` stage (and `slic search`, `slic serve`, the registered model) resize every frame to a fixed size x
size*171/128 before the centre crop, as the IIC protocol does for UCF101's 320x240 frames. A phone filmed upright
(9:16) is then squeezed 2.4x across, a 16:9 video 1.3x. The alternatives keep the shape: `short_side` (the short side
to size, the centre square cropped: the middle of a tall frame is all it sees) and `letterbox` (the long side to
size, the rest padded with the mean colour: the whole frame, smaller). This bench asks which retrieves best when the
videos are not 4:3, on ucf101_6 with its frames cut to 9:16 and to 16:9 (the centre, as a phone or a widescreen
camera would have framed the scene) and as they are (4:3), with the encoders of bench/real.py (`--rows`, default
slic and intra_video, seeds 7, 8, 9; trained or reused from the same stored cells under `--work`).

Queries and gallery get the same cut and resize (the index and its queries are embedded alike). Val and test
queries against the train gallery: a resize would be chosen on val, test is reported. The encoders trained on the
4:3 frames, as a user's would train on their own videos' frames whatever their shape (pretraining's random crops
keep the aspect within 3:4..4:3, so the shape is what the embedding changes).

Writes reports/bench/aspect_ratio.json: per encoder, view and resize recall@1/5/10 on val and test; per view and
resize the mean and sample std over encoders; and each alternative's paired difference from `iic` (mean, std, how
many encoders it beats iic on).

    python bench/aspect_ratio.py                          # reuses bench/real.py's cells in data/bench/real
    python bench/aspect_ratio.py --seeds 7 --rows slic
    python bench/aspect_ratio.py --split 2 --views 9:16 --resizes short_side \\
        --out reports/bench/aspect_ratio_split2.json      # trains split 2's cells in data/bench/real_split2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ablation import machine, shown, write_report  # noqa: E402
from bench.real import cells_parser, each_stored_cell, open_bench, printed_markdown  # noqa: E402
from slic.data.clip_transform import IMAGENET_MEAN, IMAGENET_STD, EvalTransform, resize_frames  # noqa: E402

DEFAULT_ROWS = ("slic", "intra_video")
DEFAULT_OUT = ROOT / "reports" / "bench" / "aspect_ratio.json"
VIEWS: dict[str, float | None] = {"4:3 as extracted": None, "9:16 upright phone": 9 / 16, "16:9 widescreen": 16 / 9}
RESIZES = ("iic", "short_side", "letterbox")
KS = (1, 5, 10)


def centre_cut(frames: np.ndarray, aspect: float | None) -> np.ndarray:
    """The centre of (T, H, W, 3) frames at width/height `aspect` (None: the frames as they are)."""
    if aspect is None:
        return frames
    height, width = frames.shape[1:3]
    if width / height > aspect:
        new_width = max(1, round(height * aspect))
        left = (width - new_width) // 2
        return frames[:, :, left:left + new_width]
    new_height = max(1, round(width / aspect))
    top = (height - new_height) // 2
    return frames[:, top:top + new_height]


class CutFrames:
    """A shard cache whose windows come cut to one aspect (`centre_cut`): what EvalClips reads its frames from."""

    def __init__(self, aspect: float | None) -> None:
        from slic.data.clips import ShardCache

        self.aspect, self.cache = aspect, ShardCache()

    def window(self, video: Any, first: int, count: int) -> np.ndarray:
        """The frames [first, first + count) of `video`, cut to the aspect."""
        return centre_cut(self.cache.window(video, first, count), self.aspect)


class Letterbox(EvalTransform):
    """(T, C, H, W) uint8 -> (T, C, size, size): the long side resized to `size`, the shape kept, the rest padded
    with the mean colour (zero once normalised), so the whole frame is seen undistorted."""

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        height, width = frames.shape[-2:]
        scale = self.size / max(height, width)
        new_height, new_width = max(1, round(height * scale)), max(1, round(width * scale))
        resized = resize_frames(frames, (new_height, new_width)).to(torch.float32).mul_(1.0 / 255)
        mean = torch.as_tensor(self.mean).view(-1, 1, 1)
        std = torch.as_tensor(self.std).view(-1, 1, 1)
        normalised = resized.sub(mean).div_(std)
        top, left = (self.size - new_height) // 2, (self.size - new_width) // 2
        out = normalised.new_zeros(*frames.shape[:-2], self.size, self.size)
        out[..., top:top + new_height, left:left + new_width] = normalised
        return out


def transform_of(resize: str, size: int) -> EvalTransform:
    """The evaluation transform of a resize: iic (the embed stage's own: EvalClips' fixed 4:3 box), short_side or
    letterbox."""
    from slic.data.clips import EvalClips

    if resize == "iic":
        return EvalClips([], protocol="iic", size=size).transform
    if resize == "short_side":
        return EvalTransform(size)
    return Letterbox(size, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def recalls(embeddings: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> dict[str, float]:
    """val and test recall@k against the train gallery."""
    from slic.retrieval import recall_at_k

    gallery = splits == "train"
    out = {}
    for split in ("val", "test"):
        queries = splits == split
        found = recall_at_k(embeddings[queries], labels[queries], embeddings[gallery], labels[gallery], ks=KS)
        out.update({f"{split}_{k}": round(v, 4) for k, v in found.items()})
    return out


def measure_encoder(checkpoint: Path, config: Any, world: Any, views: dict[str, float | None] = VIEWS,
                    resizes: tuple[str, ...] = RESIZES) -> dict[str, dict[str, dict[str, float]]]:
    """{view: {resize: recalls}} of one encoder over ucf101_6's train, val and test videos."""
    from slic.checkpoints import load_encoder
    from slic.data.clips import EvalClips, load_videos
    from slic.embed import embed_clips

    model, settings = load_encoder(checkpoint, world.device)
    clip_len, size, frame_step = int(settings["clip_len"]), int(settings["size"]), int(settings.get("frame_step", 1))
    videos = load_videos(config.extract.manifest, config.extract.out, splits=["train", "val", "test"],
                         min_frames=clip_len, frame_step=frame_step)
    labels, splits = np.array([v.label for v in videos]), np.array([v.split for v in videos])
    found: dict[str, dict[str, dict[str, float]]] = {}
    for view, aspect in views.items():
        found[view] = {}
        for resize in resizes:
            dataset = EvalClips(videos, protocol="iic", clip_len=clip_len, size=size, clips=config.embed.clips,
                                cache=CutFrames(aspect))  # type: ignore[arg-type]
            dataset.transform = transform_of(resize, size)
            embeddings = embed_clips(model, dataset, world=world, batch_size=config.embed.batch_size,
                                     workers=config.embed.workers)
            found[view][resize] = recalls(embeddings, labels, splits)
    return found


def summary(encoders: list[dict[str, Any]]) -> dict[str, Any]:
    """Per view and resize: mean and sample std over encoders; per alternative its paired difference from iic."""
    out: dict[str, Any] = {"mean": {}, "std": {}, "minus_iic": {}}
    for view, by_resize in encoders[0]["recall"].items():
        for section in out.values():
            section[view] = {}
        for resize in by_resize:
            keys = encoders[0]["recall"][view][resize].keys()
            values = {key: [e["recall"][view][resize][key] for e in encoders] for key in keys}
            out["mean"][view][resize] = {key: round(float(np.mean(v)), 4) for key, v in values.items()}
            out["std"][view][resize] = {key: round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 4)
                                        for key, v in values.items()}
            if resize == "iic":
                continue
            paired = {}
            for key in ("val_recall@1", "test_recall@1"):
                diff = np.array([e["recall"][view][resize][key] - e["recall"][view]["iic"][key] for e in encoders])
                paired[key] = {"mean": round(float(diff.mean()), 4),
                               "std": round(float(diff.std(ddof=1)) if len(diff) > 1 else 0.0, 4),
                               "beats_iic": int((diff > 0).sum()), "ties": int((diff == 0).sum()),
                               "of": len(diff)}
            out["minus_iic"][view][resize] = paired
    return out


def table(report: dict[str, Any]) -> str:
    """The docs' table: per view and resize, val and test recall@1 (mean ± std over encoders, in %) and the
    paired difference from iic on test (mean ± std, encoders where it beats iic)."""
    rows = ["| frames | resize | val recall@1 | test recall@1 | test minus iic (wins) |", "|---|---|---|---|---|"]
    for view in report["mean"]:
        for resize in report["resizes"]:
            mean, std = report["mean"][view][resize], report["std"][view][resize]
            cells = [f"{100 * mean[f'{split}_recall@1']:.1f} ± {100 * std[f'{split}_recall@1']:.1f}"
                     for split in ("val", "test")]
            paired = report["minus_iic"][view].get(resize, {}).get("test_recall@1")
            versus = (f"{100 * paired['mean']:+.1f} ± {100 * paired['std']:.1f} ({paired['beats_iic']} of "
                      f"{paired['of']})" if paired else "")
            rows.append(f"| {view} | {resize} | {cells[0]} | {cells[1]} | {versus} |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None) -> Any:
    parser = cells_parser(__doc__.splitlines()[0], list(DEFAULT_ROWS), DEFAULT_OUT, markdown="table")
    parser.add_argument("--views", nargs="+", choices=[view.split()[0] for view in VIEWS],
                        default=[view.split()[0] for view in VIEWS], help="the frame shapes measured")
    parser.add_argument("--resizes", nargs="+", choices=RESIZES, default=list(RESIZES),
                        help="the resizes measured; iic always (the others are paired with it)")
    return parser.parse_args(argv)


def chosen(args: Any) -> tuple[dict[str, float | None], tuple[str, ...]]:
    """The views and resizes of `args`, in the bench's order; iic always among the resizes."""
    views = {view: aspect for view, aspect in VIEWS.items() if view.split()[0] in args.views}
    return views, tuple(r for r in RESIZES if r == "iic" or r in args.resizes)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if printed_markdown(args, table):
        return
    config, world, work = open_bench(args, "bench/aspect_ratio.py")
    views, resizes = chosen(args)
    started = time.perf_counter()
    encoders: list[dict[str, Any]] = []
    for seed, row, cell, _ in each_stored_cell(config, world, work, args.seeds, args.rows):
        encoders.append({"row": row, "seed": seed, "recall": measure_encoder(cell / "best.pt", config, world, views, resizes)})
        for view, by_resize in encoders[-1]["recall"].items():
            print(f"  seed {seed} {row:12s} {view:20s} " + "  ".join(
                f"{resize} val {100 * r['val_recall@1']:4.1f} test {100 * r['test_recall@1']:4.1f}"
                for resize, r in by_resize.items()), flush=True)
    report = {
        "question": "which resize retrieves best when videos are not 4:3: the IIC box (squeezed), the short side "
                    "(centre square) or letterbox (whole frame, padded)?",
        "split": args.split, "views": views, "resizes": list(resizes),
        "protocol": "the embed stage's clips (embed.clips a video), val and test queries against the train gallery; "
                    "queries and gallery cut and resized alike",
        "rows": args.rows, "seeds": args.seeds, "encoders": encoders, **summary(encoders),
        "std_is": "sample standard deviation over encoders (ddof 1)",
        "machine": machine(world.device), "work": shown(work), "wall_seconds": round(time.perf_counter() - started, 2)}
    out = write_report(report, args.out)
    for view in views:
        print(f"{view:20s} " + "  ".join(
            f"{resize} val {100 * report['mean'][view][resize]['val_recall@1']:4.1f} test "
            f"{100 * report['mean'][view][resize]['test_recall@1']:4.1f}" for resize in resizes), flush=True)
    print(f"-> {out} ({report['wall_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
