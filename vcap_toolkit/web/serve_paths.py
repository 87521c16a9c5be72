"""Which server-side files the page of ``vcap serve`` may read (``vcap_toolkit/web/serve.py``).

A path from the page is refused (``Forbidden``, 403) when it holds ``..``, or when its real location
- every symbolic link resolved - is not inside an allowed folder; whether such a file exists is
not said. A path may be absolute or relative to an allowed folder. The index's own paths, exactly
as stored, are readable as they are (the index's owner chose them), even when they are links.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from werkzeug.exceptions import BadRequest, Forbidden, NotFound

from caption.pipeline import VIDEO_EXTENSIONS
from retrieval_pretrain.foundation.errors import ConfigError

MAX_LISTED = 2000  # files ``PathGuard.listing`` returns at most


class PathGuard:
    """Decides which server-side paths the page may read (see the module docstring).

    Args:
        roots: the allowed folders; each must exist (``ConfigError`` otherwise).
        indexed: paths the index holds, readable exactly as written there.
    """

    def __init__(self, roots: Sequence[str | Path], indexed: Sequence[str] = ()):
        for root in roots:
            if not Path(root).is_dir():
                raise ConfigError(f"--allow {root}: not a folder")
        self.roots = _outermost([Path(os.path.realpath(r)) for r in roots])
        self.indexed = frozenset(indexed)

    def _inside(self, real: Path) -> bool:
        return any(real == root or real.is_relative_to(root) for root in self.roots)

    def resolve(self, text: str) -> Path:
        """The real file ``text`` names: absolute, or relative to an allowed folder. ``BadRequest``
        for no path, ``Forbidden`` for one outside the allowed folders (before anything is said
        about whether it exists), ``NotFound`` for no such file inside them."""
        if not text or not text.strip() or "\x00" in text:
            raise BadRequest("no path given")
        if text in self.indexed:
            real = Path(os.path.realpath(text))
            if not real.is_file():
                raise NotFound(f"{text}: indexed, but the file is no longer there")
            return real
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


def _outermost(folders: list[Path]) -> list[Path]:
    """The folders that lie in none of the others, sorted."""
    unique = sorted(set(folders))
    return [f for f in unique if not any(f != g and f.is_relative_to(g) for g in unique)]


def index_folders(paths: Sequence[str]) -> list[str]:
    """The folders an index's videos are in (the default ``--allow``)."""
    return [str(f) for f in _outermost([Path(p).parent for p in paths if Path(p).parent.is_dir()])]
