"""`slic serve`: the search of `slic search` as a long-running HTTP service on this machine.

`slic search` loads the index and the encoder anew for every command (a few seconds before the first frame is
decoded); an application that searches often asks this service instead, which holds both in memory. It speaks JSON:

- `GET /`: a page to search from in a browser: pick a video file, its hits come back as animated thumbnails.
- `GET /health`: the index (folder, kind, how many vectors, its checkpoint) and how many searches were answered.
- `POST /search` with a JSON body `{"paths": ["clip.mp4", "folder/"], "k": 10, ...}`: the same answer as
  `slic search --json` (`queries[].results[]`, `errors[]`), with the same options (`start`, `end`, `other_files`,
  `per_file`, `other_recordings`, `per_recording`); paths are read on this machine, relative to where it runs.
- `POST /search?k=10&name=clip.mp4` with the video's bytes as the body (any other content type than JSON): a file
  that only the client has; it is written to a temporary file, searched and deleted.
- `?format=html` on either: the page `slic search --html` writes (the query and its hits as thumbnails) instead.

When `dvc repro index` rewrites the index (videos added to add_to_index/, a new encoder), the next request loads it
again, so the service needs no restart. A bad request gets status 400 and `{"error": "..."}` naming the key, value
or file and what to do. Searches run one at a time (one encoder); it binds to 127.0.0.1 unless told otherwise, as
it reads any path its clients name. Served to others (`--host 0.0.0.0`), `--token` (or SLIC_SERVE_TOKEN) makes
every search send `Authorization: Bearer <token>` (401 otherwise; `/health` then says only that it is up), and
`--paths-under DIR` keeps the paths a client may name inside those folders (403 otherwise; uploads stay open).
"""

from __future__ import annotations

import argparse
import hmac
import html
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from slic.api import SlicError, VideoSearch
from slic.index import IndexBuildError
from slic.search import (QuerySpan, SearchUsageError, answers_document, find_each, find_videos, params_defaults,
                         parse_time, query_span)

SEARCH_KEYS = {"paths": list, "path": str, "k": int, "start": (str, int, float), "end": (str, int, float),
               "other_files": bool, "per_file": int, "other_recordings": bool, "per_recording": int}


