"""The config loader: YAML presets map one-to-one onto dataclasses; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from caption.config import Config, load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.stage1.config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_every_preset_loads_and_starts_with_its_command():
    presets = sorted(CONFIGS.glob("*.yaml")) + [CONFIG_PATH]
    assert len(presets) >= 3
    for path in presets:
        cfg = load(path)
        assert isinstance(cfg, Config)
        assert path.read_text().startswith("# vcap "), f"{path.name} must start with the command that runs it"


def test_paper_settings():
    s1 = load(CONFIGS / "msrvtt_vitb32_retrieval.yaml")
    assert (s1.clip.model, s1.clip.pretrained) == ("ViT-B-32", "openai")
    assert (s1.video.num_frames, s1.pretrain.max_words, s1.pretrain.head, s1.pretrain.head_layers) == (12, 32, "seqTransf", 4)
    assert (s1.pretrain.batch_size, s1.pretrain.lr, s1.pretrain.clip_lr, s1.pretrain.epochs) == (128, 1e-4, 1e-7, 5)
    s2 = load(CONFIGS / "msrvtt_vitb32_caption.yaml")
    assert (s2.caption.encoder_layers, s2.caption.decoder_layers, s2.decode.num_beams) == (1, 3, 5)
    assert s2.caption.label_smoothing == 0.1


def test_overrides_are_typed_and_dotted(tmp_path):
    cfg = load(None, ["video.num_frames=8", "pretrain.lr=3e-4", "run.mixed_precision=bf16",
                      "data.split_files.train=a b.txt", "clip.pretrained=null", "pretrain.allow_eval_overlap=true"])
    assert cfg.video.num_frames == 8 and isinstance(cfg.video.num_frames, int)
    assert cfg.pretrain.lr == 3e-4
    assert cfg.run.mixed_precision == "bf16"
    assert cfg.data.split_files == {"train": "a b.txt"}
    assert cfg.clip.pretrained is None
    assert cfg.pretrain.allow_eval_overlap is True


@pytest.mark.parametrize("override, message", [
    ("video.num_frame=8", "unknown config key 'video.num_frame'"),
    ("nosuch.key=1", "unknown config key 'nosuch'"),
    ("video.num_frames=eight", "video.num_frames: expected an integer"),
    ("pretrain.allow_eval_overlap=1", "expected true/false"),
    ("video.num_frames", "not of the form key=value"),
    ("clip.custom.vision_cfg={layers:", "override 'clip.custom.vision_cfg={layers:': the value is not valid YAML"),
    ("run.device=tpu", "run.device: 'tpu' is not auto, cpu, cuda, cuda:N or mps"),
    ("video.num_frames=0", "video.num_frames: 0 must be in \\[1, 4096\\]"),
    ("pretrain.lr=-1", "pretrain.lr: -1.0 must be greater than 0"),
    ("caption.batch_size=0", "caption.batch_size: 0 must be >= 1"),
    ("caption.dropout=1", "caption.dropout: 1.0 must be in \\[0.0, 1.0\\)"),
    ("caption.num_heads=7", "caption.hidden_size=512 is not a multiple of caption.num_heads=7"),
    ("pretrain.head=seqLSTMM", "pretrain.head: 'seqLSTMM' is not one of meanP, seqTransf"),
    ("data.format=coco", "data.format: 'coco' is not one of msrvtt, msrvtt-clip4clip, msvd, vatex, activitynet, youcook2, jsonl, hf"),
    ("caption.select_by=bleu", "caption.select_by: 'bleu' is not one of CIDEr, loss, last"),
    ("pretrain.loss=triplet", "pretrain.loss: 'triplet' is not one of infonce"),
    ("pretrain.epochs=0", "pretrain.epochs: 0 must be >= 1"),  # would write the untrained model, exit 0
    ("caption.epochs=0", "caption.epochs: 0 must be >= 1"),
])
def test_bad_overrides_are_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load(None, [override])


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("caption:\n  hiden_size: 5\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path) in str(err.value) and "caption.hiden_size" in str(err.value) and "hidden_size" in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load(bad)
