"""Text-to-video search over a folder of videos with a stage-1 model: ``vcap index`` embeds every
video once, ``vcap search`` ranks them by a sentence (or by an example clip).

Index folder ``IDX``::

    IDX/meta.json              the model (path, fingerprint), embedding dim, frames, sampling
                               and each shard's record (rows, SHA-256 of its files and rows),
                               checked when it is read (``index_files``, the index's one reader)
    IDX/shards/NNNNNN.npy      float16 (n, dim) L2-normalised video embeddings (read whole, checked against meta.json)
    IDX/shards/NNNNNN.json     per row: {"path", "size", "mtime_ns"} of the file embedded (written last)
    IDX/failures.json          videos the last run could not read, with the reason (retried next run)

A shard counts only once its ``.json`` exists (both files are written atomically, the ``.npy``
first), so a run killed midway loses at most the shard it was filling; a rerun embeds only the
videos no shard holds yet (new files, and the ones a killed run had not finished). An index belongs
to the model it was built with: another model is refused, for indexing and for searching. A file
changed since it was embedded (size or modification time) is embedded again on a rerun, its new row
replacing the old; a file that is gone is reported by a rerun and never returned by a search.

A pairwise model (``model.PairwiseScorer``: X-CLIP, its caption embedding prompted by each video)
cannot rank by a dot product: the index keeps each video's whole scoring state, and a sentence is
scored against every indexed video by the model's ``pair_scores``, in blocks (``rank_pairs``), as
retrieval evaluation scores pairs (``encode.pair_score_matrix``). Its ``meta.json`` says so::

    "format": 2, "scoring": "pairwise", "state": {"video": [dim], "patches": [N, dim]}

    IDX/shards/NNNNNN.npy          float16 (n, dim) the state's "video" tensor: the pooled,
                                   L2-normalised video embedding (``encode_video``)
    IDX/shards/NNNNNN.NAME.npy     float16 (n, ...) each other tensor NAME of the state (X-CLIP:
                                   "patches", the prompt generator's frame-averaged patch tokens)

An embedding model's index is written exactly as before (no ``format`` key: format 1, scoring by
embedding). An index serves only the kind of model it was built for: one of embeddings holds nothing
a pairwise model can score a sentence with (an earlier version's X-CLIP index is refused, with the
advice to rebuild it), and the other way round. Search by an example clip (``--video``) is cosine
similarity of pooled embeddings for both kinds: X-CLIP has no video-to-video score (its prompt
generator conditions text on a video), so its pooled embedding (``get_video_features``) is used.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from retrieval_pretrain.foundation.atomic import write_file, write_json
from retrieval_pretrain.foundation.errors import ConfigError, FeatureMismatchError, FeatureStoreError, VideoReadError
from retrieval_pretrain.foundation.folder_lock import folder_lock
from retrieval_pretrain.modeling.clip_tokenizer import tokenizer_from_spec
from retrieval_pretrain.modeling.model import PairwiseScorer, scores_pairwise
from retrieval_pretrain.modeling.model_folder import from_pretrained, model_fingerprint
from retrieval_pretrain.modeling.parts import StageOneModel
from retrieval_pretrain.reading.features import save_npy
from retrieval_pretrain.stage1.data import Preprocess
from retrieval_pretrain.stage1.encode import embed_videos, video_states
from vcap_toolkit.jobs.index_files import (
    INDEX_FORMAT,
    PAIRWISE,
    STATE_NAME,
    check_recorded,
    read_array,
    read_meta,
    read_rows,
    shard_record,
)

SHARD_VIDEOS = 256  # videos per shard: what a killed run can lose


class VideoIndex:
    """Read/append access to an index folder."""
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.shards = self.folder / "shards"

    def meta(self) -> dict[str, Any]:
        """``meta.json``, checked by the index's one reader (``index_files``)."""
        return read_meta(self.folder)

    def scoring(self) -> str:
        """``"pairwise"`` for an index of pairwise states (format 2), else ``"embedding"``."""
        return str(self.meta().get("scoring", "embedding"))

    def init(self, meta: dict[str, Any]) -> None:
        """Create the index for ``meta``, or check that an existing one was built by the same model."""
        if (self.folder / "run.json").is_file() or (self.folder / "features").is_dir():
            raise FeatureStoreError(f"{self.folder} holds a training run or a feature folder; give the index a "
                                    "folder of its own")
        if (self.folder / "meta.json").is_file():
            old = self.meta()
            if old.get("model_fingerprint") != meta["model_fingerprint"] or old.get("dim") != meta["dim"]:
                raise FeatureMismatchError(
                    f"{self.folder} was built with another model ({old.get('model')}, fingerprint "
                    f"{old.get('model_fingerprint')}) than {meta['model']} ({meta['model_fingerprint']}); "
                    "give a new --output folder")
            was, now = old.get("scoring", "embedding"), meta.get("scoring", "embedding")
            if was != now:
                raise FeatureMismatchError(
                    f"{self.folder} is an index of {_KIND_HOLDS[was]}, but {meta['model']} needs "
                    f"{_KIND_HOLDS[now]} (an index of this model made by an earlier version of vcap); "
                    "give a new --output folder")
            return
        self.shards.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / "meta.json", {**meta, "shards": {}})  # "shards" present: every shard has a record

    def _complete(self) -> list[Path]:
        return sorted(p.with_suffix(".npy") for p in self.shards.glob("[0-9]*.json") if p.with_suffix(".npy").is_file())

    def _shard_rows(self) -> list[tuple[Path, list[dict[str, Any]]]]:
        """Each complete shard's ``.npy`` with its rows, in shard order."""
        meta = self.meta()
        records, complete = meta.get("shards"), self._complete()
        if records is not None:  # an index that records its shards: none may lack its record, none go missing
            check_recorded(self.folder / "meta.json", records, [npy.stem for npy in complete])
        return [(npy, read_rows(npy.with_suffix(".json"), (records or {}).get(npy.stem))) for npy in complete]

    def _shard_arrays(self, npy: Path, rows: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The checked arrays ``{"video", *names}`` of one shard of ``rows`` videos (``index_files.read_array``)."""
        meta = self.meta()
        shapes, hashes = meta.get("state", {"video": [meta["dim"]]}), meta.get("shards", {}).get(npy.stem, {})
        return {name: read_array(npy if name == "video" else npy.with_name(f"{npy.stem}.{name}.npy"), rows,
                                 shapes.get(name, [meta["dim"]]), hashes.get("sha256", {}).get(name))
                for name in ("video", *names)}

    def _rows(self) -> list[dict[str, Any]]:
        return [r for _, rows in self._shard_rows() for r in rows]

    def _current(self) -> list[int]:
        """Row numbers of each path's newest row (a re-embedded file's replaces its older one)."""
        newest = {r["path"]: i for i, r in enumerate(self._rows())}
        return sorted(newest.values())

    def stamps(self) -> dict[str, tuple[int, int] | None]:
        """path -> (size, mtime_ns) of the file when it was embedded (None: not recorded)."""
        rows = self._rows()
        return {rows[i]["path"]: (rows[i]["size"], rows[i]["mtime_ns"]) if "size" in rows[i] else None
                for i in self._current()}

    def paths(self) -> list[str]:
        """Every indexed video once, in row order."""
        rows = self._rows()
        return [rows[i]["path"] for i in self._current()]

    def embeddings(self) -> np.ndarray:
        """(N, dim) float16, the rows of ``paths()`` (each shard read whole and checked, then joined)."""
        return self._all_embeddings()[self._current()]

    def _all_embeddings(self) -> np.ndarray:
        parts = [self._shard_arrays(npy, len(rows), ())["video"] for npy, rows in self._shard_rows()]
        dim = int(self.meta()["dim"])
        return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float16)

    def state_blocks(self) -> Iterator[dict[str, np.ndarray]]:
        """A pairwise index's states, shard by shard: ``{name: (n, ...) float16}`` (``"video"`` and
        each other tensor of ``encode_video_state``) for the shard's current rows; joined, the
        blocks' rows are those of ``paths()``. Each shard's files are read and checked whole, one shard at a time."""
        names = [n for n in self.meta().get("state", {}) if n != "video"]
        current = np.asarray(self._current(), dtype=np.int64)
        start = 0
        for npy, rows in self._shard_rows():
            lo, hi = np.searchsorted(current, [start, start + len(rows)])
            local = current[lo:hi] - start  # this shard's current rows
            start += len(rows)
            if not len(local):
                continue
            arrays = self._shard_arrays(npy, len(rows), names)
            yield {name: arr if len(local) == len(rows) else arr[local] for name, arr in arrays.items()}

    def append(self, paths: Sequence[str], embeddings: np.ndarray,
               states: dict[str, np.ndarray] | None = None) -> None:
        """A new shard holding ``paths`` (their embeddings (n, dim)); the .json is written last.

        A pairwise index also takes the rest of each video's state, ``states`` ``{name: (n, ...)}``
        (``embeddings`` is its ``"video"`` tensor), each saved before the ``.npy`` as
        ``NNNNNN.name.npy``. The first shard records the state's names and shapes in ``meta.json``;
        a later shard with others is refused."""
        pairwise = self.scoring() == PAIRWISE
        if pairwise != (states is not None):
            raise ValueError(f"{self.folder}: a {self.scoring()} index takes "
                             f"{'the video states beside' if pairwise else 'only'} the embeddings")
        number = max((int(p.stem) for p in self.shards.glob("[0-9]*.json")), default=-1) + 1
        npy = self.shards / f"{number:06d}.npy"
        if pairwise:
            self._record_state(np.asarray(embeddings), states)
            for name, array in states.items():
                part = np.ascontiguousarray(array, dtype=np.float16)
                write_file(npy.with_name(f"{npy.stem}.{name}.npy"), lambda tmp, part=part: save_npy(tmp, part))
        data = np.ascontiguousarray(embeddings, dtype=np.float16)
        write_file(npy, lambda tmp: save_npy(tmp, data))
        rows = [{"path": p, **_stamp(p)} for p in paths]
        files = {"video": npy, **{n: npy.with_name(f"{npy.stem}.{n}.npy") for n in (states or {})}}
        meta = self.meta()  # the shard's record before its .json: a shard counts only once both exist
        write_json(self.folder / "meta.json", {**meta, "shards": {**meta.get("shards", {}),
                                                                  npy.stem: shard_record(files, rows)}})
        write_json(npy.with_suffix(".json"), rows)

    def _record_state(self, video: np.ndarray, states: dict[str, np.ndarray]) -> None:
        """Check a shard's state against ``meta["state"]`` (names and per-video shapes), recording it first."""
        shapes = {"video": list(video.shape[1:]), **{n: list(np.shape(a)[1:]) for n, a in states.items()}}
        bad = [n for n in states if n == "video" or not STATE_NAME.fullmatch(n)]
        if bad:
            raise FeatureStoreError(f"{self.folder}: video state names {bad} cannot name shard files "
                                    "(lower-case letters, digits, '_'; 'video' is the embedding)")
        meta = self.meta()
        if "state" not in meta:
            write_json(self.folder / "meta.json", {**meta, "state": shapes})
        elif meta["state"] != shapes:
            raise FeatureMismatchError(f"{self.folder}: video states {shapes} differ from the index's "
                                       f"{meta['state']}; give a new --output folder")


