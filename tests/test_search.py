"""`slic index` + `slic search` on real videos (../shared/videos, used in place) with a tiny real encoder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.cli import main
from slic.config import PretrainConfig
from slic.data.frames import content_fingerprint
from slic.file_hash import file_sha256
from tests.conftest import SHARED_VIDEOS, decode_tests_folder

FOLDER = decode_tests_folder()  # five good videos and corrupted.mp4 (it probes, it cannot be decoded)
TINY_ENCODER = PretrainConfig(hidden_dim=16, out_dim=8, size=16, clip_len=16)


def make_search_folder(root: Path) -> None:
    """A checkout-like folder in `root`: tiny checkpoint, embed-stage npz of the good videos, manifest, params (the
    index stage not run yet)."""
    from slic.pretrain import TrainState, build_encoder, save_checkpoint
    from slic.serving import VideoEncoder

    checkpoint = root / "best.pt"
    save_checkpoint(checkpoint, build_encoder(TINY_ENCODER), None, TrainState(), TINY_ENCODER)
    good = sorted(p for p in FOLDER.iterdir() if p.name != "corrupted.mp4")
    ids = [p.stem for p in good]
    np.savez(root / "embeddings.npz", video_id=np.array(ids), label=np.arange(len(ids)),
             class_name=np.array(ids), split=np.array(["train"] * len(ids)),
             embedding=VideoEncoder(checkpoint, clips=2).embed_paths(good))
    pd.DataFrame({"video_id": ids, "path": [str(p) for p in good], "class": [f"class_{i}" for i in ids]}).to_csv(
        root / "validated.csv", index=False)
    (root / "params.yaml").write_text(
        f"embed:\n  checkpoint: {checkpoint}\n  clips: 2\n  out: {root / 'embeddings.npz'}\n"
        f"index:\n  manifest: {root / 'validated.csv'}\n  out: {root / 'index'}\n  add_videos: ''\n")


@contextmanager
def indexed_folder(root: Path) -> Iterator[Path]:
    """`make_search_folder` in `root` with its index built, `root` the working directory until the block ends."""
    if not (FOLDER / "corrupted.mp4").is_file():
        pytest.skip(f"real sample videos not found at {FOLDER}")
    make_search_folder(root)
    previous = Path.cwd()
    os.chdir(root)
    try:
        assert main(["index"]) == 0
        yield root
    finally:
        os.chdir(previous)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkout-like folder (`make_search_folder`) with its index built."""
    with indexed_folder(tmp_path_factory.mktemp("search")) as root:
        yield root


def test_index_stage_writes_report_and_rows(workdir: Path) -> None:
    report = json.loads((workdir / "reports/index.json").read_text())
    assert (report["kind"], report["vectors"], report["dim"], report["device"]) == ("flat", 5, 8, "cpu")
    # no frame shards in this folder: the lineage names the video files' bytes instead
    files = {p.stem: file_sha256(p) for p in FOLDER.iterdir() if p.name != "corrupted.mp4"}
    assert report["gallery_fingerprint_of"] == "videos"
    assert report["gallery_fingerprint"] == content_fingerprint(files)
    rows = pd.read_csv(workdir / "index/rows.csv")
    assert list(rows.columns) == ["row", "video_id", "path", "class", "label"]
    assert all(Path(p).stem == v and c == f"class_{v}" for p, v, c in zip(rows["path"], rows["video_id"], rows["class"]))


