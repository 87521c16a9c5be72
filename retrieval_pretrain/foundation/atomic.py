"""The toolkit's two writers: one for files, one for folders. Every file or folder the toolkit
writes whole goes through them, so nothing written half-way ever looks complete. (The one stream,
a run's ``log.jsonl``, is appended to line by line: ``run_log.JsonlLogger``.)

* ``write_file(path, content)``: the content goes to a temporary file beside ``path``, which is then
  renamed over it (``os.replace``, atomic on POSIX): a reader sees the old file or the new one.
* ``write_folder(folder, fill)``: ``fill(tmp)`` fills a temporary folder beside ``folder``; then
  the two are swapped in one step with Linux's ``renameat2(RENAME_EXCHANGE)`` and the old one (now
  under the temporary name) is deleted. A kill at any instant leaves at ``folder`` either the old
  complete folder or the new complete one, never neither and never a mix. Where the exchange is not
  available (another OS, a filesystem without it), the old folder is first renamed aside
  (``.NAME.old-*``) and the new one renamed in; a kill between the two renames leaves no
  ``folder`` (an error when read, never a wrong model), and the next write of the folder puts the
  old one back first.

Temporaries are hidden (``.NAME.tmp-*``) and removed on failure. Ones a killed process left are
cleared by the next ``write_folder`` of the same folder; for files, by ``clear_temporaries(path)``
(``write_file`` does not clear them itself, so two processes may write one file at once; the
feature cache clears its own). New files and folders get the permissions the umask allows
(``mkstemp`` / ``mkdtemp`` alone, and libraries such as safetensors, would make them private).

These writers replace whatever stands at the path; *which* folders and files a command may replace
is ``ownership``'s rule (``claim_folder``, ``write_owned_folder``, ``claim_file``), checked first.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Union

Content = Union[bytes, str, Callable[[Path], None]]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (``os.umask`` has to set a
    new one to read the old, a window in which another thread's files would get mode 0666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _honour_umask(folder: Path) -> None:
    """Give what a writer put in ``folder`` the modes the umask allows (libraries such as
    safetensors create their files private, 0600, whatever the umask)."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


def _clear_stale(path: Path) -> None:
    """Remove temporaries of ``path`` left by a killed writer (never the path itself)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def os_error(err: BaseException, where: str | os.PathLike) -> BaseException:
    """``err`` as an ``OSError`` naming ``where`` when a library reported a file-system error in its
    own type (safetensors: ``SafetensorError: ... I/O error: File too large (os error 27)``), so the
    command line can say "disk full" instead of a traceback; any other error unchanged."""
    if isinstance(err, OSError):
        return err if err.filename or err.errno is None else OSError(err.errno, err.strerror, str(where))
    found = re.search(r"\(os error (\d+)\)", str(err))
    if found is None:
        return err
    code = int(found.group(1))
    return OSError(code, os.strerror(code), str(where))


def write_file(path: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` to ``path`` atomically; returns ``path``.

    ``content`` is bytes, text (UTF-8), or a function that writes the file at the temporary path it
    is given (for writers that want a file name, e.g. an mp4 muxer or ``np.save``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            if isinstance(content, str):
                f.write(content.encode("utf-8"))
            elif isinstance(content, (bytes, bytearray, memoryview)):
                f.write(content)
        if callable(content):
            content(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        new = os_error(e, path)
        if new is e:
            raise
        raise new from e
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``write_file`` of ``obj`` as indented JSON (serialised before any file is touched)."""
    return write_file(path, json.dumps(obj, indent=2) + "\n")


def temp_folder(folder: str | os.PathLike) -> Path:
    """A new, empty temporary folder beside ``folder`` for ``commit_folder`` (stale ones of earlier,
    killed writers are removed first). For writers that cannot take a ``fill`` function, e.g. the
    collective ``accelerator.save_state``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    clear_temporaries(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def clear_temporaries(path: str | os.PathLike) -> None:
    """Remove what a killed writer of ``path`` left (its hidden temporaries), and put back an old
    folder that a killed fallback swap had moved aside. Never touches ``path`` itself."""
    path = Path(path)
    _clear_stale(path)
    _restore_aside(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step; False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _restore_aside(folder: Path) -> None:
    """Undo a fallback swap that a kill interrupted: the old folder back in place. Asides beside an
    existing folder are old folders whose swap completed before their deletion: removed (else they
    pile up, and one could later be "restored" in place of a newer folder)."""
    aside = sorted(folder.parent.glob(f".{glob.escape(folder.name)}.old-*"))
    if aside and not folder.exists():
        os.replace(aside.pop(), folder)  # at most one: each write clears the rest first
    for stale in aside:
        shutil.rmtree(stale, ignore_errors=True)


def commit_folder(tmp: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """Put the complete folder ``tmp`` (from ``temp_folder``) in place of ``folder``, atomically."""
    tmp, folder = Path(tmp), Path(folder)
    _honour_umask(tmp)
    if not folder.exists() and not folder.is_symlink():
        os.rename(tmp, folder)
        return folder
    if _exchange(tmp, folder):
        shutil.rmtree(tmp, ignore_errors=True)  # now the old folder
        return folder
    aside = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(folder, aside)
    try:
        os.replace(tmp, folder)
    except BaseException:
        os.replace(aside, folder)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return folder


def write_folder(folder: str | os.PathLike, fill: Callable[[Path], None]) -> Path:
    """Fill a temporary folder with ``fill(tmp)``, then swap it in for ``folder`` atomically (see the
    module docstring); returns ``folder``. If ``fill`` raises, ``folder`` is untouched."""
    tmp = temp_folder(folder)
    try:
        fill(tmp)
        return commit_folder(tmp, folder)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        new = os_error(e, folder)
        if new is e:
            raise
        raise new from e
