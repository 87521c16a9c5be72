"""Impossible values are refused where they enter, before any work (issue 25, class 4 and the
smaller items): values that scale memory against this machine, negative worker counts, an infinite
upload limit, a web parameter that only looks like a number, an empty search, and the default
number of loader workers against the CPUs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.foundation.machine import (
    available_cpus,
    default_workers,
    memory_bytes,
)
from retrieval_pretrain.stage1 import extract
from retrieval_pretrain.stage1.config import RunConfig, check_batch_memory
from vcap_toolkit.cli.main import main
from vcap_toolkit.cli.parser import build_parser


def _last_line(capsys: pytest.CaptureFixture) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_num_frames_that_cannot_fit_in_memory_is_refused_before_pretrain_starts(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["pretrain", "--output", str(out), "--config", str(CONFIG_PATH), "video.num_frames=4096",
                 "pretrain.batch_size=1000"])  # 4096: the most a config takes (video.num_frames' range)
    line = _last_line(capsys)
    assert code == ConfigError.exit_code, line
    assert line.startswith("vcap: config error: video.num_frames=4096: a batch of 1000 videos") and "GB" in line, line
    assert "lower video.num_frames to at most " in line and "(now 4096)" in line and "pretrain.batch_size" in line
    assert not out.exists()  # no folder written, no model built


def test_batch_memory_estimate_counts_frames_pixels_and_batch():
    check_batch_memory(12, 224, 8, "--batch-size", "video.num_frames")  # 58 MB: fine
    frames = memory_bytes() // (3 * 224 * 224 * 4) + 1  # one video alone takes all the memory
    with pytest.raises(ConfigError, match=rf"video.num_frames={frames}: a batch of 1 video x .*GB.*"
                                          rf"lower video.num_frames to at most \d+ \(now {frames}\)$"):
        check_batch_memory(frames, 224, 1, "--batch-size", "video.num_frames")


def test_extract_refuses_a_batch_that_cannot_fit_before_its_folder_is_made(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "read_spec", lambda folder: SimpleNamespace(num_frames=12, image_size=224))
    huge = memory_bytes() // (12 * 3 * 224 * 224 * 4) + 1
    with pytest.raises(ConfigError, match=rf"--batch-size={huge}: a batch of {huge} videos.*lower --batch-size to at "
                                          rf"most \d+ \(now {huge}\)$"):
        extract.extract_features(tmp_path / "model", load(CONFIG_PATH), tmp_path / "feats", batch_size=huge)
    assert not (tmp_path / "feats").exists()


@pytest.mark.parametrize("argv, flag", [
    (["index", "v.mp4", "--model", "m", "--output", "o", "--num-workers", "-1"], "--num-workers"),
    (["index", "v.mp4", "--model", "m", "--output", "o", "--num-workers", "two"], "--num-workers"),
    (["serve", "--caption-model", "m", "--max-upload-mb", "inf"], "--max-upload-mb"),
    (["serve", "--caption-model", "m", "--max-upload-mb", "nan"], "--max-upload-mb"),
    (["serve", "--caption-model", "m", "--max-upload-mb", "0"], "--max-upload-mb"),
    (["serve", "--caption-model", "m", "--max-upload-mb", "1e305"], "--max-upload-mb"),
])
def test_impossible_numbers_on_the_command_line_are_usage_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_an_empty_search_is_refused_as_the_page_refuses_it(tmp_path, capsys):
    for query in ("", "   "):
        code = main(["search", str(tmp_path / "no_index"), query])
        line = _last_line(capsys)
        assert code == ConfigError.exit_code, line
        assert line == "vcap: config error: vcap search: give a sentence to search for (QUERY)", line
    from vcap_toolkit.jobs.search import search  # deferred: torch, only for this check

    with pytest.raises(ConfigError, match="give a sentence"):  # the Python API refuses it too, before the index
        search(tmp_path / "no_index", torch.device("cpu"), text=" ")


def test_a_number_the_web_api_cannot_read_is_a_400_not_a_500():
    pytest.importorskip("flask", reason="the web extra is not installed")
    from vcap_toolkit.web.serve import create_app  # deferred: optional (the web extra)

    models = SimpleNamespace(index=object(), search=lambda text, top: ([], 0.0))
    client = create_app(models, SimpleNamespace(roots=[]), 1).test_client()
    assert client.get("/api/search?q=cat&top=3").status_code == 200
    for top in ("\u00b2", "\u0663", "3.0", "-1", "+3", " 3"):
        reply = client.get("/api/search", query_string={"q": "cat", "top": top})
        assert reply.status_code == 400, (top, reply.status_code)
        assert "top=" in reply.get_json()["error"]


def test_default_loader_workers_are_capped_by_the_cpus_an_explicit_value_is_kept():
    cpus = available_cpus()
    assert default_workers(4) == min(4, cpus) and default_workers(0) == 0
    assert RunConfig().num_workers == min(4, cpus)
    assert load(None).run.num_workers == min(4, cpus)
    assert load(None, ["run.num_workers=7"]).run.num_workers == 7
    args = build_parser().parse_args(["index", "v.mp4", "--model", "m", "--output", "o"])
    assert args.num_workers == min(2, cpus)


@pytest.mark.parametrize("host", ["999.1.1.1", "a" * 300, "x\x00y"])
def test_a_host_nobody_can_listen_on_is_one_line_before_the_models_load(host, tmp_path, capsys):
    """A hostile round's find: ``vcap serve --host 999.1.1.1`` was waitress's ValueError, a traceback,
    after the models had loaded (here the model folder does not even exist: the host is checked first)."""
    pytest.importorskip("flask", reason="the web extra is not installed")
    code = main(["serve", "--caption-model", str(tmp_path / "no_model"), "--host", host, "--port", "0"])
    line = _last_line(capsys)
    assert code == ConfigError.exit_code, line
    assert line.startswith(f"vcap: config error: --host {host!r}: not an address"), line


def test_a_beam_past_the_widest_is_refused_everywhere_it_enters(tmp_path, capsys):
    """A hostile round's find: ``vcap caption --beam 100000`` ran past 5 minutes on one short video."""
    from decoders.config import MAX_BEAMS, DecodeConfig

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["caption", "v.mp4", "--model", "m", "--beam", str(MAX_BEAMS + 1)])
    assert exit_.value.code == 2 and f"at most {MAX_BEAMS}" in capsys.readouterr().err
    assert build_parser().parse_args(["caption", "v.mp4", "--model", "m", "--beam", str(MAX_BEAMS)]).beam == MAX_BEAMS
    with pytest.raises(ValueError, match=rf"decode.num_beams: 100000 must be in \[1, {MAX_BEAMS}\]"):
        DecodeConfig.from_saved({"num_beams": 100000})
    code = main(["evaluate", "--model", str(tmp_path / "m"), "--config", str(CONFIG_PATH), "decode.num_beams=100000"])
    assert code == ConfigError.exit_code and "decode.num_beams: 100000 must be in [1, 100]" in _last_line(capsys)


