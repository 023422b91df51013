"""Retrieval recall: hand-computed cases, cosine not Euclidean, every query counted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slic.retrieval import (effective_rank, evaluate_embeddings, nearest_gallery, nearest_others, recall_at_k,
                            unlabelled_neighbours, write_recall_curve)


def test_hand_computed_recall() -> None:
    gallery = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float32)
    gallery_labels = np.array([0, 1, 2, 3])
    # query 0 is nearest to gallery 0 (its class) -> hit@1; query 1 (class 1) is nearest to
    # gallery 0 (class 0), second nearest gallery 1 (class 1) -> miss@1, hit@2.
    queries = np.array([[1, 0.1], [1, 0.9]], dtype=np.float32)
    labels = np.array([0, 1])
    assert recall_at_k(queries, labels, gallery, gallery_labels, ks=(1, 2)) == {"recall@1": 0.5, "recall@2": 1.0}


def test_cosine_ignores_length() -> None:
    gallery = np.array([[10.0, 0.0], [0.5, 0.6]], dtype=np.float32)
    # For [0.9, 0.1]: Euclidean distances 9.1 and 0.64 would rank gallery 1 first; cosine
    # similarities 0.99 and 0.72 rank gallery 0 first.
    assert nearest_gallery(np.array([[0.9, 0.1]], dtype=np.float32), gallery, 2).tolist() == [[0, 1]]


def test_evaluate_embeddings_counts_every_query(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8))
    labels = np.repeat([0, 1, 2], 7)
    embeddings = centres[labels] + 0.01 * rng.normal(size=(21, 8))
    split = np.array((["train"] * 4 + ["test"] * 3) * 3)
    embeddings[labels == 2] *= -1  # class 2 stays separable after flipping
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.arange(21).astype(str), label=labels, class_name=np.array(["a", "b", "c"])[labels],
             split=split, embedding=embeddings.astype(np.float32))
    report = evaluate_embeddings(path, ks=(1, 5))
    assert (report["queries"], report["gallery"]) == (9, 12)
    assert report["recall@1"] == 1.0
    assert report["per_class"]["b"] == {"recall@1": 1.0, "recall@5": 1.0, "queries": 3}
    write_recall_curve(report, tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text() == "k,recall\n1,1.000000\n5,1.000000\n"
    with pytest.raises(ValueError, match="'val' queries"):
        evaluate_embeddings(path, query_split="val")


def known_misses(path: Path) -> None:
    """Eight gallery videos along orthogonal axes (lengths 0.5..100, so only cosine ranks them as designed)
    and seven test queries whose nearest neighbours are set by their weights on those axes.

    gallery axis : 0 1 2 3 4 5 6 7        query (class): weights             ranks of its class  hit@1 hit@5
    class        : a a b b c c c a        q0 (a): e0                          1                  yes   yes
                                          q1 (a): e2 5, e3 4, e4 3, e5 2, e6 1.5, e7 1   6       no    no
                                          q2 (b): e0 5, e3 4                  2                  no    yes
                                          q3 (b): e2                          1                  yes   yes
                                          q4 (c): e4                          1                  yes   yes
                                          q5 (c): e0 5, e1 4, e2 3, e3 2, e7 1.5, e5 1   6       no    no
                                          q6 (c): e0 5, e6 4                  2                  no    yes
    """
    gallery_classes = ["a", "a", "b", "b", "c", "c", "c", "a"]
    lengths = np.array([1.0, 0.5, 3.0, 7.0, 2.0, 0.8, 5.0, 100.0])
    gallery = np.eye(8) * lengths[:, None]
    weights = [{0: 5}, {2: 5, 3: 4, 4: 3, 5: 2, 6: 1.5, 7: 1}, {0: 5, 3: 4}, {2: 1}, {4: 1},
               {0: 5, 1: 4, 2: 3, 3: 2, 7: 1.5, 5: 1}, {0: 5, 6: 4}]
    queries = np.zeros((len(weights), 8))
    for row, axes in enumerate(weights):
        for axis, weight in axes.items():
            queries[row, axis] = weight
    query_classes = ["a", "a", "b", "b", "c", "c", "c"]
    names = np.array(gallery_classes + query_classes)
    np.savez(path, video_id=np.array([f"v{i}" for i in range(15)]), label=np.unique(names, return_inverse=True)[1],
             class_name=names, split=np.array(["train"] * 8 + ["test"] * 7),
             embedding=np.concatenate([gallery, queries]).astype(np.float32))


def test_recall_with_known_misses_overall_and_per_class(tmp_path: Path) -> None:
    known_misses(tmp_path / "e.npz")
    report = evaluate_embeddings(tmp_path / "e.npz", ks=(1, 5, 10))
    assert (report["queries"], report["gallery"]) == (7, 8)
    assert (report["recall@1"], report["recall@5"], report["recall@10"]) == (3 / 7, 5 / 7, 1.0)
    assert report["per_class"] == {"a": {"recall@1": 0.5, "recall@5": 0.5, "queries": 2},
                                   "b": {"recall@1": 0.5, "recall@5": 1.0, "queries": 2},
                                   "c": {"recall@1": 1 / 3, "recall@5": 2 / 3, "queries": 3}}
    write_recall_curve(report, tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text() == "k,recall\n1,0.428571\n5,0.714286\n10,1.000000\n"


def test_nearest_gallery_is_exact_across_blocks() -> None:
    """More queries and gallery rows than one block: the blocked search equals a full cosine argsort."""
    rng = np.random.default_rng(3)
    queries, gallery = rng.normal(size=(50, 6)), rng.normal(size=(37, 6)) * rng.uniform(0.1, 10, (37, 1))
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        gallery / np.linalg.norm(gallery, axis=1, keepdims=True)).T
    expected = np.argsort(-sims, axis=1)[:, :5]
    blocked = nearest_gallery(queries, gallery, 5, block=8)
    np.testing.assert_array_equal(blocked, expected)
    np.testing.assert_array_equal(nearest_gallery(queries, gallery, 5), expected)
    np.testing.assert_array_equal(nearest_gallery(queries, gallery, 100, block=7), np.argsort(-sims, axis=1))


def test_nearest_others_never_finds_the_query_itself_even_beside_its_duplicate() -> None:
    """Leave-one-out: row 0 and row 1 are the same vector, so each must find the other first, not itself;
    across blocks the result equals a brute-force argsort with the diagonal removed."""
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(23, 4))
    vectors[1] = 3 * vectors[0]  # a duplicate at another length: cosine 1
    sims = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = sims @ sims.T
    np.fill_diagonal(sims, -np.inf)
    indices, cosines = nearest_others(vectors, 4, block=5)
    assert indices[0, 0] == 1 and indices[1, 0] == 0 and cosines[0, 0] == pytest.approx(1.0)
    assert not (indices == np.arange(23)[:, None]).any()
    # rows 0 and 1 tie for every other query, so compare similarities, not the order of the tie
    np.testing.assert_allclose(cosines, -np.sort(-sims, axis=1)[:, :4], rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(sims, indices, axis=1), cosines, rtol=1e-5)
    assert nearest_others(vectors[:3], 10)[0].shape == (3, 2)  # at most the n - 1 others
    some = np.array([1, 7, 22])  # only these query (the HTML page's sampled videos): the same rows as for all
    part, part_cosines = nearest_others(vectors, 4, rows=some, block=2)
    assert part[0, 0] == 0 and not (part == some[:, None]).any()
    np.testing.assert_allclose(part_cosines, cosines[some], rtol=1e-5)


def test_a_large_gallery_shrinks_the_block_without_changing_the_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """BLOCK_ELEMENTS bounds the rows x gallery held at once (an archive of 240k videos must not need 12 GB):
    measured with tracemalloc, which sees numpy's buffers; the neighbours stay the same."""
    import tracemalloc

    import slic.retrieval as retrieval

    vectors = np.random.default_rng(8).normal(size=(3000, 4)).astype(np.float32)

    def peak_of_search() -> tuple[int, np.ndarray]:
        tracemalloc.start()
        indices, _ = nearest_others(vectors, 3)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, indices

    unbounded_peak, expected = peak_of_search()  # 3000 rows a block: 3000 x 3000 similarities and indices
    monkeypatch.setattr(retrieval, "BLOCK_ELEMENTS", 2**18)  # 87 rows a block
    bounded_peak, found = peak_of_search()
    np.testing.assert_array_equal(found, expected)
    assert unbounded_peak > 3000 * 3000 * 12 * 0.9 and bounded_peak < unbounded_peak / 10


