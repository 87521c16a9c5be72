"""Text-to-video search over a folder of videos with a stage-1 model: ``vcap index`` embeds every
video once - whole, or as moments (windows of ``--segments`` seconds) - and ``vcap search`` ranks
them by a sentence (or by an example clip).

Index folder ``IDX`` (DESIGN.md, "The search index")::

    IDX/meta.json              the model (path, fingerprint), embedding dim, frames, sampling, the
                               windows of a moment index ("segments"), each shard's record (rows,
                               SHA-256 of its files and rows) and the vector index's ("vectors"),
                               checked when read (``index_files``, the index's one reader)
    IDX/shards/NNNNNN.npy      float16 (n, dim) L2-normalised embeddings: the source of truth
    IDX/shards/NNNNNN.json     per row: {"path", "size", "mtime_ns"} of the file embedded, and in a
                               moment index its window's "start" and "end" (seconds); written last
    IDX/vectors-HASH.faiss     the FAISS index of the current rows (``vector_index``): exact, or
                               approximate (IVF-PQ, re-ranked exactly from the shards) by size
    IDX/failures.json          files the last run could not read, with the reason (retried next run)

A shard counts only once its ``.json`` exists (both files are written atomically, the ``.npy``
first), so a run killed midway loses at most the shard it was filling; a rerun embeds only the
files no shard holds yet (new files, and the ones a killed run had not finished), then brings the
vector index up to date (``vector_index.update``: shards in and out, no retraining). An index
belongs to the model it was built with (and a moment index to its windows): another is refused, for
indexing and for searching. A file changed since it was embedded (size or modification time) is
embedded again on a rerun, its new rows replacing the old. A rerun keeps the index true
(``index_upkeep.repair_shards``, ``drop_rows``): every shard is read through ``index_files``' checks
first, and one that fails (cut, edited, NaN rows) is removed and its videos embedded again, each said
on stderr; a file that is gone, or that changed and can no longer be read, loses its rows (dropped,
listed in ``failures.json``, counted), so a search never returns it. A folder that is not an index is
refused untouched (``index_upkeep.INDEX``). How a search ranks: ``ranking.IndexSearcher``.

A pairwise model (``model.PairwiseScorer``: X-CLIP, its caption embedding prompted by each video)
cannot rank by a dot product: the index keeps each video's whole scoring state, and a sentence is
scored by the model's ``pair_scores`` against every row (an exact vector index) or against the
approximate index's shortlist, as retrieval evaluation scores pairs (``encode.pair_score_matrix``).
Its ``meta.json`` says so::

    "format": 2, "scoring": "pairwise", "state": {"video": [dim], "patches": [N, dim]}

    IDX/shards/NNNNNN.npy          float16 (n, dim) the state's "video" tensor: the pooled,
                                   L2-normalised video embedding (``encode_video``)
    IDX/shards/NNNNNN.NAME.npy     float16 (n, ...) each other tensor NAME of the state (X-CLIP:
                                   "patches", the prompt generator's frame-averaged patch tokens)

An embedding model's index of whole files has no ``format`` key (format 1), a moment index is
format 3 (an older vcap refuses it rather than misread it). An index serves only the kind of model
it was built for (an earlier version's X-CLIP index of embeddings is refused, with the advice to
rebuild it). Search by an example clip (``--video``) is cosine similarity of pooled embeddings for
both kinds: X-CLIP has no video-to-video score, so its pooled embedding (``get_video_features``) is used.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.errors import ConfigError, FeatureMismatchError, FeatureStoreError, VideoReadError
from retrieval_pretrain.foundation.folder_lock import folder_lock
from retrieval_pretrain.foundation.ownership import claim_folder
from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
from retrieval_pretrain.modeling.model import scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained, model_fingerprint
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.reading.clips import MIN_WINDOW
from retrieval_pretrain.stage1.data import Preprocess
from retrieval_pretrain.stage1.encode import embed_videos, video_states
from vcap_toolkit.jobs import vector_index
from vcap_toolkit.jobs.index_files import MOMENTS_FORMAT, PAIRWISE
from vcap_toolkit.jobs.index_store import KIND_HOLDS, VideoIndex
from vcap_toolkit.jobs.index_upkeep import INDEX, changed_since, drop_rows, repair_shards
from vcap_toolkit.jobs.moments import whole_files, window_clips, window_id
from vcap_toolkit.jobs.ranking import (
    IndexSearcher,
    cosine_scores,
    pair_scores_over_index,
    rank,
    rank_pairs,
    shards_digest,
)

__all__ = ["INDEX", "PAIRWISE", "IndexSearcher", "VideoIndex", "build_index", "cosine_scores", "index_model",
           "pair_scores_over_index", "rank", "rank_pairs", "search", "update_vectors"]

SHARD_VIDEOS = 256  # files per shard (with all their windows): what a killed run can lose
PAIRWISE_FORMAT = 2


def window_spec(segments: float | None, stride: float | None) -> dict[str, float] | None:
    """``meta["segments"]`` for ``--segments`` / ``--stride`` (None: whole files); a value that
    cannot make sense is a ``ConfigError`` naming the option."""
    if segments is None:
        if stride is not None:
            raise ConfigError("--stride needs --segments (the window length it steps through)")
        return None
    for option, value in (("--segments", segments), ("--stride", stride if stride is not None else segments)):
        if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
            raise ConfigError(f"{option} {value!r}: give a number of seconds > 0")
        if value < MIN_WINDOW:
            raise ConfigError(f"{option} {value:g}: windows shorter than {MIN_WINDOW:g} s are not cut (times are "
                              "kept to the millisecond, and a window must hold a frame); give a longer one")
    stride = float(segments if stride is None else stride)
    if stride > segments:
        raise ConfigError(f"--stride {stride:g} is longer than --segments {segments:g}: windows would leave gaps")
    return {"seconds": float(segments), "stride": stride}


def build_index(model_dir: Path, videos: Sequence[Path], output: Path, device: torch.device, batch_size: int = 8,
                num_workers: int = 0, shard_size: int = SHARD_VIDEOS, unlisted: Sequence[tuple[str, str]] = (),
                segments: float | None = None, stride: float | None = None,
                vectors: str = vector_index.AUTO) -> dict[str, Any]:
    """Embed the ``videos`` the index in ``output`` does not hold yet, ``shard_size`` files at a time
    (a shard is saved whole; a killed run loses at most the one it was filling), whole or as windows
    of ``segments`` seconds every ``stride``, then bring the vector index (``vectors``: auto, exact or
    approximate) up to date. Returns a report (files: total, already indexed, indexed now, failed,
    changed, gone, rows dropped, shards repaired; rows; the vector index; seconds). ``unlisted``:
    ``(path, reason)`` of folder entries that led nowhere, reported and listed with the unreadable
    videos. ``output`` must be an index or new (``claim_folder``); the index is repaired first and
    stale rows dropped last (module docstring). Several processes: ``index_parallel``."""
    windows = window_spec(segments, stride)
    check_vectors_kind(vectors)
    claim_folder(output, INDEX)  # before the lock, whose file would make a new folder look used
    with folder_lock(output, "vcap index"):
        model, spec, index, repaired = open_for_indexing(model_dir, output, device, windows)
        plan = plan_index(index, videos)
        encode = partial(encode_shard, model, Path(model_dir), index, Preprocess.for_model(spec), device,
                         batch_size, num_workers, spec.eval_sampling, scores_pairwise(model), windows)
        t0, done, failures = time.perf_counter(), 0, [{"path": p, "reason": r} for p, r in unlisted]
        for shard in (plan.pending[i:i + shard_size] for i in range(0, len(plan.pending), shard_size)):
            kept, failed = encode(shard)
            failures += [{"path": p, "reason": r} for p, r in failed]
            done += len(kept)
        return finish_index(index, plan, failures, done, repaired, len(unlisted), vectors, t0)


def check_vectors_kind(vectors: str) -> None:
    if vectors not in vector_index.KINDS:
        raise ConfigError(f"--vectors {vectors!r}: one of {', '.join(vector_index.KINDS)}")


def open_for_indexing(model_dir: Path, output: Path, device: torch.device, windows: dict[str, float] | None
                      ) -> tuple[StageOneModel, Any, VideoIndex, int]:
    """The model, its spec and the index in ``output`` made (or checked to be) this model's, with
    what a killed run of several processes left merged in and every shard checked (``repair_shards``;
    returns how many it removed)."""
    model, spec = from_pretrained(model_dir, device=device)
    index = VideoIndex(output)
    meta = {"model": str(Path(model_dir).resolve()), "model_fingerprint": model_fingerprint(model_dir),
            "dim": spec.embed_dim, "num_frames": spec.num_frames, "dtype": "float16", "sampling": spec.eval_sampling}
    if scores_pairwise(model):
        meta.update(format=PAIRWISE_FORMAT, scoring=PAIRWISE)
    if windows is not None:
        meta.update(format=MOMENTS_FORMAT, segments=windows)
    index.init(meta)
    index.merge_parts()
    return model, spec, index, repair_shards(index)


@dataclass(frozen=True)
class IndexPlan:
    """What a run has to do: the files wanted (absolute, as given), those changed since they were
    embedded, those to embed (new or changed), and those indexed before that are gone."""

    wanted: list[str]
    changed: list[str]
    pending: list[str]
    gone: list[str]


def plan_index(index: VideoIndex, videos: Sequence[Path | str], say: bool = True) -> IndexPlan:
    have = index.stamps()
    wanted = list(dict.fromkeys(os.path.abspath(v) for v in videos))  # as given: links not resolved
    changed = [v for v in wanted if v in have and changed_since(v, have[v])]
    pending = [v for v in wanted if v not in have or v in changed]
    if say:
        print(f"index: {len(wanted)} videos, {len(wanted) - len(pending)} already indexed, {len(pending)} to embed"
              f"{f' ({len(changed)} changed since)' if changed else ''}", file=sys.stderr)
    return IndexPlan(wanted, changed, pending, [p for p in have if not os.path.exists(p)])


def finish_index(index: VideoIndex, plan: IndexPlan, failures: list[dict[str, str]], done: int, repaired: int,
                 unlisted: int, vectors: str, t0: float) -> dict[str, Any]:
    """After the embedding: the rows of files gone or now unreadable dropped, ``failures.json``
    written, the vector index brought up to date, each failure said; returns the run's report."""
    unreadable = {f["path"] for f in failures} & set(plan.changed)  # indexed before, changed, now unreadable
    dropped, n_failed = drop_rows(index, set(plan.gone) | unreadable), len(failures)
    listed = {f["path"] for f in failures}
    failures = failures + [{"path": p, "reason": f"{p}: no longer exists; its row was removed from the index"}
                           for p in plan.gone if p not in listed]
    write_json(index.folder / "failures.json", failures)
    record = update_vectors(index, vectors)
    for f in failures:
        print(f"warning: not indexed: {f['reason']}", file=sys.stderr)
    return {"total": len(plan.wanted) + unlisted, "done_before": len(plan.wanted) - len(plan.pending), "indexed": done,
            "changed": len(plan.changed), "gone": len(plan.gone), "dropped": dropped, "repaired": repaired,
            "failed": n_failed, "rows": record["rows"], "vectors": _vectors_summary(record),
            "seconds": round(time.perf_counter() - t0, 2), "folder": str(index.folder)}


