"""The atomic writers (``retrieval_pretrain.foundation.atomic``), tested by killing real writers.

The kill tests SIGKILL writer processes - after random short delays and at fixed points (inside
``fill``, just before and just after the swap, between and after the two renames of the fallback,
half-way through a file) - then check that the folder is one complete version (the old one or the
new one, never a mix), that whatever the kill left is hidden, and that the next write clears it.
Each version's files carry the same version number (``config.json`` and every element of the tensor
in ``model.safetensors``), so "complete" is checkable.

The writers are forked by one server subprocess (``subprocess.Popen([sys.executable, "-c", ...])``)
that imports numpy, safetensors and ``atomic`` once: a fork costs milliseconds where a fresh
interpreter costs half a second, so 30+ kills fit in a few seconds. The real ``save_pretrained`` is
killed in a fresh interpreter of its own.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from retrieval_pretrain.foundation import atomic
from retrieval_pretrain.foundation.atomic import (
    clear_temporaries,
    commit_folder,
    temp_folder,
    write_file,
    write_folder,
    write_json,
)

ROOT = Path(__file__).resolve().parents[1]
N = 1_250_000  # float32 elements per version: a 5 MB model.safetensors
FILE_SIZE = 4 << 20  # bytes of a write_file version
FILES = {"config.json", "model.safetensors"}
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# ----------------------------------------------------------------------------- writer processes

# Reads one command a line from stdin: MODE KIND TARGET START LOG ASIDE (tab-separated); forks a
# writer for it, prints "started PID", waits for it and prints "reaped PID STATUS". The writer logs
# to LOG ("committed V" after each write; "point NAME" when it pauses at a fixed point, where it then
# sleeps until killed) and sends its stderr to LOG.err.
#   KIND folder: MODE loop writes versions START, START+1, ... of a model-like folder; in_fill /
#     before_swap / after_swap / fallback_between / fallback_after write version START once and
#     pause at that point (fallback_*: no exchange; ASIDE, unless "-", names the aside folder).
#   KIND file: MODE loop rewrites a file with versions START, START+1, ...; mid writes half of
#     version START through a callable and pauses.
WRITER_SERVER = textwrap.dedent(f"""
    import json, os, sys, time, uuid
    from pathlib import Path
    import numpy as np
    from safetensors.numpy import save_file
    from retrieval_pretrain.foundation import atomic

    N, FILE_SIZE = {N}, {FILE_SIZE}

    def file_content(v):
        return f"{{v:08d}}".encode() * (FILE_SIZE // 8)

    def writer(mode, kind, target, start, log, aside):
        logfd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        errfd = os.open(log + ".err", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(errfd, 2)
        say = lambda s: os.write(logfd, (s + "\\n").encode())
        target = Path(target)

        def point(name):
            say("point " + name)
            time.sleep(300)

        def fill_for(v):
            def fill(tmp):
                save_file({{"w": np.full(N, v, np.float32)}}, str(tmp / "model.safetensors"))
                if mode == "in_fill":
                    point("in_fill")  # weights written, config.json not yet
                (tmp / "config.json").write_text(json.dumps({{"version": v}}))
            return fill

        real_exchange, real_replace = atomic._exchange, os.replace
        if mode == "before_swap":
            def exchange(a, b):
                point("before_swap")
            atomic._exchange = exchange
        elif mode == "after_swap":
            def exchange(a, b):
                assert real_exchange(a, b)
                point("after_swap")
            atomic._exchange = exchange
        elif mode.startswith("fallback"):
            atomic._exchange = lambda a, b: False
            if aside != "-":
                atomic.uuid.uuid4 = lambda: uuid.UUID(aside + "0" * 24)
            def replace(src, dst):
                real_replace(src, dst)
                if mode == "fallback_between" and ".old-" in Path(dst).name:
                    point("fallback_between")  # old folder moved aside, the new one not yet in
                if mode == "fallback_after" and Path(dst) == target:
                    point("fallback_after")  # the new one in, the aside not yet deleted
            os.replace = replace

        if kind == "folder" and mode == "loop":
            v = start
            while True:
                atomic.write_folder(target, fill_for(v))
                say(f"committed {{v}}")
                v += 1
        elif kind == "folder":
            atomic.write_folder(target, fill_for(start))
        elif mode == "loop":
            v = start
            while True:
                atomic.write_file(target, file_content(v))
                say(f"committed {{v}}")
                v += 1
        else:
            def half(tmp):
                with open(tmp, "wb") as f:
                    f.write(file_content(start)[: FILE_SIZE // 2])
                    f.flush()
                    point("mid")
            atomic.write_file(target, half)
        say("finished")  # a pause point was never reached

    print("ready", flush=True)
    for line in sys.stdin:
        mode, kind, target, start, log, aside = line.rstrip("\\n").split("\\t")
        pid = os.fork()
        if pid == 0:
            try:
                writer(mode, kind, target, int(start), log, aside)
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(3)
        print(f"started {{pid}}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"reaped {{pid}} {{status}}", flush=True)
""")


class Lines:
    """The stdout lines of a subprocess, read with a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.buf, self.lines, self.used = proc, b"", [], 0

    def _more(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.proc.stdout.fileno()], [], [], max(timeout, 0))
        chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
        self.buf += chunk
        *done, self.buf = self.buf.split(b"\n")
        self.lines += [s.decode() for s in done]
        return bool(chunk)

    def next(self, prefix: str, timeout: float = 60.0) -> str:
        """The next unread line, which must start with ``prefix``."""
        deadline = time.monotonic() + timeout
        while self.used == len(self.lines):
            if not self._more(deadline - time.monotonic()):
                self.proc.kill()
                pytest.fail(f"no line {prefix!r} from the subprocess (got {self.lines}); stderr:\n"
                            f"{self.proc.stderr.read().decode()[-3000:]}")
        line = self.lines[self.used]
        self.used += 1
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line


class Writer:
    """One forked writer: its pid and log."""

    def __init__(self, server: "Server", pid: int, log: Path):
        self.server, self.pid, self.log = server, pid, log
        self.reaped = False

    def log_lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def errors(self) -> str:
        err = self.log.with_name(self.log.name + ".err")
        return err.read_text()[-3000:] if err.exists() else ""

    def wait_for(self, line: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while line not in self.log_lines():
            if "finished" in self.log_lines() or self.errors() or time.monotonic() > deadline:
                self.kill(expect_killed=False)
                pytest.fail(f"writer never logged {line!r} (log {self.log_lines()}):\n{self.errors()}")
            time.sleep(0.002)

    def kill(self, expect_killed: bool = True) -> list[str]:
        """SIGKILL the writer; returns its log. With ``expect_killed``, fails unless the kill is what
        ended it (a writer that crashed or finished before cannot pass as killed)."""
        os.kill(self.pid, signal.SIGKILL)
        status = int(self.server.out.next(f"reaped {self.pid} ").split()[2])
        self.reaped = True
        if expect_killed:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
                f"writer ended by itself (status {status}, log {self.log_lines()}):\n{self.errors()}"
        return self.log_lines()


class Server:
    def __init__(self, logs: Path):
        self.logs = logs
        self.proc = subprocess.Popen([sys.executable, "-c", WRITER_SERVER], cwd=ROOT, env=CHILD_ENV,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     bufsize=0)
        self.out = Lines(self.proc)
        self.out.next("ready", timeout=120)
        self.writers: list[Writer] = []

    def start(self, mode: str, kind: str, target: Path, start: int, aside: str = "-") -> Writer:
        log = self.logs / f"writer-{len(self.writers)}.log"
        self.proc.stdin.write(f"{mode}\t{kind}\t{target}\t{start}\t{log}\t{aside}\n".encode())
        w = Writer(self, int(self.out.next("started ").split()[1]), log)
        self.writers.append(w)
        return w

    def close(self) -> None:
        for w in self.writers:
            if not w.reaped:
                w.kill(expect_killed=False)
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("writer-logs"))
    yield s
    s.close()


def committed(lines: list[str]) -> list[int]:
    return [int(s.split()[1]) for s in lines if s.startswith("committed ")]


def file_content(v: int) -> bytes:
    return f"{v:08d}".encode() * (FILE_SIZE // 8)


# ----------------------------------------------------------------------------- model-like folders


def fill_for(v: int):
    def fill(tmp: Path) -> None:
        save_file({"w": np.full(N, v, np.float32)}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps({"version": v}))
    return fill


def version_of(folder: Path) -> int:
    """The version of a complete model-like folder; fails on anything else (missing or extra files,
    config and weights of different versions, a truncated tensor)."""
    assert folder.is_dir(), f"{folder} missing"
    assert {p.name for p in folder.iterdir()} == FILES
    v = json.loads((folder / "config.json").read_text())["version"]
    w = load_file(str(folder / "model.safetensors"))
    assert list(w) == ["w"] and w["w"].shape == (N,) and w["w"].dtype == np.float32
    assert (w["w"] == v).all(), f"config says version {v}, weights hold {np.unique(w['w'])[:5]}"
    return v


def leftovers(path: Path) -> list[Path]:
    """Everything beside ``path`` in its parent (each test gives a path a parent of its own)."""
    return sorted(p for p in path.parent.iterdir() if p.name != path.name)


def assert_hidden_temporaries(path: Path, kinds: tuple[str, ...] = ("tmp",)) -> list[Path]:
    rest = leftovers(path)
    for p in rest:
        assert any(p.name.startswith(f".{path.name}.{k}-") for k in kinds), f"unexpected {p.name}"
    return rest


def rewrite_and_check(folder: Path, v: int) -> None:
    """The next write after a kill: clears what the kill left and puts a complete new version in."""
    write_folder(folder, fill_for(v))
    assert version_of(folder) == v
    assert leftovers(folder) == []


def new_folder(tmp_path: Path, name: str = "model", v: int = 0) -> Path:
    parent = tmp_path / f"{name}-parent-{uuid.uuid4().hex[:6]}"
    parent.mkdir()
    folder = parent / name
    write_folder(folder, fill_for(v))
    assert version_of(folder) == v and leftovers(folder) == []
    return folder


# ----------------------------------------------------------------------------- the exchange itself


def test_exchange_swaps_in_one_step_on_this_filesystem(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("from a")
    (b / "y").write_text("from b")
    assert atomic._exchange(a, b) is True, "renameat2(RENAME_EXCHANGE) unavailable: the kill tests would test the fallback"
    assert [p.name for p in a.iterdir()] == ["y"] and (a / "y").read_text() == "from b"
    assert [p.name for p in b.iterdir()] == ["x"] and (b / "x").read_text() == "from a"
    with pytest.raises(FileNotFoundError):  # a real error is raised, not taken for "no exchange here"
        atomic._exchange(a, tmp_path / "missing")
    assert (a / "y").read_text() == "from b"


# ----------------------------------------------------------------------------- kills at random times


def test_writers_killed_at_random_times(tmp_path, server):
    """30 writers (24 of folders, 6 of files) SIGKILLed after delays spread over 0-150 ms of
    rewriting: each leaves the last committed version or the next one, complete, never a mix, and
    only hidden temporaries, which the next write clears."""
    rng = random.Random(1234)
    n_folder, n_file = 24, 6
    trials = [("folder", 0.15 * (i + rng.random()) / n_folder) for i in range(n_folder)]
    trials += [("file", 0.1 * (i + rng.random()) / n_file) for i in range(n_file)]
    rng.shuffle(trials)
    advanced = left_temp = 0
    for kind, delay in trials:
        if kind == "folder":
            target = new_folder(tmp_path, v=100)
        else:
            target = tmp_path / f"file-parent-{uuid.uuid4().hex[:6]}" / "data.bin"
            write_file(target, file_content(100))
        w = server.start("loop", kind, target, 101)
        time.sleep(delay)
        done = committed(w.kill())
        last = done[-1] if done else 100
        advanced += last > 100
        rest = assert_hidden_temporaries(target)
        left_temp += bool(rest)
        if kind == "folder":
            v = version_of(target)
            assert v in (last, last + 1), f"version {v} after committing {last}"
            rewrite_and_check(target, 1000)
        else:
            data = target.read_bytes()
            v = int(data[:8])
            assert v in (last, last + 1) and data == file_content(v), f"file version {v} after committing {last}"
            clear_temporaries(target)
            assert leftovers(target) == [] and target.read_bytes() == data
    print(f"random kills: {len(trials)}; writers that had committed a new version: {advanced}; "
          f"kills that left a temporary: {left_temp}")
    assert advanced >= 5, "the writers hardly ran before the kills: the delays test nothing"
    assert left_temp >= 3, "no kill left a temporary: the clearing was never exercised"


# ----------------------------------------------------------------------------- kills at fixed points


@pytest.mark.parametrize("mode", ["in_fill", "before_swap", "after_swap"])
def test_folder_writer_killed_at_a_fixed_point(tmp_path, server, mode):
    folder = new_folder(tmp_path, v=1)
    w = server.start(mode, "folder", folder, 2)
    w.wait_for(f"point {mode}")
    w.kill()
    (tmp,) = assert_hidden_temporaries(folder)
    assert tmp.is_dir()
    if mode == "in_fill":  # the old folder, the half-filled temporary beside it
        assert version_of(folder) == 1
        assert [p.name for p in tmp.iterdir()] == ["model.safetensors"]
    elif mode == "before_swap":  # the old folder, the complete new one not yet swapped in
        assert version_of(folder) == 1 and version_of(tmp) == 2
    else:  # swapped: the new folder in place, the old one under the temporary name
        assert version_of(folder) == 2 and version_of(tmp) == 1
    rewrite_and_check(folder, 3)


@pytest.mark.parametrize("repair", ["clear_temporaries", "write_folder"])
def test_fallback_killed_between_the_renames_is_repaired(tmp_path, server, repair):
    """No exchange: a kill after the old folder went aside and before the new one came in leaves no
    folder; clear_temporaries / the next write puts the old one back (before ``fill`` runs)."""
    folder = new_folder(tmp_path, v=1)
    w = server.start("fallback_between", "folder", folder, 2)
    w.wait_for("point fallback_between")
    w.kill()
    assert not folder.exists()
    rest = assert_hidden_temporaries(folder, ("tmp", "old"))
    (aside,) = [p for p in rest if ".old-" in p.name]
    (new,) = [p for p in rest if ".tmp-" in p.name]
    assert version_of(aside) == 1 and version_of(new) == 2
    if repair == "clear_temporaries":
        clear_temporaries(folder)
        assert version_of(folder) == 1 and leftovers(folder) == []
        rewrite_and_check(folder, 3)
    else:
        seen = []

        def fill(tmp: Path) -> None:
            seen.append(version_of(folder))  # the old folder is back before the new one is filled
            fill_for(3)(tmp)

        write_folder(folder, fill)
        assert seen == [1] and version_of(folder) == 3 and leftovers(folder) == []


def test_fallback_killed_after_the_renames_leaves_nothing_behind(tmp_path, server):
    """A kill after the new folder came in but before the aside was deleted: the folder is the new
    one, and the next write deletes the aside (asides must not pile up, one old model per kill)."""
    folder = new_folder(tmp_path, v=1)
    w = server.start("fallback_after", "folder", folder, 2)
    w.wait_for("point fallback_after")
    w.kill()
    assert version_of(folder) == 2
    (aside,) = assert_hidden_temporaries(folder, ("old",))
    assert version_of(aside) == 1
    rewrite_and_check(folder, 3)


def test_fallback_two_kills_never_bring_back_an_older_version(tmp_path, server):
    """Kill 1 after the renames leaves ``.model.old-ffffffff`` (version 1) beside version 2; kill 2
    between the renames of version 3 sets version 2 aside as ``.model.old-00000000``. The repair
    must restore version 2 (the old folder of the interrupted write), never version 1."""
    folder = new_folder(tmp_path, v=1)
    w = server.start("fallback_after", "folder", folder, 2, aside="ffffffff")
    w.wait_for("point fallback_after")
    w.kill()
    assert version_of(folder) == 2
    w = server.start("fallback_between", "folder", folder, 3, aside="00000000")
    w.wait_for("point fallback_between")
    w.kill()
    assert not folder.exists()
    clear_temporaries(folder)
    assert version_of(folder) == 2
    assert leftovers(folder) == []


def test_file_writer_killed_mid_write_keeps_the_old_file(tmp_path, server):
    path = tmp_path / "data.bin"
    write_file(path, file_content(7))
    w = server.start("mid", "file", path, 8)
    w.wait_for("point mid")
    w.kill()
    assert path.read_bytes() == file_content(7)
    (tmp,) = assert_hidden_temporaries(path)
    assert tmp.read_bytes() == file_content(8)[: FILE_SIZE // 2]  # the half-written new version
    clear_temporaries(path)
    assert leftovers(path) == [] and path.read_bytes() == file_content(7)
    write_file(path, file_content(9))
    assert path.read_bytes() == file_content(9) and leftovers(path) == []


# ----------------------------------------------------------------------------- the real model folder

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"layers": 2, "width": 64, "patch_size": 16, "image_size": 64, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def test_save_pretrained_killed_at_a_random_time_loads(tmp_path):
    """The real ``save_pretrained`` rewriting a tiny model, killed at a random moment: the folder
    holds exactly its two files, loads with ``from_pretrained``, is the last committed version or
    the next (config and weights alike), and the next save clears what the kill left.

    The writer is a fork of this process: torch and open_clip are imported already (a fresh
    interpreter spends 15-50 s importing them on a busy 2-core box)."""
    from dataclasses import replace

    import torch

    from retrieval_pretrain.modeling.model_folder import CONFIG_NAME, WEIGHTS_NAME, from_pretrained, save_pretrained
    from retrieval_pretrain.modeling.parts import build_video_text_model
    from retrieval_pretrain.reading.data_config import VideoConfig
    from retrieval_pretrain.stage1.config import ClipConfig, PretrainConfig, RetrievalConfig

    torch.manual_seed(0)
    model = build_video_text_model(RetrievalConfig(
        clip=ClipConfig(model="tiny", pretrained=None, custom=TINY),
        pretrain=PretrainConfig(head="seqTransf", head_layers=1, max_words=16),
        video=VideoConfig(num_frames=4)))
    folder = tmp_path / "models" / "stage1"
    log, err = tmp_path / "writer.log", tmp_path / "writer.err"

    def numbered(m, v: int) -> None:  # every version's weights carry its number
        with torch.no_grad():
            m.clip.logit_scale.fill_(v)
            m.clip.text_projection.fill_(v)
            next(m.head.parameters()).fill_(v)

    pid = os.fork()
    if pid == 0:  # the writer; it never returns into pytest
        try:
            torch.set_num_threads(1)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            v = 0
            while True:
                numbered(model, v)
                save_pretrained(model, folder, replace(model.spec, trained_on={"version": v}))
                os.write(fd, f"committed {v}\n".encode())
                v += 1
        except BaseException:
            import traceback
            err.write_text(traceback.format_exc())
        finally:
            os._exit(3)
    try:
        deadline = time.monotonic() + 60
        while "committed 0" not in (log.read_text().splitlines() if log.exists() else []):
            assert os.waitpid(pid, os.WNOHANG) == (0, 0), f"the writer died:\n{err.read_text() if err.exists() else ''}"
            assert time.monotonic() < deadline, "the writer never saved a first version"
            time.sleep(0.005)
        time.sleep(random.Random().uniform(0.0, 0.4))
    finally:
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        f"the writer ended by itself (status {status}):\n{err.read_text() if err.exists() else ''}"
    done = committed(log.read_text().splitlines())
    assert {p.name for p in folder.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    loaded, spec = from_pretrained(folder)
    v = spec.trained_on["version"]
    assert v in (done[-1], done[-1] + 1), f"version {v} after committing {done}"
    assert loaded.clip.logit_scale.item() == v
    assert bool((loaded.clip.text_projection == v).all())
    assert bool((next(loaded.head.parameters()) == v).all())
    numbered(model, v)  # every other tensor is the model's own
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert_hidden_temporaries(folder)
    print(f"save_pretrained killed after committing {done[-1]}; the folder holds version {v}")
    save_pretrained(loaded, folder, replace(spec, trained_on={"version": 1000}))
    assert leftovers(folder) == [] and {p.name for p in folder.iterdir()} == {CONFIG_NAME, WEIGHTS_NAME}
    again, spec = from_pretrained(folder)
    assert spec.trained_on["version"] == 1000
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), again.state_dict().values()))


# ----------------------------------------------------------------------------- write_folder


def test_write_folder_creates_and_replaces(tmp_path):
    folder = tmp_path / "deep" / "er" / "model"  # parents are made
    assert write_folder(folder, fill_for(1)) == folder
    assert version_of(folder) == 1 and leftovers(folder) == []
    (folder / "extra.txt").write_text("only in version 1")
    write_folder(folder, fill_for(2))  # the new folder replaces the old one whole: no extra.txt
    assert version_of(folder) == 2 and leftovers(folder) == []


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_write_folder_fill_raising_leaves_the_old_folder(tmp_path, error):
    folder = new_folder(tmp_path, v=1)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fill(tmp: Path) -> None:
        fill_for(2)(tmp)
        raise error("fill failed half-way")

    with pytest.raises(error, match="half-way"):
        write_folder(folder, fill)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert version_of(folder) == 1 and leftovers(folder) == []
    new = folder.parent / "never"
    with pytest.raises(error):
        write_folder(new, fill)
    assert not new.exists() and leftovers(folder) == []


def test_temp_folder_and_commit_folder(tmp_path):
    """The collective writers' pair: temp_folder clears stale temporaries, commit_folder swaps."""
    folder = new_folder(tmp_path, v=1)
    stale_dir = folder.parent / ".model.tmp-stale1"
    stale_dir.mkdir()
    (stale_dir / "x").write_text("killed writer")
    (folder.parent / ".model.tmp-stale2").write_text("killed writer")
    other = folder.parent / ".other.tmp-keep"  # another path's temporary is not touched
    other.write_text("not mine")
    tmp = temp_folder(folder)
    assert tmp.is_dir() and list(tmp.iterdir()) == [] and tmp.name.startswith(".model.tmp-")
    assert {p.name for p in leftovers(folder)} == {".other.tmp-keep", tmp.name}
    fill_for(2)(tmp)
    assert version_of(folder) == 1  # nothing visible until the commit
    assert commit_folder(tmp, folder) == folder
    assert version_of(folder) == 2 and leftovers(folder) == [other]
    fresh = folder.parent / "fresh"  # committing to a path that does not exist yet
    tmp = temp_folder(fresh)
    fill_for(3)(tmp)
    commit_folder(tmp, fresh)
    assert version_of(fresh) == 3 and not tmp.exists()


def test_fallback_replaces_the_folder(tmp_path, monkeypatch):
    calls = []

    def no_exchange(a, b):
        calls.append((a, b))
        return False

    monkeypatch.setattr(atomic, "_exchange", no_exchange)
    folder = new_folder(tmp_path, v=1)  # the first write renames, no swap needed
    assert calls == []
    (folder / "extra.txt").write_text("only in version 1")
    write_folder(folder, fill_for(2))
    assert len(calls) == 1 and calls[0][1] == folder
    assert version_of(folder) == 2 and leftovers(folder) == []
    write_folder(folder, fill_for(3))
    assert len(calls) == 2 and version_of(folder) == 3 and leftovers(folder) == []


def test_fallback_failing_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    folder = new_folder(tmp_path, v=1)
    real = os.replace

    def replace(src, dst):
        if Path(dst) == folder and ".tmp-" in Path(src).name:  # the new folder cannot come in
            raise OSError("disk trouble")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk trouble"):
        write_folder(folder, fill_for(2))
    monkeypatch.setattr(os, "replace", real)
    assert version_of(folder) == 1 and leftovers(folder) == []


def test_simulated_fallback_kill_is_repaired_for_a_name_with_glob_characters(tmp_path):
    """The state a kill between the fallback's renames leaves, built by hand for ``run[1]`` beside a
    ``run1`` whose own writer was killed: repairing ``run[1]`` restores its own old folder and
    touches nothing of ``run1``."""
    folder = tmp_path / "run[1]"
    write_folder(folder, fill_for(1))
    os.replace(folder, tmp_path / ".run[1].old-1a2b3c4d")
    tmp = tmp_path / ".run[1].tmp-xyz"
    tmp.mkdir()
    fill_for(2)(tmp)
    sibling = tmp_path / ".run1.old-99999999"  # run1 set aside by its own killed writer
    sibling.mkdir()
    fill_for(50)(sibling)
    (tmp_path / ".run1.tmp-abc").write_text("run1's temporary")
    clear_temporaries(folder)
    assert version_of(folder) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run1.old-99999999", ".run1.tmp-abc", "run[1]"]
    assert version_of(sibling) == 50
    write_folder(folder, fill_for(3))
    assert version_of(folder) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run1.old-99999999", ".run1.tmp-abc", "run[1]"]


def test_clear_temporaries_never_touches_the_path(tmp_path):
    folder = new_folder(tmp_path, v=4)
    (folder.parent / ".model.tmp-dead").mkdir()
    clear_temporaries(folder)
    assert version_of(folder) == 4 and leftovers(folder) == []
    clear_temporaries(tmp_path / "nothing-here")  # nothing to do is no error
    file = tmp_path / "f.txt"
    write_file(file, "keep")
    (tmp_path / ".f.txt.tmp-dead").write_text("dead")
    clear_temporaries(file)
    assert file.read_text() == "keep" and not (tmp_path / ".f.txt.tmp-dead").exists()


# ----------------------------------------------------------------------------- write_file / write_json


def test_write_file_content_kinds(tmp_path):
    path = tmp_path / "a" / "b" / "f"  # parents are made
    assert write_file(path, b"\x00\x01bytes\xff") == path
    assert path.read_bytes() == b"\x00\x01bytes\xff"
    write_file(path, "text é€\n")
    assert path.read_bytes() == "text é€\n".encode("utf-8")
    write_file(path, bytearray(b"array"))
    assert path.read_bytes() == b"array"
    write_file(path, memoryview(b"view"))
    assert path.read_bytes() == b"view"
    seen = []

    def writer(tmp: Path) -> None:
        seen.append(tmp)
        assert tmp.parent == path.parent and tmp.name.startswith(".f.tmp-") and tmp.read_bytes() == b""
        with open(tmp, "wb") as f:  # a writer that wants a file name (np.save of a name would add .npy)
            np.save(f, np.arange(3))
    write_file(path, writer)
    assert len(seen) == 1 and not seen[0].exists()
    with path.open("rb") as f:
        assert np.load(f).tolist() == [0, 1, 2]
    write_file(path, b"")
    assert path.read_bytes() == b""
    assert [p.name for p in path.parent.iterdir()] == ["f"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_write_file_failing_callable_leaves_the_old_file(tmp_path, error):
    path = tmp_path / "f.bin"
    write_file(path, b"old content")

    def writer(tmp: Path) -> None:
        tmp.write_bytes(b"half of the new")
        raise error("writer died")

    with pytest.raises(error, match="writer died"):
        write_file(path, writer)
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    with pytest.raises(error):
        write_file(tmp_path / "new.bin", writer)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_write_json(tmp_path):
    path = tmp_path / "m.json"
    obj = {"b": [1, 2.5, None], "a": "é"}
    assert write_json(path, obj) == path
    assert path.read_text() == json.dumps(obj, indent=2) + "\n"
    with pytest.raises(TypeError):
        write_json(path, {"x": object()})  # not JSON: fails before the file is touched
    assert json.loads(path.read_text()) == obj
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_permissions_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        f1 = write_file(tmp_path / "bytes", b"x")
        f2 = write_file(tmp_path / "callable", lambda tmp: tmp.write_bytes(b"y"))  # rewrites the temporary
        f3 = write_json(tmp_path / "j.json", [1])
        write_file(f1, b"again")  # a rewrite gets the same
        folder = write_folder(tmp_path / "folder", lambda tmp: (tmp / "inside").write_text("z"))
        write_folder(folder, lambda tmp: (tmp / "inside").write_text("z2"))
        private = write_folder(tmp_path / "private", _private_fill)  # as safetensors writes (0600)
        tmp = temp_folder(tmp_path / "collective")
        after = os.umask(mask)
    finally:
        os.umask(old)
    assert after == mask  # the writers leave the umask as they found it
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    for f in (f1, f2, f3):
        assert mode(f) == 0o666 & ~mask, f"{f.name}: {oct(mode(f))}"
    assert mode(folder) == 0o777 & ~mask and mode(tmp) == 0o777 & ~mask
    assert mode(folder / "inside") == 0o666 & ~mask
    assert mode(private / "weights") == 0o666 & ~mask and mode(private / "sub") == 0o777 & ~mask
    assert mode(private / "sub" / "w2") == 0o666 & ~mask


def _private_fill(tmp: Path) -> None:
    """Files and a folder created private, as libraries like safetensors do."""
    os.close(os.open(tmp / "weights", os.O_WRONLY | os.O_CREAT, 0o600))
    (tmp / "sub").mkdir(mode=0o700)
    os.close(os.open(tmp / "sub" / "w2", os.O_WRONLY | os.O_CREAT, 0o600))
