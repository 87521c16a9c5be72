"""The per-frame feature cache that stage 1 writes and stage 2 reads.

Layout of a feature folder ``FEATS``::

    FEATS/meta.json           tower fingerprint, frames per video, feature dim, dtype (written first)
    FEATS/features/<key>.npy  fp16 [n_real_frames, dim] per video (memory-mappable)
    FEATS/failures.json       videos that could not be read, with the reason (last run)

Each ``.npy`` is written to a temporary name and renamed, so a file that exists is complete and a
rerun simply skips it. ``<key>`` is the video id made filename-safe (see ``feature_key``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from retrieval_pretrain.foundation.atomic import write_file, write_json
from retrieval_pretrain.foundation.errors import FeatureMismatchError, FeatureStoreError


def feature_key(video_id: str) -> str:
    """A filename for a video id: safe characters kept, anything else (and '/') replaced, plus a
    short hash of the id whenever it was changed, so two ids never share a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", video_id)
    if safe != video_id or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"
    return safe


def save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through Python's checked writes: numpy writes real files with C ``fwrite`` and
    misses a short write (a full disk), leaving a cut file that would be renamed into place."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    data = buf.getbuffer()
    with path.open("wb") as f:
        f.write(data)
    if path.stat().st_size != len(data):
        raise OSError(errno.ENOSPC, f"wrote {path.stat().st_size} of {len(data)} bytes", str(path))


class FeatureStore:
    """Read/write access to a feature folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.dir = self.folder / "features"

    # ------------------------------------------------------------------ metadata
    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def meta(self) -> dict[str, Any]:
        if not self.meta_path.is_file():
            raise FeatureStoreError(f"{self.folder} is not a feature folder (no meta.json); run 'vcap extract' first")
        try:
            meta = json.loads(self.meta_path.read_text())
        except (ValueError, RecursionError, OSError) as e:
            raise FeatureStoreError(f"{self.meta_path}: not a readable feature-folder record ({type(e).__name__}: "
                                    f"{e}); extract into a new folder") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("dim"), int):
            raise FeatureStoreError(f"{self.meta_path}: not a feature-folder record (no 'dim'); extract into a new folder")
        return meta

    def init(self, meta: dict[str, Any]) -> None:
        """Create the folder for ``meta``, or check that an existing one was made the same way.

        Temporary files left by a run that was killed mid-write (``.KEY.npy.tmp-*``) are removed: they
        were never renamed into place, so no video counts as done because of them."""
        if (self.folder / "run.json").is_file() or (self.folder / "checkpoints").is_dir():
            raise FeatureStoreError(f"{self.folder} is a training run folder (run.json / checkpoints); extract into "
                                    "a folder of its own, e.g. RUN/features is fine but not RUN itself")
        if self.dir.is_dir():
            for stale in self.dir.glob(".*.npy.tmp-*"):
                stale.unlink(missing_ok=True)
        if self.meta_path.is_file():
            old = self.meta()
            keys = ("tower_fingerprint", "num_frames", "dim")
            if any(old.get(k) != meta.get(k) for k in keys):
                raise FeatureMismatchError(
                    f"{self.folder} holds features from another tower or setting "
                    f"({ {k: old.get(k) for k in keys} } vs { {k: meta.get(k) for k in keys} }); "
                    "use a new --output folder"
                )
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.meta_path, meta)
        self.dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ entries
    def path(self, video_id: str) -> Path:
        return self.dir / f"{feature_key(video_id)}.npy"

    def has(self, video_id: str) -> bool:
        return self.path(video_id).is_file()

    def write(self, video_id: str, features: np.ndarray) -> None:
        """Store ``features`` [n, dim] as fp16, atomically."""
        data = np.ascontiguousarray(features, dtype=np.float16)
        write_file(self.path(video_id), lambda tmp: save_npy(tmp, data))

    def load(self, video_id: str, mmap: bool = True) -> np.ndarray:
        """The fp16 features [n, dim] of a video (memory-mapped by default)."""
        path = self.path(video_id)
        if not path.is_file():
            raise FeatureStoreError(f"no features for video '{video_id}' in {self.folder} (expected {path})")
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError) as e:  # truncated or not an .npy file
            raise FeatureStoreError(f"{path}: not a readable feature file ({e}); delete it and rerun "
                                    "'vcap extract' into this folder to recompute it") from None
        why = self._shape_problem(array)
        if why:
            raise FeatureStoreError(f"{path}: {why}; delete it and rerun 'vcap extract' into this folder")
        return array

    def _shape_problem(self, array: np.ndarray) -> str | None:
        if getattr(self, "_dim", None) is None:
            self._dim = self.meta()["dim"]
        dim = self._dim
        if array.ndim != 2 or array.shape[1] != dim:
            return f"features of shape {tuple(array.shape)}, not (frames, {dim}) as this folder's meta.json says"
        if array.shape[0] < 1:
            return "features of no frame"
        return None

    def problem(self, video_id: str) -> str | None:
        """Why the stored features of ``video_id`` cannot be used (missing, unreadable, misshapen,
        NaN or infinite), or None. Reads the file (a few KB)."""
        try:
            array = self.load(video_id)
        except FeatureStoreError as e:
            return str(e)
        if not np.isfinite(array).all():
            return f"{self.path(video_id)}: features hold NaN or infinite values"
        return None

    def readable(self, video_id: str) -> bool:
        """Whether a complete, well-shaped feature file is there (header only: no values read)."""
        try:
            self.load(video_id)
        except FeatureStoreError:
            return False
        return True

    def failures(self) -> list[dict[str, str]]:
        path = self.folder / "failures.json"
        return json.loads(path.read_text()) if path.is_file() else []
