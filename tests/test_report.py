"""The HTML retrieval report of `slic evaluate`, opened in headless Chromium: what renders, not only the text.

A tiny real dataset (frame shards extracted from synthetic videos) with embeddings built so that
half the test queries hit at top-1 and the rest first at rank 5; two gallery shards are broken
(one deleted, one with corrupt JPEG data) to check the placeholders.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slic.report import HIT_COLOUR, MISS_COLOUR, sample_queries
from tests.conftest import run_stage_in

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
K_SHOWN = 5
DELETED, CORRUPT = "Fall/v_Fall_g02_c01", "Rise/v_Rise_g02_c01"  # nearest gallery videos of their class
# What `_embeddings` builds: per class, of its two test queries the first hits at rank 1 and the second
# first at rank 5 (its top 4 are the next class's gallery videos), so half the queries miss at top-1.
EXPECTED_RECALL = {1: 0.5, 5: 1.0, 10: 1.0, 20: 1.0, 50: 1.0}
EXPECTED_PER_CLASS = {name: {"recall@1": 0.5, "recall@5": 1.0, "queries": 2} for name in ("Fall", "Rise", "Slide")}


def test_sample_is_seeded_and_stratified() -> None:
    hit = np.zeros(100, dtype=bool)
    hit[[3, 50, 97]] = True
    chosen, how = sample_queries(hit, 12, seed=7)
    assert len(set(chosen.tolist())) == 12 and hit[chosen].sum() == 1  # 12 * 3% rounds to 0: at least one
    assert np.array_equal(chosen, sample_queries(hit, 12, seed=7)[0])
    assert not np.array_equal(chosen, sample_queries(hit, 12, seed=8)[0])
    assert "1 of the 3 top-1 hits and 11 of the 97 top-1 misses" in how
    half = np.arange(40) % 2 == 0
    assert hit_count(half, 10) == 5
    assert hit_count(np.ones(5, dtype=bool), 12) == 5  # fewer queries than asked: all, one stratum only


def hit_count(hit: np.ndarray, n: int) -> int:
    return int(hit[sample_queries(hit, n, seed=0)[0]].sum())


def _embeddings(manifest: Any, path: Path) -> None:
    """Gallery videos ranked within their class by index; test queries alternately hit at rank 1 and at rank 5.

    Rows of one orthogonal matrix: class centres (3) and offsets (4) orthogonal to them, so every
    cosine, and hence every neighbour list, is known: a hit query's top 4 are its class's gallery and
    its 5th the next class's first video; a miss query's top 4 are the next class's, its 5th its own.
    """
    basis = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 16)))[0]
    centres, offsets = basis[:3], basis[3:7]
    seen: dict[tuple[int, str], int] = {}
    rows = []
    for label, split in zip(manifest["label"], manifest["split"]):
        rank = seen[label, split] = seen.get((label, split), -1) + 1
        after = centres[(label + 1) % 3]
        if split == "test":
            rows.append(0.25 * centres[label] + 0.75 * after if rank % 2 else centres[label] + 0.1 * after)
        else:
            rows.append(centres[label] + 0.1 * rank * offsets[rank % 4])
    np.savez(path, video_id=manifest["video_id"].to_numpy().astype(str), label=manifest["label"].to_numpy(),
             class_name=manifest["class"].to_numpy().astype(str), split=manifest["split"].to_numpy().astype(str),
             embedding=np.array(rows, dtype=np.float32))


@pytest.fixture(scope="module")
def stage(tiny_manifest: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`slic evaluate` run once in a temporary project: its report, stdout/stderr and MLflow run."""
    from slic.data.frames import ShardReader, extract_all, shard_path

    root = tmp_path_factory.mktemp("evaluate")
    (root / "data/manifests").mkdir(parents=True)
    manifest = tiny_manifest[tiny_manifest["excluded"] == ""].reset_index(drop=True)
    manifest.to_csv(root / "data/manifests/validated.csv", index=False)
    extract_all(manifest, out_dir=root / "data/frames", short_side=48, quality=4, workers=1)
    shard_path(root / "data/frames", DELETED).unlink()
    corrupt = shard_path(root / "data/frames", CORRUPT)
    start = ShardReader.open(corrupt).data_start
    blob = bytearray(corrupt.read_bytes())
    blob[start:] = bytes(len(blob) - start)  # every JPEG zeroed: the shard parses, no frame decodes
    corrupt.write_bytes(bytes(blob))
    (root / "data/embeddings").mkdir()
    _embeddings(manifest, root / "data/embeddings/embeddings.npz")
    (root / "params.yaml").write_text(f"evaluate:\n  html_queries: 6\n  html_k: {K_SHOWN}\n")
    result = run_stage_in(root, "evaluate")
    assert result["code"] == 0, result["stderr"]
    yield {"root": root, "html": root / "reports/retrieval.html", "stdout": result["stdout"],
           "stderr": result["stderr"], "artifacts": result["artifacts"],
           "report": json.loads((root / "reports/retrieval.json").read_text())}


