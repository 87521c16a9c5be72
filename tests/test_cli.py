"""`vcap` help texts and config errors (no heavy work)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from caption.cli import main

COMMANDS = ["pretrain", "eval-retrieval", "extract", "train", "evaluate", "caption", "score", "demo"]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS + ["data"]:
        assert cmd in out


@pytest.mark.parametrize("cmd", COMMANDS + ["data check"])
def test_each_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main(cmd.split() + ["--help"])
    assert e.value.code == 0
    assert "usage: vcap" in capsys.readouterr().out


def test_config_error_exits_2_with_message(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  formatt: jsonl\n")
    assert main(["data", "check", "--config", str(cfg)]) == 2
    assert "unknown config key 'data.formatt'" in capsys.readouterr().err


def test_console_script_is_installed():
    """The `vcap` entry point pip wrote next to this interpreter (what users type), not the module."""
    vcap = Path(sys.executable).with_name("vcap")
    assert vcap.is_file(), f"no vcap console script beside {sys.executable}; is the package installed?"
    out = subprocess.run([str(vcap), "score", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: vcap score")
    out = subprocess.run([str(vcap), "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice: 'no-such-command'" in out.stderr
