"""Text-to-video search: ``vcap index`` (resumable, new files only, unreadable ones listed, one model
per index) and ``vcap search`` (by a sentence or an example clip)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from caption.demo import CONFIG_PATH
from retrieval_pretrain.foundation.errors import FeatureMismatchError, FeatureStoreError
from vcap_toolkit.cli.main import main
from vcap_toolkit.jobs.index_files import check_meta, check_rows
from vcap_toolkit.jobs.search import IndexSearcher, VideoIndex, build_index, rank, search, update_vectors

VCAP = Path(sys.executable).with_name("vcap")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def clips(motion_model, tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """The 20 motion clips in a folder of their own, plus an unreadable one."""
    model, truth = motion_model
    folder = tmp_path_factory.mktemp("search") / "clips"
    folder.mkdir()
    for video in truth:
        os.symlink(video, folder / Path(video).name)
    (folder / "broken.mp4").write_text("not a video")
    return model, folder, {str(folder / Path(v).name): label for v, label in truth.items()}


def test_search_by_a_label_finds_clips_with_that_motion(clips, tmp_path, capsys):
    model, folder, truth = clips
    assert main(["index", str(folder), "--model", str(model), "--output", str(tmp_path / "idx"),
                 "--num-workers", "0"]) == 1  # broken.mp4: named, listed, exit 1
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["total"], report["indexed"], report["failed"]) == (21, 20, 1)
    [failure] = json.loads((tmp_path / "idx" / "failures.json").read_text())
    assert failure["path"] == str(folder / "broken.mp4")
    hits = 0
    for label in sorted(set(truth.values())):
        assert main(["search", str(tmp_path / "idx"), label, "--top", "3", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["query"] == label and len(result["results"]) == 3
        sims = [s for _, s in result["results"]]
        assert sims == sorted(sims, reverse=True) and all(-1 <= s <= 1 for s in sims)
        hits += truth[result["results"][0][0]] == label
    labels = len(set(truth.values()))
    assert hits / labels >= 0.5, (hits, labels)  # a random top-1 has the label about 1 / labels of the time

    by_example = next(v for v in truth)
    assert main(["search", str(tmp_path / "idx"), "--video", by_example, "--top", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["results"][0][0] == by_example and result["results"][0][1] == pytest.approx(1.0, abs=2e-3)


def test_caption_queries_through_the_index_give_eval_retrieval_recall(clips, tmp_path, capsys):
    """README ("Recognition and search"): every caption of a split searched through a `vcap index` of
    its videos finds its video at rank 1 (and within 5) exactly as often as `vcap eval-retrieval`
    reports for t2v. Same model, same frames: both sample the model's own frames with its
    ``eval_sampling`` (``spec``), not the config's. The index stores fp16 embeddings where
    eval-retrieval keeps fp32; that rounding could swap two videos scored within ~1e-3, so the gaps
    that decide rank 1 and rank <= 5 are checked to be wider (none is, on this model)."""
    model, folder, truth = clips
    videos = sorted(truth)
    ann = tmp_path / "annotations.jsonl"  # all 20 clips as one split, each captioned by its motion
    ann.write_text("".join(json.dumps({"video": Path(v).name, "captions": [truth[v]], "split": "test"}) + "\n"
                           for v in videos))
    assert main(["eval-retrieval", "--model", str(model), "--config", str(CONFIG_PATH), "--split", "test",
                 "--output", str(tmp_path / "eval"), f"data.annotations={ann}", f"data.videos={folder}",
                 "run.num_workers=0", "video.num_frames=4"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (metrics["videos"], metrics["captions"]) == (20, 20)
    assert main(["index", *videos, "--model", str(model), "--output", str(tmp_path / "idx"), "--num-workers", "0"]) == 0
    capsys.readouterr()
    ranks, gaps = [], []
    for video in videos:
        found = search(tmp_path / "idx", CPU, text=truth[video], top=len(videos))  # what `vcap search` prints
        own, others = dict(found)[video], [s for p, s in found if p != video]  # others: best first
        ranks.append([p for p, _ in found].index(video) + 1)
        gaps += [abs(own - others[0]), abs(own - others[4])]  # where rank 1 and rank <= 5 are decided
    # fp16 moves a cosine of unit vectors by at most 2**-11 (~4.9e-4), so a pair of scores this far
    # apart is ordered the same in eval-retrieval's fp32 matrix
    assert min(gaps) > 1e-3, gaps
    assert np.mean(np.asarray(ranks) == 1) == metrics["t2v_R@1"], (ranks, metrics)
    assert np.mean(np.asarray(ranks) <= 5) == metrics["t2v_R@5"], (ranks, metrics)
    assert 0 < metrics["t2v_R@1"] < metrics["t2v_R@5"]  # neither all nor nothing: the counts mean something


def test_a_rerun_embeds_only_new_videos_and_another_model_is_refused(clips, tmp_path):
    model, folder, truth = clips
    videos = sorted(truth)
    first = build_index(model, videos[:-1], tmp_path / "idx", CPU, batch_size=4, shard_size=8)
    assert (first["indexed"], first["done_before"]) == (19, 0)
    shards = {p: p.stat().st_mtime_ns for p in (tmp_path / "idx" / "shards").iterdir()}
    again = build_index(model, videos, tmp_path / "idx", CPU, batch_size=4, shard_size=8)
    assert (again["indexed"], again["done_before"], again["total"]) == (1, 19, 20)
    assert all(p.stat().st_mtime_ns == t for p, t in shards.items())  # nothing rewritten
    index = VideoIndex(tmp_path / "idx")
    assert index.paths() == videos and index.embeddings().shape == (20, index.meta()["dim"])

    other = tmp_path / "other_model"
    shutil.copytree(model, other)
    from safetensors.torch import load_file, save_file

    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.5
    save_file(weights, other / "model.safetensors")
    with pytest.raises(FeatureMismatchError, match="built with another model"):
        build_index(other, videos, tmp_path / "idx", CPU)


def test_an_index_killed_midway_and_rerun_equals_one_run(clips, tmp_path):
    model, folder, truth = clips
    videos = sorted(truth)
    build_index(model, videos, tmp_path / "one", CPU, batch_size=2, shard_size=2)
    args = [str(VCAP), "index", *videos, "--model", str(model), "--output", str(tmp_path / "killed"),
            "--batch-size", "2", "--shard-size", "2", "--num-workers", "0"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    marker = tmp_path / "killed" / "shards" / "000002.json"
    deadline = time.monotonic() + 120
    while not marker.is_file():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = len(VideoIndex(tmp_path / "killed").paths())
    assert 6 <= kept < 20  # killed midway: some shards saved, not all
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["done_before"] == kept
    a, b = VideoIndex(tmp_path / "one"), VideoIndex(tmp_path / "killed")
    assert a.paths() == b.paths() == videos
    np.testing.assert_allclose(a.embeddings().astype(np.float32), b.embeddings().astype(np.float32), atol=2e-3)


def test_rank_is_cosine_top_k_over_chunks():
    g = np.random.default_rng(0)
    emb = g.standard_normal((70_000, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    query = emb[65_537].copy()
    out = rank(emb.astype(np.float16), query, 3)
    assert out[0][0] == 65_537 and out[0][1] == pytest.approx(1.0, abs=1e-3)
    want = np.argsort(-(emb.astype(np.float16).astype(np.float32) @ query))[:3]
    assert [r for r, _ in out] == want.tolist()


def test_a_changed_file_is_embedded_again_and_a_gone_one_is_never_returned(clips, tmp_path, capsys):
    model, folder, truth = clips
    work = tmp_path / "v"
    work.mkdir()
    videos = sorted(truth)[:4]
    for v in videos:
        shutil.copy(v, work / Path(v).name)
    mine = sorted(str(p) for p in work.iterdir())
    build_index(model, mine, tmp_path / "idx", CPU, batch_size=4)
    before = VideoIndex(tmp_path / "idx").embeddings().astype(np.float32)
    shutil.copy(sorted(truth)[5], mine[0])  # another clip under the first one's name
    os.unlink(mine[1])
    report = build_index(model, mine, tmp_path / "idx", CPU, batch_size=4)
    assert (report["changed"], report["gone"], report["indexed"], report["dropped"]) == (1, 1, 1, 1)
    index = VideoIndex(tmp_path / "idx")
    paths = index.paths()
    assert sorted(paths) == [mine[0], *mine[2:]]  # each once (the changed one by its newest row); the gone one dropped
    after = dict(zip(paths, index.embeddings().astype(np.float32)))
    assert not np.allclose(after[mine[0]], before[0], atol=1e-2)
    assert all(np.array_equal(after[p], before[i]) for i, p in enumerate(mine) if i >= 2)
    assert {f["path"] for f in json.loads((tmp_path / "idx" / "failures.json").read_text())} == {mine[1]}
    os.unlink(mine[2])  # gone since the last run: a search leaves it out, saying so
    assert main(["search", str(tmp_path / "idx"), "moving up", "--top", "4", "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert {p for p, _ in result["results"]} == {mine[0], mine[3]}
    assert "no longer exist and were left out" in out.err
    Path(mine[3]).write_bytes(b"not a video any more")  # changed since indexed (a hostile round's find: it was
    assert main(["search", str(tmp_path / "idx"), "moving up", "--top", "4", "--json"]) == 0  # returned, old score)
    out = capsys.readouterr()
    assert {p for p, _ in json.loads(out.out.strip().splitlines()[-1])["results"]} == {mine[0]}
    assert "changed since they were indexed and were left out; rerun 'vcap index'" in out.err


# --- A damaged index (issue 25, class 2): one line, exit 7, never a silently wrong score ---------

@pytest.fixture(scope="module")
def small_index(clips, tmp_path_factory) -> Path:
    """4 clips in 2 shards of 2, written by ``build_index`` (with the shards' records in meta.json)."""
    model, folder, truth = clips
    out = tmp_path_factory.mktemp("small") / "idx"
    build_index(model, sorted(truth)[:4], out, CPU, batch_size=4, shard_size=2)
    return out


def _copy(small_index: Path, tmp_path: Path, records: bool) -> Path:
    idx = tmp_path / "idx"
    shutil.copytree(small_index, idx)
    if not records:  # as the index was written before the records (and vector indexes) existed
        meta = json.loads((idx / "meta.json").read_text())
        meta.pop("shards", None)
        for faiss_file in idx.glob(meta.pop("vectors")["file"]):
            faiss_file.unlink()
        (idx / "meta.json").write_text(json.dumps(meta))
    return idx


def _more_rows(idx):
    arr = np.load(idx / "shards" / "000000.npy")
    np.save(idx / "shards" / "000000.npy", np.concatenate([arr, arr[:1]]))


def _nan_row(idx):
    arr = np.load(idx / "shards" / "000001.npy")
    arr[1] = np.nan
    np.save(idx / "shards" / "000001.npy", arr)


def _other_width(idx):
    arr = np.load(idx / "shards" / "000001.npy")
    np.save(idx / "shards" / "000001.npy", arr[:, :-1].copy())


def _json(name, value):
    return lambda idx: (idx / name).write_text(value if isinstance(value, str) else json.dumps(value))


def _meta_without_model(idx):
    meta = json.loads((idx / "meta.json").read_text())
    meta.pop("model")
    (idx / "meta.json").write_text(json.dumps(meta))


DAMAGES = {
    "npy_more_rows_than_json": (_more_rows, "000000.npy: shape \\[3, "),
    "nan_row": (_nan_row, "000001.npy: 1 rows hold NaN"),
    "another_width": (_other_width, "000001.npy: shape \\[2, "),
    "broken_shard_json": (_json("shards/000000.json", '[{"path": '), "000000.json: not a readable index shard"),
    "row_without_path": (_json("shards/000001.json", [{"size": 3}, {"path": "/x.mp4"}]), "000001.json: row 0 has no video path"),
    "meta_is_a_list": (_json("meta.json", [1, 2]), "meta.json: an index record is a JSON object, not list"),
    "meta_without_model": (_meta_without_model, "meta.json: 'model' is missing"),
}


def _refused(idx: Path, capsys, match: str) -> None:
    capsys.readouterr()
    code = main(["search", str(idx), "moving up", "--top", "4", "--json"])
    out = capsys.readouterr()
    lines = out.err.strip().splitlines()
    assert code == 7 and out.out == "" and len(lines) == 1, (code, out)
    assert lines[0].startswith("vcap: feature folder error: ") and re.search(match, lines[0]), lines[0]


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_index_is_refused_in_one_line(small_index, tmp_path, capsys, damage):
    spoil, match = DAMAGES[damage]
    idx = _copy(small_index, tmp_path, records=False)
    spoil(idx)
    _refused(idx, capsys, match)


def test_an_edited_shard_is_refused_by_its_recorded_hash(small_index, tmp_path, capsys):
    idx = _copy(small_index, tmp_path, records=True)
    npy = idx / "shards" / "000000.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0x01  # the same shape, one value changed
    npy.write_bytes(bytes(data))
    _refused(idx, capsys, "000000.npy: its bytes differ from the SHA-256")
    idx2 = _copy(small_index, tmp_path / "b", records=True)  # a shard's rows swapped for another shard's
    (idx2 / "shards" / "000000.json").write_text((idx2 / "shards" / "000001.json").read_text())
    _refused(idx2, capsys, "000000.json: its rows differ from the SHA-256")


def test_a_shard_without_its_record_is_refused_and_a_missing_one_is_said(small_index, tmp_path, capsys):
    idx = _copy(small_index, tmp_path / "a", records=True)  # one shard's record dropped, the shards then swapped
    meta = json.loads((idx / "meta.json").read_text())
    del meta["shards"]["000001"]
    (idx / "meta.json").write_text(json.dumps(meta))
    _refused(idx, capsys, re.escape("shard(s) 000001 have no record"))
    idx = _copy(small_index, tmp_path / "b", records=True)  # a recorded shard's .json deleted: not silent
    (idx / "shards" / "000001.json").unlink()
    assert main(["search", str(idx), "moving up", "--top", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out.strip().splitlines()[-1])["results"]) == 2
    assert "warning:" in captured.err and "shard(s) 000001 (2 videos) are recorded but not complete" in captured.err


def test_an_index_without_records_searches_as_before(small_index, tmp_path, capsys):
    """An index written before the shard records (meta.json without "shards", the same shard files)
    gives exactly the results of one with them."""
    results = []
    for records in (True, False):
        idx = _copy(small_index, tmp_path / str(records), records=records)
        assert main(["search", str(idx), "moving up", "--top", "4", "--json"]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"])
    assert results[0] == results[1] and len(results[0]) == 4


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
NEAR_META = st.fixed_dictionaries({}, optional={
    "model": JSON | st.just("/m"), "model_fingerprint": JSON | st.just("ab"), "dim": JSON | st.just(8),
    "num_frames": JSON | st.just(4), "format": JSON | st.sampled_from([1, 2, 3]), "dtype": JSON | st.just("float16"),
    "scoring": JSON | st.sampled_from(["embedding", "pairwise"]), "state": JSON | st.just({"video": [8]}),
    "shards": JSON | st.just({"000000": {"rows": 1, "rows_sha256": "0" * 64, "sha256": {"video": "f" * 64}}})})
NEAR_ROWS = st.lists(JSON | st.text(max_size=4) | st.fixed_dictionaries(
    {"path": JSON | st.just("/v.mp4")}, optional={"size": JSON | st.just(1), "mtime_ns": JSON | st.just(2)}), max_size=4)


@settings(max_examples=300, deadline=None)
@given(meta=JSON | NEAR_META, rows=JSON | NEAR_ROWS)
def test_the_index_file_reader_takes_any_json_or_refuses_it(meta, rows):
    """Any JSON value is a valid record (what the search reads from it has its type) or one line of
    ``FeatureStoreError``, never another exception."""
    where = Path("/i/meta.json")
    try:
        got = check_meta(meta, where)
        assert isinstance(got["model"], str) and isinstance(got["dim"], int) and got["dim"] > 0
        assert got.get("scoring", "embedding") in ("embedding", "pairwise")
    except FeatureStoreError as e:
        assert str(e).startswith(f"{where}: ") and "\n" not in str(e)
    try:
        got_rows = check_rows(rows, where)
        assert all(isinstance(r["path"], str) and r["path"] for r in got_rows)
        assert all(isinstance(r["size"], int) for r in got_rows if "size" in r)
    except FeatureStoreError as e:
        assert str(e).startswith(f"{where}: ") and "\n" not in str(e)


# --- The vector index (issue 27): FAISS, exact and approximate ----------------------------------


def _generated_index(folder: Path, files: Path, vectors: np.ndarray, shard: int) -> list[str]:
    """An index of ``vectors`` (fp16 rows, ``shard`` a shard) over empty files, so a search keeps them."""
    index = VideoIndex(folder)
    index.init({"model": "generated", "model_fingerprint": "0", "dim": vectors.shape[1], "dtype": "float16"})
    files.mkdir(exist_ok=True)
    paths = []
    for start in range(0, len(vectors), shard):
        names = [str(files / f"v{i}.mp4") for i in range(start, min(start + shard, len(vectors)))]
        for name in names:
            Path(name).touch()
        index.append(names, vectors[start:start + shard])
        paths += names
    return paths


def test_exact_mode_returns_what_brute_force_returns(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((3000, 64)).astype(np.float32)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    paths = _generated_index(tmp_path / "idx", tmp_path / "v", vectors, shard=700)
    record = update_vectors(VideoIndex(tmp_path / "idx"))
    assert (record["kind"], record["factory"], record["rows"]) == ("exact", "IDMap,Flat", 3000)
    searcher = IndexSearcher(tmp_path / "idx")
    queries = rng.standard_normal((20, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    brute = queries @ vectors.astype(np.float32).T  # (20, 3000): the fp16 rows, float32 products
    for q, scores in zip(queries, brute):
        hits = searcher.by_vector(q, 10)
        want = np.argsort(-scores)[:10]
        assert [h.path for h in hits] == [paths[i] for i in want]
        np.testing.assert_allclose([h.score for h in hits], scores[want], atol=1e-5)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """100,000 realistic rows of width 512 (``bench_vector_index.Library``: topics, videos, moments)
    in 4 fp16 shards, and an approximate vector index over the first 3."""
    from benchmarks.bench_vector_index import Library, shard_vectors, write_shards
    from vcap_toolkit.jobs import vector_index

    folder = tmp_path_factory.mktemp("library")
    lib = Library()
    paths = write_shards(folder / "shards", 100_000, lib, shard_rows=25_000)
    record = vector_index.update(folder, None, shard_vectors(paths[:3]), 512, "approximate", log=lambda line: None)
    return folder, lib, paths, record


def test_an_approximate_index_keeps_recall_at_10_and_adds_and_drops_shards(library):
    from benchmarks.bench_vector_index import exact_top, shard_vectors
    from vcap_toolkit.jobs import vector_index

    folder, lib, paths, record = library
    assert record["kind"] == "approximate" and record["factory"].startswith("IVF") and record["rows"] == 75_000
    assert record["recall@10"] >= 0.95 and record["nprobe"] in vector_index.NPROBES  # measured at build time
    assert record["bytes"] < sum(p.stat().st_size for p in paths[:3]) / 8  # 64 bytes of codes a row, not 1024
    shards = shard_vectors(paths)
    record2 = vector_index.update(folder, record, shards, 512, "auto", log=lambda line: None)  # a 4th shard in
    assert (record2["rows"], record2["trained_rows"], record2["nprobe"]) == (100_000, 75_000, record["nprobe"])
    searcher = vector_index.open_vectors(folder, record2, {s.stem: s.mapped for s in shards})
    queries = lib.queries(300, 100_000)  # text-like queries, none of them a row: measured here, not assumed
    found = searcher.search(queries, 10)[1]
    recall = vector_index.recall_at(found, exact_top(paths, queries))
    assert recall >= 0.95, recall
    new = np.asarray(np.load(paths[3], mmap_mode="r")[[5, 17_000]], dtype=np.float32)  # rows of the added shard
    scores, ids = searcher.search(new, 1)
    assert ids[:, 0].tolist() == vector_index.row_ids(paths[3].stem, [5, 17_000]).tolist()
    np.testing.assert_allclose(scores[:, 0], (new * new).sum(1), atol=1e-5)  # re-ranked exactly from the shard
    record3 = vector_index.update(folder, record2, shards[:2] + shards[3:], 512, log=lambda line: None)  # one out
    searcher = vector_index.open_vectors(folder, record3, {s.stem: s.mapped for s in shards})
    assert searcher.index.ntotal == 75_000
    left = vector_index.split_ids(searcher.search(queries[:50], 50)[1])[0]
    assert int(paths[2].stem) not in set(left.ravel().tolist())  # its rows are gone by id


def test_a_cut_shard_or_a_missing_vector_index(small_index, tmp_path, capsys):
    idx = _copy(small_index, tmp_path / "cut", records=True)
    npy = idx / "shards" / "000001.npy"
    npy.write_bytes(npy.read_bytes()[:-16])  # cut: refused at once, whichever rows a query would find
    _refused(idx, capsys, "000001.npy: is [0-9]+ bytes, not the [0-9]+ of its header and meta.json "
                          "\\(cut or lengthened\\)")
    idx = _copy(small_index, tmp_path / "lost", records=True)
    meta = json.loads((idx / "meta.json").read_text())
    (idx / meta["vectors"]["file"]).unlink()  # the vector index lost: ranked from the shards, said
    assert main(["search", str(idx), "moving up", "--top", "4", "--json"]) == 0
    captured = capsys.readouterr()
    assert "the vector index is missing or cut; ranking the shards directly" in captured.err
    assert main(["search", str(small_index), "moving up", "--top", "4", "--json"]) == 0
    assert json.loads(captured.out.splitlines()[-1]) == json.loads(capsys.readouterr().out.splitlines()[-1])


def test_a_pairwise_model_re_ranks_the_approximate_shortlist_by_its_own_scores(tmp_path, monkeypatch):
    """X-CLIP (its text prompted by each video) over an approximate vector index: the shortlist the
    index gives for the sentence's plain embedding is scored by the model's ``pair_scores`` of each
    row's stored state - exactly: the results are the shortlist's best by that score."""
    from test_xclip import XCLIP

    from caption.config import load
    from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
    from retrieval_pretrain.modeling.model_folder import from_pretrained, model_fingerprint, save_pretrained
    from retrieval_pretrain.modeling.parts import build_video_text_model
    from vcap_toolkit.jobs import ranking
    from vcap_toolkit.jobs.search import pair_scores_over_index

    torch.manual_seed(0)
    folder = save_pretrained(build_video_text_model(load(None, XCLIP)).eval(), tmp_path / "xclip")
    net, spec = from_pretrained(folder)
    with torch.no_grad():
        states = net.encode_video_state(torch.randn(400, 4, 3, 32, 32))  # 400 clips' states, as the tower gives them
    index = VideoIndex(tmp_path / "idx")
    index.init({"model": str(folder), "model_fingerprint": model_fingerprint(folder), "dim": 32, "dtype": "float16",
                "format": 2, "scoring": "pairwise"})
    (tmp_path / "v").mkdir()
    paths = [str(tmp_path / "v" / f"{i}.mp4") for i in range(400)]
    for p in paths:
        Path(p).touch()
    for lo in (0, 250):
        part = {k: v[lo:lo + 250].numpy() for k, v in states.items()}
        index.append(paths[lo:lo + 250], part.pop("video"), part)
    assert update_vectors(index, "approximate")["kind"] == "approximate"
    monkeypatch.setattr(ranking, "PAIRWISE_SHORTLIST", 40)
    tokens = tokenizer_from_spec(spec)(["moving up"])
    with torch.no_grad():
        text_state, text = net.encode_text_state(tokens), net.encode_text(tokens)[0].numpy()
        every = pair_scores_over_index(net, index, text_state, CPU).numpy()  # (400,) the model's score of each row
    searcher = IndexSearcher(tmp_path / "idx")
    hits = searcher.by_pairs(net, text_state, text, top=2, device=CPU)
    rows = {p: i for i, p in enumerate(index.paths())}
    shortlist = _candidate_rows(searcher, text, 40, rows)
    want = sorted(shortlist, key=lambda r: -every[r])[:2]
    assert len(set(shortlist)) == 40 and [rows[h.path] for h in hits] == want
    np.testing.assert_allclose([h.score for h in hits], every[want], atol=1e-5)


def _candidate_rows(searcher, text: np.ndarray, count: int, rows: dict[str, int]) -> list[int]:
    """The rows (of ``index.paths()``) of the approximate index's first ``count`` candidates for ``text``."""
    from vcap_toolkit.jobs.vector_index import split_ids

    shard, pos = split_ids(searcher.vectors.candidates(text[None], count)[0])
    return [rows[searcher._rows(f"{s:06d}")[j]["path"]] for s, j in zip(shard.tolist(), pos.tolist())]