def test_evaluate_writes_the_report_and_logs_it_to_mlflow(stage: dict[str, Any]) -> None:
    assert stage["html"].is_file() and "retrieval.html" in stage["artifacts"]
    assert "reports/retrieval.html (6 queries x top-5" in stage["stdout"]
    assert "no frames for 2 thumbnails" in stage["stderr"]
    report = stage["report"]  # as the embeddings were built
    assert (report["queries"], report["gallery"]) == (6, 12)
    assert {k: report[f"recall@{k}"] for k in EXPECTED_RECALL} == EXPECTED_RECALL
    assert report["per_class"] == EXPECTED_PER_CLASS


@pytest.fixture(scope="module")
def browser(stage: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str]]]:
    """The report opened from disk in Debian's headless Chromium, JavaScript disabled; and the URLs it requested."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} not found: `make test` installs Debian's chromium (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_ARGS, java_script_enabled=False, viewport={"width": 1000, "height": 900})
        try:
            page = context.new_page()
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(stage["html"].as_uri(), wait_until="load")
            yield page, requests
        finally:
            context.close()


@pytest.fixture()
def page(browser: tuple[Any, list[str]]) -> Any:
    return browser[0]


def _png(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _hex(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])


def test_page_is_self_contained(browser: tuple[Any, list[str]]) -> None:
    page, requests = browser
    assert requests == [page.url]  # the file itself and nothing else
    assert page.locator("script, link, iframe").count() == 0


def test_every_thumbnail_decodes_and_animates(page: Any) -> None:
    from PIL import Image

    images = page.locator("img.thumb")
    assert images.count() == 6 * (1 + K_SHOWN) - 8  # the two broken videos each appear in four rows
    sizes = images.evaluate_all("imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    assert all(done and width == 96 and height == 72 for done, width, height in sizes), sizes
    for src in images.evaluate_all("imgs => imgs.map(i => i.src)"):
        assert src.startswith("data:image/webp;base64,")
        webp = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert webp.n_frames == 12 and webp.is_animated
    # And Chromium plays it: the first thumbnail's pixels change between two screenshots.
    first = images.first
    before, changed = _png(first.screenshot()), False
    for _ in range(20):
        time.sleep(0.15)
        if np.abs(_png(first.screenshot()) - before).mean() > 1.0:
            changed = True
            break
    assert changed, "the first thumbnail did not change on screen over 3 s"


def test_hits_and_misses_are_marked_correctly_and_visibly(page: Any) -> None:
    rows = page.locator("section.row")
    assert rows.count() == 6
    marks = {"hit": 0, "miss": 0}
    for r in range(rows.count()):
        row = rows.nth(r)
        query_class = row.locator("figure.query b").inner_text()
        for cell in row.locator("li.video").all():
            role = "hit" if cell.locator("b").inner_text() == query_class else "miss"
            assert cell.get_attribute("class") == f"video {role}"
            label = cell.locator(f"span.mark.{role}")
            assert label.is_visible() and label.inner_text() == {"hit": "✓ hit", "miss": "✗ miss"}[role]
            marks[role] += 1
    assert marks == {"hit": 15, "miss": 15}  # hit rows: 4 hits + 1 miss; miss rows: 4 misses + 1 hit
    for role, colour in (("hit", HIT_COLOUR), ("miss", MISS_COLOUR)):
        cell = page.locator(f"li.video.{role}").first
        pixels = _png(cell.screenshot())
        border = pixels[pixels.shape[0] // 2, 1]  # left border, half-way down
        assert np.abs(border - _hex(colour)).max() <= 8, (role, border)
        label = _png(cell.locator("span.mark").screenshot())
        share = (np.abs(label - _hex(colour)).max(axis=2) <= 8).mean()
        assert share > 0.5, (role, share)  # the label is mostly its colour, with white text on it


def test_recall_tables_render_the_reports_numbers(page: Any) -> None:
    for k, recall in EXPECTED_RECALL.items():
        cells = page.locator(f'#recall tr[data-k="{k}"] td').all_inner_texts()
        assert cells == [f"recall@{k}", f"{100 * recall:.1f}%", f"{round(recall * 6)} / 6"]
    assert page.locator('#recall tr[data-k="1"] td').all_inner_texts() == ["recall@1", "50.0%", "3 / 6"]
    assert page.locator("#per-class thead th").all_inner_texts() == ["class", "queries", "recall@1", "recall@5"]
    for name in EXPECTED_PER_CLASS:
        cells = page.locator(f'#per-class tr[data-class="{name}"] td').all_inner_texts()
        assert cells == [name, "2", "50.0%", "100.0%"]
    assert page.locator("#per-class tbody tr").count() == 3
    assert page.locator("#sample").inner_text().startswith("6 of 6 queries drawn at random (seed 7)")


def test_unreadable_frames_show_a_placeholder_naming_the_file(page: Any) -> None:
    placeholders = page.locator("div.thumb.missing")
    assert placeholders.count() == 8
    texts = set(placeholders.all_inner_texts())
    assert any(f"data/frames/{DELETED}.shard" in t and "file not found" in t for t in texts)
    assert any(f"data/frames/{CORRUPT}.shard" in t and "frame 0 is not a decodable JPEG" in t for t in texts)
    box = placeholders.first.bounding_box()
    assert box and box["width"] >= 96 and box["height"] >= 72


def test_on_ucf101_split1_the_page_and_the_stage_set_the_published_numbers_beside_the_runs(
        stage: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import slic.published

    root = tmp_path / "protocol"
    shutil.copytree(stage["root"], root, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "mlruns"))
    monkeypatch.setattr(slic.published, "UCF101_CLASSES", 3)  # the tiny set's 3 classes stand for UCF101's 101
    split = np.load(root / "data/embeddings/embeddings.npz")["split"]
    params = "manifest:\n  layout: ucf101\n  split: 1\nevaluate:\n  html_queries: 6\n  gallery_split: {}\n"

    (root / "params.yaml").write_text(params.format("train"))
    import torch

    from slic.config import load, to_dict  # the embeddings' checkpoint: the CPU default's pretraining settings
    (root / "data/models/pretrain").mkdir(parents=True)
    torch.save({"config": to_dict(load(root / "params.yaml").pretrain)}, root / "data/models/pretrain/best.pt")
    result = run_stage_in(root, "evaluate")
    assert result["code"] == 0, result["stderr"]
    assert ("evaluate: published on UCF101 split 1, the IIC protocol (test queries, train gallery), recall@1 %: "
            "VCOP (R3D) 14.1, VCP (R3D) 18.6, PacePred (R3D-18) 23.8, IIC (R3D) 42.4, PCL-VCP (R3D-18) 55.1, "
            "CoCLR (S3D, UCF101 RGB) 51.8; this run 50.0 (reports/retrieval.html)") in result["stdout"]
    assert "evaluate: note: this run's gallery is the train split, not the protocol's whole train list" in result[
        "stdout"]
    # The tiny encoder is not the paper's configuration: the report, the stage and the page say so with the numbers.
    said = json.loads((root / "reports/retrieval.json").read_text())
    assert said["encoder"]["backbone"] != "r3d_18_reference" and "seed" in said["encoder"]
    assert f"backbone {said['encoder']['backbone']} (paper: r3d_18_reference)" in said["differs_from_paper"]
    assert not any(item.startswith(("seed ", "device ", "bf16 ")) for item in said["differs_from_paper"])
    assert (f"evaluate: note: this encoder was not pretrained in the paper's configuration: "
            f"{len(said['differs_from_paper'])} setting(s) differ, e.g. ") in result["stdout"]
    page = (root / "reports/retrieval.html").read_text()
    assert f"pretraining setting(s): {', '.join(said['differs_from_paper'])}.</p>" in page
    assert '<table id="published">' in page and '<tr class="ours"><td>this run</td><td>50.0%</td>' in page
    assert "<tr><td>IIC (R3D)</td><td>42.4%</td><td>60.9%</td><td>69.2%</td><td>77.1%</td><td>86.5%</td></tr>" in page
    assert "<tr><td>CoCLR (S3D, UCF101 RGB)</td><td>51.8%</td><td>-</td>" in page  # top-1 only
    assert "set evaluate.gallery_split: train+val" in page
    val = int(np.isin(split, ["val"]).sum())
    assert f"train videos (the train list less the {val} val videos carved from it to choose the checkpoint;" in page

    # The protocol's gallery: the whole official train list, our val carve included; nothing to note.
    (root / "params.yaml").write_text(params.format("train+val"))
    result = run_stage_in(root, "evaluate")
    assert result["code"] == 0, result["stderr"]
    report = json.loads((root / "reports/retrieval.json").read_text())
    assert (report["gallery"], report["gallery_split"]) == (int(np.isin(split, ["train", "val"]).sum()), "train+val")
    assert "published on UCF101 split 1" in result["stdout"] and "note: this run's gallery" not in result["stdout"]
    assert "set evaluate.gallery_split" not in (root / "reports/retrieval.html").read_text()
    assert f"against a gallery of {report['gallery']} train+val videos" in (root / "reports/retrieval.html").read_text()


def test_no_published_numbers_for_another_set_or_split() -> None:
    from slic.published import finetune_line, published_finetune, published_retrieval

    ucf101 = {"query_split": "test", "gallery_split": "train+val", "recall@1": 0.4234,
              "per_class": {f"c{i}": {} for i in range(101)}}
    assert published_retrieval(ucf101, "ucf101", 1)["this_run"] == {"recall@1": 42.3}
    assert published_retrieval(ucf101, "ucf101", 2) is None  # the published numbers are on split 1
    assert published_retrieval(ucf101, "folder", 1) is None
    assert published_retrieval({**ucf101, "query_split": "val"}, "ucf101", 1) is None
    assert published_retrieval({**ucf101, "per_class": {"a": {}, "b": {}}}, "ucf101", 1) is None  # ucf101_6
    assert published_finetune("hmdb51", 1, 51)["published"]["SLIC"] == 54.5
    assert published_finetune("ucf101", 1, 101)["published"]["SLIC"] == 83.2
    assert published_finetune("ucf101", 1, 6) is None and published_finetune("csv", 1, 101) is None
    assert published_finetune("hmdb51", 2, 51) is None
    assert finetune_line("classify hmdb51", 50.04, "hmdb51", 1, 51) == (
        "classify hmdb51: published on HMDB51 split 1, test top-1 after finetuning %: IIC 38.3, "
        "PCL-VCP (R3D-18, 112 px) 48.8, SLIC 54.5; this run (finetuned from the encoder) 50.0")
    assert finetune_line("finetune", 60.0, "ucf101", 1, 6) == ""


def test_the_gallery_note_and_top5_say_what_the_numbers_are() -> None:
    """A `train` gallery after a val carve is smaller than the protocol's, and says so with the carve's size; none
    without a carve or on the protocol's gallery. Top-5 is shown only where five guesses leave most classes out."""
    from slic.published import top5_shown
    from slic.retrieval import gallery_note

    assert gallery_note("train", 92).startswith("the train list less the 92 val videos carved from it")
    assert gallery_note("train", 0) == gallery_note("train+val", 92) == ""
    assert [top5_shown(classes) for classes in (6, 10, 11, 51, 101)] == [False, False, True, True, True]
