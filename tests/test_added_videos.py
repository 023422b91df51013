"""`index.add_videos`: videos indexed beside the gallery with the trained encoder, without retraining it.

Real videos (../shared/videos, used in place or copied into the added folder), a tiny real encoder, real FAISS.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.cli import main
from slic.config import PretrainConfig
from tests.conftest import SHARED_VIDEOS, StubEncoder, decode_tests_folder

FOLDER = decode_tests_folder()  # five good videos and corrupted.mp4 (it probes, it cannot be decoded)
GALLERY = ("video_0.mov", "video_90.mov", "unordered.mov")
ADDED = ("video_180.mov", "video_270.mov")
TINY_ENCODER = PretrainConfig(hidden_dim=16, out_dim=8, size=16, clip_len=16)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def write_params(root: Path, add_videos: str, checkpoint: str = "best.pt") -> None:
    (root / "params.yaml").write_text(
        f"manifest:\n  root: archive\n  extensions: ['.mov', '.mp4']\n"
        f"embed:\n  checkpoint: {checkpoint}\n  clips: 2\n  out: embeddings.npz\n"
        f"index:\n  manifest: validated.csv\n  out: index\n  add_videos: {add_videos!r}\n")


def index_report(root: Path) -> dict:
    return json.loads((root / "reports/index.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    """A checkout-like folder: a tiny checkpoint, the embed stage's npz of 3 gallery videos, an added folder
    with 2 other videos, corrupted.mp4 and a README; the working directory for the test."""
    if not (FOLDER / "corrupted.mp4").is_file():
        pytest.skip(f"real sample videos not found at {FOLDER}")
    from slic.pretrain import TrainState, build_encoder, save_checkpoint
    from slic.serving import VideoEncoder

    save_checkpoint(tmp_path / "best.pt", build_encoder(TINY_ENCODER), None, TrainState(), TINY_ENCODER)
    gallery = [FOLDER / name for name in GALLERY]
    ids = [p.stem for p in gallery]
    np.savez(tmp_path / "embeddings.npz", video_id=np.array(ids), label=np.arange(3), class_name=np.array(ids),
             split=np.array(["train"] * 3), embedding=VideoEncoder(tmp_path / "best.pt", clips=2).embed_paths(gallery))
    pd.DataFrame({"video_id": ids, "path": [str(p) for p in gallery], "class": ids}).to_csv(
        tmp_path / "validated.csv", index=False)
    (tmp_path / "archive").mkdir()
    added = tmp_path / "add_to_index"
    (added / "new").mkdir(parents=True)
    for name in ADDED:
        shutil.copy(FOLDER / name, added / "new" / name)
    shutil.copy(FOLDER / "corrupted.mp4", added / "corrupted.mp4")
    (added / "README.md").write_text("not a video\n")
    write_params(tmp_path, "add_to_index")
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(previous)


def test_added_videos_are_indexed_with_the_checkpoint_and_found_by_search(
        workdir: Path, capsys: pytest.CaptureFixture) -> None:
    from slic.index import load_index
    from slic.serving import VideoEncoder

    (workdir / "add_to_index/gone.mp4").symlink_to(workdir / "unmounted.mp4")  # named too, not left out
    assert main(["index"]) == 0
    out, err = capsys.readouterr()
    assert "index: flat over 3 train videos + 2 added from add_to_index (2 embedded now, 0 reused)" in out
    assert "not added: add_to_index/corrupted.mp4: " in err and "fix or remove the file" in err
    report = index_report(workdir)
    assert (report["vectors"], report["gallery_videos"], report["added"]) == (5, 3, 2)
    assert [f["path"] for f in report["added_failed"]] == ["add_to_index/corrupted.mp4", "add_to_index/gone.mp4"]
    assert report["added_failed"][1]["error"] == (f"broken link: it points to {workdir / 'unmounted.mp4'}, which "
                                                  "does not exist")
    loaded = load_index("index")
    added = loaded.rows[loaded.rows["video_id"].str.startswith("added/")]
    assert added["video_id"].tolist() == [f"added/new/{name}" for name in ADDED]
    assert (added["class"] == "").all() and (added["label"] == -1).all()
    # the vectors are the checkpoint's embeddings of those files, as `slic search` embeds a query
    direct = VideoEncoder(workdir / "best.pt", clips=2).embed_paths([FOLDER / name for name in ADDED])
    stored = np.stack([loaded.index.reconstruct(int(row)) for row in added.index])
    np.testing.assert_allclose(stored, unit(direct), atol=1e-5)

    query = workdir / "add_to_index/new/video_270.mov"
    assert main(["search", str(query), "--json", "-k", "5"]) == 0
    hits = json.loads(capsys.readouterr().out)["queries"][0]["results"]
    assert (hits[0]["video_id"], hits[0]["class"]) == ("added/new/video_270.mov", None)
    assert hits[0]["similarity"] == pytest.approx(1.0, abs=1e-4) and len(hits) == 5


def test_a_second_run_embeds_only_new_files_and_a_renamed_file_is_reused(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slic.added_videos as added_videos

    assert main(["index"]) == 0
    cache = (workdir / "index/added.npz").read_bytes()
    assert main(["index"]) == 0
    report = index_report(workdir)
    assert (report["added"], report["added_embedded_now"], report["added_reused"]) == (2, 0, 2)
    assert (workdir / "index/added.npz").read_bytes() == cache  # nothing changed: the same bytes (DVC's hash)
    # decord's clips are 3 frames, less than one clip: indexed, and said so, also when their embeddings are reused
    assert [item["path"] for item in report["added_notes"]] == [f"add_to_index/new/{name}" for name in ADDED]
    assert report["added_notes"][0]["note"].startswith("only 3 frames, fewer than one clip of the encoder")
    (workdir / "add_to_index/new/video_180.mov").rename(workdir / "add_to_index/renamed.mov")
    shutil.copy(FOLDER / "video_0.mov", workdir / "add_to_index/another.mov")  # the bytes of a gallery video
    read = []
    real_sha = added_videos.file_sha256
    monkeypatch.setattr(added_videos, "file_sha256", lambda path: read.append(Path(path).name) or real_sha(path))
    assert main(["index"]) == 0
    report = index_report(workdir)
    assert (report["added"], report["added_embedded_now"], report["added_reused"]) == (3, 1, 2)
    # unchanged files are not read again (size and mtime known; the corrupt one's too): the new and the renamed one are
    assert sorted(read) == ["another.mov", "best.pt", "renamed.mov"]
    rows = pd.read_csv(workdir / "index/rows.csv", keep_default_na=False)
    assert "added/renamed.mov" in set(rows["video_id"]) and "added/new/video_180.mov" not in set(rows["video_id"])


def test_another_checkpoint_embeds_every_added_video_again(workdir: Path) -> None:
    from dataclasses import replace

    from slic.pretrain import TrainState, build_encoder, save_checkpoint

    assert main(["index"]) == 0
    other = replace(TINY_ENCODER, seed=TINY_ENCODER.seed + 1)
    save_checkpoint(workdir / "other.pt", build_encoder(other), None, TrainState(), other)
    write_params(workdir, "add_to_index", checkpoint="other.pt")
    assert main(["index"]) == 0
    assert (index_report(workdir)["added_embedded_now"], index_report(workdir)["added_reused"]) == (2, 0)


def test_an_interrupted_embedding_keeps_what_it_embedded(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slic.added_videos as added_videos
    from slic.added_videos import CACHE_FILE, embed_added

    calls = []

    def stopped_on_the_second(video: Path) -> np.ndarray:
        calls.append(video.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.ones(8, np.float32)

    monkeypatch.setattr(added_videos, "checkpoint_encoder", lambda *_: StubEncoder(stopped_on_the_second))
    with pytest.raises(KeyboardInterrupt):
        embed_added(workdir / "add_to_index", (".mov",), checkpoint=workdir / "best.pt", clips=2,
                    cache_file=workdir / "index" / CACHE_FILE)
    monkeypatch.setattr(added_videos, "checkpoint_encoder", lambda *_: StubEncoder(lambda v: np.zeros(8, np.float32)))
    again = embed_added(workdir / "add_to_index", (".mov",), checkpoint=workdir / "best.pt", clips=2,
                        cache_file=workdir / "index" / CACHE_FILE)
    assert (again.reused, again.embedded_now) == (1, 1)


def test_embeddings_are_on_disk_before_the_run_ends(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed process (SIGKILL: no exception handler runs) keeps what the last periodic write held."""
    import slic.added_videos as added_videos
    from slic.added_videos import CACHE_FILE, embed_added

    monkeypatch.setattr(added_videos, "SAVE_EVERY_SECONDS", 0.0)
    cache = workdir / "index" / CACHE_FILE
    on_disk = []

    def embed(video: Path) -> np.ndarray:
        on_disk.append(len(np.load(cache)["sha256"]) if cache.is_file() else 0)
        return np.ones(8, np.float32)

    monkeypatch.setattr(added_videos, "checkpoint_encoder", lambda *_: StubEncoder(embed))
    embed_added(workdir / "add_to_index", (".mov",), checkpoint=workdir / "best.pt", clips=2, cache_file=cache)
    assert on_disk == [0, 1]  # the first embedding was written before the second video was embedded


