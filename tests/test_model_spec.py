"""The typed description of a trained stage-1 model (``modeling.spec.ModelSpec``): config.json
round trips, the checked reader's refusals, and the one builder used for training and loading."""

from __future__ import annotations

import functools
import json
from dataclasses import replace

import pytest
import torch

from retrieval_pretrain.foundation.errors import ModelFolderError
from retrieval_pretrain.foundation.typed_config import load_config
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer, tokenizer_from_spec
from retrieval_pretrain.modeling.model_folder import CONFIG_NAME, from_pretrained, read_spec, save_pretrained
from retrieval_pretrain.modeling.parts import build_backbone, build_model, build_video_text_model, spec_from_config
from retrieval_pretrain.modeling.spec import InterpolationRecord, ModelSpec, PromptSpec, SwaRecord
from retrieval_pretrain.reading.data_config import VideoConfig
from retrieval_pretrain.stage1.config import ClipConfig, PretrainConfig, RetrievalConfig
from retrieval_pretrain.stage1.data import Preprocess

TINY = {
    "embed_dim": 64,
    "vision_cfg": {"layers": 1, "width": 64, "patch_size": 16, "image_size": 64, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
T = 4

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(head: str = "seqTransf", sampling: str = "uniform") -> RetrievalConfig:
    return RetrievalConfig(clip=ClipConfig(model="tiny", pretrained=None, custom=TINY),
                           pretrain=PretrainConfig(head=head, head_layers=1, max_words=16),
                           video=VideoConfig(num_frames=T, eval_sampling=sampling))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny seqTransf model, built for training and saved with records: (model, folder)."""
    torch.manual_seed(0)
    model = build_video_text_model(_cfg(sampling="fps")).eval()
    spec = replace(model.spec, trained_on={"steps": 3}, swa=SwaRecord(0, 2))
    return model, save_pretrained(model, tmp_path_factory.mktemp("spec") / "m", spec)


def _config(folder):
    return json.loads((folder / CONFIG_NAME).read_text())


# ----------------------------------------------------------------------------- round trip


def test_spec_round_trips_through_config_json(saved):
    model, folder = saved
    data = _config(folder)
    spec = ModelSpec.from_json(data, folder / CONFIG_NAME)
    assert spec.to_json() == data  # exactly what was written
    assert spec == read_spec(folder)
    assert spec.num_frames == T and spec.eval_sampling == "fps" and spec.head == "seqTransf"
    assert spec.trained_on == {"steps": 3} and spec.swa == SwaRecord(0, 2) and spec.interpolation is None
    assert spec.clip.custom == TINY and spec.clip.kind == "open_clip" and spec.prompt is None
    assert spec.embed_dim == 64 and spec.image_size == 64 and spec.context_length == 32 and spec.max_words == 16
    assert replace(spec, open_clip_version=None) == replace(model.spec, trained_on={"steps": 3}, swa=SwaRecord(0, 2))
    # the keys earlier releases wrote, in their order; open_clip folders have no clip.kind
    assert list(data)[:19] == ["format", "format_version", "clip", "head", "head_layers", "head_input_norm",
                               "head_heads", "head_init_from_text", "num_frames", "embed_dim", "image_size",
                               "image_mean", "image_std", "image_interpolation", "image_resize_mode", "tokenizer",
                               "context_length", "max_words", "open_clip_version"]
    assert list(data["clip"]) == ["model", "pretrained", "custom", "arch", "temporal_attention"]
    assert data["format_version"] == 1


def test_an_earlier_release_folder_loads_with_its_defaults(saved, tmp_path):
    """A folder as the previous release wrote it: no eval_sampling (uniform then), extras it
    knew nothing about kept as they are."""
    model, folder = saved
    data = _config(folder)
    for key in ("eval_sampling", "trained_on", "swa"):
        data.pop(key)
    spec = ModelSpec.from_json({**data, "note": {"by": "hand"}}, "old/config.json")
    assert spec.eval_sampling == "uniform" and spec.trained_on is None and spec.swa is None
    assert spec.other == {"note": {"by": "hand"}} and spec.to_json()["note"] == {"by": "hand"}
    interpolated = replace(spec, interpolation=InterpolationRecord("a", "b", 0.5))
    assert ModelSpec.from_json(interpolated.to_json(), "x").interpolation == InterpolationRecord("a", "b", 0.5)


def test_prompt_lengths_round_trip():
    data = _spec_json()
    data["prompt"] = {"prefix": 2, "suffix": 1}
    assert ModelSpec.from_json(data, "c.json").prompt == PromptSpec(2, 1)
    assert ModelSpec.from_json(data, "c.json").to_json()["prompt"] == {"prefix": 2, "suffix": 1}


# ----------------------------------------------------------------------------- the checked reader


@functools.lru_cache(maxsize=1)
def _spec_text() -> str:
    torch.manual_seed(0)
    return json.dumps(build_video_text_model(_cfg()).spec.to_json())


def _spec_json() -> dict:
    """A fresh copy of a tiny model's config.json object (tests edit it)."""
    return json.loads(_spec_text())


@pytest.mark.parametrize("edit, key", [
    (lambda c: c.update(num_frames="4"), "num_frames"),  # a wrong type
    (lambda c: c.update(num_frames=-4), "num_frames"),  # a negative frame count
    (lambda c: c.update(num_frames=4.0), "num_frames"),  # not a whole number
    (lambda c: c.update(head_input_norm="no"), "head_input_norm"),
    (lambda c: c.pop("max_words"), "max_words"),  # a missing key
    (lambda c: c["clip"].pop("arch"), "clip.arch"),
    (lambda c: c.update(image_mean=[0.5, float("nan"), 0.5]), "image_mean"),  # a NaN
    (lambda c: c.update(image_std=[0.5, 0.0, 0.5]), "image_std"),
    (lambda c: c.update(clip="open_clip"), "clip"),
    (lambda c: c["clip"].update(kind="resnet"), "clip.kind"),
    (lambda c: c["tokenizer"].update(context_length=True), "tokenizer.context_length"),
    (lambda c: c.update(eval_sampling=3), "eval_sampling"),
    (lambda c: c.update(eval_sampling="bogus"), "eval_sampling"),  # was blamed on the videos later
    (lambda c: c["tokenizer"].update(type="BertTokenizer"), "tokenizer.type"),
    (lambda c: c["tokenizer"].update(kwargs={"bogus": 1}), "tokenizer.kwargs.bogus"),  # was a TypeError traceback
    (lambda c: c["tokenizer"].update(kwargs={"clean": 1}), "tokenizer.kwargs.clean"),
    (lambda c: c.update(swa={"start_epoch": 0}), "swa.epochs_averaged"),
    (lambda c: c.update(interpolation={"base": "a", "finetuned": "b", "alpha": float("inf")}), "interpolation.alpha"),
    (lambda c: c.update(max_words=40), "max_words"),
    (lambda c: c.update(format_version=2), "format_version"),
])
def test_the_reader_refuses_naming_config_json_and_the_key(edit, key):
    data = _spec_json()
    edit(data)
    with pytest.raises(ModelFolderError) as e:
        ModelSpec.from_json(json.loads(json.dumps(data, allow_nan=True)), "runs/m/config.json")
    assert "runs/m/config.json" in str(e.value) and f"'{key}'" in str(e.value), str(e.value)


@pytest.mark.parametrize("data", [[1, 2], "config", None, {"format": "something else"}])
def test_the_reader_refuses_what_is_not_a_stage1_config(data):
    with pytest.raises(ModelFolderError, match=r"runs/m/config\.json: not a stage-1 video-text model config"):
        ModelSpec.from_json(data, "runs/m/config.json")


def test_a_hand_edited_width_is_refused_when_loading(saved, tmp_path):
    model, folder = saved
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (bad / CONFIG_NAME).write_text(json.dumps({**_config(folder), "embed_dim": 99}))
    with pytest.raises(ModelFolderError, match=r"config\.json: cannot build .*'embed_dim' is 99, but the network"):
        from_pretrained(bad)


# ----------------------------------------------------------------------------- one builder


def test_the_training_builder_and_the_loader_give_the_same_model(saved):
    model, folder = saved
    loaded, spec = from_pretrained(folder)
    assert spec is loaded.spec and spec == read_spec(folder)
    assert replace(spec, trained_on=None, swa=None, open_clip_version=None) == model.spec
    g = torch.Generator().manual_seed(1)
    x, mask = torch.randn(2, T, 3, 64, 64, generator=g), torch.tensor([[True] * T, [True, True, False, False]])
    tokens = tokenizer_from_spec(spec)(["a dog runs", "a cat"])
    assert torch.equal(tokens, build_tokenizer(_cfg())(["a dog runs", "a cat"]))
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(x, mask), model.encode_video(x, mask))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
    pre = Preprocess.for_model(spec)
    assert (pre.num_frames, pre.image_size, tuple(pre.mean), tuple(pre.std)) == \
        (T, loaded.image_size, loaded.image_mean, loaded.image_std)


def test_build_model_is_what_training_builds():
    """``build_video_text_model(cfg)`` is ``build_model`` over the configured backbone."""
    cfg = _cfg(head="tightTransf")
    torch.manual_seed(0)
    a = build_video_text_model(cfg)
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    b = build_model(spec_from_config(cfg, backbone), backbone.module)
    assert a.spec == b.spec and a.spec.head == "tightTransf" and a.spec.head_init_from_text
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    fresh = build_model(a.spec)  # loading: random backbone of the recorded arch, same tensor names and shapes
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in a.state_dict().items()}
    assert fresh.spec == a.spec  # head_init_from_text recorded, not redone