def test_more_frames_than_any_run_samples_is_a_config_error(capsys):
    """A hostile round's find: video.num_frames=1e20 was accepted, and data check --probe then called
    every good video unreadable instead of naming the setting."""
    code = main(["data", "check", "--config", str(CONFIG_PATH), "video.num_frames=100000000000000000000"])
    line = _last_line(capsys)
    assert code == ConfigError.exit_code and "video.num_frames: 100000000000000000000 must be in [1, 4096]" in line, line


def test_a_stage1_model_given_for_a_caption_model_is_named_as_one(tmp_path, capsys):
    """A hostile round's find: a stage-1 folder as ``vcap caption --model`` printed 200 lines of
    transformers' output and then called its weights a mismatch of its config."""
    stage1 = tmp_path / "s1"
    stage1.mkdir()
    (stage1 / "config.json").write_text('{"format": "vcap-video-text-model", "format_version": 1}')
    (stage1 / "model.safetensors").write_bytes(b"\0" * 16)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0")
    code = main(["caption", str(video), "--model", str(stage1)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 5 and len(err) == 1, err
    assert err[0].startswith(f"vcap: model folder error: {stage1} is a stage-1 (video-text retrieval) model folder, "
                             "not a caption model"), err


def test_resume_into_a_folder_without_a_run_says_it_starts_a_new_one(tmp_path, capsys):
    """A hostile round called this silent: ``--resume`` into a folder holding no run trains from step 0.
    It is the documented behaviour (a preemptible job may always pass --resume); the line says so."""
    from retrieval_pretrain.foundation.checkpoints import load_checkpoint

    assert load_checkpoint(None, tmp_path / "run") is None
    err = capsys.readouterr().err
    assert err.startswith(f"--resume: {tmp_path / 'run'} holds no run to continue") and "from step 0" in err
