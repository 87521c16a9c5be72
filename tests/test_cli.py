"""`vcap` help texts and config errors (no heavy work)."""

from __future__ import annotations

import subprocess
import sys

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
    out = subprocess.run([sys.executable, "-m", "caption.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "vcap" in out.stdout