def test_search_folder_answers_good_files_and_names_the_corrupt_one(
        workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", str(FOLDER), "-k", "3"]) == 1  # one query failed
    out, err = capsys.readouterr()
    error, warning = err.strip().splitlines()
    assert "corrupted.mp4" in error and error.startswith("slic search: error:")
    # decord's test clips are 3 or 4 frames long, less than a clip: said once for the folder
    assert warning.startswith("slic search: warning: 5 of the 5 queries were embedded with a warning (e.g. ")
    assert warning.endswith("fewer than one clip of the encoder (16 frames every 2): its clips repeat its last frame, so its "
                            "hits match what it shows more than how it moves)")
    tables = out.strip().split("\n\n")
    assert len(tables) == 5
    for table in tables:
        lines = table.splitlines()
        query = lines[0].removeprefix("query: ")
        assert lines[1].split() == ["rank", "similarity", "class", "path"] and len(lines) == 2 + 3
        first = lines[2].split()  # the query itself is indexed: rank 1, cosine 1, its own class and path
        assert first == ["1", "1.0000", f"class_{Path(query).stem}", query]


def test_a_broken_link_in_a_searched_folder_is_named_not_left_out(workdir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """A link whose target is gone (a NAS that is down) is one of the errors, in its place, said in words a user
    can act on; before, a folder search left it out without a word."""
    (tmp_path / "a_gone.mp4").symlink_to(tmp_path / "unmounted" / "clip.mp4")
    (tmp_path / "b.mov").symlink_to(FOLDER / "video_0.mov")
    assert main(["search", str(tmp_path), "-k", "1", "--json"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["errors"] == [{"query": str(tmp_path / "a_gone.mp4"), "error": "broken link: it points to "
                              f"{tmp_path / 'unmounted' / 'clip.mp4'}, which does not exist"}]
    assert [answer["query"] for answer in doc["queries"]] == [str(tmp_path / "b.mov")]
    assert f"slic search: error: {tmp_path / 'a_gone.mp4'}: broken link" in err


def test_a_query_decoded_past_a_damaged_packet_is_answered_with_the_note(
        workdir: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    """../shared/videos' corrupted.mp4 loses one packet of 50: it is answered, and the answer's `note` says its
    frames were decoded past a damaged packet (a service's client sees it, not only the service's log); the
    command says it once, as the note's warning line."""
    glitch = SHARED_VIDEOS / "dmlc-decord" / "decode_tests" / "corrupted.mp4"
    with caplog.at_level("WARNING", logger="slic.data.video"):
        assert main(["search", str(glitch), "-k", "2", "--json"]) == 0
    out, err = capsys.readouterr()
    note = json.loads(out)["queries"][0]["note"]
    assert note.startswith("decoded past damaged packets: 1 of ") and "the first lost is frame 30: InvalidData" in note
    assert err.count("packets could not be decoded") == 1 and f"warning: {glitch}: decoded past" in err
    assert "packets could not be decoded" not in caplog.text  # not logged a second time by the decoder


def test_search_json_is_one_document(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", str(FOLDER), "--json"]) == 1
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert [e["query"] for e in doc["errors"]] == [str(FOLDER / "corrupted.mp4")]
    assert len(doc["queries"]) == 5 and doc["k"] == 10 and doc["kind"] == "flat"
    for answer in doc["queries"]:
        hits = answer["results"]
        assert len(hits) == 5 and [h["rank"] for h in hits] == [1, 2, 3, 4, 5]  # k=10 > 5 indexed videos
        assert hits[0]["path"] == answer["query"] and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4)
        assert all(a["similarity"] >= b["similarity"] for a, b in zip(hits, hits[1:]))
    one = FOLDER / "video_90.mov"
    assert main(["search", str(one), "--json", "-k", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["errors"] == [] and [len(a["results"]) for a in doc["queries"]] == [2]


def test_a_folder_decoded_by_loader_workers_gets_the_same_answers_and_errors(
        workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """embed.workers (2 here) processes decode the queries: the same document as decoding them one at a time."""
    docs = []
    for workers in ([], ["--workers", "0"]):
        assert main(["search", str(FOLDER), "--json", "-k", "3", *workers]) == 1
        docs.append(json.loads(capsys.readouterr().out))
    assert docs[0] == docs[1]
    assert [a["query"] for a in docs[0]["queries"]] == sorted(str(p) for p in FOLDER.iterdir() if p.name !=
                                                              "corrupted.mp4")
    with pytest.raises(SystemExit) as exited:
        main(["search", str(FOLDER), "--workers", "-1"])
    assert exited.value.code == 2 and "--workers must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["search", str(FOLDER), "--per-file", "-1"])
    assert exited.value.code == 2 and "--per-file must be >= 0 (0: no limit), got -1" in capsys.readouterr().err
    assert docs[0]["per_file"] == 0  # the document says how its hits were chosen


def test_search_html_shows_each_query_and_its_hits_as_thumbnails_and_names_the_failed_one(
        workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import html
    import re

    page_path = tmp_path / "hits.html"
    assert main(["search", str(FOLDER), "-k", "2", "--html", str(page_path)]) == 1  # corrupted.mp4 failed
    err = capsys.readouterr().err
    assert f"slic search: wrote {page_path} (5 queries, 5 thumbnails, " in err  # 5 videos, each made once
    page = html.unescape(page_path.read_text())
    sections = re.findall(r'<section class="row" aria-label="query ([^"]+)">(.*?)</section>', page)
    good = sorted(str(p) for p in FOLDER.iterdir() if p.name != "corrupted.mp4")
    assert [query for query, _ in sections] == good
    for query, body in sections:
        assert body.count('<li class="video neighbour">') == 2 and body.count("data:image/webp;base64,") == 3
        assert f'alt="neighbour: {query}"' in body  # the query is indexed: its own first hit
    assert re.search(r'<ul id="errors"><li>[^<]*corrupted\.mp4: cannot decode video', page)
    assert "hits chosen with <code>-k 2</code>" in page  # a page kept or sent on says how its hits were chosen
    assert main(["search", str(FOLDER / "video_90.mov"), "-k", "2", "--other-files", "--per-recording", "1",
                 "--html", str(page_path)]) == 0
    assert "hits chosen with <code>-k 2 --other-files --per-recording 1</code>" in page_path.read_text()
    assert "<script" not in page and "http" not in page  # self-contained, opens from disk


def test_labelled_videos_name_each_query_by_its_most_similar_one(workdir: Path, capsys: pytest.CaptureFixture,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With the spread_labels table listing given videos, every query is named by the most similar of them, in the
    tables, the JSON document and the page; another encoder (--model) is refused, no table names nothing."""
    ids = sorted(p.stem for p in FOLDER.iterdir() if p.name != "corrupted.mp4")
    given, named = ids[:2], ids[2]  # two labelled videos; a third is named by the nearer of them
    table = workdir / "reports/spread_labels.csv"
    rows = [[v, f"kind_{v}", "given"] for v in given] + [[named, "kind_x", "nearest"]]
    pd.DataFrame(rows, columns=["video_id", "class", "source"]).to_csv(table, index=False)
    try:
        data = np.load(workdir / "embeddings.npz")
        vectors = {v: e / np.linalg.norm(e) for v, e in zip(data["video_id"], data["embedding"])}
        sims = [float(vectors[named] @ vectors[v]) for v in given]
        like = given[int(np.argmax(sims))]
        query = next(p for p in FOLDER.iterdir() if p.stem == named)
        assert main(["search", str(query), "-k", "2"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[1].startswith(f"named: kind_{like} (like {like}, similarity ")
        assert f"margin {abs(sims[0] - sims[1]):.4f}" in out[1] and out[2].split() == ["rank", "similarity", "class",
                                                                                      "path"]
        assert main(["search", str(query), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["queries"][0]["named"]["class"] == f"kind_{like}" and doc["queries"][0]["named"]["like"] == like
        page = workdir / "named.html"
        assert main(["search", str(query), "-k", "1", "--html", str(page)]) == 0
        assert f"named kind_{like} (margin " in page.read_text() and "named: " in capsys.readouterr().out
        assert main(["search", str(query), "-k", "1", "--model", str(workdir / "best.pt")]) == 0  # the index's
        assert "named: " in capsys.readouterr().out
        from dataclasses import replace

        from slic.pretrain import TrainState, build_encoder, save_checkpoint

        another = replace(TINY_ENCODER, seed=TINY_ENCODER.seed + 1)  # other weights: not the labelled videos' kind
        other = workdir / "other.pt"
        save_checkpoint(other, build_encoder(another), None, TrainState(), another)
        assert main(["search", str(query), "-k", "1", "--model", str(other)]) == 2  # another embedding space
        out, err = capsys.readouterr()
        assert out == "" and f"error: --model {other} is another encoder than the one that embedded the index" in err
        # An index from before it recorded its checkpoint's sha256 cannot tell: it answers, but names nothing.
        import shutil

        old = workdir / "old_index"
        shutil.copytree(workdir / "index", old)
        meta = json.loads((old / "index.json").read_text())
        (old / "index.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "checkpoint_sha256"}))
        assert main(["search", str(query), "-k", "1", "--index", str(old), "--model", str(other)]) == 0
        out, err = capsys.readouterr()
        assert "named:" not in out and "queries not named by your labels: --model" in err
    finally:
        table.unlink()
    assert main(["search", str(query), "-k", "1"]) == 0
    assert "named:" not in capsys.readouterr().out  # nothing labelled: no name


def test_search_from_another_directory_finds_the_checkouts_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """An index built in a checkout records its paths relative to it (videos, checkpoint): `slic search --index`
    run elsewhere reads them under that checkout, and without --index says where it looked."""
    import shutil

    from slic.pretrain import TrainState, build_encoder, save_checkpoint
    from slic.serving import VideoEncoder

    checkout = tmp_path / "checkout"
    (checkout / "videos").mkdir(parents=True)
    good = sorted(p for p in FOLDER.iterdir() if p.name != "corrupted.mp4")[:3]
    for video in good:
        shutil.copy(video, checkout / "videos" / video.name)
    monkeypatch.chdir(checkout)
    save_checkpoint(Path("best.pt"), build_encoder(TINY_ENCODER), None, TrainState(), TINY_ENCODER)
    ids, paths = [p.stem for p in good], [f"videos/{p.name}" for p in good]
    np.savez("embeddings.npz", video_id=np.array(ids), label=np.full(3, -1), class_name=np.array([""] * 3),
             split=np.array(["train"] * 3), embedding=VideoEncoder(Path("best.pt"), clips=2).embed_paths(paths))
    pd.DataFrame({"video_id": ids, "path": paths, "class": [""] * 3}).to_csv("validated.csv", index=False)
    Path("params.yaml").write_text("embed:\n  checkpoint: best.pt\n  clips: 2\n  out: embeddings.npz\n"
                                   "index:\n  manifest: validated.csv\n  out: data/index\n  add_videos: ''\n")
    assert main(["index"]) == 0
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    query = checkout / "videos" / good[0].name
    assert main(["search", str(query), "--index", str(checkout / "data" / "index"), "--json", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert [h["path"] for h in hits][0] == str(query) and all(Path(h["path"]).is_file() for h in hits)
    assert main(["search", str(query), "--index", str(checkout / "data" / "index"), "--other-files", "--json"]) == 0
    assert str(query) not in [h["path"] for h in json.loads(capsys.readouterr().out)["queries"][0]["results"]]
    assert main(["search", str(query)]) == 2  # no params.yaml here: the default data/index, which is not here
    assert f"no index at data/index under {elsewhere}" in capsys.readouterr().err


def test_per_recording_and_other_recordings_count_an_indexed_clips_siblings_as_its_recording(tmp_path: Path) -> None:
    """An index of clips of two recordings (as UCF101's groups, or what manifest.group_pattern names) and one file
    of its own: --other-files leaves out only the query's file, --other-recordings its sibling clips too, and
    --per-recording caps each recording's hits. An index built before recordings were stored counts files."""
    from slic.config import IndexConfig
    from slic.index import ROWS_FILE, build_stage, load_index
    from slic.search import search_videos
    from tests.conftest import StubEncoder

    ids = ["a1", "a2", "a3", "b1", "b2", "c"]
    table = pd.DataFrame({"video_id": ids, "path": [f"/clips/{i}.mp4" for i in ids], "class": "",
                          "group": ["A", "A", "A", "B", "B", "c"]})
    table.to_csv(tmp_path / "validated.csv", index=False)
    axis = np.eye(8, dtype=np.float32)
    query = axis[0]  # a1's own vector: its siblings nearest, then B, then c
    vectors = np.stack([query, query + 0.1 * axis[1], query + 0.2 * axis[1], query + 0.5 * axis[2],
                        query + 0.6 * axis[2], query + 0.9 * axis[3]])
    np.savez(tmp_path / "embeddings.npz", video_id=np.array(ids), label=np.full(6, -1), class_name=np.array([""] * 6),
             split=np.array(["train"] * 6), embedding=vectors)
    build_stage(IndexConfig(manifest=str(tmp_path / "validated.csv"), kind="flat", out=str(tmp_path / "index")),
                embeddings=str(tmp_path / "embeddings.npz"), checkpoint=str(tmp_path / "none.pt"), clips=2)
    loaded = load_index(tmp_path / "index")
    assert loaded.rows["recording"].tolist() == ["A", "A", "A", "B", "B", "c"]

    def hits(index=loaded, **options: object) -> list[str]:
        answers, _ = search_videos([Path("/clips/a1.mp4")], StubEncoder(lambda _: query), index, k=3, **options)
        return [hit["video_id"] for hit in answers[0]["results"]]

    assert hits() == ["a1", "a2", "a3"]
    assert hits(other_files=True) == ["a2", "a3", "b1"]
    assert hits(other_recordings=True) == ["b1", "b2", "c"]
    assert hits(per_recording=1) == ["a1", "b1", "c"]
    assert hits(per_recording=1, other_files=True) == ["a2", "b1", "c"]
    assert hits(per_recording=2, per_file=1) == ["a1", "a2", "b1"]
    answers, _ = search_videos([Path("/elsewhere/q.mp4")], StubEncoder(lambda _: query), loaded, k=2,
                               other_recordings=True)  # a file not in the index has no recording to leave out
    assert [(h["video_id"], h["recording"]) for h in answers[0]["results"]] == [("a1", "A"), ("a2", "A")]
    assert answers[0]["in_index"] is False  # the CLI says so
    indexed, _ = search_videos([Path("/clips/a1.mp4")], StubEncoder(lambda _: query), loaded, k=1,
                               other_recordings=True)
    assert indexed[0]["in_index"] is True and "in_index" not in search_videos(
        [Path("/clips/a1.mp4")], StubEncoder(lambda _: query), loaded, k=1)[0][0]  # only with --other-recordings
    rows = pd.read_csv(tmp_path / "index" / ROWS_FILE)  # as an index from before this column
    rows.drop(columns="recording").to_csv(tmp_path / "index" / ROWS_FILE, index=False)
    old = load_index(tmp_path / "index")
    assert hits(old, per_recording=1) == ["a1", "a2", "a3"] and hits(old, other_recordings=True) == ["a2", "a3", "b1"]


def test_search_usage_errors_say_what_to_run(workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["search", str(FOLDER), "--index", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `dvc repro index` first" in err
    assert main(["search", str(tmp_path / "absent.mp4")]) == 2
    assert "absent.mp4: no such file or folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["search", str(FOLDER), "--per-recording", "-2"])
    assert exited.value.code == 2 and "--per-recording must be >= 0 (0: no limit), got -2" in capsys.readouterr().err
    assert main(["search", str(FOLDER / "video_90.mov"), "--per-recording", "1", "--json"]) == 0  # rows.csv has
    out, err = capsys.readouterr()  # no recordings here (the manifest has no group column): files count, said once
    assert err.count("\n") == 2 and "only 3 frames, fewer than one clip" in err  # and the 3-frame query's warning
    assert "built before the index stored recordings: each file counts as a recording" in err
    doc = json.loads(out)
    assert (doc["per_recording"], doc["other_recordings"]) == (1, False) and len(doc["queries"][0]["results"]) == 5
    outside = SHARED_VIDEOS / "mmaction2/kinetics400/arm_wrestling/demo.mp4"
    assert main(["search", str(outside), "--other-recordings"]) == 0
    assert f"--other-recordings: {outside} is not in the index, so its recording is unknown" in capsys.readouterr().err
    assert main(["search", str(FOLDER / "video_90.mov"), "--other-recordings"]) == 0
    assert "not in the index" not in capsys.readouterr().err


def test_search_with_the_registered_champion(workdir: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from slic.config import PromoteConfig
    from slic.promote import promote

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SLIC_PARENT_RUN_ID", raising=False)
    report = workdir / "pretrain.json"
    report.write_text(json.dumps({"best_val_recall_at_1": 0.5}))
    promote(PromoteConfig(checkpoint=str(workdir / "best.pt")), report)
    query = FOLDER / "video_180.mov"
    assert main(["search", str(query), "--json", "--model", "models:/slic-encoder@champion"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # the champion holds the index's own weights and embeds with the index's 2 clips: the query is its own vector
    top = doc["queries"][0]["results"][0]
    assert doc["model"] == "models:/slic-encoder@champion" and top["path"] == str(query)
    assert top["similarity"] == pytest.approx(1.0, abs=1e-4)
    assert main(["search", str(query), "--model", "models:/no-such-model@champion"]) == 2
    assert "cannot load model models:/no-such-model@champion" in capsys.readouterr().err
    # A champion with other weights than the index's (one promote kept while a newer encoder was indexed): its query
    # vectors would be looked up among another encoder's, so the search is refused.
    from dataclasses import replace

    from slic.pretrain import TrainState, build_encoder, save_checkpoint

    another = replace(TINY_ENCODER, seed=TINY_ENCODER.seed + 1)
    save_checkpoint(workdir / "kept.pt", build_encoder(another), None, TrainState(), another)
    promote(PromoteConfig(checkpoint=str(workdir / "kept.pt"), model_name="kept-encoder"), report)
    assert main(["search", str(query), "--model", "models:/kept-encoder@champion"]) == 2
    out, err = capsys.readouterr()
    assert "error: --model models:/kept-encoder@champion is another encoder than the one that embedded the index" in err
