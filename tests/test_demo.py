"""The demo's configuration: one YAML, shipped inside the package, that `vcap demo` runs."""

from __future__ import annotations

from pathlib import Path

import yaml

from caption.config import load
from caption.demo import CONFIG_PATH, demo_config


def test_demo_runs_the_yaml_shipped_in_the_package(tmp_path):
    import caption.demo

    assert CONFIG_PATH.parent == Path(caption.demo.__file__).parent and CONFIG_PATH.is_file()
    raw = yaml.safe_load(CONFIG_PATH.read_text())
    cfg = demo_config(tmp_path, quick=False, seed=3)
    # every value of the file reaches the config, and the demo only adds where its data is
    assert cfg.pretrain.epochs == raw["pretrain"]["epochs"] and cfg.caption.epochs == raw["caption"]["epochs"]
    assert cfg.clip.custom == raw["clip"]["custom"] and cfg.pretrain.freeze == raw["pretrain"]["freeze"]
    assert (cfg.data.annotations, cfg.data.videos, cfg.run.seed) == (str(tmp_path / "annotations.jsonl"),
                                                                     str(tmp_path), 3)
    plain = load(CONFIG_PATH, [f"data.annotations={tmp_path / 'annotations.jsonl'}", f"data.videos={tmp_path}",
                               "run.seed=3"])
    assert cfg == plain
    quick = demo_config(tmp_path, quick=True)
    assert quick.pretrain.epochs < cfg.pretrain.epochs and quick.caption.epochs < cfg.caption.epochs
    assert cfg.clip.custom and cfg.clip.pretrained is None  # a from-scratch CLIP: no download
    assert (cfg.caption.encoder_layers, cfg.caption.decoder_layers, cfg.pretrain.head) == (1, 3, "seqTransf")


def test_the_users_overrides_reach_the_demos_config(tmp_path):
    cfg = demo_config(tmp_path, quick=True, overrides=["pretrain.head=seqLSTM", "pretrain.epochs=3"])
    assert (cfg.pretrain.head, cfg.pretrain.epochs) == ("seqLSTM", 3)  # applied after --quick's own
    assert cfg.caption.epochs == demo_config(tmp_path, quick=True).caption.epochs