def test_effective_rank_is_one_for_a_collapsed_embedding_and_d_for_orthogonal_directions() -> None:
    collapsed = np.ones((40, 8)) + 1e-9 * np.random.default_rng(0).normal(size=(40, 8))
    assert effective_rank(collapsed) == pytest.approx(1.0, abs=0.01)
    assert effective_rank(np.eye(8).repeat(5, axis=0)) == pytest.approx(8.0, rel=1e-4)
    assert effective_rank(np.eye(3, 8) * [[1.0], [5.0], [0.2]]) == pytest.approx(3.0, rel=1e-4)  # lengths do not count


def test_unlabelled_neighbours_measures_what_needs_no_labels(tmp_path: Path) -> None:
    """Six videos on two directions, plus a hub close to all of them; every number checked by hand."""
    rng = np.random.default_rng(1)
    a, b = np.eye(8)[0], np.eye(8)[1]
    vectors = np.stack([a, a, a, b, b, b]) + 0.05 * rng.normal(size=(6, 8))
    hub = (a + b) / np.sqrt(2)
    embedding = np.concatenate([vectors, hub[None]]).astype(np.float32)
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.array([f"v{i}" for i in range(6)] + ["hub"]), label=np.full(7, -1),
             class_name=np.array([""] * 7), split=np.array(["train"] * 7), embedding=embedding)
    report = unlabelled_neighbours(path, ks=(1, 5, 50), hub_k=3)
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    pairs = unit @ unit.T
    assert report["labelled"] is False and (report["queries"], report["gallery"]) == (7, 7)
    assert report["mean_pairwise_cosine"] == pytest.approx((pairs.sum() - 7) / 42, rel=1e-5)
    np.fill_diagonal(pairs, -np.inf)
    ranked = -np.sort(-pairs, axis=1)
    assert report["neighbour_cosine@1"] == pytest.approx(ranked[:, 0].mean(), rel=1e-5)
    assert report["neighbour_cosine@5"] == pytest.approx(ranked[:, 4].mean(), rel=1e-5)
    assert "neighbour_cosine@50" not in report  # more than the 6 others: not measured
    assert report["hubs"][0]["video_id"] == "hub" and report["hubs"][0]["in_top3_of"] == 6  # every other video
    assert report["never_in_top3"] == 0.0 and 1.5 < report["effective_rank"] < 3.5
    assert not any(key.startswith("recall@") for key in report)
    write_recall_curve({}, tmp_path / "curve.csv")
    assert (tmp_path / "curve.csv").read_text() == "k,recall\n"  # `dvc plots` reads it; no rows without classes
    with pytest.raises(ValueError, match="at least 2 'test' videos"):
        unlabelled_neighbours(path, split="test")
    assert unlabelled_neighbours(path, split=None, ks=(1,), hub_k=3)["mean_pairwise_cosine"] == pytest.approx(
        report["mean_pairwise_cosine"])  # every video: here all are train
    assert "warning" not in report
    np.savez(path, video_id=np.array([f"v{i}" for i in range(7)]), label=np.full(7, -1), class_name=np.array([""] * 7),
             split=np.array(["train"] * 7), embedding=(1 + 0.05 * rng.normal(size=(7, 8))).astype(np.float32))
    alike = unlabelled_neighbours(path)  # as an untrained network's: every pair near cosine 1
    assert alike["mean_pairwise_cosine"] > 0.99 and "untrained or collapsed" in alike["warning"]


