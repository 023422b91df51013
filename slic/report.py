"""The HTML retrieval report of stage `evaluate`: what the recall numbers look like, query by query.

One self-contained file: the recall@k and per-class tables, then a seeded sample of queries, each
with its top-k gallery neighbours as short animated thumbnails (animated WebP made from the
video's frame shard, embedded as data: URIs), marked hit or miss. Plain HTML and CSS, no script
and no external asset, so it opens from disk and in MLflow's artifact viewer alike. A video whose
frames cannot be read gets a placeholder naming its shard; the report is still written.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slic.data.frames import ShardReader, shard_path
from slic.retrieval import (files_of, gallery_note, nearest_gallery, nearest_others, normalize_rows, source_units,
                            split_mask)

THUMB_FRAMES = 12   # frames spread over the whole video
THUMB_WIDTH = 96    # pixels; height keeps the video's aspect
HIT_COLOUR, MISS_COLOUR, QUERY_COLOUR = "#1a7f37", "#cf222e", "#0969da"


@dataclass(frozen=True)
class Thumbnail:
    """An embeddable animated thumbnail, or why there is none."""

    data_uri: str | None
    width: int = THUMB_WIDTH
    height: int = THUMB_WIDTH * 3 // 4
    error: str = ""


def animated_thumbnail(shard: str | Path, *, frames: int = THUMB_FRAMES, width: int = THUMB_WIDTH,
                       quality: int = 50) -> tuple[bytes, int, int]:
    """Animated WebP (bytes, width, height) of `frames` frames spread evenly over a video's shard.

    Plays at the video's own speed (frame duration = the gap between the chosen frames).
    Raises OSError or ValueError when the shard or one of its JPEG frames cannot be read.
    """
    from PIL import Image

    reader = ShardReader.open(shard)
    picks = np.unique(np.linspace(0, reader.frames - 1, max(frames, 1)).round().astype(int))
    images = []
    for i in picks:
        try:
            images.append(Image.open(io.BytesIO(reader.read_jpegs(int(i), 1)[0])).convert("RGB"))
        except OSError as exc:
            raise ValueError(f"frame {i} is not a decodable JPEG ({type(exc).__name__})") from exc
    gap = (reader.frames - 1) / max(len(picks) - 1, 1)
    return animated_webp(images, width=width, seconds_apart=gap / float(reader.header.get("fps") or 25.0),
                         quality=quality)


def animated_webp(images: list[Any], *, width: int, seconds_apart: float, quality: int = 50) -> tuple[bytes, int, int]:
    """Animated WebP (bytes, width, height) of PIL images scaled to `width`, each shown for the time between them
    in the video (`seconds_apart`, held within 40-400 ms), looping."""
    from PIL import Image

    height = max(1, round(images[0].height * width / images[0].width))
    scaled = [image.resize((width, height), Image.Resampling.BILINEAR) for image in images]
    duration = int(np.clip(1000 * seconds_apart, 40, 400))
    out = io.BytesIO()
    scaled[0].save(out, format="WEBP", save_all=True, append_images=scaled[1:], duration=duration, loop=0,
                   quality=quality, method=4)
    return out.getvalue(), width, height


def load_thumbnail(shard: Path) -> Thumbnail:
    """`animated_thumbnail` as a data URI; an unreadable or missing shard becomes an error text instead."""
    try:
        data, width, height = animated_thumbnail(shard)
    except FileNotFoundError:
        return Thumbnail(None, error="file not found")
    except (OSError, ValueError, IndexError) as exc:
        return Thumbnail(None, error=(str(exc).removeprefix(f"{shard}: ") or type(exc).__name__)[:160])
    return Thumbnail("data:image/webp;base64," + base64.b64encode(data).decode("ascii"), width, height)


def sample_queries(top1_hit: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, str]:
    """Indices of `n` queries drawn with `seed`, stratified by top-1 hit or miss; and how, in words.

    Each stratum gets its share of the sample (rounded), but at least one query when both exist,
    so the page always shows a hit and a miss when the data has them.
    """
    hit = np.asarray(top1_hit, dtype=bool)
    n = min(n, len(hit))
    hits, misses = np.flatnonzero(hit), np.flatnonzero(~hit)
    n_hit = round(n * len(hits) / max(len(hit), 1))
    if len(hits) and len(misses) and n >= 2:
        n_hit = min(max(n_hit, 1), n - 1)
    n_hit = int(min(max(n_hit, n - len(misses)), len(hits)))
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.choice(hits, n_hit, replace=False),
                             rng.choice(misses, n - n_hit, replace=False)]).astype(np.int64)
    how = (f"{n} of {len(hit)} queries drawn at random (seed {seed}), stratified by the top-1 result: "
           f"{n_hit} of the {len(hits)} top-1 hits and {n - n_hit} of the {len(misses)} top-1 misses "
           "(each in proportion to its share, at least one of each when both exist).")
    return np.sort(chosen), how


def video_captions(manifest: Path) -> dict[str, str]:
    """video_id -> source path from the manifest CSV, with where in its file a segment lies (a file cut into
    several rows by manifest.segment_seconds: `path [mm:ss-mm:ss]`); empty when the file is absent."""
    from slic.data.datasets import read_manifest, segment_spans
    from slic.data.video import time_span

    if not manifest.is_file():
        return {}
    table = read_manifest(manifest)
    starts, ends = segment_spans(table)
    return {video_id: path if np.isnan(start) else f"{path} [{time_span(start, end)}]"
            for video_id, path, start, end in zip(table["video_id"], table["path"], starts, ends)}


@dataclass
class VideoCells:
    """Renders videos of an embeddings file as report cells (a query's figure, a neighbour's list item) with
    their animated thumbnail, made once per video from its frame shard."""

    ids: np.ndarray
    frames_dir: str | Path
    paths: Mapping[str, str]
    thumbs: dict[str, Thumbnail] = field(default_factory=dict)

    def __call__(self, index: int, role: str, caption: str, *, mark: str | None = None,
                 class_name: str | None = None) -> str:
        """The cell of video `index` as `role` (the CSS class; `mark` its badge text), with its class if any."""
        video_id = str(self.ids[index])
        shard = shard_path(self.frames_dir, video_id)
        if video_id not in self.thumbs:
            self.thumbs[video_id] = load_thumbnail(shard)
        alt = f"{role}: {video_id}" + ("" if class_name is None else f" ({class_name})")
        named = "" if class_name is None else f"<b>{html.escape(class_name)}</b><br>"
        tag = "figure" if role == "query" else "li"
        return (f'<{tag} class="video {role}">{_thumb_html(self.thumbs[video_id], alt, shard)}<div>'
                f'<span class="mark {role}">{mark or role}</span> {caption}<br>{named}'
                f'<span class="path">{html.escape(self.paths.get(video_id, video_id))}</span></div></{tag}>')


STYLE = f"""
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1f2328; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
th, td {{ border: 1px solid #d0d7de; padding: 3px 10px; text-align: right; }}
tr.ours td {{ font-weight: 600; }}
th:first-child, td:first-child {{ text-align: left; }}
code, .path {{ font: 11px ui-monospace, monospace; word-break: break-all; }}
.row {{ display: flex; gap: 8px; align-items: flex-start; margin: 0 0 12px; padding-bottom: 12px;
        border-bottom: 1px solid #d0d7de; }}
.row ol {{ display: flex; flex-wrap: wrap; gap: 8px; list-style: none; margin: 0; padding: 0; }}
.video {{ margin: 0; width: {THUMB_WIDTH + 8}px; border: 4px solid #d0d7de; border-radius: 4px; padding: 2px;
          font-size: 11px; }}
.video img {{ display: block; }}
.video.query {{ border-color: {QUERY_COLOUR}; margin-right: 12px; }}
.video.hit {{ border-color: {HIT_COLOUR}; }}
.video.miss {{ border-color: {MISS_COLOUR}; }}
.mark {{ display: inline-block; color: #fff; font-weight: 600; padding: 0 4px; border-radius: 3px; }}
.mark.hit {{ background: {HIT_COLOUR}; }}
.mark.miss {{ background: {MISS_COLOUR}; }}
.mark.query {{ background: {QUERY_COLOUR}; }}
.missing {{ display: flex; flex-direction: column; justify-content: center; background: #f6f8fa; color: #59636e;
            text-align: center; overflow: hidden; }}
"""


def _thumb_html(thumb: Thumbnail, alt: str, shard: Path) -> str:
    if thumb.data_uri is None:
        return (f'<div class="thumb missing" role="img" aria-label="no frames: {html.escape(str(shard))}" '
                f'style="width:{thumb.width}px;min-height:{thumb.height}px">no frames<code>{html.escape(str(shard))}'
                f"</code>{html.escape(thumb.error)}</div>")
    return (f'<img class="thumb" src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" '
            f'alt="{html.escape(alt)}">')


def _recall_tables(report: Mapping[str, Any], baseline: Mapping[str, Any] | None = None) -> str:
    ks = sorted(int(key.split("@")[1]) for key in report if key.startswith("recall@"))
    queries = int(report["queries"])

    def floor(k: int) -> str:
        return f'<td class="baseline">{100 * baseline[f"recall@{k}"]:.1f}%</td>' if baseline else ""

    rows = "".join(f'<tr data-k="{k}"><td>recall@{k}</td><td>{100 * report[f"recall@{k}"]:.1f}%</td>'
                   f'<td>{round(report[f"recall@{k}"] * queries)} / {queries}</td>{floor(k)}</tr>' for k in ks)
    floor_head = "<th>random_init (the same network untrained)</th>" if baseline else ""
    out = ('<h2>Recall@k</h2><table id="recall"><thead><tr><th>k</th><th>recall</th>'
           f"<th>queries with a hit</th>{floor_head}</tr></thead><tbody>{rows}</tbody></table>")
    per_class = report.get("per_class") or {}
    columns = sorted({key for row in per_class.values() for key in row if key.startswith("recall@")},
                     key=lambda key: int(key.split("@")[1]))
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(f'<tr data-class="{html.escape(name)}"><td>{html.escape(name)}</td><td>{row["queries"]}</td>'
                   + "".join(f"<td>{100 * row[c]:.1f}%</td>" for c in columns) + "</tr>"
                   for name, row in sorted(per_class.items()))
    return out + (f'<h2>Per-class recall</h2><table id="per-class"><thead><tr><th>class</th><th>queries</th>{head}'
                  f"</tr></thead><tbody>{body}</tbody></table>")


def _published_table(published: Mapping[str, Any] | None) -> str:
    """This run's recall@k above the published rows of the same protocol (empty without them)."""
    if not published:
        return ""
    ks = list(published["this_run"])
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ks)

    def row(name: str, values: Mapping[str, float], css: str = "") -> str:
        cells = "".join(f"<td>{values[k]:.1f}%</td>" if k in values else "<td>-</td>" for k in ks)
        return f'<tr{css}><td>{html.escape(name)}</td>{cells}</tr>'

    rows = row("this run", published["this_run"], ' class="ours"') + "".join(
        row(name, values) for name, values in published["published"].items())
    note = "".join(f'<p class="note">{html.escape(said)}</p>' for said in published.get("notes", []))
    return (f'<h2>Published on {html.escape(published["set"])}</h2><table id="published"><thead><tr><th>method'
            f'</th>{head}</tr></thead><tbody>{rows}</tbody></table><p>{html.escape(published["source"])}.</p>{note}')


def _encoder_paragraph(report: Mapping[str, Any]) -> str:
    """The encoder the report measured (`encoder`) and each pretraining setting that is not the paper's
    (`differs_from_paper`), as a paragraph; '' when the report names no encoder."""
    encoder = report.get("encoder")
    if not encoder:
        return ""
    said = ", ".join(f"{key} {value}" for key, value in encoder.items())
    differs = report.get("differs_from_paper") or []
    unlike = (f" Not the paper's configuration in {len(differs)} pretraining setting(s): {', '.join(differs)}."
              if differs else " The paper's pretraining configuration.")
    return f'<p id="encoder">Encoder: {html.escape(said)}.{html.escape(unlike)}</p>'


def _gallery_said(gallery_split: str, split: np.ndarray) -> str:
    """' (the train list less ...)' when the gallery is the train carve (`slic.retrieval.gallery_note`), else ''."""
    note = gallery_note(gallery_split, int(split_mask(split, "val").sum()))
    return f" ({html.escape(note)})" if note else ""


def write_retrieval_html(out: str | Path, report: Mapping[str, Any], *, embeddings: str | Path,
                         frames_dir: str | Path, manifest: str | Path, queries: int = 12, k: int = 5,
                         seed: int = 7, title: str = "Retrieval report", intro: str = "",
                         baseline: Mapping[str, Any] | None = None,
                         published: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the HTML retrieval report to `out` for the splits named in `report` (evaluate's numbers).

    `title` and `intro` (plain text) say what was evaluated (e.g. a transfer to an eval set); `baseline`, a
    report of the same form (random_init's), adds its recall@k beside each row for comparison; `published`
    (slic.published.published_retrieval) adds the published numbers of the same protocol under this run's.

    Returns {path, bytes, queries_shown, k_shown, missing_thumbnails: [shard paths]}.
    """
    data = np.load(embeddings)
    split, labels, names, ids = data["split"], data["label"], data["class_name"], data["video_id"]
    q_mask, g_mask = split_mask(split, report["query_split"]), split_mask(split, report["gallery_split"])
    q_vec, g_vec = data["embedding"][q_mask], data["embedding"][g_mask]
    neighbours = nearest_gallery(q_vec, g_vec, k)
    top1_hit = labels[g_mask][neighbours[:, 0]] == labels[q_mask]
    chosen, how = sample_queries(top1_hit, queries, seed)
    sims = np.einsum("qd,qkd->qk", normalize_rows(q_vec[chosen]), normalize_rows(g_vec)[neighbours[chosen]])
    paths = video_captions(Path(manifest))
    cells = VideoCells(ids, frames_dir, paths)
    marks = {"query": "query", "hit": "✓ hit", "miss": "✗ miss"}

    def cell(index: int, role: str, caption: str) -> str:
        return cells(index, role, caption, mark=marks[role], class_name=str(names[index]))

    q_index, g_index = np.flatnonzero(q_mask), np.flatnonzero(g_mask)
    rows = []
    for row, qi in enumerate(chosen):
        query = q_index[qi]
        items = [cell(g_index[gi], "hit" if labels[g_index[gi]] == labels[query] else "miss",
                      f"#{rank + 1}<br>cos {sims[row, rank]:.3f}")
                 for rank, gi in enumerate(neighbours[qi])]
        rows.append(f'<section class="row" aria-label="query {html.escape(str(ids[query]))}">'
                    f'{cell(query, "query", "")}<ol>{"".join(items)}</ol></section>')
    k_shown = neighbours.shape[1]
    note = "" if paths else f"<p>{html.escape(str(manifest))} not found: videos are named by id.</p>"
    lead = f'<p id="intro">{html.escape(intro)}</p>' if intro else ""
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{lead}"
            f"<p>{report['queries']} {report['query_split']} queries against a gallery of {report['gallery']} "
            f"{report['gallery_split']} videos{_gallery_said(report['gallery_split'], split)}; cosine similarity of "
            "the embeddings in "
            f"<code>{html.escape(str(embeddings))}</code>. A query is a hit at k when one of its k nearest gallery "
            f"videos has its class.</p>{_encoder_paragraph(report)}{_recall_tables(report, baseline)}"
            f"{_published_table(published)}"
            f"<h2>Sampled queries and their top-{k_shown} neighbours</h2><p id=\"sample\">{html.escape(how)}</p>"
            f'<p><span class="mark hit">✓ hit</span> same class as the query &nbsp; '
            f'<span class="mark miss">✗ miss</span> another class &nbsp; cos: cosine similarity to the query</p>'
            f"{note}{''.join(rows)}</body></html>\n")
    return write_page(out, page, cells, queries_shown=len(chosen), k_shown=k_shown)


def write_page(out: str | Path, page: str, cells: VideoCells, *, queries_shown: int,
                k_shown: int) -> dict[str, Any]:
    """Write an HTML report; {path, bytes, queries_shown, k_shown, missing_thumbnails: [shard paths]}."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    missing = sorted(str(shard_path(cells.frames_dir, v)) for v, t in cells.thumbs.items() if t.data_uri is None)
    return {"path": str(out), "bytes": out.stat().st_size, "queries_shown": queries_shown, "k_shown": k_shown,
            "missing_thumbnails": missing}


NEIGHBOUR_STYLE = (".mark.neighbour { background: #59636e; } "
                   "#label-free td:last-child, #label-free th:last-child { text-align: left; }")
LABEL_FREE_ROWS = (
    ("mean_pairwise_cosine", "mean cosine similarity over all pairs of videos (near 1: everything looks alike)"),
    ("effective_rank", "effective rank of the embeddings (near 1: collapsed; at most the dimension)"))


def _ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st."""
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _label_free_table(report: Mapping[str, Any]) -> str:
    """The label-free numbers of `slic.retrieval.unlabelled_neighbours` as a table, each with what it means."""
    ks = sorted(int(key.split("@")[1]) for key in report if key.startswith("neighbour_cosine@"))
    rows = [(f"neighbour_cosine@{k}", f"mean cosine similarity of each video's {_ordinal(k)} nearest other video")
            for k in ks] + list(LABEL_FREE_ROWS)
    hub_k = report["hub_k"]
    rows.append((f"never_in_top{hub_k}", f"share of videos that are in no other video's top {hub_k}"))
    body = "".join(f'<tr data-key="{key}"><td>{key}</td><td>{report[key]:.4g}</td><td>{html.escape(what)}</td></tr>'
                   for key, what in rows)
    hubs = "".join(f"<tr><td>{html.escape(h['video_id'])}</td><td>{h[f'in_top{hub_k}_of']}</td>"
                   f"<td>{100 * h['share_of_queries']:.1f}%</td></tr>" for h in report["hubs"])
    return (f'<h2>Without labels</h2><table id="label-free"><thead><tr><th>measure</th><th>value</th><th>what it '
            f"says</th></tr></thead><tbody>{body}</tbody></table><h2>Hubs</h2><p>The videos found most often among "
            f"the top {hub_k} of the others: one that every query finds (a black, static or title-card video) is "
            f'worth a look.</p><table id="hubs"><thead><tr><th>video</th><th>in the top {hub_k} of</th><th>share of '
            f"queries</th></tr></thead><tbody>{hubs}</tbody></table>")


def write_neighbours_html(out: str | Path, report: Mapping[str, Any], *, embeddings: str | Path,
                          frames_dir: str | Path, manifest: str | Path, queries: int = 12, k: int = 5,
                          seed: int = 7) -> dict[str, Any]:
    """The HTML report of `evaluate` on videos without classes: the label-free numbers of `report`
    (`slic.retrieval.unlabelled_neighbours`), then a seeded sample of videos, each with its top-k nearest
    other videos as animated thumbnails, to judge by eye whether neighbours share their motion.

    Returns what `write_retrieval_html` returns.
    """
    data = np.load(embeddings)
    mask = split_mask(data["split"], report["query_split"])
    vectors, ids = data["embedding"][mask], data["video_id"][mask]
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(vectors), min(queries, len(vectors)), replace=False))
    files = files_of(ids, source_units(manifest)[0]) if report.get("leave_out") in ("file", "recording") else None
    neighbours, sims = nearest_others(vectors, k, rows=chosen, files=files)  # only the shown videos query
    paths = video_captions(Path(manifest))
    cells = VideoCells(ids, frames_dir, paths)
    rows = [f'<section class="row" aria-label="query {html.escape(str(ids[q]))}">{cells(q, "query", "")}<ol>'
            + "".join(cells(int(g), "neighbour", f"#{rank + 1}<br>cos {sims[row, rank]:.3f}")
                      for rank, g in enumerate(neighbours[row])) + "</ol></section>" for row, q in enumerate(chosen)]
    title = "Nearest neighbours (videos without classes)"
    warning = ""
    if "warning" in report:  # nearly all alike: an untrained or collapsed encoder
        warning = f'<p id="warning"><b>Warning:</b> {html.escape(report["warning"])}</p>'
    note = "" if paths else f"<p>{html.escape(str(manifest))} not found: videos are named by id.</p>"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}{NEIGHBOUR_STYLE}</style></head><body><h1>{title}</h1>"
            f"<p>{html.escape(report['protocol'])}, by cosine similarity of the embeddings in "
            f"<code>{html.escape(str(embeddings))}</code>. The videos have no classes, so there is no recall: judge "
            f"the neighbours below by eye, or add a labelled set to <code>eval_sets</code> (the transfer protocol)."
            f"</p>{warning}{_label_free_table(report)}"
            f"<h2>Sampled videos and their top-{neighbours.shape[1]} neighbours</h2>"
            f'<p id="sample">{len(chosen)} of {len(vectors)} videos drawn at random (seed {seed}).</p>'
            f"{note}{''.join(rows)}</body></html>\n")
    return write_page(out, page, cells, queries_shown=len(chosen), k_shown=neighbours.shape[1])
