"""slic.api: the index searched and videos embedded from Python, on real videos (../shared/videos) with a tiny real
encoder; the same hits as `slic search --json`, and a SlicError that says what is wrong for each bad call."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from slic.api import Answer, Hit, SlicError, UndecodableVideos, VideoSearch, load_encoder
from slic.cli import main
from tests.conftest import ROOT, SHARED_VIDEOS
from tests.test_search import FOLDER, indexed_folder

ONE = FOLDER / "video_90.mov"
BROKEN = FOLDER / "corrupted.mp4"
DEMO = SHARED_VIDEOS / "mmaction2/kinetics400/arm_wrestling/demo.mp4"  # 10 s, not indexed
GOOD = sorted(p for p in FOLDER.iterdir() if p.name != "corrupted.mp4")


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkout-like folder with its index (5 videos, a tiny encoder), the working directory meanwhile."""
    with indexed_folder(tmp_path_factory.mktemp("api")) as root:
        yield root


@pytest.fixture(scope="module")
def videos(checkout: Path) -> VideoSearch:
    return VideoSearch()  # index.out of ./params.yaml


def searched_by_cli(capsys: pytest.CaptureFixture, *args: str) -> dict:
    assert main(["search", *args, "--json"]) in (0, 1)
    return json.loads(capsys.readouterr().out)


def test_search_answers_as_slic_search_does(videos: VideoSearch, capsys: pytest.CaptureFixture) -> None:
    """Typed hits with the command's paths, similarities and classes, in its order, for a file and a stretch."""
    assert len(videos) == 5 and videos.checkpoint.endswith("best.pt") and videos.encoder.dim == 8
    answer = videos.search(ONE, k=3)
    cli = searched_by_cli(capsys, str(ONE), "-k", "3")["queries"][0]
    assert isinstance(answer, Answer) and answer.query == str(ONE) and answer.start_s is None
    assert answer.hits == tuple(Hit.of(hit) for hit in cli["results"])
    assert [hit.rank for hit in answer.hits] == [1, 2, 3] and answer.hits[0].path == str(ONE)
    assert answer.hits[0].label == "class_video_90" and answer.hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    stretch = videos.search(DEMO, k=2, start="0:02.5", end=4, other_files=True)
    cli = searched_by_cli(capsys, str(DEMO), "-k", "2", "--start", "0:02.5", "--end", "4", "--other-files")
    assert (stretch.start_s, stretch.end_s) == (2.5, 4.0)
    assert stretch.hits == tuple(Hit.of(hit) for hit in cli["queries"][0]["results"])


def test_a_query_shorter_than_a_clip_is_answered_with_a_warning(videos: VideoSearch, tmp_path: Path) -> None:
    """A photo saved as a video (1 frame) or a 3-frame clip: its clips repeat its last frame, so its hits match what
    it shows, not how it moves; the answer says so (the command prints it once), a long video's does not."""
    from slic.data.video import write_video

    still = tmp_path / "photo.mp4"
    write_video(still, np.full((1, 48, 64, 3), 200, np.uint8), fps=25)
    assert videos.search(still, k=1).note.startswith("1 frame (a still image), fewer than one clip of the encoder "
                                                     "(16 frames every 2): its clips repeat its last frame")
    assert videos.search(ONE, k=1).note.startswith("only 3 frames, fewer than one clip")
    assert videos.search(DEMO, k=1).note == ""
    assert main(["search", str(still), "-k", "1", "--html", str(tmp_path / "page.html")]) == 0  # the page says it
    assert '<span class="note">1 frame (a still image), fewer than one clip' in (tmp_path / "page.html").read_text()


def test_search_many_answers_a_folder_and_names_the_file_it_cannot_decode(videos: VideoSearch, tmp_path: Path) -> None:
    answers, failures = videos.search_many(FOLDER, k=2, per_file=1)
    assert [answer.query for answer in answers] == [str(path) for path in GOOD]
    assert all(answer.hits[0].path == answer.query for answer in answers)  # each indexed video finds itself first
    assert [path for path, _ in failures] == [str(BROKEN)] and "cannot decode" in failures[0][1]
    (tmp_path / "empty").mkdir()
    listed, failed = videos.search_many([ONE, tmp_path / "absent.mp4", tmp_path / "empty", GOOD[0]], k=1)
    assert [answer.hits[0].path for answer in listed] == [str(ONE), str(GOOD[0])]  # the others still answered
    assert failed == [(str(tmp_path / "absent.mp4"), "no such file"),
                      (str(tmp_path / "empty"), f"no videos ({', '.join(videos.extensions)}) in this folder")]


