"""`slic serve`: the index searched over HTTP, on real videos (../shared/videos) with a tiny real encoder."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slic.cli import main
from slic.search_service import SearchServer, SearchService
from tests.conftest import SHARED_VIDEOS
from tests.test_search import FOLDER, indexed_folder

ONE = FOLDER / "video_90.mov"
DEMO = SHARED_VIDEOS / "mmaction2/kinetics400/arm_wrestling/demo.mp4"  # 10 s, not indexed


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkout-like folder with its index, the working directory while the module runs."""
    with indexed_folder(tmp_path_factory.mktemp("serve")) as root:
        yield root


@pytest.fixture(scope="module")
def server(checkout: Path) -> Iterator[SearchServer]:
    """The service on a free port of 127.0.0.1, answering in a thread."""
    serving = SearchServer(("127.0.0.1", 0), SearchService(checkout / "index", str(checkout / "params.yaml")),
                           max_upload_mb=1, quiet=True)
    thread = threading.Thread(target=serving.serve_forever, daemon=True)
    thread.start()
    yield serving
    serving.shutdown()
    serving.server_close()


def _asked(server: SearchServer, method: str, path: str, body: bytes | None = None, token: str = "",
           content_type: str = "application/json") -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of one request, sending `token` as a bearer token when given."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    headers = {"Content-Type": content_type} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read()), dict(response.getheaders())
    finally:
        connection.close()


