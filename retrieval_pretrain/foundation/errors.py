"""The toolkit's own error types: what library code raises when the *input* is at fault.

Each type carries the exit code the ``vcap`` command line returns for it (README.md lists them),
and its message names the file, folder or config key and the problem, so the CLI prints it as one
line. Anything else that escapes a command is a bug and keeps its traceback.

The types also derive from the built-in exception a Python caller would expect (``ValueError``,
``FileNotFoundError`` ...), so ``except ValueError`` around library calls keeps working.
"""

from __future__ import annotations

import os
from typing import Any


class VcapError(Exception):
    """Base of every error the toolkit raises on bad input. ``exit_code``: what ``vcap`` returns."""

    exit_code = 1
    kind = "error"


class ConfigError(VcapError, ValueError):
    """A config file, override or setting that does not fit the schema or cannot make sense."""

    exit_code, kind = 2, "config error"


class DatasetError(VcapError, ValueError):
    """An annotation, label or predictions file that is missing or malformed, an empty split, or
    a split that may not be used as asked (stage 1 on evaluation videos)."""

    exit_code, kind = 3, "dataset error"


class VideoReadError(VcapError):
    """A video file that cannot be decoded, with the path and the reason (picklable, so DataLoader
    workers can send it back)."""

    exit_code, kind = 4, "video error"

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class ModelFolderError(VcapError, ValueError):
    """A model folder that is missing, incomplete or corrupt (a missing or unexpected tensor
    included: every load is strict)."""

    exit_code, kind = 5, "model folder error"


def check_finite(named: Any, where: str) -> None:
    """``ModelFolderError`` naming the first tensor of ``named`` (name -> tensor) holding NaN or inf:
    such a model would compute nothing meaningful, with exit 0."""
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
            raise ModelFolderError(f"{where}: tensor '{name}' holds NaN or infinite values (a diverged or "
                                   "corrupted model); retrain, or use another checkpoint")


class WeightsUnavailableError(VcapError, RuntimeError):
    """Pretrained CLIP weights could not be obtained (no internet, unknown tag, missing file)."""

    exit_code, kind = 6, "weights unavailable"


class FeatureStoreError(VcapError, ValueError):
    """A feature folder that is missing, was made by another video tower, or lacks a video."""

    exit_code, kind = 7, "feature folder error"


class FeatureMismatchError(FeatureStoreError):
    """A feature folder made by another video tower (or frame setting) than the one in use."""


class FolderBusyError(VcapError, RuntimeError):
    """An output folder another running ``vcap`` process is writing (its lock is held)."""

    exit_code, kind = 8, "folder in use"


class TrainingDivergedError(VcapError, RuntimeError):
    """A training loss that became NaN or infinite: the run stops before saving such weights."""

    exit_code, kind = 9, "training diverged"


class StorageError(VcapError, OSError):
    """An output that cannot be written: read-only folder, no permission, disk or quota full."""

    exit_code, kind = 10, "cannot write"


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "the job finished, but some inputs failed and were skipped (each named on stderr and in the output's "
       "failures.json / skipped.json / not_captioned.json), or 'vcap data check' found problems",
    ConfigError.exit_code: "usage or config error (unknown key, bad value, missing config file)",
    DatasetError.exit_code: "dataset error (annotation / predictions / references file missing or malformed, "
                            "empty split, evaluation videos in stage 1's training split)",
    VideoReadError.exit_code: "no video given to the command could be read ('vcap caption': each is named on stderr)",
    ModelFolderError.exit_code: "model folder missing, incomplete or corrupt",
    WeightsUnavailableError.exit_code: "pretrained CLIP weights cannot be obtained (offline, unknown tag, missing file)",
    FeatureStoreError.exit_code: "feature folder missing, from another video tower, or lacking videos",
    FolderBusyError.exit_code: "the output folder is in use by another running vcap process (its lock is held)",
    TrainingDivergedError.exit_code: "training diverged (loss NaN or infinite); no model was written",
    StorageError.exit_code: "an output could not be written (read-only folder, no permission, disk or quota full)",
    130: "interrupted (Ctrl-C)",
}
