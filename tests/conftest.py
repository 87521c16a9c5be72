"""Shared fixtures: the real test material in ../shared/data (skipped, with the reason, if absent)."""

from __future__ import annotations

import os
from pathlib import Path

# See vcap_toolkit/cli/main.py: spinning OpenMP threads crawl beside DataLoader workers on a 2-core CPU.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (its tiny models run faster so beside DataLoader workers, and
    results do not depend on the machine's thread count)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real clips, annotations and metric references nobody on the team wrote."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test material not found at {SHARED_DATA} (see DESIGN.md: ../shared/data)")
    return SHARED_DATA


def pytest_collection_modifyitems(config, items) -> None:
    """Start the non-editable install (and the quick demo from it, when that test is selected) in
    the background now: minutes of subprocess work that then overlap the rest of the suite. (Under
    pytest-xdist the controller has started them already, see ``pytest_sessionstart``; every
    worker collects every test, and must not start them again.)"""
    if hasattr(config, "workerinput"):
        return
    wanted = [item for item in items if item.nodeid.startswith("tests/test_install.py::")]
    if wanted:
        import test_install

        test_install.start_in_background(demo=any("test_demo_quick" in item.nodeid for item in wanted))


def _selects_install_tests(config) -> bool:
    """Whether the command line may select tests/test_install.py (the xdist controller collects nothing)."""
    target = (ROOT / "tests" / "test_install.py").resolve()
    for arg in config.args or [str(ROOT / "tests")]:
        path = Path(config.invocation_params.dir, arg.split("::")[0]).resolve()
        if path == target or target.is_relative_to(path):
            return True
    return False


def _keyword_may_select_install_tests(keyword: str) -> bool:
    """Whether ``-k keyword`` may select a test of tests/test_install.py, judged as pytest does (a
    case-insensitive substring of a name on the test's path, or a marker) from the names the
    controller knows without collecting; True when pytest's expression parser is not importable."""
    if not keyword:
        return True
    try:
        from _pytest.mark.expression import Expression
    except ImportError:  # a pytest without it: start as before
        return True
    import test_install

    try:
        expression = Expression.compile(keyword)
    except SyntaxError:  # pytest reports a malformed -k itself, in one line
        return True
    for name in (n for n in dir(test_install) if n.startswith("test_")):
        marks = [m.name for m in getattr(getattr(test_install, name), "pytestmark", [])]
        names = [name, "test_install.py", "tests", *marks]
        if expression.evaluate(lambda word: any(word.lower() in n.lower() for n in names)):
            return True
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session) -> None:
    """The xdist controller (README's ``-n 2``) starts the install and the quick demo before the
    workers exist, and tells them (an environment variable they inherit) where the results will be."""
    config = session.config
    if hasattr(config, "workerinput") or getattr(config.option, "dist", "no") == "no":
        return
    if not _selects_install_tests(config) or not _keyword_may_select_install_tests(config.option.keyword):
        return
    import tempfile

    import test_install

    share = Path(tempfile.mkdtemp(prefix="vcap-install-share-"))
    os.environ[test_install.SHARED_ENV] = str(share)
    demo = "not slow" not in (config.option.markexpr or "").replace("  ", " ")
    test_install.start_in_background(demo=demo, share=share)
    import atexit
    import shutil

    atexit.register(shutil.rmtree, share, True)
MOTION_TINY = ["video.num_frames=4", "pretrain.batch_size=8", "pretrain.epochs=30", "run.num_workers=0",
               "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
               "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "pretrain.save_every=0", "pretrain.loss=kl"]


@pytest.fixture(scope="session")
def motion_model(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """16 generated clips whose only caption is their motion's label prompt; stage 1 trained on
    them with the KL loss (clips sharing a label are positives). Returns the model and clip -> label."""
    from caption.config import load
    from caption.demo import CONFIG_PATH
    from caption.demo import data as demo_data
    from retrieval_pretrain.stage1.train import train

    root = tmp_path_factory.mktemp("motion")
    spec = demo_data.DemoSpec(num_train=16, num_val=0, num_test=4, frames=8, size=64, seed=5, captions_per_video=1)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False, workers=1)
    rows = [json.loads(x) for x in ann.read_text().splitlines()]
    truth = {}
    for r in rows:
        r["captions"] = [f"moving {r['attributes']['motion']}"]
        truth[str(ann.parent / r["video"])] = r["captions"][0]
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load(CONFIG_PATH, [f"data.annotations={ann}", f"data.videos={ann.parent}", *MOTION_TINY])
    return train(cfg, root / "s1"), truth




def run_gloo_pair(code: str, tmp_path: Path, timeout: int = 120) -> list:
    """Run ``code`` in two fresh interpreters joined by gloo (argv: rank, init method, output file;
    each writes its JSON result there); returns the two results. Fresh interpreters, because
    forking a process whose OpenMP pool has run can hang."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(r), init, str(tmp_path / f"rank{r}.json")],
                              cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the two gloo processes did not finish within {timeout} s")
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def free_port() -> int:
    """A TCP port free on this machine now, for ``accelerate launch --main_process_port``: under
    pytest-xdist two launches at once on accelerate's default port (29500) joined each other's
    rendezvous and one crashed (a red .ci/run)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