def ask(server: SearchServer, method: str, path: str, body: bytes | None = None,
        content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one request."""
    return _asked(server, method, path, body, content_type=content_type)[:2]


def search(server: SearchServer, request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return ask(server, "POST", "/search", json.dumps(request).encode())


def test_a_search_answers_as_slic_search_json_does(server: SearchServer, capsys: pytest.CaptureFixture) -> None:
    """The same document as `slic search --json`, hits, similarities and options alike; a folder's corrupt file is
    named among the errors while the others are answered."""
    status, served = search(server, {"paths": [str(ONE)], "k": 3})
    assert status == 200
    status, defaults = search(server, {"paths": [str(ONE)], "k": None, "per_file": None, "other_files": None})
    assert status == 200 and (defaults["k"], defaults["per_file"], defaults["other_files"]) == (10, 0, False)  # null
    assert main(["search", str(ONE), "-k", "3", "--json"]) == 0
    assert served == json.loads(capsys.readouterr().out)
    status, folder = search(server, {"path": str(FOLDER), "per_file": 1})
    assert status == 200 and len(folder["queries"]) == 5 and folder["per_file"] == 1
    assert [error["query"] for error in folder["errors"]] == [str(FOLDER / "corrupted.mp4")]
    assert all(answer["results"][0]["path"] == answer["query"] for answer in folder["queries"])


def test_one_missing_path_of_several_is_named_and_the_others_answered(server: SearchServer) -> None:
    """As `VideoSearch.search_many` and a folder's broken link: a path that gives no video is one of the answer's
    errors (before, it failed the whole request with a 400); a request in which no path gives one is still a 400."""
    status, found = search(server, {"paths": [str(ONE), "/nowhere/absent.mp4", str(FOLDER / "video_0.mov")], "k": 1})
    assert status == 200
    assert [answer["query"] for answer in found["queries"]] == [str(ONE), str(FOLDER / "video_0.mov")]
    assert found["errors"] == [{"query": "/nowhere/absent.mp4", "error": "no such file"}]
    status, none = search(server, {"paths": ["/nowhere/absent.mp4", "/nowhere/either.mp4"]})
    assert status == 400 and none["error"].startswith("/nowhere/absent.mp4: no such file or folder")


def test_an_uploaded_video_is_searched_as_its_path_is(server: SearchServer) -> None:
    """A client without the file on the service's machine sends its bytes: the same hits, under the client's name."""
    _, by_path = search(server, {"paths": [str(ONE)], "k": 2})
    status, uploaded = ask(server, "POST", "/search?k=2&name=clip.mov", ONE.read_bytes(), "video/quicktime")
    assert status == 200 and uploaded["queries"][0]["query"] == "clip.mov"
    hits = [(hit["path"], round(hit["similarity"], 4)) for hit in uploaded["queries"][0]["results"]]
    assert hits == [(hit["path"], round(hit["similarity"], 4)) for hit in by_path["queries"][0]["results"]]
    status, broken = ask(server, "POST", "/search?name=bad.mp4", b"not a video at all", "application/octet-stream")
    assert status == 200 and broken["queries"] == [] and broken["errors"][0]["query"] == "bad.mp4"
    # a phone clip with a damaged packet: answered, and the client is told (before, only the service's log was)
    glitch = SHARED_VIDEOS / "dmlc-decord" / "decode_tests" / "corrupted.mp4"
    status, damaged = ask(server, "POST", "/search?k=1&name=glitch.mp4", glitch.read_bytes(), "video/mp4")
    assert status == 200 and damaged["queries"][0]["note"].startswith("decoded past damaged packets: 1 of ")


@pytest.mark.parametrize(("method", "path", "body", "status", "said"), [
    ("POST", "/search", b"{not json", 400, "the body is not JSON"),
    ("POST", "/search", b'{"paths": ["a.mp4"], "kk": 3}', 400, "unknown key(s) kk; a search takes paths, path, k"),
    ("POST", "/search", b'{"paths": ["a.mp4"], "k": 0}', 400, "k = 0: expected 1 or more"),
    ("POST", "/search", b'{"paths": ["a.mp4"], "k": "3"}', 400, "k = '3': expected an integer"),
    ("POST", "/search", b'{"paths": "a.mp4"}', 400, "paths = 'a.mp4': expected a list"),
    ("POST", "/search", b"{}", 400, "no query: send {\"paths\""),
    ("POST", "/search", b'{"paths": ["a.mp4"], "path": "b.mp4"}', 400, "send paths (a list) or path (one), not both"),
    ("POST", "/search", b'{"paths": ["/nowhere/absent.mp4"]}', 400, "/nowhere/absent.mp4: no such file or folder"),
    ("GET", "/nope", None, 404, "no such page /nope; GET / (a page to search from), GET /health, POST /search"),
])
def test_a_bad_request_is_told_what_is_wrong(server: SearchServer, method: str, path: str, body: bytes | None,
                                             status: int, said: str) -> None:
    got, answer = ask(server, method, path, body)
    assert got == status and said in answer["error"]


def test_times_pick_a_stretch_of_one_file_and_a_too_large_upload_is_refused(server: SearchServer) -> None:
    status, stretch = search(server, {"paths": [str(DEMO)], "start": "0:02.5", "end": 4, "k": 1})
    assert status == 200 and (stretch["queries"][0]["start_s"], stretch["queries"][0]["end_s"]) == (2.5, 4.0)
    status, answer = search(server, {"paths": [str(DEMO)], "start": "0:20"})
    assert status == 400 and "start 00:20.0 is past the end of" in answer["error"]
    status, answer = search(server, {"path": str(FOLDER), "start": 1})
    assert status == 400 and "start and end pick a stretch of one video file" in answer["error"]
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.putrequest("POST", "/search?name=big.mp4")  # only the headers: the service refuses before reading
    connection.putheader("Content-Type", "video/mp4")
    connection.putheader("Content-Length", str(2 * 2**20))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "more than the 1 MiB" in json.loads(response.read())["error"]
    connection.close()


def test_clients_asking_at_once_each_get_their_own_answer(server: SearchServer) -> None:
    """Searches run one at a time on the one encoder; clients asking together wait their turn, none gets another's."""
    videos = sorted(p for p in FOLDER.iterdir() if p.name != "corrupted.mp4")
    answers: dict[str, dict[str, Any]] = {}

    def client(video: Path) -> None:
        answers[video.name] = search(server, {"paths": [str(video)], "k": 1})[1]

    threads = [threading.Thread(target=client, args=(video,)) for video in videos * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(answers) == sorted(video.name for video in videos)
    for video in videos:  # each indexed video's nearest is itself
        assert answers[video.name]["queries"][0]["results"][0]["path"] == str(video)


def test_a_page_of_thumbnails_answers_when_asked_for_html(server: SearchServer) -> None:
    """`?format=html`: the page `slic search --html` writes, an upload shown under the client's name."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.request("POST", "/search?format=html&k=2&name=my%20clip.mov", body=ONE.read_bytes(),
                       headers={"Content-Type": "video/quicktime"})
    response = connection.getresponse()
    page = response.read().decode()
    connection.close()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert 'aria-label="query my clip.mov"' in page and page.count('class="video neighbour"') == 2
    assert "slic-serve-" not in page and "data:image/webp;base64," in page  # the query's frames, not its temp path
    status, answer = ask(server, "POST", "/search?format=xml", json.dumps({"paths": [str(ONE)]}).encode())
    assert status == 400 and answer["error"] == "format = 'xml': expected json or html"


def searched_in_a_browser(server: SearchServer, token: str = "") -> None:
    """GET / in Debian's headless Chromium: pick a video (and type the token), press Search, its hits appear as
    thumbnails (skipped, or failed on CI, without Chromium)."""
    from tests.test_report import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: `make test` installs Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    host, port = server.server_address[:2]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"http://{host}:{port}/", wait_until="load")
            assert ("asks for its token" if token else "5 videos of") in page.inner_text("body")
            assert page.is_visible("#token") == bool(token)
            if token:
                page.fill("#token", token)
            page.set_input_files("#video", str(ONE))
            page.fill("#k", "3")
            page.click("button[type=submit]")
            answer = page.frame_locator("#answer")
            answer.locator('section[aria-label="query video_90.mov"]').wait_for(timeout=60_000)
            assert answer.locator(".video.neighbour").count() == 3
        finally:
            browser.close()


def test_a_browser_searches_from_the_services_own_page(server: SearchServer) -> None:
    searched_in_a_browser(server)


def test_a_rebuilt_index_is_served_without_a_restart(server: SearchServer, checkout: Path) -> None:
    """`dvc repro index` after a video was added to add_to_index/: the next request sees it."""
    _, before = ask(server, "GET", "/health")
    added = checkout / "added"
    added.mkdir()
    shutil.copy(DEMO, added / "demo.mp4")
    params = (checkout / "params.yaml").read_text().replace("add_videos: ''", f"add_videos: {added}")
    (checkout / "params-added.yaml").write_text(params)
    assert main(["--params", "params-added.yaml", "index"]) == 0
    status, after = ask(server, "GET", "/health")
    assert status == 200 and (before["vectors"], after["vectors"]) == (5, 6)
    assert after["answered"] >= before["answered"]
    _, found = search(server, {"paths": [str(added / "demo.mp4")], "k": 1})
    assert found["queries"][0]["results"][0]["path"].endswith("demo.mp4")  # the added video finds itself


def test_a_token_and_paths_under_keep_a_shared_service_to_its_clients_and_folders(checkout: Path,
                                                                                   tmp_path: Path) -> None:
    """With a token, a search without it (or with another) gets 401 and what to send, /health says only that it is
    up, the page shows nothing of the index; with paths_under, a path outside (even one that does not exist, or a
    link inside that points outside) gets 403, while uploads and paths inside are searched."""
    from slic.search_service import exposure_warnings

    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(ONE, shared / "inside.mov")
    (shared / "elsewhere.mp4").symlink_to(DEMO)
    serving = SearchServer(("127.0.0.1", 0), SearchService(checkout / "index", str(checkout / "params.yaml"),
                                                           paths_under=[shared]), quiet=True, token="s3cret")
    thread = threading.Thread(target=serving.serve_forever, daemon=True)
    thread.start()
    inside = json.dumps({"paths": [str(shared / "inside.mov")], "k": 2}).encode()
    try:
        for token in ("", "wrong"):
            status, answer, headers = _asked(serving, "POST", "/search", inside, token)
            assert status == 401 and "add the header 'Authorization: Bearer <token>'" in answer["error"]
            assert headers["WWW-Authenticate"].startswith("Bearer")
        status, answer, _ = _asked(serving, "POST", "/search", inside, "s3cret")
        assert status == 200 and answer["queries"][0]["results"][0]["path"] == str(FOLDER / "video_90.mov")
        status, answer, _ = _asked(serving, "POST", "/search?k=1&name=clip.mov", ONE.read_bytes(), "s3cret",
                                   "video/quicktime")
        assert status == 200 and answer["queries"][0]["query"] == "clip.mov"
        for outside in (str(DEMO), "/nowhere/absent.mp4", str(shared / "elsewhere.mp4")):
            status, answer, _ = _asked(serving, "POST", "/search", json.dumps({"paths": [outside]}).encode(), "s3cret")
            assert status == 403 and answer["error"].startswith(f"{outside}: outside the folders this service reads")
        status, answer, _ = _asked(serving, "POST", "/search", json.dumps({"path": str(shared)}).encode(), "s3cret")
        assert status == 403 and answer["error"].startswith(str(shared / "elsewhere.mp4"))  # found in the folder
        assert _asked(serving, "GET", "/health")[:2] == (200, {"status": "ok"})
        status, health, _ = _asked(serving, "GET", "/health", token="s3cret")
        assert status == 200 and health["vectors"] >= 5
        connection = http.client.HTTPConnection(*serving.server_address[:2], timeout=60)
        connection.request("GET", "/")
        page = connection.getresponse().read().decode()
        connection.close()
        assert "asks for its token" in page and str(checkout) not in page
        searched_in_a_browser(serving, token="s3cret")
    finally:
        serving.shutdown()
        serving.server_close()
    assert exposure_warnings("127.0.0.1", token=False, paths_under=False) == []
    said = exposure_warnings("0.0.0.0", token=False, paths_under=False)
    assert len(said) == 2 and "without a token" in said[0] and "--paths-under" in said[1]
    assert exposure_warnings("0.0.0.0", token=True, paths_under=True) == []


def test_slic_serve_says_what_stops_it(checkout: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--index", str(tmp_path / "none")]) == 2
    assert "slic serve: error: no index at" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--port", str(taken.getsockname()[1])]) == 2
    assert "cannot listen on 127.0.0.1:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--paths-under", str(tmp_path / "nowhere")])
    assert stopped.value.code == 2 and f"--paths-under {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err


def test_the_bench_answers_each_query_both_ways_alike(checkout: Path, tmp_path: Path) -> None:
    """bench/search_service.py on this checkout: a `slic search` process and the service per query, same hits."""
    from bench.search_service import main as bench

    queries = tmp_path / "queries"
    queries.mkdir()
    for name in ("video_0.mov", "video_90.mov"):
        shutil.copy(FOLDER / name, queries / name)
    out = tmp_path / "search_service.json"
    assert bench(["--checkout", str(checkout), "--queries", str(queries), "--count", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["same_answers"] and len(report["ways"]["process"]["runs_s"]) == 2
    assert report["ways"]["service"]["median_s"] > 0 and report["service_start_s"] > 0
