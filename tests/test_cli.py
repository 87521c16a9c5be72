"""`vcap` help texts and config errors (no heavy work)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vcap_toolkit.cli.main import main

COMMANDS = ["pretrain", "eval-retrieval", "extract", "train", "evaluate", "caption", "classify", "eval-classify",
            "index", "search", "score", "report", "serve", "interpolate", "demo"]


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in COMMANDS + ["data"]:
        assert cmd in out


# The contract's spellings (DESIGN.md: what users and checks type) for each command.
CONTRACT = {
    "data check": ["--config", "--probe"], "pretrain": ["--config", "--output", "--resume"],
    "eval-retrieval": ["--model", "--config", "--split", "--dsl", "--output"],
    "extract": ["--model", "--config", "--output", "--split"],
    "train": ["--config", "--features", "--output", "--resume", "--init-from"],
    "evaluate": ["--model", "--config", "--features", "--split", "--output"],
    "caption": ["--model", "--beam", "--json"], "score": ["--predictions", "--references"],
    "demo": ["--output", "--quick"],
    "classify": ["--model", "--labels", "--template", "--top", "--json"],
    "eval-classify": ["--model", "--config", "--split", "--output"],
    "index": ["--model", "--output"], "search": ["--video", "--top", "--json"],
    "evaluate --report": ["--report"], "report": ["--output"],
    "serve": ["--caption-model", "--retrieval-model", "--index", "--port", "--host"],
    "interpolate": ["--base", "--finetuned", "--alpha", "--output"],
}


@pytest.mark.parametrize("cmd", sorted(CONTRACT))
def test_each_command_takes_the_contract_options(cmd, capsys):
    words = [w for w in cmd.split() if not w.startswith("--")]
    with pytest.raises(SystemExit) as e:
        main(words + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: vcap {' '.join(words)}")
    missing = [opt for opt in CONTRACT[cmd] if opt not in out]
    assert not missing, f"vcap {cmd} --help lacks {missing}"


def test_config_error_exits_2_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  formatt: jsonl\n")
    assert main(["data", "check", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vcap: config error: {cfg}: unknown config key 'data.formatt'; valid keys here: format, annotations, "
                   "videos, split_files, train_split, val_split, test_split, video_ext, columns, hf_subset, labels_file, "
                   "novel_labels"]


def test_console_script_is_installed():
    """The `vcap` entry point pip wrote next to this interpreter (what users type), not the module."""
    vcap = Path(sys.executable).with_name("vcap")
    assert vcap.is_file(), f"no vcap console script beside {sys.executable}; is the package installed?"
    out = subprocess.run([str(vcap), "score", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: vcap score")
    out = subprocess.run([str(vcap), "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice: 'no-such-command'" in out.stderr


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_beam_and_batch_sizes_must_be_at_least_one(value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["caption", "x.mp4", "--model", "m", "--beam", value])
    assert e.value.code == 2 and f"'{value}' is not a whole number >= 1" in capsys.readouterr().err
