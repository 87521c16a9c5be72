"""A run folder belongs to one run. ``claim`` enforces the rule both training commands follow:

* a new folder (or one holding nothing of a run) starts a run and records it in ``RUN/run.json``:
  the command, the config and its fingerprint, and the inputs (stage 2: the feature folder);
* without ``--resume``, a folder that already holds a trained run (a checkpoint or ``model/``) is
  refused - otherwise the new run's checkpoints would mix with the old ones and a later
  ``--resume`` could restore the old run. A run that ended before its first checkpoint (killed,
  disk full) left nothing trained: a new run may start there, and its old log is removed;
* with ``--resume``, the recorded run must be this one: same command, same inputs, same config
  except the settings that do not change what is trained (``RESUMABLE``) and the sections the
  command does not read (``SECTIONS``); a difference is refused, naming the keys. ``--resume`` on a folder with no run starts one.

Before any of this, the folder must be a training run's at all (``ownership.claim_folder`` with
``TRAINING_RUN``): a new or empty folder, one recorded as a run folder, or one an earlier release
wrote as one (its ``run.json``, or only what a run writes); a folder of other files - a model
folder, a copy of the user's data - is refused untouched, since a new run there removes what a run
that never checkpointed left (``_start_clean``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from retrieval_pretrain.foundation.atomic import write_json
from retrieval_pretrain.foundation.checkpoints import latest_checkpoint
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.ownership import FolderKind, claim_folder, entries
from retrieval_pretrain.foundation.typed_config import config_to_dict

RUN_FILE = "run.json"
# Settings a resumed run may change: they decide how often it logs and saves and how many loader
# workers it uses, not what it computes.
RESUMABLE = ("run.num_workers", "run.log_every", "pretrain.save_every", "caption.save_every", "pretrain.keep_checkpoints")
# The config sections each command trains from (stage 2 reads video and CLIP only through its features).
SECTIONS = {"pretrain": ("data", "video", "clip", "pretrain", "run"), "train": ("data", "caption", "decode", "run")}
# What either training command writes in its run folder, and what a user commonly keeps beside it
# there (a feature folder, evaluations, the report): an unrecorded folder holding only these, and
# something trained or logged, is a run folder an earlier release wrote.
RUN_NAMES = frozenset({RUN_FILE, "log.jsonl", "config.json", "skipped.json", "failures.json", "checkpoints", "model",
                       "best", "tokenizer.model", "report.html", "features"})


def _legacy_run(folder: Path) -> bool:
    try:
        old = json.loads((folder / RUN_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        old = None
    if isinstance(old, dict) and isinstance(old.get("command"), str) and old["command"] in SECTIONS:
        return True
    names = entries(folder)
    return (all(n in RUN_NAMES or n.startswith("eval_") for n in names)
            and any(n in ("log.jsonl", "checkpoints", "model") for n in names))


# One kind for both commands: which command's run a folder holds is run.json's to say (``_check``).
TRAINING_RUN = {command: FolderKind("training run folder", f"vcap {command}", _legacy_run) for command in SECTIONS}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _digest(path_str: str) -> str:
    """What a data file holds (SHA-256 of its bytes; a folder: its files' names and sizes), so a
    resumed run can tell that an annotation file was changed under the same name."""
    path = Path(path_str)
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(path)}\0{p.stat().st_size}\0".encode())
    else:
        return "absent"
    return h.hexdigest()[:16]


def _data_files(data: Any) -> dict[str, str]:
    """The digests of the dataset's annotation files (``data.annotations``, split files, label lists)."""
    named = {"annotations": data.annotations, **{f"split_files.{k}": v for k, v in data.split_files.items()},
             "labels_file": getattr(data, "labels_file", ""), "novel_labels": getattr(data, "novel_labels", "")}
    return {f"data:{k}": _digest(str(v)) for k, v in named.items() if str(v).strip() and "*" not in str(v)}


def _identity(command: str, cfg: Any, inputs: dict[str, str]) -> dict[str, Any]:
    tree = {k: v for k, v in config_to_dict(cfg).items() if k in SECTIONS[command]}
    settings = {k: v for k, v in _flat(tree).items() if k not in RESUMABLE}
    text = json.dumps({"command": command, "inputs": inputs, "config": settings}, sort_keys=True)
    return {"command": command, "inputs": inputs, "config": settings,
            "fingerprint": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _holds_a_run(output: Path) -> bool:
    """A checkpoint or a model: something trained that a new run must not mix with."""
    return (output / "model").exists() or latest_checkpoint(output) is not None


def _start_clean(output: Path) -> None:
    """Remove what a run that never checkpointed left (its log, lists, tokenizer and best epoch so
    far), before a new run starts: none of it may leak into the new run."""
    if (output / RUN_FILE).is_file():
        print(f"note: {output} holds a run that ended before its first checkpoint; starting a new run there",
              file=sys.stderr)
    for name in ("log.jsonl", "skipped.json", "failures.json", "tokenizer.model"):  # stage 2 trains its own
        (output / name).unlink(missing_ok=True)
    shutil.rmtree(output / "best", ignore_errors=True)


def _record_problem(old: Any) -> str:
    """Why a parsed ``run.json`` is not what ``_identity`` writes (``""`` when it is): the resume
    check compares its fields, so each must have the type written."""
    if not isinstance(old, dict):
        return f"a JSON object is written, not {type(old).__name__}"
    for key, kind in (("command", str), ("fingerprint", str), ("inputs", dict), ("config", dict)):
        if key in old and not isinstance(old[key], kind):
            return f"'{key}' is {type(old[key]).__name__}, not {kind.__name__}"
    return ""


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = [f"command {old.get('command')!r} -> {new['command']!r}"] if old.get("command") != new["command"] else []
    for key in sorted(set(old.get("inputs", {})) | set(new["inputs"])):
        if old.get("inputs", {}).get(key) != new["inputs"].get(key):
            out.append(f"{key} {old.get('inputs', {}).get(key)!r} -> {new['inputs'].get(key)!r}")
    before, after = old.get("config", {}), new["config"]
    for key in sorted(set(before) | set(after)):
        if before.get(key) != after.get(key):
            out.append(f"{key} {before.get(key)!r} -> {after.get(key)!r}")
    return out


def claim(output: Path, command: str, cfg: Any, resume: bool, accelerator: Any,
          inputs: dict[str, str] | None = None) -> None:
    """Apply the rule above to ``output`` for this run: every process checks, then the main one
    records the run (after all have checked, so none sees the new record as an old run)."""
    _check(Path(output), command, cfg, resume, {**(inputs or {}), **_data_files(cfg.data)}, accelerator)


def _only_new_defaults(old: dict[str, Any], new: dict[str, Any], command: str, cfg: Any) -> bool:
    """True when the recorded run and this one differ only by settings the recorded run predates
    (a key a later version added, at its default value): such a run trained exactly as it would
    now, so ``--resume`` may continue it."""
    if old.get("command") != new["command"] or old.get("inputs", {}) != new["inputs"]:
        return False
    defaults = _identity(command, type(cfg)(), new["inputs"])["config"]
    before, after = old.get("config", {}), new["config"]
    for key in set(before) | set(after):
        if before.get(key) == after.get(key):
            continue
        if key in before or key not in after or after[key] != defaults.get(key, object()):
            return False
    return True


def _check(output: Path, command: str, cfg: Any, resume: bool, inputs: dict[str, str], accelerator: Any) -> None:
    new = _identity(command, cfg, inputs)
    record = output / RUN_FILE
    if (output / "meta.json").is_file():  # a feature folder or a search index: another job's outputs
        raise ConfigError(f"{output} holds a feature folder or a search index (meta.json); give the run its own "
                          "--output folder")
    claim_folder(output, TRAINING_RUN[command], write=accelerator.is_main_process,  # every process checks
                 wait=accelerator.wait_for_everyone)
    if not resume and _holds_a_run(output):
        raise ConfigError(f"{output} already holds a run (a checkpoint or model/): continue it with "
                          "--resume, or give a new --output folder")
    if resume and record.is_file() and _holds_a_run(output):
        try:
            old = json.loads(record.read_text())
        except (OSError, ValueError, RecursionError) as e:
            raise ConfigError(f"{record}: cannot be read ({type(e).__name__}: {e}); this folder cannot be "
                              "resumed") from None
        why = _record_problem(old)
        if why:
            raise ConfigError(f"{record}: not a run record ({why}); this folder cannot be resumed")
        if old.get("fingerprint") != new["fingerprint"] and not _only_new_defaults(old, new, command, cfg):
            diff = _differences(old, new)
            raise ConfigError(f"{output} holds another run than this one ({'; '.join(diff[:8]) or 'fingerprint'}"
                              f"{'; ...' if len(diff) > 8 else ''}): resume it with its own settings, or give a "
                              "new --output folder")
        if latest_checkpoint(output) is None:
            raise ConfigError(f"{output} holds this run but no checkpoint to resume from (its model is in "
                              "model/): nothing to continue; give a new --output folder to train again "
                              "(checkpoints: save_every)")
        return
    if resume and _holds_a_run(output):
        raise ConfigError(f"{output} holds checkpoints or a model but no {RUN_FILE}, so it cannot be checked that "
                          "they are this run's; give a new --output folder")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        _start_clean(output)
        write_json(record, new)
    accelerator.wait_for_everyone()
