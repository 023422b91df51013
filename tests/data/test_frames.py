"""Frame shards: exact round trip, atomic writes, intact-check, resume, failures by name."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.data.frames import (ExtractError, ShardReader, extract_all, read_index, shard_is_intact, shard_path,
                              write_shard)
from slic.data.video import decode, encode_jpeg_sequence
from tests.conftest import damaged_video

HEADER = {"video_id": "a/b", "short_side": 32, "quality": 4, "height": 8, "width": 8, "fps": 25.0}


def fake_jpegs(n: int) -> list[bytes]:
    return [b"\xff\xd8" + bytes([i]) * (i + 3) + b"\xff\xd9" for i in range(n)]


def test_shard_round_trips_any_window(tmp_path: Path) -> None:
    jpegs = fake_jpegs(40)
    path = tmp_path / "x.shard"
    size = write_shard(path, jpegs, HEADER)
    assert size == path.stat().st_size
    reader = ShardReader.open(path)
    assert reader.frames == 40 and reader.header["video_id"] == "a/b"
    assert reader.read_jpegs(0, 40) == jpegs
    assert reader.read_jpegs(17, 16) == jpegs[17:33]
    with pytest.raises(IndexError, match="outside"):
        reader.read_jpegs(30, 16)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_intact_check_rejects_truncated_foreign_or_stale_shards(tmp_path: Path) -> None:
    path = tmp_path / "x.shard"
    write_shard(path, fake_jpegs(10), HEADER)
    assert shard_is_intact(path, {"short_side": 32, "quality": 4})
    assert not shard_is_intact(path, {"short_side": 64})  # extracted with other settings
    data = path.read_bytes()
    path.write_bytes(data[:-3])  # a torn write
    assert not shard_is_intact(path, {})
    path.write_bytes(data[:-1] + b"\x00")  # last JPEG lost its end marker
    assert not shard_is_intact(path, {})
    path.write_bytes(b"GARBAGE!" + data[8:])
    assert not shard_is_intact(path, {})
    with pytest.raises(ValueError, match="not a slic frame shard"):
        ShardReader.open(path)
    assert not shard_is_intact(tmp_path / "missing.shard", {})


def test_window_pixels_match_the_decoded_video(tiny_dataset: Path, tmp_path: Path) -> None:
    video = tiny_dataset / "Slide" / "v_Slide_g02_c01.avi"
    sequence = encode_jpeg_sequence(video, short_side=None, quality=2)
    write_shard(tmp_path / "v.shard", sequence.jpegs, HEADER)
    window = ShardReader.open(tmp_path / "v.shard").read_window(10, 16)
    original = decode(video, start=10, stop=26)
    assert window.shape == original.shape == (16, 48, 64, 3)
    assert np.abs(window.astype(np.int16) - original).mean() < 4.0  # JPEG q2: close, not exact


def manifest_of(paths: dict[str, Path]) -> pd.DataFrame:
    return pd.DataFrame({"video_id": list(paths), "path": [str(p) for p in paths.values()]})


def test_extract_all_skips_bad_videos_and_reuses_intact_shards(tiny_dataset: Path, tmp_path: Path) -> None:
    videos = {f"c/{p.stem}": p for p in sorted(tiny_dataset.glob("Rise/*.avi"))[:4]}
    videos["bad/corrupted"] = damaged_video(tmp_path / "corrupted.mp4")  # 47 of its 48 packets cannot be decoded
    videos["bad/few_lost"] = damaged_video(tmp_path / "few_lost.mp4", decodable=44)  # 4 of 48 lost: kept
    out = tmp_path / "frames"
    # A shard half-written by a killed run must be cleaned up, never read.
    (out / "c").mkdir(parents=True)
    (out / "c" / "v_Rise_g01_c01.shard.tmp-999").write_bytes(b"partial")

    report = extract_all(manifest_of(videos), out_dir=out, short_side=32, quality=5, workers=2)
    assert (report["videos"], report["extracted"], report["reused"]) == (6, 5, 0)
    assert [f["video_id"] for f in report["failed"]] == ["bad/corrupted"]
    assert "47 of its 48 packets could not be decoded, more than 25%" in report["failed"][0]["error"]
    assert [(d["video_id"], d["path"]) for d in report["damaged"]] == [("bad/few_lost", str(videos["bad/few_lost"]))]
    assert report["damaged"][0]["note"].startswith("4 of 48 packets could not be decoded (their frames hold the")
    assert report["leftovers_removed"] == 1 and not list(out.rglob("*.tmp-*"))
    assert report["frames"] == 4 * 32 + 48 and report["bytes"] > 0  # a lost frame holds the one before
    index = read_index(out)
    assert index["video_id"].tolist() == sorted(k for k in videos if k != "bad/corrupted")
    rise = index[index["video_id"].str.startswith("c/")]
    assert (rise["frames"] == 32).all() and (rise["height"] == 32).all() and (rise["width"] == 42).all()
    first = shard_path(out, "c/v_Rise_g01_c01")
    mtime = first.stat().st_mtime_ns
    assert "damaged" not in ShardReader.open(first).header  # a whole video's header is as before

    # Second run: intact shards are reused untouched (a damaged file's says so again); a torn shard is redone.
    torn = shard_path(out, "c/v_Rise_g01_c02")
    torn.write_bytes(torn.read_bytes()[:100])
    again = extract_all(manifest_of(videos), out_dir=out, short_side=32, quality=5, workers=1)
    assert (again["extracted"], again["reused"]) == (1, 4)
    assert first.stat().st_mtime_ns == mtime
    assert ShardReader.open(torn).frames == 32
    assert again["damaged"] == report["damaged"]

    # Other settings (short side) make every shard stale.
    resized = extract_all(manifest_of(videos), out_dir=out, short_side=40, quality=5, workers=1)
    assert resized["extracted"] == 5


def test_fail_fast_stops_and_names_the_video(tmp_path: Path) -> None:
    broken = tmp_path / "broken.avi"
    broken.write_bytes(b"RIFF" + os.urandom(300))
    with pytest.raises(ExtractError, match=f"{broken}.*fail_fast"):
        extract_all(manifest_of({"x/broken": broken}), out_dir=tmp_path / "out", short_side=32, quality=4,
                    workers=1, fail_fast=True)


def payload_sha256(path: Path) -> str:
    """sha256 of a shard file's bytes after its header, read back independently of slic."""
    import hashlib
    import struct

    data = path.read_bytes()
    (meta_len,) = struct.unpack("<I", data[8:12])
    return hashlib.sha256(data[12 + meta_len:]).hexdigest()