@pytest.mark.parametrize(("call", "said"), [
    (lambda v: v.search(BROKEN), "1 video(s) could not be decoded: " + str(BROKEN)),
    (lambda v: v.search(FOLDER), "is a folder: search() takes one video file; search_many() takes a folder"),
    (lambda v: v.search("/nowhere/absent.mp4"), "/nowhere/absent.mp4: no such file or folder"),
    (lambda v: v.search(DEMO, start="0:20"), "start 00:20.0 is past the end of"),
    (lambda v: v.search(DEMO, start="later"), "start 'later': expected seconds"),
    (lambda v: v.search(ONE, k=0), "k = 0: expected an integer, 1 or more"),
    (lambda v: v.search(ONE, k=2.5), "k = 2.5: expected an integer, 1 or more"),
    (lambda v: v.search_many(FOLDER, per_file=True), "per_file = True: expected an integer, 0 or more (0: no limit)"),
    (lambda v: v.search_vectors(np.zeros(8, np.float32), k="3"), "k = '3': expected an integer, 1 or more"),
    (lambda v: VideoSearch(params="nowhere.yaml"), "params = 'nowhere.yaml': no such file"),
    (lambda v: v.search_vectors(np.zeros(5, np.float32)), "vectors of shape (5,): expected (8,) or (n, 8)"),
    (lambda v: v.search_vectors(np.full((1, 8), np.nan, np.float32)), "row 0 of the vectors is not finite"),
    (lambda v: v.embed([ONE], errors="skip"), "errors = 'skip': expected 'raise' or 'nan'"),
])
def test_a_bad_call_raises_a_slic_error_that_says_what_is_wrong(videos: VideoSearch, call, said: str) -> None:
    with pytest.raises(SlicError) as raised:
        call(videos)
    assert said in str(raised.value)


def test_embedded_vectors_find_what_their_files_find_and_a_broken_file_keeps_the_others(videos: VideoSearch) -> None:
    """`embed` gives the vectors the index stage gave its videos; `search_vectors` of them answers as `search`
    does; a file that cannot be decoded is named after the others are embedded (or is a row of NaN)."""
    vectors = videos.embed(GOOD)
    stored = np.load(Path.cwd() / "embeddings.npz")
    np.testing.assert_allclose(vectors, stored["embedding"], rtol=1e-4, atol=1e-5)
    assert videos.search_vectors(vectors[1], k=3)[0] == videos.search(GOOD[1], k=3).hits
    with pytest.raises(UndecodableVideos) as raised:
        videos.embed([ONE, BROKEN, GOOD[0]])
    assert [path for path, _ in raised.value.failures] == [str(BROKEN)]
    kept = raised.value.vectors
    assert np.isfinite(kept[[0, 2]]).all() and np.isnan(kept[1]).all()
    np.testing.assert_array_equal(videos.embed([ONE, BROKEN, GOOD[0]], errors="nan"), kept)
    np.testing.assert_array_equal(videos.embed(str(ONE)), vectors[GOOD.index(ONE)][None])  # one path, not its letters


def test_load_encoder_takes_a_checkpoint_and_says_when_a_model_cannot_be_loaded(videos: VideoSearch,
                                                                                checkout: Path) -> None:
    encoder = load_encoder(checkout / "best.pt", clips=2)
    assert encoder.settings["out_dim"] == 8 and encoder.checkpoint == checkout / "best.pt"
    np.testing.assert_allclose(encoder.embed([ONE]), videos.embed([ONE]), rtol=1e-5, atol=1e-6)
    with pytest.raises(SlicError, match="no such checkpoint"):
        load_encoder(checkout / "missing.pt")
    with pytest.raises(SlicError, match="cannot load model models:/no-such-model@champion"):
        load_encoder("models:/no-such-model@champion")


def test_no_index_is_named_with_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(SlicError, match=r"no index at .*nothing.*run `dvc repro index`"):
        VideoSearch(tmp_path / "nothing")


def test_threads_searching_one_object_each_get_their_own_answer(videos: VideoSearch) -> None:
    answers: dict[str, str] = {}

    def ask(video: Path) -> None:
        answers[video.name] = videos.search(video, k=1).hits[0].path

    threads = [threading.Thread(target=ask, args=(video,)) for video in GOOD * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == {video.name: str(video) for video in GOOD}


def test_the_example_runs_every_call_on_an_index(checkout: Path) -> None:
    """examples/search_videos.py, as a user runs it from the checkout (the index of its params.yaml)."""
    result = subprocess.run([sys.executable, str(ROOT / "examples/search_videos.py"), str(ONE), "-k", "2"],
                            cwd=checkout, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "5 videos indexed" in out and f"1. 1.000  class_video_90  {ONE}" in out
    assert "hits from other files only" in out and "its vector finds the same hits: True" in out
    assert "a broken file raises UndecodableVideos: cannot decode video" in out
    assert "rows decoded [True, False]" in out
    missing = subprocess.run([sys.executable, str(ROOT / "examples/search_videos.py"), str(ONE), "--index",
                              str(checkout / "nothing")], cwd=checkout, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "error: no index at" in missing.stderr


def test_what_is_served_is_read_while_a_search_runs(videos: VideoSearch) -> None:
    """`len`, `checkpoint` (and `slic serve`'s /health) wait for a running search only when the index must be read
    again: before, a health check waited for a whole folder's search."""
    answered = threading.Event()
    with videos.lock:  # a search holds it while it runs
        thread = threading.Thread(target=lambda: (len(videos), videos.checkpoint, answered.set()), daemon=True)
        thread.start()
        assert answered.wait(timeout=60)
