"""The `index` stage: FAISS kinds, exact search against numpy, save/load, the row mapping, the stage itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.config import ConfigError, IndexConfig, load
from slic.index import (KINDS, IndexBuildError, build_index, build_stage, effective_params, gallery_rows,
                        load_index, save_index, search)
from tests.conftest import StubEncoder


def clustered(n: int, dim: int = 16, centres: int = 8, seed: int = 0) -> np.ndarray:
    """n un-normalised vectors around a few random centres (lengths vary, so cosine != raw inner product)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x * rng.uniform(0.5, 3.0, (n, 1))).astype(np.float32)


def numpy_cosine_ranking(queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The brute-force reference: cosine similarities and the k best gallery rows per query."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = q.astype(np.float64) @ g.T.astype(np.float64)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), order


def test_exact_index_round_trip_agrees_with_numpy_cosine(tmp_path: Path) -> None:
    gallery, queries = clustered(300), clustered(20, seed=1)
    built = build_index(gallery, kind="flat", device="cpu")
    rows = pd.DataFrame({"video_id": [f"v{i}" for i in range(300)], "path": [f"/d/v{i}.avi" for i in range(300)],
                         "class": ["c"] * 300, "label": [0] * 300})
    save_index(tmp_path / "index", built, rows, {"kind": "flat", "metric": "cosine", "checkpoint": "x.pt"})
    loaded = load_index(tmp_path / "index")
    sims, ids = search(loaded.index, queries, 10)
    want_sims, want_ids = numpy_cosine_ranking(queries, gallery, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert loaded.rows.loc[ids[0, 0], "video_id"] == f"v{ids[0, 0]}"  # row r of the index is row r of rows.csv
    # the raw inner product ranks differently on these unequal lengths: the normalisation is really applied
    raw = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    assert not np.array_equal(raw, ids)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_builds_and_returns_k_results(kind: str) -> None:
    gallery = clustered(600, dim=16)
    built = build_index(gallery, kind=kind, device="cpu", nlist=1024, nprobe=4, pq_m=4, pq_nbits=6, hnsw_m=8)
    assert built.index.ntotal == 600 and built.device == "cpu"
    sims, ids = search(built.index, gallery[:5], 7)
    assert ids.shape == (5, 7) and (ids >= 0).all()
    assert all(len(set(row)) == 7 for row in ids)  # k distinct videos
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # best first
    if kind != "ivf_pq":  # exact vectors: a gallery vector finds itself first with cosine 1
        np.testing.assert_array_equal(ids[:, 0], np.arange(5))
        np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
    if kind in ("ivf_flat", "ivf_pq"):  # 600 vectors allow 15 lists of >= 39 points, not 1024
        assert built.params["nlist"] == 15 and "nlist 1024 clamped to 15" in built.notes[0]


def test_effective_params_fix_what_the_gallery_cannot_support() -> None:
    params, notes = effective_params("ivf_pq", 420, 128, nlist=1024, nprobe=16, pq_m=24, pq_nbits=12)
    assert params == {"nlist": 10, "nprobe": 10, "pq_m": 16, "pq_nbits": 3}  # 2**3 codes of >= 39 points
    assert len(notes) == 4 and "pq_m 24 does not divide dimension 128; using 16" in notes
    assert effective_params("ivf_flat", 100_000, 64, nlist=256, nprobe=8) == ({"nlist": 256, "nprobe": 8}, [])
    assert effective_params("ivf_pq", 10_000, 64, nlist=64, pq_m=8, pq_nbits=8)[1] == []  # 256 x 39 <= 10,000
    assert effective_params("hnsw", 10, 8)[0] == {"hnsw_m": 32, "ef_search": 64, "ef_construction": 80}
    with pytest.raises(IndexBuildError, match="unknown index kind 'lsh'"):
        effective_params("lsh", 10, 8)


def write_stage_inputs(folder: Path) -> tuple[Path, Path, np.ndarray]:
    """An embed-stage npz (train/test rows) and a validated manifest listing them in another order."""
    ids = [f"v_C{c}_g{g:02d}_c01" for c in range(3) for g in range(1, 9)]
    split = np.array(["train" if int(v[-6:-4]) <= 6 else "test" for v in ids])
    vectors = clustered(len(ids), dim=8, seed=4)
    npz = folder / "embeddings.npz"
    np.savez(npz, video_id=np.array(ids), label=np.array([int(v[3]) for v in ids]),
             class_name=np.array([f"C{v[3]}" for v in ids]), split=split, embedding=vectors)
    manifest = pd.DataFrame({"video_id": ids[::-1] + ["v_extra"], "path": [f"/videos/{v}.avi" for v in ids[::-1]]
                             + ["/videos/extra.avi"], "class": [f"C{v[3]}" for v in ids[::-1]] + ["C0"],
                             "split": list(split[::-1]) + ["train"]})
    manifest.to_csv(folder / "validated.csv", index=False)
    return npz, folder / "validated.csv", vectors


def test_gallery_rows_map_each_row_to_its_video(tmp_path: Path) -> None:
    npz, manifest, vectors = write_stage_inputs(tmp_path)
    rows, gallery = gallery_rows(npz, manifest, "train")
    assert len(rows) == 18 and list(rows.columns) == ["video_id", "path", "class", "label"]
    assert (rows["path"] == "/videos/" + rows["video_id"] + ".avi").all()
    assert (rows["class"] == "C" + rows["label"].astype(str)).all()
    np.testing.assert_array_equal(gallery[0], vectors[0])  # embedding row kept with its video
    split = np.load(npz)["split"]
    everything, all_vectors = gallery_rows(npz, manifest, "all")  # a labelled collection searched whole
    assert len(everything) == len(split) > 18 and set(everything["video_id"]) == set(np.load(npz)["video_id"])
    np.testing.assert_array_equal(all_vectors, vectors)
    both, _ = gallery_rows(npz, manifest, "train+test")
    assert len(both) == len(split) and len(gallery_rows(npz, manifest, "test")[0]) == len(split) - 18
    table = pd.read_csv(manifest)
    table[table["video_id"] != "v_C0_g01_c01"].to_csv(manifest, index=False)  # drop one embedded train video
    with pytest.raises(IndexBuildError, match="1 embedded video.*not in"):
        gallery_rows(npz, manifest, "train")
    with pytest.raises(IndexBuildError, match="no 'val' videos"):
        gallery_rows(npz, tmp_path / "validated.csv", "val")


def test_stage_saves_index_rows_meta_and_report(tmp_path: Path) -> None:
    npz, manifest, _ = write_stage_inputs(tmp_path)
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(b"weights")
    cfg = IndexConfig(manifest=str(manifest), kind="ivf_flat", nlist=64, out=str(tmp_path / "index"))
    report = build_stage(cfg, embeddings=str(npz), checkpoint=str(checkpoint), clips=4)
    assert (report["kind"], report["vectors"], report["dim"], report["device"]) == ("ivf_flat", 18, 8, "cpu")
    assert report["params"]["nlist"] == 1 and "nlist 64 clamped to 1" in report["notes"][0]
    loaded = load_index(tmp_path / "index")
    train_ids = sorted(f"v_C{c}_g{g:02d}_c01" for c in range(3) for g in range(1, 7))
    assert loaded.index.ntotal == 18 and loaded.rows["video_id"].tolist() == train_ids  # row r <-> video r
    assert loaded.rows.index.tolist() == list(range(18))
    data = np.load(npz)
    vectors = {v: e for v, e in zip(data["video_id"], data["embedding"])}
    _, ids = search(loaded.index, np.array([vectors[v] for v in train_ids]), 1)
    assert ids[:, 0].tolist() == list(range(18))  # each gallery video's own vector finds its own row
    assert loaded.meta["checkpoint"] == str(checkpoint) and loaded.meta["clips"] == 4
    assert loaded.meta["checkpoint_sha256"] == __import__("hashlib").sha256(b"weights").hexdigest()
    assert json.loads(json.dumps(report))["build_seconds"] >= 0
    # no frame shards and no source files here: the lineage says so instead of failing the build
    assert (report["gallery_fingerprint"], report["gallery_fingerprint_of"]) == ("unknown", "unknown")


def test_missing_index_and_bad_params_fail_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(IndexBuildError) as exc:
        load_index(tmp_path / "nothing")
    assert "run `dvc repro index` first" in str(exc.value) and "\n" not in str(exc.value)
    params = tmp_path / "params.yaml"
    params.write_text("index:\n  kind: annoy\n")
    with pytest.raises(ConfigError, match="index.kind = 'annoy': expected one of 'flat', 'ivf_flat'"):
        load(params)
    params.write_text("index:\n  kind: hnsw\n  ef_search: 128\n")
    assert load(params).index.ef_search == 128


def test_inner_product_metric_ranks_by_the_raw_dot_product(tmp_path: Path) -> None:
    """metric inner_product: no normalisation, so longer vectors rank higher and similarities are raw dot products."""
    npz, manifest, _ = write_stage_inputs(tmp_path)
    cfg = IndexConfig(manifest=str(manifest), kind="flat", metric="inner_product", out=str(tmp_path / "index"))
    report = build_stage(cfg, embeddings=str(npz), checkpoint=str(tmp_path / "none.pt"), clips=4)
    assert report["metric"] == "inner_product"
    loaded = load_index(tmp_path / "index")
    rows, gallery = gallery_rows(npz, manifest, "train")
    queries = clustered(5, dim=8, seed=9)
    sims, ids = search(loaded.index, queries, 6, normalize=False)
    raw = queries.astype(np.float64) @ gallery.T.astype(np.float64)
    want = np.argsort(-raw, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(ids, want)
    np.testing.assert_allclose(sims, np.take_along_axis(raw, want, axis=1), rtol=1e-5)
    assert not np.array_equal(ids, numpy_cosine_ranking(queries, gallery, 6)[1])  # cosine would rank otherwise


def test_unlabelled_gallery_with_videos_named_like_missing_values(tmp_path: Path) -> None:
    """pandas reads "", NA, null and None as missing by default: an unlabelled archive's empty class must stay
    "no class" (null in --json, not NaN, which is not JSON), and videos named NA or null must keep their names."""
    from slic.data.frames import INDEX_NAME, read_index
    from slic.search import format_table, search_videos

    ids = ["NA", "null", "None", "clips/nan"]
    vectors = clustered(len(ids), dim=8, seed=2)
    npz = tmp_path / "embeddings.npz"
    np.savez(npz, video_id=np.array(ids), label=np.full(len(ids), -1), class_name=np.array([""] * len(ids)),
             split=np.array(["train"] * len(ids)), embedding=vectors)
    pd.DataFrame({"video_id": ids, "path": [f"/archive/{v}.mp4" for v in ids], "class": [""] * len(ids),
                  "split": ["train"] * len(ids)}).to_csv(tmp_path / "validated.csv", index=False)
    cfg = IndexConfig(manifest=str(tmp_path / "validated.csv"), kind="flat", out=str(tmp_path / "index"))
    build_stage(cfg, embeddings=str(npz), checkpoint=str(tmp_path / "none.pt"), clips=4)
    loaded = load_index(tmp_path / "index")
    assert loaded.rows["video_id"].tolist() == ids and loaded.rows["class"].tolist() == [""] * len(ids)

    answers, errors = search_videos([Path("/q/null.mp4")], StubEncoder(lambda _: vectors[1]), loaded, k=2)
    hit = answers[0]["results"][0]
    assert errors == [] and (hit["video_id"], hit["path"], hit["class"]) == ("null", "/archive/null.mp4", None)
    assert "NaN" not in json.dumps(answers) and json.loads(json.dumps(answers)) == answers
    assert format_table(answers[0]).splitlines()[2].split()[2] == "-"  # rank, similarity, class, path

    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / INDEX_NAME).write_text("video_id,shard,frames,height,width,fps,bytes,sha256\n"
                                     "NA,NA.shard,40,32,42,25.0,1000,ab\nnull,null.shard,40,32,42,25.0,1000,cd\n")
    assert read_index(frames)["video_id"].tolist() == ["NA", "null"]


def _rebuild_again_and_again(folder: str, builds: int) -> None:
    """A writer process: `builds` indexes of 2,000 rows each, build b's vectors all the unit vector along
    component b and its rows named b-<i>, saved one after another into the same folder."""
    for build in range(builds):
        vectors = np.zeros((2000, 64), dtype=np.float32)
        vectors[:, build] = 1.0
        rows = pd.DataFrame({"video_id": [f"{build}-{i}" for i in range(2000)], "path": ["p"] * 2000,
                             "class": [""] * 2000, "label": [-1] * 2000})
        save_index(folder, build_index(vectors, kind="flat", device="cpu"), rows,
                   {"kind": "flat", "metric": "inner_product", "checkpoint": "x.pt", "build": build})


def test_a_search_during_a_rebuild_reads_one_build_whole(tmp_path: Path) -> None:
    """`index` rewrites its folder in place (persist: the added videos' cache) while `slic search` may be reading
    it: every load, however it falls among a writer process's 40 rebuilds, pairs one build's vectors with that
    build's rows and index.json."""
    import multiprocessing

    folder = tmp_path / "index"
    _rebuild_again_and_again(str(folder), 1)
    writer = multiprocessing.get_context("spawn").Process(target=_rebuild_again_and_again, args=(str(folder), 40))
    writer.start()
    loads = 0
    try:
        while writer.is_alive() or loads == 0:
            loaded = load_index(folder)
            build = int(loaded.rows["video_id"].iloc[0].split("-")[0])
            assert loaded.meta["build"] == build and int(np.argmax(loaded.index.reconstruct(0))) == build, loads
            loads += 1
    finally:
        writer.join(timeout=120)
    assert writer.exitcode == 0 and loads > 1
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "index.faiss", "index.json", "rows.csv"]
