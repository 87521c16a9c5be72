"""Open-VCLIP's weight interpolation (issue 15, item 3): patching (``vcap interpolate``),
interpolation-regularised training (``pretrain.interpolation``) and weight averaging
(``pretrain.swa``). Tiny real open_clip CLIPs, real mp4 files, CPU only, no network.

Patching is checked at its exact ends (alpha 0 is the fine-tuned model, alpha 1 the base's CLIP,
bit for bit), at the midpoint, for the head it keeps and the architectures it refuses. Training is
checked against plain runs: weight 0 changes nothing (bit for bit), a positive weight changes the
weights, one step's gradient is the ordinary one plus lambda times the one at the interpolated
point and the step starts from the trained weights; the average is the mean of the end-of-epoch
checkpoints; a run resumed from a mid-run checkpoint ends bit-identical.
"""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from demo_clips import cli_args, make_clips
from safetensors.torch import load_file, save_file

from caption.config import load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer
from retrieval_pretrain.modeling.model_folder import from_pretrained, save_pretrained
from retrieval_pretrain.modeling.parts import build_loss, build_video_text_model
from retrieval_pretrain.stage1.interpolate import InterpolationRegulariser, interpolate_folders
from vcap_toolkit.cli.main import main

VISION = "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}"
TINY = ["video.num_frames=4", "pretrain.head_layers=1", "clip.custom.text_cfg.layers=1", VISION]
RUN = ["pretrain.batch_size=4", "run.num_workers=0", "run.log_every=1", "video.cache_frames=0", "pretrain.epochs=3",
       "pretrain.lr=1e-3", "pretrain.clip_lr=1e-3", "pretrain.save_every=0"]  # 8 videos: 2 steps an epoch


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the module's torch ops on one thread


def _model(extra: list[str] = (), seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_video_text_model(load(CONFIG_PATH, [*TINY, *extra]))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- (a) patching


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """A fine-tuned seqTransf model, a base folder of the same CLIP with a meanP head (no head
    weights) and that base's CLIP as a state-dict file and as safetensors; a CLIP of other widths."""
    root = tmp_path_factory.mktemp("patch")
    ft = save_pretrained(_model(seed=1), root / "finetuned", replace(_model(seed=1).spec, trained_on={"steps": 7}))
    base = _model(["pretrain.head=meanP", "pretrain.head_input_norm=false"], seed=2)
    save_pretrained(base, root / "base")
    torch.save(base.clip.state_dict(), root / "clip.pt")
    save_file({k: v.contiguous() for k, v in base.clip.state_dict().items()}, str(root / "clip.safetensors"))
    other = _model(["clip.custom.text_cfg.width=64", "clip.custom.embed_dim=64"], seed=3)
    save_pretrained(other, root / "other")
    torch.save(other.clip.state_dict(), root / "other.pt")
    return {"root": root, "finetuned": ft, "base": root / "base", "pt": root / "clip.pt",
            "safetensors": root / "clip.safetensors", "other": root / "other", "other_pt": root / "other.pt"}


def test_alpha_ends_are_exact_and_the_midpoint_is_the_mean(folders):
    root, ft, base = folders["root"], _weights(folders["finetuned"]), _weights(folders["base"])
    interpolate_folders(folders["base"], folders["finetuned"], 0.0, root / "a0")
    assert _same(_weights(root / "a0"), ft)  # alpha 0: the fine-tuned weights, bit for bit

    interpolate_folders(folders["base"], folders["finetuned"], 1.0, root / "a1")
    a1 = _weights(root / "a1")
    head = [k for k in ft if not k.startswith("clip.")]
    assert head and all(k not in base for k in head)  # seqTransf weights only the fine-tuned model has
    assert all(torch.equal(a1[k], base[k]) for k in ft if k.startswith("clip."))  # alpha 1: the base's CLIP
    assert all(torch.equal(a1[k], ft[k]) for k in head)  # the head is kept

    summary = interpolate_folders(folders["base"], folders["finetuned"], 0.5, root / "a5")
    a5 = _weights(root / "a5")
    assert summary["kept_tensors"] == len(head) and summary["interpolated_tensors"] == len(ft) - len(head)
    for k in ft:
        want = 0.5 * base[k] + 0.5 * ft[k] if k.startswith("clip.") else ft[k]
        assert torch.equal(a5[k], want), k
    info = json.loads((root / "a5" / "config.json").read_text())
    assert info["interpolation"] == {"base": str(folders["base"]), "finetuned": str(folders["finetuned"]),
                                     "alpha": 0.5}
    assert info["trained_on"] == {"steps": 7} and info["head"] == "seqTransf"  # the fine-tuned folder's config
    model, _ = from_pretrained(root / "a5")  # a normal stage-1 folder
    assert _same({k: v for k, v in model.state_dict().items() if k in a5}, a5)

    for source in ("pt", "safetensors"):  # the CLIP it started from, as a checkpoint file: the same model
        interpolate_folders(folders[source], folders["finetuned"], 0.5, root / f"a5_{source}")
        assert _same(_weights(root / f"a5_{source}"), a5)


def test_another_architecture_or_a_bad_alpha_is_refused(folders):
    root = folders["root"]
    for source in ("other", "other_pt"):
        with pytest.raises(ConfigError, match="another architecture") as e:
            interpolate_folders(folders[source], folders["finetuned"], 0.5, root / "bad")
        assert "positional_embedding is [16, 64], not [16, 128]" in str(e.value)  # names what differs
    with pytest.raises(ConfigError, match="neither a stage-1 model folder"):
        interpolate_folders(root / "nowhere.pt", folders["finetuned"], 0.5, root / "bad")
    for alpha in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match=r"in \[0, 1\]"):
            interpolate_folders(folders["base"], folders["finetuned"], alpha, root / "bad")
    with pytest.raises(ConfigError, match="itself"):
        interpolate_folders(folders["base"], folders["finetuned"], 0.5, folders["finetuned"])
    assert not (root / "bad").exists()