def _vectors_summary(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("kind", "factory", "nprobe", "shortlist", "recall@10", "trained_rows")
    return {k: record[k] for k in keys if k in record}


def update_vectors(index: VideoIndex, kind: str = vector_index.AUTO) -> dict[str, Any]:
    """Bring the vector index of ``index`` in line with its shards' current rows
    (``vector_index.update``), record it in ``meta.json`` and remove any other vector file (one a
    killed run left, or the one this replaced). Returns the record."""
    meta = index.meta()
    shards = []
    for npy, rows, local in index.current_by_shard():
        sha = meta["shards"][npy.stem]["sha256"]["video"]
        load = partial(_current_vectors, index, npy, len(rows), local)
        mapped = partial(index.mapped, npy.stem, len(rows))
        shards.append(vector_index.ShardVectors(npy.stem, local, vector_index.shard_digest(sha, local), load, mapped))
    old = meta.get("vectors")
    record = {**vector_index.update(index.folder, old, shards, int(meta["dim"]), kind),
              "shards_sha256": shards_digest(meta["shards"])}
    if record != old:
        write_json(index.folder / "meta.json", {**index.meta(), "vectors": record})
    for stale in index.folder.glob("vectors-*.faiss"):
        if stale.name != record["file"]:
            stale.unlink(missing_ok=True)
    return record


def _current_vectors(index: VideoIndex, npy: Path, rows: int, local: np.ndarray) -> np.ndarray:
    return index.shard_arrays(npy, rows, ())["video"][local]


def encode_shard(model: StageOneModel, model_dir: Path, index: VideoIndex, pre: Preprocess, device: torch.device,
                  batch_size: int, num_workers: int, method: str, pairwise: bool, windows: dict[str, float] | None,
                  files: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Encode one shard's files - whole, or each window of each - and append what was read to
    ``index``: embeddings, or (pairwise) each clip's whole ``encode_video_state``. A file is
    appended with all its windows or not at all. Returns the files appended and the failures."""
    failed: list[tuple[str, str]] = []
    if windows is None:
        items = [(f, Path(f)) for f in files]
    else:
        items, windows_of, failed = window_clips(files, windows["seconds"], windows["stride"])
    run = video_states if pairwise else embed_videos
    out, bad = run(model, items, pre, device, batch_size, num_workers, method=method, desc="index")
    if windows is None:
        kept, failed = [f for f in files if f in out], bad
        rows = [(f, None, f) for f in kept]  # (file, range, clip id)
    else:
        kept, lost = whole_files(windows_of, out, bad)
        failed += lost
        rows = [(f, (c.start, c.end), window_id(c)) for f in kept for c in windows_of[f]]
    if not rows:
        return kept, failed
    paths, ranges = [r[0] for r in rows], [r[1] for r in rows] if windows is not None else None
    if not pairwise:
        index.append(paths, torch.stack([out[cid] for _, _, cid in rows]).numpy(), ranges=ranges)
        return kept, failed
    first = out[rows[0][2]]
    stacked = {k: torch.stack([out[cid][k] for _, _, cid in rows]).numpy() for k in first}  # {name: (n, ...)}
    if stacked.get("video", np.zeros(0)).shape[1:] != (model.embed_dim,):
        raise FeatureStoreError(f"{model_dir}: a pairwise model whose encode_video_state has no 'video' "
                                f"embedding of {model.embed_dim} values (kept for --video searches)")
    index.append(paths, stacked.pop("video"), stacked, ranges=ranges)
    return kept, failed


def index_model(meta: dict[str, Any], index_dir: Path, device: torch.device) -> tuple[StageOneModel, Any]:
    """The model an index was built with, loaded; refused (``FeatureMismatchError``) when it is gone,
    changed since, or scores otherwise than the index holds (pairs / embeddings)."""
    model_dir = Path(meta["model"])
    if not (model_dir / "model.safetensors").is_file() or model_fingerprint(model_dir) != meta["model_fingerprint"]:
        raise FeatureMismatchError(f"{index_dir}: the model it was built with ({model_dir}, fingerprint "
                                   f"{meta['model_fingerprint']}) is gone or changed; rebuild the index")
    model, spec = from_pretrained(model_dir, device=device)
    pairwise, kind = scores_pairwise(model), meta.get("scoring", "embedding")
    if pairwise != (kind == PAIRWISE):
        raise FeatureMismatchError(
            f"{index_dir}: an index of {KIND_HOLDS[kind]}, but its model {model_dir} "
            f"{'scores pairs (its text side is prompted by each video)' if pairwise else 'is an embedding model'}"
            f"; rebuild the index with 'vcap index' into a new folder")
    return model, spec


def search(index_dir: Path, device: torch.device, text: str | None = None, video: Path | None = None,
           top: int = 10) -> list[tuple[Any, ...]]:
    """The ``top`` results for a sentence or an example clip, best first: ``(path, similarity)``
    per video, or in a moment index ``(path, start, end, similarity)`` per moment (overlapping
    windows of one video collapsed to the best).

    A sentence is scored as the index's model scores pairs (a pairwise index: ``pair_scores`` with
    each row's stored state); an example clip by cosine of pooled embeddings (module docstring).
    An empty sentence is a ``ConfigError``: it would rank every video, meaning nothing."""
    if text is not None and not text.strip():
        raise ConfigError("vcap search: give a sentence to search for (QUERY)")
    searcher = IndexSearcher(index_dir)
    model, spec = index_model(searcher.meta, index_dir, device)
    with torch.no_grad():
        if text is not None:
            tokens = tokenizer_from_spec(spec)([text]).to(device)
            query = model.encode_text(tokens).float().cpu()[0].numpy()  # (D,)
            if scores_pairwise(model):  # the sentence prompted by each video: the model's own score
                hits = searcher.by_pairs(model, model.encode_text_state(tokens), query, top, device)
            else:
                hits = searcher.by_vector(query, top)
        else:
            emb, failed = embed_videos(model, [("query", Path(video))], Preprocess.for_model(spec), device, 1, 0,
                                       method=spec.eval_sampling, desc="query")
            if failed:
                raise VideoReadError(str(video), failed[0][1].removeprefix(f"{video}: "))
            hits = searcher.by_vector(emb["query"].numpy(), top)  # pooled embeddings
    return [h.as_tuple() for h in hits]
