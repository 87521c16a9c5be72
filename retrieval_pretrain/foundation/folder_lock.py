"""One writer per output folder: ``vcap pretrain``, ``train`` and ``extract`` hold an exclusive lock
on ``FOLDER/.lock`` while they run, so a second process pointed at the same folder is refused at
once (``FolderBusyError``, naming the holder) instead of deleting the first one's temporary files
or encoding the same videos twice.

The lock is ``flock(2)`` on an open file: the kernel drops it when the holding process ends, however
it ends (a SIGKILLed run leaves no stale lock to clean up). A flock belongs to the open file, which
a forked child shares - a DataLoader worker would hold the lock on after its parent was killed,
until it noticed (seconds), refusing the run started right after. So every child forked while the
lock is held closes its copy at once (``os.register_at_fork``): the lock lives exactly as long as
the process that took it. Under ``accelerate launch`` the main
process holds it for all processes of that launch. A lock file this run created in a folder it
then never claimed (``ownership``: refused, or failed before) is removed when the lock is released,
with the folder if the lock made it. On network file systems flock works where the
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
from retrieval_pretrain.foundation.ownership import LOCK_FILE, RECORD

__all__ = ["LOCK_FILE", "folder_lock"]
_held: dict[str, Any] = {}  # resolved folder -> open lock file of this process
_fork_hook = False  # whether _forget_in_child is registered


def _forget_in_child() -> None:
    """In a forked child (a DataLoader worker, a multiprocessing pool): close its copies of the lock
    files, so that the lock ends with the process that took it. The parent's lock stays held: a
    flock is released when the last descriptor of its open file is closed, and the parent's is open."""
    for f in _held.values():
        try:
            f.close()
        except OSError:
            pass
    _held.clear()


def _acquire(folder: Path, command: str) -> str | None:
    """Take the lock; the reason it is refused, or None."""
    global _fork_hook
    if not _fork_hook:
        os.register_at_fork(after_in_child=_forget_in_child)
        _fork_hook = True
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


def _release(folder: Path, made_folder: bool, made_lock: bool) -> None:
    f = _held.pop(str(folder.resolve()), None)
    if f is None:
        return
    if made_lock and not os.path.lexists(folder / RECORD):
        # The command never claimed the folder (``ownership``: it refused it, or failed before): leave
        # it as it was found - no lock file among the user's files, no empty folder it made.
        (folder / LOCK_FILE).unlink(missing_ok=True)
        if made_folder:
            try:
                folder.rmdir()
            except OSError:
                pass
    f.close()  # closing the file drops the flock


@contextmanager
def folder_lock(folder: str | Path, command: str, accelerator: Any | None = None) -> Iterator[None]:
    """Hold ``folder``'s lock for the block (creating the folder). With an ``accelerator`` the main
    process locks and every process learns the outcome, so all of them raise or none does."""
    folder = Path(folder)
    main = accelerator is None or accelerator.is_main_process
    refusal, nested = None, main and str(folder.resolve()) in _held  # this process holds it already
    made = not os.path.lexists(folder), not os.path.lexists(folder / LOCK_FILE)
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
            _release(folder, *made)
