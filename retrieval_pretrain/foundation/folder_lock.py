"""One writer per output folder: ``vcap pretrain``, ``train`` and ``extract`` hold an exclusive lock
on ``FOLDER/.lock`` while they run, so a second process pointed at the same folder is refused at
once (``FolderBusyError``, naming the holder) instead of deleting the first one's temporary files
or encoding the same videos twice.

The lock is ``flock(2)`` on an open file: the kernel drops it when the holding process ends, however
it ends (a SIGKILLed run leaves no stale lock to clean up). Under ``accelerate launch`` the main
process holds it for all processes of that launch. On network file systems flock works where the
file system supports it (NFSv4 does on Linux); where it does not, the lock is not taken (a warning
says so) rather than refusing every run.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from retrieval_pretrain.foundation.errors import FolderBusyError

LOCK_FILE = ".lock"
_held: dict[str, Any] = {}  # resolved folder -> open lock file of this process


def _acquire(folder: Path, command: str) -> str | None:
    """Take the lock; the reason it is refused, or None."""
    key = str(folder.resolve())
    f = (folder / LOCK_FILE).open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return (f"{folder} is in use by another running vcap process ({holder}); wait for it to finish "
                    "or give another output folder")
        print(f"warning: cannot lock {folder / LOCK_FILE} ({e.strerror}); make sure no other vcap process "
              "writes this folder", file=sys.stderr)
        return None
    f.seek(0)
    f.truncate()
    f.write(f"{command}, pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    _held[key] = f
    return None


def _release(folder: Path) -> None:
    f = _held.pop(str(folder.resolve()), None)
    if f is not None:
        f.close()  # closing the file drops the flock


@contextmanager
def folder_lock(folder: str | Path, command: str, accelerator: Any | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (creating the folder). With an ``accelerator`` the main
    process locks and every process learns the outcome, so all of them raise or none does."""
    folder = Path(folder)
    main = accelerator is None or accelerator.is_main_process
    refusal, nested = None, main and str(folder.resolve()) in _held  # this process holds it already
    if main and not nested:
        folder.mkdir(parents=True, exist_ok=True)
        refusal = _acquire(folder, command)
    if accelerator is not None and accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list  # deferred: heavy (torch); multi-process only

        refusal = broadcast_object_list([refusal], from_process=0)[0]
    if refusal:
        raise FolderBusyError(refusal)
    try:
        yield
    finally:
        if main and not nested:
            _release(folder)