class RequestError(ValueError):
    """A request the service cannot answer as asked: status 400 (or the status given) with the message."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class SearchService:
    """The index of `index_dir` and its encoder (or `model`, refused when it is not the index's), held in memory by a
    `slic.api.VideoSearch` (read again when the index is rebuilt). `search` answers one request, `health` says what
    is served. With `paths_under`, a request may name only files and folders inside those folders."""

    def __init__(self, index_dir: str | Path, params: str = "params.yaml", model: str = "", workers: int = 0,
                 paths_under: Sequence[str | Path] = ()) -> None:
        self.paths_under = [Path(folder).resolve() for folder in paths_under]  # empty: any path of this machine
        try:
            self.videos = VideoSearch(index_dir, model=model, workers=workers,
                                      params=params if Path(params).is_file() else None)  # none: the defaults
        except SlicError as exc:  # the command says it in one line, as before
            raise SearchUsageError(str(exc)) from exc
        self.index_dir, self.model = Path(index_dir), model
        self.answered = 0

    def current(self) -> Any:
        """The index as it is now on disk; a rebuild that left no usable index answers 503."""
        try:
            return self.videos.current()
        except SlicError as exc:
            raise RequestError(str(exc), HTTPStatus.SERVICE_UNAVAILABLE) from exc

    def health(self) -> dict[str, Any]:
        """What is served: the index folder, its kind and size, the checkpoint, and the searches answered."""
        loaded = self.current()
        meta = loaded.index.meta
        return {"status": "ok", "index": str(self.index_dir), "kind": meta.get("kind"),
                "vectors": int(loaded.index.index.ntotal), "model": self.model or meta.get("checkpoint"),
                "answered": self.answered, "warnings": loaded.warnings}

    def search(self, request: dict[str, Any], upload: Path | None = None, name: str = "") -> dict[str, Any]:
        """The `slic search --json` document for a request (its keys in SEARCH_KEYS), or for the uploaded file
        `upload` (shown as `name`). A RequestError says what is wrong with the request."""
        loaded, chosen, answers, errors = self._answers(request, upload)
        if upload is not None:  # the client's name for its file, not the temporary one
            for item in [*answers, *errors]:
                item["query"] = name or "upload"
        options = {key: chosen[key] for key in ("k", "per_file", "per_recording", "other_files", "other_recordings")}
        document = answers_document(str(self.index_dir), loaded.index, self.model, options, answers, errors)
        return {**document, "warnings": loaded.warnings} if loaded.warnings else document

    def search_page(self, request: dict[str, Any], upload: Path | None = None, name: str = "") -> str:
        """The search's answers as `slic search --html` writes them: a page of animated thumbnails, the query and
        each hit (an upload under `name`; made while its temporary file exists)."""
        from slic.search_report import write_search_html

        loaded, chosen, answers, errors = self._answers(request, upload)
        said = [f"k {chosen['k']}"] + [key for key in ("other_files", "other_recordings") if chosen[key]]
        said += [f"{key} {chosen[key]}" for key in ("per_file", "per_recording") if chosen[key]]
        with tempfile.TemporaryDirectory(prefix="slic-serve-page-") as folder:
            page = write_search_html(Path(folder) / "search.html", answers, errors, index=str(self.index_dir),
                                     model=self.model or loaded.index.meta["checkpoint"], chosen=", ".join(said),
                                     names={str(upload): name or "upload"} if upload is not None else None)
            return Path(page["path"]).read_text(encoding="utf-8")

    def _answers(self, request: dict[str, Any], upload: Path | None,
                 ) -> tuple[Any, dict[str, Any], list[dict[str, Any]], list[dict[str, str]]]:
        """(the index searched, the request's options, the answers, the queries that failed)."""
        chosen = checked_request(request, upload is not None)
        self.current()  # a rebuild that cannot be read: 503 before the request's files are looked at
        try:
            for path in chosen["paths"]:
                self.check_readable(path)  # before it is looked at: whether it exists is not said outside
            videos, missing = ([upload], []) if upload is not None else self.videos_named(chosen["paths"])
            if upload is None:
                for video in videos:
                    self.check_readable(video)  # a link inside that points outside
            spans = request_spans(chosen, videos, from_folder=upload is None and Path(chosen["paths"][0]).is_dir())
            loaded, answers, errors = self.videos.find(
                videos, k=chosen["k"], spans=spans, other_files=chosen["other_files"], per_file=chosen["per_file"],
                other_recordings=chosen["other_recordings"], per_recording=chosen["per_recording"])
        except SearchUsageError as exc:
            raise RequestError(str(exc)) from exc
        except SlicError as exc:  # the index changed between the check and the search, and cannot be read
            raise RequestError(str(exc), HTTPStatus.SERVICE_UNAVAILABLE) from exc
        with self.videos.lock:
            self.answered += 1
        return loaded, chosen, answers, [*missing, *errors]

    def videos_named(self, paths: list[str]) -> tuple[list[Path], list[dict[str, str]]]:
        """(the videos of the request's paths, {query, error} for each path that gives none): one such path among
        others is named in the answer's errors while the others are searched; a request in which no path gives a
        video is a 400 naming the first (a single path that is not there: the request itself is wrong)."""
        videos, missing = find_each(paths, self.videos.extensions)
        if not videos:
            find_videos(paths[0], self.videos.extensions)  # it gives none: its SearchUsageError, the 400's line
        return videos, missing

    def check_readable(self, path: str | Path) -> None:
        """A 403 RequestError when `paths_under` is set and `path` (links followed) lies outside each folder."""
        if not self.paths_under:
            return
        resolved = Path(path).resolve()
        if not any(resolved.is_relative_to(folder) for folder in self.paths_under):
            folders = ", ".join(str(folder) for folder in self.paths_under)
            raise RequestError(f"{path}: outside the folders this service reads ({folders}: slic serve "
                               "--paths-under); send the video's bytes instead", HTTPStatus.FORBIDDEN)


def checked_request(request: dict[str, Any], uploaded: bool) -> dict[str, Any]:
    """The request's options with their defaults, each checked; a RequestError naming the key otherwise."""
    if not isinstance(request, dict):
        raise RequestError("the body must be a JSON object, e.g. {\"paths\": [\"clip.mp4\"], \"k\": 10}")
    unknown = sorted(set(request) - set(SEARCH_KEYS))
    if unknown:
        raise RequestError(f"unknown key(s) {', '.join(unknown)}; a search takes {', '.join(SEARCH_KEYS)}")
    request = {key: value for key, value in request.items() if value is not None}  # null: the default
    for key, value in request.items():
        kind = SEARCH_KEYS[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise RequestError(f"{key} = {value!r}: expected {_kind_name(kind)}")
    if request.get("paths") and request.get("path"):
        raise RequestError("send paths (a list) or path (one), not both")
    paths = request.get("paths") or ([request["path"]] if request.get("path") else [])
    if uploaded and paths:
        raise RequestError("an uploaded video is the query: send paths in a JSON body instead, not both")
    if not uploaded and not paths:
        raise RequestError("no query: send {\"paths\": [\"clip.mp4\"]} (files or folders on the service's machine), "
                           "or POST the video's bytes")
    if not all(isinstance(path, str) and path for path in paths):
        raise RequestError(f"paths = {paths!r}: expected a list of file or folder paths")
    chosen = {"paths": paths, "k": request.get("k", 10), "start": request.get("start"), "end": request.get("end"),
              "other_files": request.get("other_files", False), "per_file": request.get("per_file", 0),
              "other_recordings": request.get("other_recordings", False),
              "per_recording": request.get("per_recording", 0)}
    if chosen["k"] < 1:
        raise RequestError(f"k = {chosen['k']}: expected 1 or more")
    for key in ("per_file", "per_recording"):
        if chosen[key] < 0:
            raise RequestError(f"{key} = {chosen[key]}: expected 0 (no limit) or more")
    return chosen


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {list: "a list", str: "a string", int: "an integer", bool: "true or false", float: "a number"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def request_spans(chosen: dict[str, Any], videos: list[Path], from_folder: bool) -> list[QuerySpan | None] | None:
    """`start`/`end` as the one query file's frames (None: every query whole), as `slic search --start/--end`."""
    if chosen["start"] is None and chosen["end"] is None:
        return None
    if len(videos) != 1 or from_folder:
        raise RequestError(f"start and end pick a stretch of one video file; the request names {len(videos)} videos")
    start, end = (None if chosen[key] is None else parse_time(str(chosen[key]), key) for key in ("start", "end"))
    return [query_span(videos[0], start, end, names=("start", "end"))]


def upload_options(query: str) -> tuple[dict[str, Any], str]:
    """The search options of an upload's URL (`?k=5&other_files=true&name=clip.mp4`) as a request, and its name."""
    fields = {key: values[-1] for key, values in parse_qs(query, keep_blank_values=True).items()}
    name = fields.pop("name", "")
    fields.pop("format", None)  # how to answer, not what to search (`answer_format`)
    request: dict[str, Any] = {}
    for key, text in fields.items():
        kind = SEARCH_KEYS.get(key)
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise RequestError(f"{key} = {text!r}: expected true or false")
            request[key] = text.lower() in ("true", "1")
        elif kind is int:
            try:
                request[key] = int(text)
            except ValueError:
                raise RequestError(f"{key} = {text!r}: expected an integer") from None
        else:
            request[key] = text  # start, end; an unknown key is named by checked_request
    return request, name


def answer_format(query: str) -> str:
    """`?format=html` (a page of thumbnails) or json (the default) from a request's URL."""
    chosen = (parse_qs(query).get("format") or ["json"])[-1]
    if chosen not in ("json", "html"):
        raise RequestError(f"format = {chosen!r}: expected json or html")
    return chosen


FORM_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>slic serve</title>
<style>body {{ font: 14px system-ui, sans-serif; margin: 1.5em; }} iframe {{ width: 100%; height: 80vh; border: 0; }}
#status {{ color: #9a1c1c; }}</style></head><body>
<h1>Search the index</h1>
<p>{served} Pick a video: its most similar indexed videos come back as animated thumbnails.</p>
<form id="search"><input type="file" id="video" accept="video/*" required>
<label>k <input type="number" id="k" value="10" min="1" style="width: 4em"></label>
<label{token_shown}>token <input type="password" id="token" autocomplete="current-password"></label>
<button type="submit">Search</button></form>
<p id="status" role="status"></p><iframe id="answer" title="the hits"></iframe>
<script>
document.getElementById("search").addEventListener("submit", async (event) => {{
  event.preventDefault();
  const file = document.getElementById("video").files[0];
  const status = document.getElementById("status");
  status.textContent = "searching " + file.name + " ...";
  const url = "/search?format=html&k=" + encodeURIComponent(document.getElementById("k").value) +
              "&name=" + encodeURIComponent(file.name);
  const token = document.getElementById("token").value;
  const response = await fetch(url, {{method: "POST", body: file,
                                      headers: token ? {{"Authorization": "Bearer " + token}} : {{}}}});
  const text = await response.text();
  if (!response.ok) {{ status.textContent = JSON.parse(text).error; return; }}
  status.textContent = "";
  document.getElementById("answer").srcdoc = text;
}});
</script></body></html>
"""


class SearchHandler(BaseHTTPRequestHandler):
    """GET /health and POST /search on a `SearchService` (the server's `service`)."""

    server: SearchServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        if path == "/":
            self._answer(self._form)
        elif path == "/health":
            self._answer(self.server.service.health if self._authorised() else lambda: {"status": "ok"})
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such page {self.path}; GET / (a page to search from), "
                                                        "GET /health, POST /search"})

    def _form(self) -> str:
        """The search page: what is served, or with a token set a field for it (what is served is not shown)."""
        if self.server.token:
            return FORM_PAGE.format(served="This service asks for its token.", token_shown="")
        health = self.server.service.health()
        shown = {key: html.escape(str(health[key])) for key in ("vectors", "index", "model")}
        return FORM_PAGE.format(served=f"{shown['vectors']} videos of <code>{shown['index']}</code>, embedded with "
                                       f"<code>{shown['model']}</code>.", token_shown=' hidden')

    def _authorised(self) -> bool:
        """Whether the request may search: no token is set, or it sends `Authorization: Bearer <the token>`."""
        if not self.server.token:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.server.token.encode())

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if url.path != "/search":
            self._drain()
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no such page {url.path}; POST /search"})
            return
        if not self._authorised():
            self.close_connection = True  # its body is not read
            self._send(HTTPStatus.UNAUTHORIZED, {"error": "this service searches for those who send its token: add "
                                                          "the header 'Authorization: Bearer <token>' (the token "
                                                          "slic serve was given: --token or SLIC_SERVE_TOKEN)"},
                       headers={"WWW-Authenticate": 'Bearer realm="slic serve"'})
            return
        self._answer(lambda: self._search(url.query))

    def _search(self, query: str) -> dict[str, Any] | str:
        length = self._length()
        service = self.server.service
        search = service.search_page if answer_format(query) == "html" else service.search
        kind = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            try:
                request = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(f"the body is not JSON ({exc})") from None
            return search(request)
        request, name = upload_options(query)
        if length == 0:
            raise RequestError("an empty upload: POST the video's bytes, or a JSON body with paths")
        suffix = Path(name).suffix if Path(name).suffix else ".mp4"
        with tempfile.TemporaryDirectory(prefix="slic-serve-") as folder:
            upload = Path(folder) / f"query{suffix}"
            with upload.open("wb") as handle:
                left = length
                while left:
                    chunk = self.rfile.read(min(left, 1 << 20))
                    if not chunk:
                        raise RequestError(f"the upload ended after {length - left} of {length} bytes")
                    handle.write(chunk)
                    left -= len(chunk)
            return search(request, upload=upload, name=name)

    def _length(self) -> int:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise RequestError("Content-Length is not a number") from None
        if length > self.server.max_upload_bytes:
            limit = self.server.max_upload_bytes // 2**20
            raise RequestError(f"the body is {length / 2**20:.0f} MiB, more than the {limit} MiB this service takes "
                               "(slic serve --max-upload-mb)", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return length

    def _drain(self) -> None:
        """Read a body no one will use, so the connection stays in step."""
        try:
            length = min(int(self.headers.get("Content-Length", "0")), self.server.max_upload_bytes)
        except ValueError:
            length = 0
        self.rfile.read(length)

    def _answer(self, make: Callable[[], dict[str, Any] | str]) -> None:
        try:
            self._send(HTTPStatus.OK, make())
        except RequestError as exc:
            self.close_connection = True  # an unread body may remain
            self._send(exc.status, {"error": str(exc)})
        except Exception as exc:  # noqa: BLE001 - the service stays up; the client is told, the log keeps the rest
            self.log_error("search failed: %r", exc)
            self.close_connection = True
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(exc).__name__}: {exc}"})

    def _send(self, status: HTTPStatus, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> None:
        """A JSON answer, or a page (`body` as text), with any other `headers`."""
        page = isinstance(body, str)
        data = body.encode() if page else (json.dumps(body, indent=2) + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8" if page else "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        if not self.server.quiet:
            super().log_message(format, *args)


class SearchServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer that carries the service, its limits and its token ('' : none asked) to its handlers."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], service: SearchService, max_upload_mb: int = 1024,
                 quiet: bool = False, token: str = "") -> None:
        super().__init__(address, SearchHandler)
        self.service, self.max_upload_bytes, self.quiet = service, max_upload_mb * 2**20, quiet
        self.token = token


def exposure_warnings(host: str, token: bool, paths_under: bool) -> list[str]:
    """What a service listening beyond this machine leaves open: searches without a token, any path read."""
    if host in ("localhost", "::1") or host.startswith("127."):
        return []
    said = []
    if not token:
        said.append(f"listening on {host} without a token: anyone who reaches the port may search (set "
                    "SLIC_SERVE_TOKEN or --token)")
    if not paths_under:
        said.append("clients may name any path of this machine, and any video there is decoded (--paths-under DIR "
                    "keeps them inside DIR)")
    return said


def run_serve(argv: list[str], params: str = "params.yaml") -> int:
    """`slic serve [--host 127.0.0.1] [--port 8765] [--index DIR] [--model URI] [--token T] [--paths-under DIR]`;
    returns the exit code."""
    from slic.config import ConfigError

    parser = argparse.ArgumentParser(prog="slic serve", description="answer searches of the index over HTTP "
                                     "(GET /health, POST /search), holding the index and its encoder in memory")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                        "only; the service reads any path a client names)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free one)")
    parser.add_argument("--index", default="", help="index folder (default: index.out of params.yaml)")
    parser.add_argument("--model", default="", help="a checkpoint file or an MLflow model URI with the index's "
                        "weights (default: the checkpoint the index was built with)")
    parser.add_argument("--workers", type=int, default=0, help="processes decoding a folder's next queries while "
                        "the encoder embeds one (default 0)")
    parser.add_argument("--max-upload-mb", type=int, default=1024, help="largest uploaded video (default 1024)")
    parser.add_argument("--token", default=os.environ.get("SLIC_SERVE_TOKEN", ""),
                        help="searches must send 'Authorization: Bearer TOKEN' (default: SLIC_SERVE_TOKEN, which "
                             "keeps it out of the process list; none: anyone who reaches the port may search)")
    parser.add_argument("--paths-under", action="append", default=[], metavar="DIR",
                        help="a client may name only files and folders inside DIR (repeatable; default: any path of "
                             "this machine); uploads are not limited")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    if args.max_upload_mb < 1 or args.workers < 0:
        parser.error("--max-upload-mb must be >= 1 and --workers >= 0")
    if missing := [folder for folder in args.paths_under if not Path(folder).is_dir()]:
        parser.error(f"--paths-under {missing[0]}: no such folder")
    try:
        index_dir = args.index or params_defaults(params)[1]
        service = SearchService(index_dir, params, args.model, args.workers, args.paths_under)
        server = SearchServer((args.host, args.port), service, args.max_upload_mb, token=args.token)
    except (ConfigError, IndexBuildError, SearchUsageError) as exc:
        print(f"slic serve: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the port is taken, or the address is not this machine's
        print(f"slic serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; pick another "
              "--port (0: any free one)", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    health = service.health()
    for line in health["warnings"]:
        print(f"slic serve: {line}", file=sys.stderr)
    for line in exposure_warnings(args.host, bool(args.token), bool(args.paths_under)):
        print(f"slic serve: warning: {line}", file=sys.stderr)
    asks = "; searches need the token" if args.token else ""
    print(f"slic serve: {health['vectors']} videos of {index_dir} ({health['kind']}), encoder {health['model']}, on "
          f"http://{host}:{port} (POST /search, GET /health{asks}); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0