def test_a_folder_inside_the_archive_or_missing_is_refused_in_one_line(
        workdir: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "archive/later").mkdir()
    write_params(workdir, "archive/later")
    assert main(["index"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index.add_videos = 'archive/later' lies inside manifest.root 'archive'" in err
    write_params(workdir, "no_such_folder")
    assert main(["index"]) == 2
    assert "index.add_videos = 'no_such_folder': no such folder; create it" in capsys.readouterr().err
    assert not (workdir / "index").exists()  # nothing half-built


def test_no_added_folder_indexes_the_gallery_alone(workdir: Path) -> None:
    write_params(workdir, "")
    assert main(["index"]) == 0
    report = index_report(workdir)
    assert (report["vectors"], report["add_videos"], report["added"]) == (3, "", 0)
    assert not (workdir / "index/added.npz").exists()


def test_an_emptied_folder_leaves_no_cache_behind(workdir: Path) -> None:
    assert main(["index"]) == 0 and (workdir / "index/added.npz").is_file()
    shutil.rmtree(workdir / "add_to_index/new")
    (workdir / "add_to_index/corrupted.mp4").unlink()
    assert main(["index"]) == 0
    assert index_report(workdir)["added"] == 0 and not (workdir / "index/added.npz").exists()


def test_loader_workers_give_the_same_rows_vectors_and_failures(workdir: Path) -> None:
    from slic.added_videos import embed_added

    one, two = (embed_added(workdir / "add_to_index", (".mov", ".mp4"), checkpoint=workdir / "best.pt", clips=2,
                            cache_file=workdir / f"cache{workers}" / "added.npz", workers=workers)
                for workers in (0, 2))
    assert one.rows.equals(two.rows) and len(one.rows) == 2
    np.testing.assert_array_equal(one.vectors, two.vectors)
    assert one.failed == two.failed and [f["path"] for f in two.failed] == [str(workdir / "add_to_index/corrupted.mp4")]


def test_an_added_video_decoded_past_a_damaged_packet_is_indexed_and_said_once(
        workdir: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    """../shared/videos' corrupted.mp4 loses one packet of 50: it is indexed (its lost frame holds the one before),
    and the index report and the stage's line say so, with the file's name; the decoder's own log says nothing
    more (before, the log line was all there was, and index.json did not know)."""
    glitch = SHARED_VIDEOS / "dmlc-decord" / "decode_tests" / "corrupted.mp4"
    shutil.copy(glitch, workdir / "add_to_index/new/glitch.mp4")
    with caplog.at_level("WARNING", logger="slic.data.video"):
        assert main(["index"]) == 0
    report = index_report(workdir)
    assert report["added"] == 3
    noted = {item["path"]: item["note"] for item in report["added_notes"]}
    assert noted["add_to_index/new/glitch.mp4"].startswith("decoded past damaged packets: 1 of ")
    assert "the first lost is frame 30: InvalidDataError" in noted["add_to_index/new/glitch.mp4"]
    assert "note: 3 added video(s) indexed with a warning" in capsys.readouterr().err
    assert "packets could not be decoded" not in caplog.text
