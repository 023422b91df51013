"""`slic search ... --html FILE`: a search's answers as one self-contained page to judge by eye.

Each query (with the stretch `--start`/`--end` chose) and its ranked hits are shown as short animated
thumbnails made from the video files themselves, a segment's from its own time range, so the page needs no
frame shard: a query from anywhere, a gallery video and a video added from `add_to_index/` look alike. A file
that cannot be decoded gets a placeholder saying why; the queries that failed are listed by name. Plain HTML
and CSS (the retrieval report's style), no script and no external asset: it opens from disk.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slic.report import STYLE, THUMB_FRAMES, THUMB_WIDTH, Thumbnail, animated_webp

SEARCH_STYLE = (".mark.neighbour { background: #59636e; } #errors li { font: 12px ui-monospace, monospace; } "
                ".note { color: #8a4b00; }")  # a query's warning (short, damaged): set apart from its name


def file_thumbnail(path: str | Path, start_s: float | None = None, end_s: float | None = None, *,
                   frames: int = THUMB_FRAMES, width: int = THUMB_WIDTH) -> Thumbnail:
    """An animated thumbnail of `frames` frames spread over a video file, or over its stretch [start_s, end_s)
    (a segment), decoded only around those frames (keyframe seeks); a file that cannot be read gives a
    Thumbnail whose `error` says why."""
    from PIL import Image

    from slic.data.video import DECODE_ERRORS, decode_error_line, decode_frames_at, file_timeline

    try:
        line = file_timeline(path)
        first = round(start_s * line.fps) if start_s is not None and line.fps else 0
        stop = min(line.frames, round(end_s * line.fps)) if end_s is not None and line.fps else line.frames
        picks = np.unique(np.linspace(first, max(first, stop - 1), max(frames, 1)).round().astype(int)).tolist()
        decoded, _ = decode_frames_at(path, picks, short_side=width, frames_of=line)
        images = [Image.fromarray(decoded[i]) for i in picks if i in decoded]
        if not images:
            return Thumbnail(None, width=width, error="no frame decoded")
        gap = (stop - 1 - first) / max(len(picks) - 1, 1)
        data, shown_width, height = animated_webp(images, width=width, seconds_apart=gap / (line.fps or 25.0))
    except DECODE_ERRORS as exc:
        return Thumbnail(None, width=width, error=decode_error_line(path, exc)[:160])
    return Thumbnail("data:image/webp;base64," + base64.b64encode(data).decode("ascii"), shown_width, height)


def write_search_html(out: str | Path, answers: Sequence[Mapping[str, Any]], errors: Sequence[Mapping[str, str]],
                      *, index: str, model: str, chosen: str = "", names: Mapping[str, str] | None = None,
                      ) -> dict[str, Any]:
    """Write the page for `slic search`'s `answers` (and the queries in `errors`) to `out`; `index` and `model`
    say what was searched with what, `chosen` how the hits were chosen (the options that leave some out, e.g.
    `--other-recordings`), so a page kept or sent on still says it; `names` shows a file under another name (an
    upload to `slic serve`, under the client's name for it). Returns {path, bytes, queries, thumbnails,
    missing_thumbnails}."""
    from slic.data.video import time_span

    thumbs: dict[tuple[str, float | None, float | None], Thumbnail] = {}
    shown = dict(names or {})

    def cell(tag: str, role: str, mark: str, video: Mapping[str, Any], caption: str = "") -> str:
        key = (str(video.get("path", video.get("query"))), video.get("start_s"), video.get("end_s"))
        if key not in thumbs:
            thumbs[key] = file_thumbnail(*key)
        thumb = thumbs[key]
        where = shown.get(key[0], key[0]) + ("" if key[1] is None else f" [{time_span(key[1], key[2])}]")
        if thumb.data_uri is None:
            picture = (f'<div class="thumb missing" role="img" aria-label="no frames: {html.escape(where)}" '
                       f'style="width:{thumb.width}px;min-height:{thumb.height}px">no frames '
                       f"{html.escape(thumb.error)}</div>")
        else:
            picture = (f'<img class="thumb" src="{thumb.data_uri}" width="{thumb.width}" height="{thumb.height}" '
                       f'alt="{html.escape(role)}: {html.escape(where)}">')
        named = f"<b>{html.escape(video['class'])}</b><br>" if video.get("class") else ""
        return (f'<{tag} class="video {role}">{picture}<div><span class="mark {role}">{mark}</span> {caption}<br>'
                f'{named}<span class="path">{html.escape(where)}</span></div></{tag}>')

    rows = []
    for answer in answers:
        hits = "".join(cell("li", "neighbour", f"#{hit['rank']}", hit, f"cos {hit['similarity']:.3f}")
                       for hit in answer["results"])
        named = answer.get("named")  # the class of its most similar labelled video (spread_labels)
        said = (f"named {html.escape(named['class'])} (margin {named['margin']:.2f})" if named else "")
        if answer.get("note"):  # shorter than one clip (a still image), decoded past damaged packets
            said += ("<br>" if said else "") + f'<span class="note">{html.escape(answer["note"])}</span>'
        label = html.escape(shown.get(answer["query"], answer["query"]))
        rows.append(f'<section class="row" aria-label="query {label}">'
                    f'{cell("figure", "query", "query", answer, said)}<ol>{hits}</ol></section>')
    failed = "".join(f"<li>{html.escape(shown.get(e['query'], e['query']))}: {html.escape(e['error'])}</li>"
                     for e in errors)
    failed = f'<h2>Queries that could not be searched</h2><ul id="errors">{failed}</ul>' if errors else ""
    title = "slic search"
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{STYLE}{SEARCH_STYLE}</style></head><body><h1>{title}</h1>"
            f"<p>{len(answers)} {'query' if len(answers) == 1 else 'queries'} against the index "
            f"<code>{html.escape(index)}</code>, embedded with <code>{html.escape(model)}</code>"
            f"{f'; hits chosen with <code>{html.escape(chosen)}</code>' if chosen else ''}; cos: cosine "
            f"similarity to the query. Each thumbnail plays {THUMB_FRAMES} frames spread over its video (a "
            f"segment's over its own stretch).</p>{''.join(rows)}{failed}</body></html>\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return {"path": str(out), "bytes": out.stat().st_size, "queries": len(answers), "thumbnails": len(thumbs),
            "missing_thumbnails": sorted(k[0] for k, t in thumbs.items() if t.data_uri is None)}
