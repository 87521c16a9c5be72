"""Which server-side files the page of ``vcap serve`` may read (``vcap_toolkit/web/serve.py``).

A path from the page is refused (``Forbidden``, 403) when it holds ``..``, or when its real location
- every symbolic link resolved - is not inside an allowed folder; whether such a file exists is
not said. A path may be absolute or relative to an allowed folder. The index's own paths, exactly
as stored, are readable too, but checked the same way at the moment of use: a stored path's real
location must be inside an allowed folder or inside one of the folders the index's videos are in
(so an indexed video replaced by a link to ``/etc/passwd`` is refused). ``PathGuard.open`` checks a
path and then opens it once; the bytes are sent from that open file, which must be a regular file
at the checked location (a swap between the check and the open is refused).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO, Sequence

from werkzeug.exceptions import BadRequest, Forbidden, NotFound

from caption.pipeline import VIDEO_EXTENSIONS
from retrieval_pretrain.foundation.errors import ConfigError

MAX_LISTED = 2000  # files ``PathGuard.listing`` returns at most


class PathGuard:
    """Decides which server-side paths the page may read (see the module docstring).

    Args:
        roots: the allowed folders; each must exist (``ConfigError`` otherwise).
        indexed: paths the index holds, readable as written there while their real location is
            inside ``roots`` or inside the folders the index's videos are in.
    """

    def __init__(self, roots: Sequence[str | Path], indexed: Sequence[str] = ()):
        for root in roots:
            if not Path(root).is_dir():
                raise ConfigError(f"--allow {root}: not a folder")
        self.roots = _outermost([Path(os.path.realpath(r)) for r in roots])
        self.indexed = frozenset(indexed)
        parents = {Path(p).parent for p in self.indexed}
        self.index_roots = _outermost([Path(os.path.realpath(f)) for f in parents if f.is_dir()])

    def _inside(self, real: Path, roots: Sequence[Path] | None = None) -> bool:
        return any(real == root or real.is_relative_to(root) for root in (self.roots if roots is None else roots))

    def _allowed(self, text: str, real: Path) -> bool:
        """Whether ``real`` (a resolved location) may be read for the path ``text``."""
        return self._inside(real) or (text in self.indexed and self._inside(real, self.index_roots))

    def resolve(self, text: str) -> Path:
        """The real file ``text`` names: absolute, or relative to an allowed folder. ``BadRequest``
        for no path, ``Forbidden`` for one outside the allowed folders (before anything is said
        about whether it exists), ``NotFound`` for no such file inside them."""
        if not text or not text.strip() or "\x00" in text:
            raise BadRequest("no path given")
        if len(text.encode("utf-8", "surrogatepass")) > 4095 or \
                any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in Path(text).parts):
            raise BadRequest(f"{text[:60]}...: too long to be a file name")  # stat() would raise ENAMETOOLONG
        if text in self.indexed:
            return self._resolve_indexed(text)
        given = Path(text)
        if ".." in given.parts:
            raise Forbidden(f"{text}: '..' is not allowed in a path; give the file's path inside an allowed folder")
        if not self.roots:
            raise Forbidden(f"{text}: this server reads no folders (start 'vcap serve' with --allow FOLDER)")
        tried = [given] if given.is_absolute() else [root / given for root in self.roots]
        for candidate in tried:
            real = Path(os.path.realpath(candidate))
            if not self._inside(real):
                continue
            if real.is_file():
                return real
            raise NotFound(f"{text}: {'not a file' if real.exists() else 'file not found'}")
        link = " (a symbolic link that leads outside them)" if any(p.is_symlink() for p in tried) else ""
        raise Forbidden(f"{text}: outside the folders this server may read{link}; allowed: "
                        f"{', '.join(map(str, self.roots))} (vcap serve --allow FOLDER)")

    def _resolve_indexed(self, text: str) -> Path:
        """An indexed path's real file, checked now: inside an allowed folder or a folder the index's
        videos are in (``Forbidden`` otherwise, a link that leads out included)."""
        real = Path(os.path.realpath(text))
        if not self._allowed(text, real):
            link = " (a symbolic link that leads outside them)" if _has_link(Path(text)) else ""
            folders = ", ".join(map(str, _outermost([*self.roots, *self.index_roots])))
            raise Forbidden(f"{text}: indexed, but its real location is now outside the folders this server may "
                            f"read and those the index's videos are in{link}; allowed: {folders} "
                            "(vcap serve --allow FOLDER)")
        if not real.is_file():
            raise NotFound(f"{text}: indexed, but the file is no longer there")
        return real

    def open(self, text: str) -> tuple[BinaryIO, Path, os.stat_result]:
        """``(open file, real path, its stat)`` of the file ``text`` names: checked (``resolve``), then
        opened once, without following a link at the last step and without blocking. The open file
        must be a regular file, at the checked location and the same file (device and inode) that is
        there now; else ``Forbidden`` (it changed between the check and the open). Read and send
        from the returned file, never from the path again."""
        return self._open_real(text, self.resolve(text))

    def _open_real(self, text: str, real: Path) -> tuple[BinaryIO, Path, os.stat_result]:
        """``open`` of ``real``, the checked location of what ``text`` names."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(real, flags)
        except OSError as e:
            if e.errno == errno.ENOENT:
                raise NotFound(f"{text}: file not found") from None
            raise Forbidden(f"{text}: changed after it was checked ({e.strerror}); refused") from None
        file = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fd)
            self._check_opened(text, real, fd, st)
        except BaseException:
            file.close()
            raise
        return file, real, st

    def open_beside(self, text: str, suffix: str) -> tuple[BinaryIO, Path, os.stat_result]:
        """``open`` of the file beside the video ``text`` names, with ``suffix`` for its own (its
        subtitles: ``.vtt``): the video is checked (``resolve``), then the file in the video's real
        folder is opened and checked as the video would be. ``NotFound`` when there is none;
        ``Forbidden`` for one that is a symbolic link."""
        beside = self.resolve(text).with_suffix(suffix)
        if beside.is_symlink():
            raise Forbidden(f"{text}: its {suffix} file is a symbolic link; refused")
        if not beside.is_file():
            raise NotFound(f"{text}: no {suffix} file beside it")
        return self._open_real(text, beside)

    def _check_opened(self, text: str, real: Path, fd: int, st: os.stat_result) -> None:
        """``Forbidden`` unless the open ``fd`` is a regular file at ``real`` (see ``open``)."""
        if not stat.S_ISREG(st.st_mode):
            raise Forbidden(f"{text}: not a regular file when opened; refused")
        proc = f"/proc/self/fd/{fd}"
        where = Path(os.readlink(proc)) if os.path.islink(proc) else Path(os.path.realpath(real))
        try:
            now = os.stat(real, follow_symlinks=False)
        except OSError:
            now = None
        if where != real or not self._allowed(text, where) or now is None or \
                (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise Forbidden(f"{text}: changed after it was checked (the file opened is not the one checked); refused")

    def listing(self) -> list[str]:
        """Video files (by extension) under the allowed folders, links that lead out left out."""
        out: list[str] = []
        for root in self.roots:
            for folder, dirs, files in os.walk(root):
                dirs.sort()
                for name in sorted(files):
                    path = os.path.join(folder, name)
                    if Path(name).suffix.lower() in VIDEO_EXTENSIONS and self._inside(Path(os.path.realpath(path))):
                        out.append(path)
                        if len(out) >= MAX_LISTED:
                            return out
        return out


def _has_link(path: Path) -> bool:
    """Whether ``path`` or a folder on the way to it is a symbolic link."""
    return any(p.is_symlink() for p in (path, *path.parents))


def _outermost(folders: list[Path]) -> list[Path]:
    """The folders that lie in none of the others, sorted."""
    unique = sorted(set(folders))
    return [f for f in unique if not any(f != g and f.is_relative_to(g) for g in unique)]


def index_folders(paths: Sequence[str]) -> list[str]:
    """The folders an index's videos are in (the default ``--allow``)."""
    return [str(f) for f in _outermost([Path(p).parent for p in paths if Path(p).parent.is_dir()])]