def test_shards_record_their_content_hash_and_reuse_keeps_it(tiny_dataset: Path, tmp_path: Path) -> None:
    from slic.data.frames import content_hashes

    videos = {f"c/{p.stem}": p for p in sorted(tiny_dataset.glob("Fall/*.avi"))[:2]}
    out = tmp_path / "frames"
    first = extract_all(manifest_of(videos), out_dir=out, short_side=24, quality=5, workers=1)
    index = read_index(out)
    for video_id, recorded in zip(index["video_id"], index["sha256"]):
        shard = shard_path(out, video_id)
        assert recorded == ShardReader.open(shard).header["content_sha256"] == payload_sha256(shard)
    assert content_hashes(out) == dict(zip(index["video_id"], index["sha256"]))
    assert len(first["content_fingerprint"]) == 16

    again = extract_all(manifest_of(videos), out_dir=out, short_side=24, quality=5, workers=1)
    assert again["reused"] == 2 and read_index(out)["sha256"].tolist() == index["sha256"].tolist()
    assert again["content_fingerprint"] == first["content_fingerprint"]
    resized = extract_all(manifest_of(videos), out_dir=out, short_side=32, quality=5, workers=1)
    assert set(read_index(out)["sha256"]).isdisjoint(index["sha256"])  # new pixels, same ids: new hashes
    assert resized["content_fingerprint"] != first["content_fingerprint"]

    # A shard written before the hash existed (no header key) is hashed from its bytes, to the same value.
    legacy = tmp_path / "legacy.shard"
    write_shard(legacy, fake_jpegs(5), HEADER)
    expected = ShardReader.open(legacy).header["content_sha256"]
    reader = ShardReader.open(legacy)
    reader.header.pop("content_sha256")
    assert reader.content_sha256() == expected == payload_sha256(legacy)


def test_report_of_a_run_that_reused_every_shard_keeps_the_measured_throughput(tiny_dataset: Path,
                                                                               tmp_path: Path) -> None:
    import json

    videos = {f"c/{p.stem}": p for p in sorted(tiny_dataset.glob("Slide/*.avi"))[:2]}
    out = tmp_path / "frames"
    first = extract_all(manifest_of(videos), out_dir=out, short_side=24, quality=5, workers=1)
    assert first["frames_per_s"] > 0 and first["throughput_from"] == "this run" and not first["all_reused"]
    recorded = json.loads((out / "throughput.json").read_text())
    assert recorded["frames_per_s"] == first["frames_per_s"] and recorded["frames"] == 2 * 32

    again = extract_all(manifest_of(videos), out_dir=out, short_side=24, quality=5, workers=1)
    assert (again["extracted"], again["reused"], again["all_reused"]) == (0, 2, True)
    assert again["frames_per_s"] == first["frames_per_s"]  # not 0: the figure of the run that extracted them
    assert again["throughput_from"] == recorded["measured_at"]
    assert again["note"].startswith("every shard was reused") and recorded["measured_at"] in again["note"]

    (out / "throughput.json").unlink()  # shards from before the record: say so, never a made-up figure
    unknown = extract_all(manifest_of(videos), out_dir=out, short_side=24, quality=5, workers=1)
    assert (unknown["frames_per_s"], unknown["throughput_from"], unknown["all_reused"]) == (0.0, "unknown", True)
