"""Text-to-video search over a folder of videos with a stage-1 model: ``vcap index`` embeds every
video once, ``vcap search`` ranks them by a sentence (or by an example clip).

Index folder ``IDX``::

    IDX/meta.json              the model (path, fingerprint), embedding dim, frames, sampling
    IDX/shards/NNNNNN.npy      float16 (n, dim) L2-normalised video embeddings (memory-mappable)
    IDX/shards/NNNNNN.json     per row: {"path", "size", "mtime_ns"} of the file embedded (written last)
    IDX/failures.json          videos the last run could not read, with the reason (retried next run)

A shard counts only once its ``.json`` exists (both files are written atomically, the ``.npy``
first), so a run killed midway loses at most the shard it was filling; a rerun embeds only the
videos no shard holds yet (new files, and the ones a killed run had not finished). An index belongs
to the model it was built with: another model is refused, for indexing and for searching. A file
changed since it was embedded (size or modification time) is embedded again on a rerun, its new row
replacing the old; a file that is gone is reported by a rerun and never returned by a search.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from retrieval_pretrain.atomic import write_file, write_json
from retrieval_pretrain.errors import FeatureMismatchError, FeatureStoreError
from retrieval_pretrain.features import save_npy

SHARD_VIDEOS = 256  # videos per shard: what a killed run can lose


class VideoIndex:
    """Read/append access to an index folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.shards = self.folder / "shards"

    def meta(self) -> dict[str, Any]:
        path = self.folder / "meta.json"
        if not path.is_file():
            raise FeatureStoreError(f"{self.folder} is not a video index (no meta.json); build one with 'vcap index'")
        try:
            return json.loads(path.read_text())
        except (ValueError, RecursionError, OSError) as e:
            raise FeatureStoreError(f"{path}: not a readable index record ({type(e).__name__}: {e})") from None

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
            return
        self.shards.mkdir(parents=True, exist_ok=True)
        write_json(self.folder / "meta.json", meta)

    def _complete(self) -> list[Path]:
        return sorted(p.with_suffix(".npy") for p in self.shards.glob("[0-9]*.json") if p.with_suffix(".npy").is_file())

    def _rows(self) -> list[dict[str, Any]]:
        rows = [r for npy in self._complete() for r in json.loads(npy.with_suffix(".json").read_text())]
        return [r if isinstance(r, dict) else {"path": r} for r in rows]

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
        """(N, dim) float16, the rows of ``paths()`` (each shard memory-mapped, then joined)."""
        return self._all_embeddings()[self._current()]

    def _all_embeddings(self) -> np.ndarray:
        parts = []
        for npy in self._complete():
            try:
                parts.append(np.load(npy, mmap_mode="r", allow_pickle=False))
            except (ValueError, OSError) as e:
                raise FeatureStoreError(f"{npy}: not a readable index shard ({e}); delete it and its .json, then "
                                        "rerun 'vcap index' to embed those videos again") from None
        dim = int(self.meta()["dim"])
        return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float16)

    def append(self, paths: Sequence[str], embeddings: np.ndarray) -> None:
        """A new shard holding ``paths`` (their embeddings (n, dim)); the .json is written last."""
        number = max((int(p.stem) for p in self.shards.glob("[0-9]*.json")), default=-1) + 1
        npy = self.shards / f"{number:06d}.npy"
        data = np.ascontiguousarray(embeddings, dtype=np.float16)
        write_file(npy, lambda tmp: save_npy(tmp, data))
        write_json(npy.with_suffix(".json"), [{"path": p, **_stamp(p)} for p in paths])


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
    from retrieval_pretrain.data import Preprocess
    from retrieval_pretrain.encode import embed_videos
    from retrieval_pretrain.folder_lock import folder_lock
    from retrieval_pretrain.model_folder import from_pretrained, model_fingerprint

    with folder_lock(output, "vcap index"):
        model, info = from_pretrained(model_dir, device=device)
        index = VideoIndex(output)
        index.init({"model": str(Path(model_dir).resolve()), "model_fingerprint": model_fingerprint(model_dir),
                    "dim": model.embed_dim, "num_frames": info["num_frames"], "dtype": "float16",
                    "sampling": info.get("eval_sampling", "uniform")})
        have = index.stamps()
        wanted = list(dict.fromkeys(os.path.abspath(v) for v in videos))  # as given: links not resolved
        changed = [v for v in wanted if v in have and _changed(v, have[v])]
        pending = [(v, Path(v)) for v in wanted if v not in have or v in changed]
        gone = [p for p in have if not os.path.exists(p)]
        print(f"index: {len(wanted)} videos, {len(wanted) - len(pending)} already indexed, {len(pending)} to embed"
              f"{f' ({len(changed)} changed since)' if changed else ''}", file=sys.stderr)
        for p in gone:
            print(f"warning: indexed video no longer exists (searches leave it out): {p}", file=sys.stderr)
        pre = Preprocess(info["num_frames"], model.image_size, model.image_mean, model.image_std)
        failures = [{"path": p, "reason": r} for p, r in unlisted]
        t0, done = time.perf_counter(), 0
        for shard in _in_shards(pending, shard_size):
            emb, failed = embed_videos(model, shard, pre, device, batch_size, num_workers,
                                       method=info.get("eval_sampling", "uniform"), desc="index")
            failures += [{"path": p, "reason": r} for p, r in failed]
            kept = [v for v, _ in shard if v in emb]
            if kept:
                index.append(kept, torch.stack([emb[v] for v in kept]).numpy())
            done += len(kept)
        write_json(index.folder / "failures.json", failures)
    for f in failures:
        print(f"warning: not indexed: {f['reason']}", file=sys.stderr)
    return {"total": len(wanted) + len(unlisted), "done_before": len(wanted) - len(pending), "indexed": done,
            "changed": len(changed), "gone": len(gone),
            "failed": len(failures), "seconds": round(time.perf_counter() - t0, 2), "folder": str(index.folder)}


