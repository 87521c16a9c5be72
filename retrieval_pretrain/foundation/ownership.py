"""Which folders and files a ``vcap`` writer may replace: one rule for every command that writes.

**A writer replaces or deletes only what a vcap writer made for the same purpose.**

* A folder a command makes for itself - a training run, a feature folder, a search index, an
  interpolated model folder, the demo's working folder - is claimed before anything goes into it
  (``claim_folder``): it gets a record, ``FOLDER/.vcap.json`` = ``{"kind", "command"}``. A folder
  swapped in whole (``write_owned_folder``) gets its record inside the temporary folder, so it is in
  place with the rest. ``claim_folder`` accepts an absent or empty folder (a lone ``.lock`` counts
  as empty), a folder whose record names the same kind, and - folders written by releases before
  the records - a folder without one that its kind recognises as its own (``FolderKind.legacy``: say,
  a feature folder's ``meta.json`` and nothing a feature folder does not hold); that folder is then
  given its record. Anything else - a folder of the user's files, another command's folder, a record
  this version cannot read - is refused before any work (``ConfigError``, exit 2), one line naming
  the folder, what is in it and what to do; nothing in it is touched.
* A writer that swaps its folder in whole (``FolderKind.names``) deletes whatever the old folder
  held, so it also refuses its own kind of folder when that holds names it does not write (a user's
  notes added beside the model).
* A file written into a folder the user names (``metrics.json``, ``predictions.json``, an HTML
  report) replaces an existing file only when that file is recognisably one the toolkit writes for
  the same purpose (``FileKind.looks_like``: a metrics file is a JSON object with the toolkit's metric
  names; a report begins as every report's page does); ``claim_file`` refuses any other, before any
  work. Such files carry no record: the folder is the user's.

The kinds are declared beside their writers (``run_folder.TRAINING_RUN``, ``search.INDEX``, ...);
the JSON files several commands write are declared here.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from retrieval_pretrain.foundation.atomic import write_folder, write_json
from retrieval_pretrain.foundation.errors import ConfigError

# The two names vcap keeps in a folder it writes: the ownership record, and ``folder_lock``'s file.
RECORD = ".vcap.json"
LOCK_FILE = ".lock"
RECORD_FORMAT = 1
RECORD_BYTES = 64 * 1024  # a larger file is not a record (vcap writes ~200 bytes)
_OURS = frozenset({RECORD, LOCK_FILE})


def _never(folder: Path) -> bool:
    return False


@dataclass(frozen=True)
class FolderKind:
    """What a writer makes a folder for.

    Attributes:
        kind: the record's ``kind`` and the name said in messages ("search index").
        command: the writer, as a user types it ("vcap index").
        legacy: ``legacy(folder)``: a folder with no record is recognisably this kind (written by
            a release before the records); it must look at every entry it accepts.
        names: for a folder swapped in whole, every name it may hold (anything else would be deleted).
    """

    kind: str
    command: str
    legacy: Callable[[Path], bool] = field(default=_never, compare=False)
    names: frozenset[str] | None = None


@dataclass(frozen=True)
class FileKind:
    """What a file written into a user's folder is: ``looks_like(path)`` tells an existing file of
    this kind (one the toolkit may replace) from any other."""

    kind: str
    looks_like: Callable[[Path], bool] = field(compare=False)


def entries(folder: Path) -> list[str]:
    """The names in ``folder`` that are not the toolkit's bookkeeping (record, lock), sorted."""
    return sorted(n for n in os.listdir(folder) if n not in _OURS)


def holds_only(folder: Path, names: set[str] | frozenset[str]) -> bool:
    """Whether every entry of ``folder`` (bookkeeping aside) is one of ``names``."""
    return all(n in names for n in entries(folder))


def read_record(folder: Path) -> dict[str, Any] | None:
    """``folder``'s ownership record; None when there is none; ``{"kind": None}`` when the file is
    not a record this version reads - not JSON, no kind, no ``format`` (every release wrote one: a
    record without is not vcap's) or one newer than ``RECORD_FORMAT`` (a later release's record may
    mean more than this one knows) - then no kind is ever its owner."""
    path = Path(folder) / RECORD
    if not os.path.lexists(path):
        return None
    try:
        # a regular file of at most RECORD_BYTES only: a FIFO would block the read forever, a link to
        # /dev/zero fill the memory (a hostile test's finds); what vcap writes is ~200 bytes
        if not stat.S_ISREG(os.stat(path).st_mode):
            return {"kind": None}
        with open(path, "rb") as f:
            raw = f.read(RECORD_BYTES + 1)
        if len(raw) > RECORD_BYTES:
            return {"kind": None}
        record = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {"kind": None}
    if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
        return {"kind": None}
    version = record.get("format")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= RECORD_FORMAT:
        return {"kind": None}
    return record


def _a(noun: str) -> str:
    return f"{'an' if noun[:1].lower() in 'aeiou' else 'a'} {noun}"


def _listing(names: list[str], folder: Path) -> str:
    shown = [f"{n}/" if (folder / n).is_dir() else n for n in names[:5]]
    return ", ".join(shown) + (f", ... {len(names)} in all" if len(names) > 5 else "")