def test_segments_of_one_recording_find_other_files_not_each_other(tmp_path: Path) -> None:
    """An unlabelled archive cut into segments: a long recording's 5 segments (nearly one vector) and 3 short
    files. Leave-one-out, each segment's nearest is its own recording's next segment; with the source files, a
    segment queries the other files only (and the short files still find the recording's segments)."""
    rng = np.random.default_rng(3)
    recording = np.eye(8)[0] + 0.01 * rng.normal(size=(5, 8))
    short = np.eye(8)[[0, 1, 2]] + 0.3 * np.eye(8)[[1, 2, 3]]  # the first one near the recording
    embedding = np.concatenate([recording, short]).astype(np.float32)
    ids = [f"long@{8 * i}.0s" for i in range(5)] + ["s0", "s1", "s2"]
    files = {**{i: "/a/long.mp4" for i in ids[:5]}, "s0": "/a/s0.mp4", "s1": "/a/s1.mp4", "s2": "/a/s2.mp4"}
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.array(ids), label=np.full(8, -1), class_name=np.array([""] * 8),
             split=np.array(["train"] * 8), embedding=embedding)
    plain, sims = nearest_others(embedding, 2)
    assert set(plain[:5].ravel()) <= set(range(5))  # each segment finds its own recording
    by_file, _ = nearest_others(embedding, 2, files=np.array([files[i] for i in ids]))
    assert by_file.shape == (8, 2) and set(by_file[:5].ravel()) <= {5, 6, 7}
    assert by_file[5, 0] in range(5)  # s0 still finds the recording
    report = unlabelled_neighbours(path, ks=(1, 2, 5), hub_k=10, files=files)
    assert report["leave_out"] == "file" and report["protocol"].startswith("leave-one-file-out")
    assert "neighbour_cosine@5" not in report and report["hub_k"] == 3  # 3 rows of other files at the most
    assert report["neighbour_cosine@1"] < unlabelled_neighbours(path, ks=(1,))["neighbour_cosine@1"]
    whole = {i: f"/a/{i}.mp4" for i in ids}  # every row its own file: the plain protocol
    assert unlabelled_neighbours(path, ks=(1,), files=whole)["leave_out"] == "video"