def test_save_refuses_a_spec_that_contradicts_the_model(saved, tmp_path):
    model, _ = saved
    with pytest.raises(ValueError, match="num_frames"):
        save_pretrained(model, tmp_path / "x", replace(model.spec, num_frames=T + 1))
    with pytest.raises(ValueError, match="prompt"):
        save_pretrained(model, tmp_path / "x", replace(model.spec, prompt=PromptSpec(1, 1)))
    assert not (tmp_path / "x").exists()


def test_the_previous_release_folders_read_back_to_the_same_json(tmp_path):
    """The stage-1 folders the release before this layout wrote (tests/data/legacy_v1.tar.xz): the
    spec of each reads back to exactly the config.json it came from, and the model loads strictly."""
    import tarfile
    from pathlib import Path

    archive = Path(__file__).parent / "data" / "legacy_v1.tar.xz"
    if not archive.is_file():
        pytest.skip("tests/data/legacy_v1.tar.xz is not there")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")
    for folder in (tmp_path / "legacy_v1" / "stage1_model", tmp_path / "legacy_v1" / "stage2_model" / "video_tower"):
        data = _config(folder)
        assert data["format_version"] == 1
        model, spec = from_pretrained(folder)
        assert spec.to_json() == data and spec.other == {}
        assert spec.eval_sampling == data["eval_sampling"] and spec.num_frames == data["num_frames"]
        assert Preprocess.for_model(spec).image_size == model.image_size