# ----------------------------------------------------------------------------- (b) one interpolated step


def test_a_step_adds_lambda_times_the_gradient_at_the_interpolated_point_and_starts_from_theta():
    from accelerate import Accelerator

    cfg = load(CONFIG_PATH, TINY)
    model, base = _model(seed=1).train(), _model(seed=2).state_dict()
    loss_fn, tokens = build_loss(cfg), build_tokenizer(cfg)(["a red square", "a blue circle", "a dog", "a cat"])
    frames = torch.randn(4, 4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(4, 4, dtype=torch.bool)
    loss_of = lambda net: loss_fn(net(frames=frames, mask=mask, tokens=tokens), tokens)  # noqa: E731
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = copy.deepcopy(model)

    acc = Accelerator(cpu=True)
    reg = InterpolationRegulariser(model, base, 0.2, 0.6, 0.5, seed=11)
    reg.backward(acc, model, lambda: loss_of(model))
    assert all(torch.equal(p, theta[n]) for n, p in model.named_parameters())  # theta is back
    loss_of(model).backward()

    ratio = 0.2 + 0.4 * float(torch.rand((), generator=torch.Generator().manual_seed(11)))
    at_theta = copy.deepcopy(reference)
    loss_of(at_theta).backward()
    with torch.no_grad():  # the interpolated point, built apart: CLIP's tensors only
        for n, p in reference.named_parameters():
            if n.startswith("clip.") and p.requires_grad:
                p.copy_(base[n] * ratio + p * (1 - ratio))
    (loss_of(reference) * 0.5).backward()
    interpolated = dict(reference.named_parameters())
    for n, p in model.named_parameters():
        want = dict(at_theta.named_parameters())[n].grad + interpolated[n].grad
        assert torch.allclose(p.grad, want, rtol=1e-6, atol=1e-9), n

    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for n, p in model.named_parameters():  # the step went from theta, not from the interpolated point
        assert torch.equal(p.detach(), theta[n].add(p.grad, alpha=-0.1)), n
    assert any(not torch.equal(p.detach(), interpolated[n].detach()) for n, p in model.named_parameters())


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return make_clips(tmp_path_factory.mktemp("interp_clips"))


def _args(data: Path, extra: list[str] = ()) -> list[str]:
    return cli_args(data, *TINY, *RUN, *extra)


OPEN_VCLIP = ["pretrain.interpolation.enabled=true", "pretrain.interpolation.low=0.1",
              "pretrain.interpolation.high=0.6", "pretrain.swa.enabled=true", "pretrain.swa.start_epoch=0",
              "pretrain.save_every=1", "pretrain.keep_checkpoints=10"]


@pytest.fixture(scope="module")
def runs(clips, tmp_path_factory) -> dict[str, Path]:
    """Three epochs each: a plain run; with interpolation at weight 0; with interpolation (weight
    0.5) and weight averaging, a checkpoint after every step."""
    root = tmp_path_factory.mktemp("interp_runs")
    plans = {"plain": [], "weight0": ["pretrain.interpolation.enabled=true", "pretrain.interpolation.weight=0"],
             "open_vclip": OPEN_VCLIP}
    for name, extra in plans.items():
        assert main(["pretrain", "--output", str(root / name), *_args(clips, extra)]) == 0, name
    return {name: root / name for name in plans}


def test_weight_zero_is_a_plain_run_bit_for_bit(runs):
    assert _same(_weights(runs["weight0"] / "model"), _weights(runs["plain"] / "model"))
    log = [json.loads(x) for x in (runs["weight0"] / "log.jsonl").read_text().splitlines()]
    assert all("loss_interp" in r for r in log if "loss" in r)


def test_interpolation_changes_what_is_trained(runs):
    plain, last = _weights(runs["plain"] / "model"), _weights(runs["open_vclip"] / "model_last")
    assert plain.keys() == last.keys()
    assert not any(torch.equal(plain[k], last[k]) for k in plain if k.startswith("clip.visual"))


def test_swa_is_the_mean_of_the_end_of_epoch_weights(runs):
    run = runs["open_vclip"]
    ends = [load_file(run / "checkpoints" / f"step_{s}" / "model.safetensors") for s in (2, 4, 6)]  # 2 steps/epoch
    average = _weights(run / "model")
    for k, v in average.items():
        mean = (ends[0][k].double() + ends[1][k].double() + ends[2][k].double()) / 3
        assert torch.equal(v, mean.to(v.dtype)), k
    assert _same(_weights(run / "model_last"), ends[2])  # the plain last-epoch model is kept
    assert not _same(average, ends[2])
    info = json.loads((run / "model" / "config.json").read_text())
    assert info["swa"] == {"start_epoch": 0, "epochs_averaged": 3}


def test_resumed_mid_run_ends_bit_identical(runs, clips, tmp_path):
    """Resume from the checkpoint after step 3 (mid-epoch 1: one epoch averaged, three ratios
    drawn): the same average, last model and log as the uninterrupted run."""
    straight, cut = runs["open_vclip"], tmp_path / "cut"
    shutil.copytree(straight, cut)
    for name in ("model", "model_last", "checkpoints/step_4", "checkpoints/step_5", "checkpoints/step_6"):
        shutil.rmtree(cut / name)
    assert main(["pretrain", "--output", str(cut), "--resume", *_args(clips, OPEN_VCLIP)]) == 0
    for folder in ("model", "model_last"):
        assert _same(_weights(cut / folder), _weights(straight / folder)), folder

    def losses(run: Path) -> list[tuple[int, float, float]]:
        return [(r["step"], r["loss"], r["loss_interp"])
                for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]

    assert losses(cut) == losses(straight) and len(losses(cut)) == 6


def test_cli_interpolate_end_to_end(runs, clips, folders, tmp_path, capsys):
    finetuned, out = runs["plain"] / "model", tmp_path / "patched"
    start = _model().clip.state_dict()  # a CLIP of the run's architecture, as a state-dict file
    torch.save(start, tmp_path / "start.pt")
    capsys.readouterr()
    assert main(["interpolate", "--base", str(tmp_path / "start.pt"), "--finetuned", str(finetuned),
                 "--alpha", "0.5", "--output", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["alpha"] == 0.5 and summary["output"] == str(out) and summary["kept_tensors"] > 0
    assert main(["eval-retrieval", "--model", str(out), "--split", "train", "--output", str(tmp_path / "r"),
                 *_args(clips)]) == 0  # a normal stage-1 model folder
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["videos"] == 8

    assert main(["interpolate", "--base", str(folders["other_pt"]), "--finetuned", str(finetuned),
                 "--alpha", "0.5", "--output", str(tmp_path / "bad")]) == 2
    assert "another architecture" in capsys.readouterr().err
    assert main(["interpolate", "--base", str(tmp_path / "start.pt"), "--finetuned", str(finetuned),
                 "--alpha", "2", "--output", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()


def test_impossible_settings_are_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="pretrain.interpolation.low=0.5 is above"):
        load(CONFIG_PATH, ["pretrain.interpolation.low=0.5", "pretrain.interpolation.high=0.2"])
    with pytest.raises(ConfigError, match="no epoch would be averaged"):
        load(CONFIG_PATH, ["pretrain.epochs=3", "pretrain.swa.enabled=true", "pretrain.swa.start_epoch=3"])
    with pytest.raises(ConfigError, match=r"pretrain.interpolation.high: 1.5 must be in \[0.0, 1.0\]"):
        load(CONFIG_PATH, ["pretrain.interpolation.high=1.5"])


def test_interpolate_refuses_an_output_folder_holding_other_files(tmp_path):
    """The output folder is replaced whole, so a folder of the user's other files is refused, untouched."""
    from retrieval_pretrain.foundation.errors import ConfigError
    from retrieval_pretrain.stage1.interpolate import interpolate_folders

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holding other files"):
        interpolate_folders(tmp_path / "base", tmp_path / "ft", 0.5, out)
    assert (out / "notes.txt").read_text() == "keep me"
