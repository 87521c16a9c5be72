"""``benchmarks/gpu_check.py`` (issue 29) runs on the CPU, so it is known to work before a GPU exists:
``--device cpu --quick`` runs every part for real (vcap pretrain per worker count, the ViT-B/32 tower,
kill and resume, extract, train, caption, index, search) and writes every figure, positive and
finite, with the resume check passed bit-identically. The readers it is built on are held to numbers
on small hand-made inputs: the step log's split into data wait and compute, the weight comparison
that decides the resume check (which must fail when a resumed run redid its step differently).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from benchmarks import gpu_check
from benchmarks.gpu_check_parts import step_rates, weight_difference
from caption.config import load
from vcap_toolkit.cli.parser import build_parser

PER_WORKERS = ("videos_per_s", "data_wait_share", "peak_mem_mb")
FIGURES = {f"stage1_workers_{w}.{k}" for w in (0, 2) for k in PER_WORKERS} | {
    "vit_b32.fwd_bwd_videos_per_s", "vit_b32.peak_mem_mb", "extract.videos_per_s", "extract.peak_mem_mb",
    "stage2.steps_per_s", "stage2.peak_mem_mb", "caption.videos_per_s", "caption.peak_mem_mb",
    "index.videos_per_s", "index.peak_mem_mb", "search.queries_per_s", "search.command_s", "search.peak_mem_mb",
    "peak_mem_mb"}


@pytest.fixture(scope="module")
def quick_cpu(tmp_path_factory) -> tuple[int, dict]:
    out = tmp_path_factory.mktemp("gpu_check")
    rc = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out)])
    return rc, json.loads((out / "gpu_check.json").read_text())


def test_quick_cpu_check_has_every_figure_and_an_exact_resume(quick_cpu):
    rc, report = quick_cpu
    failed = {k: c["detail"] for k, c in report["checks"].items() if not c["passed"]}
    assert rc == 0 and report["passed"] and report["finished"], failed
    figures = report["figures"]
    assert FIGURES <= figures.keys(), FIGURES - figures.keys()
    bad = {k: v for k, v in figures.items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)}
    assert not bad
    assert all(figures[f"stage1_workers_{w}.data_wait_share"] < 1 for w in (0, 2))
    assert figures["peak_mem_mb"] == max(v for k, v in figures.items() if k.endswith(".peak_mem_mb"))
    resume = report["parts"]["resume"]
    assert report["checks"]["resume"]["passed"] and resume["bit_identical"]
    assert resume["relative_difference"] == 0 and resume["tensors_differing"] == 0 and resume["tensors"] > 0
    machine = report["machine"]
    assert machine["device"] == "cpu" and machine["torch"] == torch.__version__ and machine["name"]
    assert report["settings"]["precision"] == "no" and report["settings"]["workers"] == [0, 2]
    # every training part really trained: steps logged, the first of each epoch left out of the rates
    assert all(report["parts"][f"stage1_workers_{w}"]["measured_steps"] >= 1 for w in (0, 2))
    assert report["parts"]["caption"]["videos"] == report["settings"]["sizes"]["caption_videos"]


@pytest.mark.parametrize("quick", [False, True])
def test_every_command_of_the_gpu_plan_parses_and_reads_its_config(tmp_path, quick):
    # No GPU here: what the cuda plan would run is parsed by vcap's own parser and config loader, so a
    # misspelt flag or key cannot first show on a lent GPU.
    plan = gpu_check.plan_for("cuda", quick)
    ann = tmp_path / "data" / "annotations.jsonl"
    test = [SimpleNamespace(path=tmp_path / "data" / "videos" / "a.mp4", captions=["a red circle moves left"])]
    stage1 = [["pretrain", *gpu_check.sweep_args(plan, ann, w)] for w in plan.workers]
    stage1 += [["pretrain", *gpu_check.vit_args(plan, ann)], ["pretrain", *gpu_check.resume_args(plan, ann)]]
    steps = gpu_check.pipeline_steps(plan, ann, tmp_path / "s1" / "model", tmp_path / "pipeline", test)
    assert [s["name"] for s in steps] == ["extract", "stage2", "caption", "index", "search", "queries"]
    for argv in [*stage1, *(s["argv"] for s in steps if "argv" in s)]:
        args, extra = build_parser().parse_known_args([*argv, "--output", "x"] if argv[0] == "pretrain" else argv)
        assert all("=" in e for e in extra), (argv, extra)
        if getattr(args, "config", None):
            cfg = load(args.config, [*args.overrides, *extra])
            assert (cfg.run.device, cfg.run.mixed_precision, cfg.video.cache_frames) == ("cuda", "bf16", 0)
            assert (cfg.clip.model, cfg.clip.pretrained, cfg.clip.custom) == ("ViT-B-32", None, None)
            assert cfg.video.num_frames == (plan.sizes.vit_frames if argv == stage1[-2] else 12)
            if argv[0] == "train":
                assert (cfg.caption.hidden_size, cfg.caption.num_heads, cfg.caption.ffn_size) == (512, 8, 2048)
    assert plan.workers == [0, 4, 8, 16] and plan.precision == "bf16"


def _write_log(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_step_rates_leave_out_the_first_step_of_each_epoch(tmp_path):
    log = tmp_path / "log.jsonl"
    _write_log(log, [{"step": 1, "epoch": 0, "loss": 1.0, "data_s": 5.0, "compute_s": 9.0},   # start-up
                     {"step": 2, "epoch": 0, "loss": 1.0, "data_s": 0.25, "compute_s": 0.75},
                     {"step": 3, "epoch": 1, "loss": 1.0, "data_s": 3.0, "compute_s": 1.0},   # workers restart
                     {"step": 4, "epoch": 1, "loss": 1.0, "data_s": 0.75, "compute_s": 1.25},
                     {"epoch": 1, "step": 4, "val_loss": 2.0}])                                # not a step
    r = step_rates(log, batch=8)
    assert (r["steps"], r["measured_steps"]) == (4, 2)
    assert r["steps_per_s"] == pytest.approx(2 / 3.0)
    assert r["videos_per_s"] == pytest.approx(16 / 3.0)
    assert r["data_wait_share"] == pytest.approx(1.0 / 3.0)
    assert r["compute_videos_per_s"] == pytest.approx(16 / 2.0)
    assert r["epoch_start_wait_s"] == 3.0
    assert step_rates(tmp_path / "missing.jsonl", 8) == {"steps": 0, "measured_steps": 0}


def _run(folder, weights, step_1=None):
    (folder / "model").mkdir(parents=True)
    save_file(weights, str(folder / "model" / "model.safetensors"))
    if step_1 is not None:
        (folder / "checkpoints" / "step_1").mkdir(parents=True)
        save_file(step_1, str(folder / "checkpoints" / "step_1" / "model.safetensors"))


def test_weight_difference_is_relative_to_the_resumed_step(tmp_path):
    before = {"w": torch.zeros(4), "b": torch.ones(2)}
    after = {"w": torch.tensor([0.3, 0.0, 0.4, 0.0]), "b": torch.ones(2)}  # the step moved w by 0.5 (L2)
    _run(tmp_path / "straight", after, before)
    _run(tmp_path / "same", {k: v.clone() for k, v in after.items()})
    _run(tmp_path / "off", {"w": after["w"] + torch.tensor([0.0, 0.05, 0.0, 0.0]), "b": torch.ones(2)})
    same = weight_difference(tmp_path / "straight", tmp_path / "same")
    assert same == {"bit_identical": True, "relative_difference": 0.0, "max_abs_difference": 0.0,
                    "tensors_differing": 0, "tensors": 2}
    off = weight_difference(tmp_path / "straight", tmp_path / "off")
    assert not off["bit_identical"] and off["tensors_differing"] == 1
    assert off["relative_difference"] == pytest.approx(0.1, rel=1e-6)  # 0.05 of a 0.5 step
    assert off["max_abs_difference"] == pytest.approx(0.05, rel=1e-6)


def test_a_missing_gpu_or_bad_worker_list_is_one_line(capsys):
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda", "--out", "unused"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vcap: config") and "--device cpu" in err[0]
    with pytest.raises(SystemExit) as e:
        gpu_check.parse_args(["--workers", "0,x"])
    assert e.value.code == 2
    assert "decode-worker counts" in capsys.readouterr().err