_KIND_HOLDS = {"embedding": "video embeddings (scored by dot product)",
               PAIRWISE: "pairwise video states (scored by the model's pair_scores)"}


def _stamp(path: str) -> dict[str, int]:
    try:
        st = os.stat(path)
    except OSError:  # not a file (generated rows, as in benchmarks/bench_search.py): no stamp
        return {}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _changed(path: str, stamp: tuple[int, int] | None) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False  # gone: reported, not embedded
    return stamp is not None and (st.st_size, st.st_mtime_ns) != stamp


def _in_shards(items: list[tuple[str, Path]], size: int) -> Iterator[list[tuple[str, Path]]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def build_index(model_dir: Path, videos: Sequence[Path], output: Path, device: torch.device, batch_size: int = 8,
                num_workers: int = 0, shard_size: int = SHARD_VIDEOS,
                unlisted: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Embed the ``videos`` the index in ``output`` does not hold yet, ``shard_size`` at a time (a
    shard is saved whole; a killed run loses at most the one it was filling); returns a report
    (total, already indexed, indexed now, failed, seconds). ``unlisted``: ``(path, reason)`` of
    folder entries that led nowhere, reported and listed with the unreadable videos."""
    with folder_lock(output, "vcap index"):
        model, spec = from_pretrained(model_dir, device=device)
        pairwise = scores_pairwise(model)
        index = VideoIndex(output)
        meta = {"model": str(Path(model_dir).resolve()), "model_fingerprint": model_fingerprint(model_dir),
                "dim": spec.embed_dim, "num_frames": spec.num_frames, "dtype": "float16",
                "sampling": spec.eval_sampling}
        index.init({**meta, "format": INDEX_FORMAT, "scoring": PAIRWISE} if pairwise else meta)
        have = index.stamps()
        wanted = list(dict.fromkeys(os.path.abspath(v) for v in videos))  # as given: links not resolved
        changed = [v for v in wanted if v in have and _changed(v, have[v])]
        pending = [(v, Path(v)) for v in wanted if v not in have or v in changed]
        gone = [p for p in have if not os.path.exists(p)]
        print(f"index: {len(wanted)} videos, {len(wanted) - len(pending)} already indexed, {len(pending)} to embed"
              f"{f' ({len(changed)} changed since)' if changed else ''}", file=sys.stderr)
        for p in gone:
            print(f"warning: indexed video no longer exists (searches leave it out): {p}", file=sys.stderr)
        pre, failures = Preprocess.for_model(spec), [{"path": p, "reason": r} for p, r in unlisted]
        t0, done = time.perf_counter(), 0
        for shard in _in_shards(pending, shard_size):
            kept, failed = _encode_shard(model, Path(model_dir), index, shard, pre, device, batch_size, num_workers,
                                         spec.eval_sampling, pairwise)
            failures += [{"path": p, "reason": r} for p, r in failed]
            done += len(kept)
        write_json(index.folder / "failures.json", failures)
    for f in failures:
        print(f"warning: not indexed: {f['reason']}", file=sys.stderr)
    return {"total": len(wanted) + len(unlisted), "done_before": len(wanted) - len(pending), "indexed": done,
            "changed": len(changed), "gone": len(gone),
            "failed": len(failures), "seconds": round(time.perf_counter() - t0, 2), "folder": str(index.folder)}


def _encode_shard(model: StageOneModel, model_dir: Path, index: VideoIndex, shard: list[tuple[str, Path]],
                  pre: Preprocess, device: torch.device, batch_size: int, num_workers: int, method: str,
                  pairwise: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """Encode one shard's videos and append what was read to ``index``: embeddings, or (pairwise)
    each video's whole ``encode_video_state``. Returns the paths appended and the failures."""
    if not pairwise:
        emb, failed = embed_videos(model, shard, pre, device, batch_size, num_workers, method=method, desc="index")
        kept = [v for v, _ in shard if v in emb]
        if kept:
            index.append(kept, torch.stack([emb[v] for v in kept]).numpy())
        return kept, failed
    states, failed = video_states(model, shard, pre, device, batch_size, num_workers, method=method, desc="index")
    kept = [v for v, _ in shard if v in states]
    if kept:
        stacked = {k: torch.stack([states[v][k] for v in kept]).numpy() for k in states[kept[0]]}  # {name: (n, ...)}
        if stacked.get("video", np.zeros(0)).shape[1:] != (model.embed_dim,):
            raise FeatureStoreError(f"{model_dir}: a pairwise model whose encode_video_state has no 'video' "
                                    f"embedding of {model.embed_dim} values (kept for --video searches)")
        index.append(kept, stacked.pop("video"), stacked)
    return kept, failed


def _top(scores: torch.Tensor, top: int) -> list[tuple[int, float]]:
    """The ``top`` highest of ``scores`` (N,): ``[(row, score)]``, best first."""
    values, rows = scores.topk(min(top, len(scores)))
    return [(int(r), round(float(v), 6)) for v, r in zip(values, rows)]


def cosine_scores(embeddings: np.ndarray, query: np.ndarray) -> torch.Tensor:
    """(N,) cosine of each row of ``embeddings`` (N, D) with ``query`` (D,) (both L2-normalised).
    Chunked, so a 100k-row fp16 index is never converted whole."""
    q = torch.from_numpy(np.asarray(query, dtype=np.float32))
    scores = torch.empty(len(embeddings))
    for i in range(0, len(embeddings), 65536):
        scores[i:i + 65536] = torch.from_numpy(np.asarray(embeddings[i:i + 65536], dtype=np.float32)) @ q
    return scores


def rank(embeddings: np.ndarray, query: np.ndarray, top: int) -> list[tuple[int, float]]:
    """The ``top`` rows of ``embeddings`` (N, D) most similar to ``query`` (D,) by cosine (both
    L2-normalised): ``[(row, similarity)]``, best first."""
    return _top(cosine_scores(embeddings, query), top)


@torch.no_grad()
def pair_scores_over_index(model: PairwiseScorer, index: VideoIndex, text_state: torch.Tensor, device: torch.device,
                           videos_per_block: int = 1024) -> torch.Tensor:
    """(N,) a pairwise model's ``pair_scores`` of one query with every indexed video, rows of
    ``index.paths()``, float32 on the CPU.

    Args:
        text_state: (1, ...) the query's ``encode_text_state``.
        videos_per_block: videos scored per call; bounds the memory of the model's per-pair work
            and of the float32 copy of the stored fp16 states (X-CLIP ViT-B/32: ~100 KB a video).
    """
    text = text_state.to(device)
    out = []
    for block in index.state_blocks():
        n = len(block["video"])
        for i in range(0, n, videos_per_block):
            state = {k: torch.from_numpy(np.asarray(v[i:i + videos_per_block], dtype=np.float32)).to(device)
                     for k, v in block.items()}  # (bv, ...)
            out.append(model.pair_scores(state, text).float().cpu()[:, 0])  # (bv,)
    return torch.cat(out) if out else torch.zeros(0)


def rank_pairs(model: PairwiseScorer, index: VideoIndex, text_state: torch.Tensor, top: int, device: torch.device,
               videos_per_block: int = 1024) -> list[tuple[int, float]]:
    """``rank`` for a pairwise index: the ``top`` rows of ``index.paths()`` with the highest pair
    score (the model's cosine of each video with the query prompted by it), best first."""
    return _top(pair_scores_over_index(model, index, text_state, device, videos_per_block), top)


def search(index_dir: Path, device: torch.device, text: str | None = None, video: Path | None = None,
           top: int = 10) -> list[tuple[str, float]]:
    """The ``top`` indexed videos for a sentence or an example clip: ``[(path, cosine similarity)]``.

    A sentence is scored as the index's model scores pairs (a pairwise index: ``pair_scores`` with
    each video's stored state); an example clip by cosine of pooled embeddings (module docstring).
    An empty sentence is a ``ConfigError``: it would rank every video, meaning nothing."""
    if text is not None and not text.strip():
        raise ConfigError("vcap search: give a sentence to search for (QUERY)")
    index = VideoIndex(index_dir)
    meta = index.meta()
    model_dir = Path(meta["model"])
    if not (model_dir / "model.safetensors").is_file() or model_fingerprint(model_dir) != meta["model_fingerprint"]:
        raise FeatureMismatchError(f"{index_dir}: the model it was built with ({model_dir}, fingerprint "
                                   f"{meta['model_fingerprint']}) is gone or changed; rebuild the index")
    model, spec = from_pretrained(model_dir, device=device)
    pairwise, kind = scores_pairwise(model), index.scoring()
    if pairwise != (kind == PAIRWISE):
        raise FeatureMismatchError(
            f"{index_dir}: an index of {_KIND_HOLDS[kind]}, but its model {model_dir} "
            f"{'scores pairs (its text side is prompted by each video)' if pairwise else 'is an embedding model'}"
            f"; rebuild the index with 'vcap index' into a new folder")
    paths = index.paths()
    with torch.no_grad():
        if text is not None and pairwise:  # the sentence prompted by each video: the model's own score
            text_state = model.encode_text_state(tokenizer_from_spec(spec)([text]).to(device))  # (1, ...)
            scores = pair_scores_over_index(model, index, text_state, device)  # (N,)
        elif text is not None:
            query = model.encode_text(tokenizer_from_spec(spec)([text]).to(device)).float().cpu()[0]
            scores = cosine_scores(index.embeddings(), query.numpy())  # (N,)
        else:
            emb, failed = embed_videos(model, [("query", Path(video))], Preprocess.for_model(spec), device, 1, 0,
                                       method=spec.eval_sampling, desc="query")
            if failed:
                raise VideoReadError(str(video), failed[0][1].removeprefix(f"{video}: "))
            scores = cosine_scores(index.embeddings(), emb["query"].numpy())  # (N,) pooled embeddings
    ranked = _top(scores, min(len(paths), top * 2 + 16))
    found = [(paths[r], s) for r, s in ranked if os.path.exists(paths[r])]
    if len(found) < min(top, len(paths)) and len(ranked) < len(paths):  # many results gone: rank them all
        found = [(paths[r], s) for r, s in _top(scores, len(paths)) if os.path.exists(paths[r])]
    if len(found) < len(ranked):
        print(f"warning: {index_dir}: some indexed videos no longer exist and were left out; rerun 'vcap index'",
              file=sys.stderr)
    return found[:top]
