"""``vcap caption FOLDER``: folder entries that lead nowhere (broken symbolic links, symbolic link
loops, folders that cannot be listed) are failed inputs, named with their reason and counted in
the exit code, never dropped silently; links to videos and to folders are followed, loops are not."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from caption.pipeline import expand_videos
from retrieval_pretrain.foundation.errors import VideoReadError
from vcap_toolkit.cli.main import main

ROOT_CAN_LIST_ANYTHING = hasattr(os, "geteuid") and os.geteuid() == 0


def make_folder(tmp_path: Path) -> Path:
    """videos/ with a video, a link to it, a broken link, a link loop, a link back to its own
    parent folder, a linked folder holding one more video, and a non-video file."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "far.mp4").write_bytes(b"x")
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    (root / "a.mp4").write_bytes(b"x")
    (root / "notes.txt").write_text("not a video")
    os.symlink(root / "a.mp4", root / "link_to_a.mp4")
    os.symlink(tmp_path / "gone.mp4", root / "broken.mp4")
    os.symlink(root / "loop2", root / "loop1")
    os.symlink(root / "loop1", root / "loop2")
    os.symlink(root, root / "sub" / "up")  # leads back to a folder being listed
    os.symlink(other, root / "linked_dir")
    return root


def reasons(failed: list[VideoReadError]) -> dict[str, str]:
    return {e.path: e.reason for e in failed}


def test_folder_listing_reports_links_that_lead_nowhere(tmp_path):
    root = make_folder(tmp_path)
    paths, failed = expand_videos([root])
    assert paths == [root / "a.mp4", root / "link_to_a.mp4", root / "linked_dir" / "far.mp4"]
    got = reasons(failed)
    assert got == {
        str(root / "broken.mp4"): f"broken symbolic link (to {tmp_path / 'gone.mp4'}, which does not exist)",
        str(root / "loop1"): "symbolic link loop",
        str(root / "loop2"): "symbolic link loop",
        str(root / "sub" / "up"): f"symbolic link loop (leads back to folder {root})",
    }
    assert str(failed[0]) == f"{root / 'broken.mp4'}: {got[str(root / 'broken.mp4')]}"


def _list(root: Path) -> tuple[list[str], dict[str, str]]:
    paths, failed = expand_videos([root])
    return [str(p) for p in paths], reasons(failed)


def _list_as_nobody(root: Path) -> tuple[list[str], dict[str, str]]:
    """``_list`` in a forked child that has dropped root for user 65534 (nobody)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no exec, no torch work, just the listing
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write, json.dumps(_list(root)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return tuple(json.loads(out))


def test_folder_that_cannot_be_listed_is_reported():
    """A folder without read permission. Root can list anything, so as root the listing runs in a
    forked child as the unprivileged user 65534 (nobody)."""
    base = Path(tempfile.mkdtemp(prefix="vcap-perm-"))  # not under pytest's 0700 tmp folder
    try:
        base.chmod(0o755)
        root = base / "videos"
        locked = root / "locked"
        locked.mkdir(parents=True)
        (locked / "hidden.mp4").write_bytes(b"x")
        (root / "a.mp4").write_bytes(b"x")
        root.chmod(0o755)
        locked.chmod(0)
        paths, failed = _list_as_nobody(root) if ROOT_CAN_LIST_ANYTHING else _list(root)
    finally:
        (base / "videos" / "locked").chmod(0o755)
        shutil.rmtree(base)
    assert paths == [str(root / "a.mp4")]
    assert failed == {str(locked): "cannot list folder: Permission denied"}


def test_nothing_at_all_to_caption_is_still_a_video_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoReadError, match="no video files"):
        expand_videos([tmp_path / "empty"])


def test_caption_command_with_only_broken_links_exits_4_naming_them(tmp_path, capsys):
    root = tmp_path / "videos"
    root.mkdir()
    os.symlink(tmp_path / "gone.mp4", root / "broken.mp4")
    # no model is loaded when nothing can be captioned: a missing model folder does not matter
    assert main(["caption", str(root), "--model", str(tmp_path / "no_model")]) == VideoReadError.exit_code
    out, err = capsys.readouterr()
    assert out == ""
    assert f"warning: not captioned: {root / 'broken.mp4'}: broken symbolic link" in err
    assert err.strip().splitlines()[-1] == (f"vcap: video error: {root / 'broken.mp4'}: none of the 1 videos "
                                            "could be read (reasons above)")
