"""bench/damaged_packets.py on two real videos and the damaged copies: the timing rows and what each way keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.damaged_packets import main
from tests.conftest import SHARED_VIDEOS


def test_both_ways_give_the_same_jpegs_on_whole_videos_and_only_slics_keeps_a_damaged_file(tmp_path: Path) -> None:
    if not (SHARED_VIDEOS / "dmlc-decord" / "decode_tests" / "corrupted.mp4").is_file():
        pytest.skip(f"real sample videos not found at {SHARED_VIDEOS}")
    assert main(["--videos", "2", "--out", str(tmp_path / "d.json")]) == 0
    report = json.loads((tmp_path / "d.json").read_text())
    assert report["whole_videos"] == 2 and report["all_identical"] and report["median_ratio"] > 0
    assert report["damaged"]["decord corrupted.mp4 (1 of 50 damaged)"]["packet_by_packet"] == 50  # 1 held
    assert report["damaged"]["decord corrupted.mp4 (1 of 50 damaged)"]["stop_at_first"].startswith("failed: ")
    assert report["damaged"]["made, 2 of 48 packets damaged"]["packet_by_packet"] == 48
    assert report["damaged"]["made, 18 of 48 packets damaged"]["packet_by_packet"].startswith(
        "failed: 18 of its 48 packets could not be decoded, more than 25%")