def folder_problem(folder: str | os.PathLike, kind: FolderKind) -> str | None:
    """Why ``kind``'s writer may not write ``folder`` (the rule in the module docstring), or None."""
    folder = Path(folder)
    if not os.path.lexists(folder):
        return None
    if not folder.is_dir():
        return "is a file, not a folder"
    names, record = entries(folder), read_record(folder)
    if record is None and names and not kind.legacy(folder):
        return f"a folder holding other files ({_listing(names, folder)}) and no record that {kind.command} made it"
    if record is not None and record["kind"] != kind.kind:
        made = (f"{_a(record['kind'])} (its {RECORD}: made by {record.get('command', 'vcap')})" if record["kind"]
                else f"a folder whose {RECORD} is not a record this version of vcap reads")
        return f"{made}, not {_a(kind.kind)}"
    extra = [n for n in names if kind.names is not None and n not in kind.names]
    if extra:
        return (f"{_a(kind.kind)} that also holds files {kind.command} did not write ({_listing(extra, folder)}), "
                "which replacing the folder would delete")
    return None


def _refuse(folder: Path, kind: FolderKind, problem: str, label: str) -> ConfigError:
    return ConfigError(f"{label} {folder}: {problem}; nothing was changed - give {kind.command} a new or empty "
                       "folder, or move those files elsewhere")


def write_record(folder: str | os.PathLike, kind: FolderKind) -> None:
    """Record ``folder`` (created if absent) as ``kind``'s."""
    write_json(Path(folder) / RECORD, {"format": RECORD_FORMAT, "kind": kind.kind, "command": kind.command})


def claim_folder(folder: str | os.PathLike, kind: FolderKind, label: str = "--output", write: bool = True,
                 wait: Callable[[], None] | None = None) -> Path:
    """Check that ``kind``'s writer may write ``folder`` (``ConfigError`` naming it and what it holds,
    before anything is touched, otherwise) and, with ``write``, create it and record it as
    ``kind``'s. Under several processes every process checks, ``wait`` (the processes' barrier) holds
    them until all have, and only then does the main one write: a process that checked while the main
    one was writing the record would see its temporary file and refuse the folder."""
    folder = Path(folder)
    problem = folder_problem(folder, kind)
    if problem:
        raise _refuse(folder, kind, problem, label)
    if wait is not None:
        wait()
    if write and (read_record(folder) or {}).get("kind") != kind.kind:
        write_record(folder, kind)
    return folder


def write_owned_folder(folder: str | os.PathLike, kind: FolderKind, fill: Callable[[Path], None],
                       label: str = "--output") -> Path:
    """``atomic.write_folder`` for a folder swapped in whole, after ``claim_folder``'s check; the
    record is written into the temporary folder, so it arrives with the rest."""
    claim_folder(folder, kind, label, write=False)

    def fill_and_record(tmp: Path) -> None:
        fill(tmp)
        write_record(tmp, kind)

    return write_folder(folder, fill_and_record)


def claim_file(path: str | os.PathLike, kind: FileKind, label: str = "--output") -> Path:
    """Check that a writer of ``kind`` may write ``path``: absent, or a regular file that looks like
    ``kind``; ``ConfigError`` naming the file and what to do otherwise (nothing is touched)."""
    path = Path(path)
    if not os.path.lexists(path):
        return path
    if path.is_symlink() or not path.is_file():
        what = "a symbolic link" if path.is_symlink() else "not a regular file"
        raise ConfigError(f"{label}: {path} exists and is {what}; nothing was changed - move it away or give "
                          "another output")
    if not kind.looks_like(path):
        raise ConfigError(f"{label}: {path} exists and is not {_a(kind.kind)} that vcap wrote; nothing was changed - "
                          "move it away or give another output folder")
    return path


def claim_files(folder: str | os.PathLike, kinds: dict[str, FileKind], label: str = "--output") -> Path:
    """``claim_file`` for each ``{name: kind}`` a command will write into ``folder``; returns ``folder``."""
    for name, kind in kinds.items():
        claim_file(Path(folder) / name, kind, label)
    return Path(folder)


# ----------------------------------------------------------------------------- the JSON files commands write


def _json_of(path: Path, limit: int = 1 << 28) -> Any:
    try:
        if path.stat().st_size > limit:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None


# Every metrics.json the toolkit writes holds at least one of these (caption scores, retrieval,
# recognition, dense captions, the demo's summary).
METRIC_NAMES = frozenset({"BLEU-4", "CIDEr", "METEOR", "ROUGE-L", "t2v_R@1", "v2t_R@1", "top1", "dense", "retrieval",
                          "caption", "tokenize"})


def _metrics(path: Path) -> bool:
    """A JSON object with one of ``METRIC_NAMES`` holding a number or an object of them (a user's
    ``{"caption": "notes"}`` is not one: a hostile round's find)."""
    data = _json_of(path)
    if not isinstance(data, dict):
        return False
    return any(isinstance(data[k], (dict, int, float)) and not isinstance(data[k], bool) for k in METRIC_NAMES & set(data))


def _predictions(path: Path) -> bool:
    """``{video_id: caption}`` with the ``metrics.json`` its evaluation wrote after it beside it: a
    user's JSON object of strings alone (notes) is not vcap's. An evaluation killed between the two
    files leaves predictions that are refused, said so, rather than a user's file replaced."""
    data = _json_of(path)
    return (isinstance(data, dict) and all(isinstance(v, str) for v in data.values())
            and _metrics(path.with_name("metrics.json")))


def _failure_list(path: Path) -> bool:
    data = _json_of(path)
    return isinstance(data, list) and all(isinstance(x, dict) and isinstance(x.get("reason"), str) for x in data)


def _skipped(path: Path) -> bool:
    data = _json_of(path)
    return isinstance(data, dict) and all(isinstance(v, list) for v in data.values())


METRICS = FileKind("metrics file", _metrics)
PREDICTIONS = FileKind("predictions file", _predictions)
FAILURES = FileKind("list of skipped videos", _failure_list)
SKIPPED = FileKind("list of skipped inputs", _skipped)