# ----------------------------------------------------------------------------- same seed, same model

_TINY_ARGS = ["clip.model=tiny", "clip.pretrained=null",
              "clip.custom={embed_dim: 64, vision_cfg: {layers: 1, width: 64, patch_size: 16, image_size: 64, "
              "head_width: 32}, text_cfg: {context_length: 32, vocab_size: 49408, width: 64, heads: 2, layers: 1}}",
              "video.num_frames=4", "pretrain.max_words=12", "pretrain.head_layers=1"]
_PROMPT = ["pretrain.mode=prompt", "pretrain.prompt.prefix=2", "pretrain.prompt.suffix=2"]
# (sum, sum of |.|, tensors) of the state dict built after torch.manual_seed(0), printed by the release
# before the one builder (e20098f): the builder must draw the same random numbers in the same order.
_PREVIOUS_RELEASE = {
    "seqTransf": (["pretrain.head=seqTransf"], (584.702539, 63304.767194, 51)),
    "seqTransf-norm-prompt": (["pretrain.head=seqTransf", "pretrain.head_input_norm=true", *_PROMPT],
                              (589.100205, 63409.463691, 53)),
    "seqLSTM-prompt": (["pretrain.head=seqLSTM", *_PROMPT], (476.982879, 61422.708666, 44)),
    "meanP": (["pretrain.head=meanP"], (482.466248, 59330.603596, 38)),
    "tightTransf": (["pretrain.head=tightTransf"], (639.914983, 63636.558465, 58)),
    "st_mix": (["pretrain.head=seqTransf", "clip.temporal_attention=st_mix"], (584.702539, 63304.767194, 51)),
}


@pytest.mark.parametrize("case", sorted(_PREVIOUS_RELEASE))
def test_a_seed_builds_the_model_the_previous_release_built(case):
    extra, want = _PREVIOUS_RELEASE[case]
    torch.manual_seed(0)
    sd = build_video_text_model(load_config(RetrievalConfig, None, _TINY_ARGS + extra)).state_dict()
    got = (sum(v.double().sum() for v in sd.values()), sum(v.double().abs().sum() for v in sd.values()), len(sd))
    assert got[2] == want[2]
    assert float(got[0]) == pytest.approx(want[0], abs=2e-6) and float(got[1]) == pytest.approx(want[1], abs=2e-6)