def rank(embeddings: np.ndarray, query: np.ndarray, top: int) -> list[tuple[int, float]]:
    """The ``top`` rows of ``embeddings`` (N, D) most similar to ``query`` (D,) by cosine (both
    L2-normalised): ``[(row, similarity)]``, best first. Chunked, so a 100k-row fp16 index is never
    converted whole."""
    q = torch.from_numpy(np.asarray(query, dtype=np.float32))
    scores = torch.empty(len(embeddings))
    for i in range(0, len(embeddings), 65536):
        scores[i:i + 65536] = torch.from_numpy(np.asarray(embeddings[i:i + 65536], dtype=np.float32)) @ q
    k = min(top, len(embeddings))
    values, rows = scores.topk(k)
    return [(int(r), round(float(v), 6)) for v, r in zip(values, rows)]


def search(index_dir: Path, device: torch.device, text: str | None = None, video: Path | None = None,
           top: int = 10) -> list[tuple[str, float]]:
    """The ``top`` indexed videos for a sentence or an example clip: ``[(path, cosine similarity)]``."""
    from retrieval_pretrain.clip_tokenizer import tokenizer_from_info
    from retrieval_pretrain.data import Preprocess
    from retrieval_pretrain.encode import embed_videos
    from retrieval_pretrain.model_folder import from_pretrained, model_fingerprint

    index = VideoIndex(index_dir)
    meta = index.meta()
    model_dir = Path(meta["model"])
    if not (model_dir / "model.safetensors").is_file() or model_fingerprint(model_dir) != meta["model_fingerprint"]:
        raise FeatureMismatchError(f"{index_dir}: the model it was built with ({model_dir}, fingerprint "
                                   f"{meta['model_fingerprint']}) is gone or changed; rebuild the index")
    model, info = from_pretrained(model_dir, device=device)
    with torch.no_grad():
        if text is not None:
            query = model.encode_text(tokenizer_from_info(info)([text]).to(device)).float().cpu()[0]
        else:
            pre = Preprocess(info["num_frames"], model.image_size, model.image_mean, model.image_std)
            emb, failed = embed_videos(model, [("query", Path(video))], pre, device, 1, 0,
                                       method=info.get("eval_sampling", "uniform"), desc="query")
            if failed:
                from retrieval_pretrain.errors import VideoReadError

                reason = failed[0][1]
                raise VideoReadError(str(video), reason.removeprefix(f"{video}: "))
            query = emb["query"]
    paths, emb = index.paths(), index.embeddings()
    ranked = rank(emb, query.numpy(), min(len(paths), top * 2 + 16))
    found = [(paths[r], s) for r, s in ranked if os.path.exists(paths[r])]
    if len(found) < min(top, len(paths)) and len(ranked) < len(paths):  # many results gone: rank them all
        found = [(paths[r], s) for r, s in rank(emb, query.numpy(), len(paths)) if os.path.exists(paths[r])]
    if len(found) < len(ranked):
        print(f"warning: {index_dir}: some indexed videos no longer exist and were left out; rerun 'vcap index'",
              file=sys.stderr)
    return found[:top]