def test_clips_of_one_recording_are_left_out_together_when_the_manifest_names_recordings(tmp_path: Path) -> None:
    """An unlabelled folder whose manifest.group_pattern makes clips files of one recording: `source_units` gives
    recordings, and each clip then queries the other recordings' videos (its siblings would be nearest)."""
    from slic.retrieval import source_units

    ids = ["trip/a", "trip/b", "trip/c", "x", "y"]
    manifest = tmp_path / "validated.csv"
    pd.DataFrame({"video_id": ids, "path": [f"/v/{i}.mp4" for i in ids],
                  "group": ["trip", "trip", "trip", "x", "y"]}).to_csv(manifest, index=False)
    units, unit = source_units(manifest)
    assert unit == "recording" and units == {"trip/a": "trip", "trip/b": "trip", "trip/c": "trip", "x": "x", "y": "y"}
    embedding = (np.eye(8)[[0, 0, 0, 1, 2]] + 0.01 * np.arange(5)[:, None]).astype(np.float32)
    path = tmp_path / "e.npz"
    np.savez(path, video_id=np.array(ids), label=np.full(5, -1), class_name=np.array([""] * 5),
             split=np.array(["train"] * 5), embedding=embedding)
    report = unlabelled_neighbours(path, ks=(1, 2), hub_k=2, files=units, unit=unit)
    assert report["leave_out"] == "recording" and report["protocol"].startswith(
        "leave-one-recording-out: each train video (a clip of one of 3 recordings) queries the others of the other "
        "recordings, its own recording's clips left out")
    assert report["neighbour_cosine@1"] < 0.2  # without it, each trip clip's nearest is a sibling at cosine ~1
    assert unlabelled_neighbours(path, ks=(1,))["neighbour_cosine@1"] > 0.6
    files_only = manifest.with_name("files.csv")  # each recording one file (the default groups): files, as before
    pd.read_csv(manifest).assign(group=ids).to_csv(files_only, index=False)
    assert source_units(files_only) == ({i: f"/v/{i}.mp4" for i in ids}, "file")
    assert source_units(tmp_path / "absent.csv") == ({}, "file")
