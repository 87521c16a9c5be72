"""The demo's configuration is the one shipped as configs/tiny_demo.yaml."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from caption.config import load
from caption.demo import demo_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny_demo.yaml"


def test_demo_config_equals_the_shipped_yaml(tmp_path):
    shipped = load(CONFIG, [f"data.annotations={tmp_path / 'annotations.jsonl'}", f"data.videos={tmp_path}",
                            "run.seed=0"])
    assert asdict(demo_config(tmp_path, quick=False, seed=0)) == asdict(shipped)
    quick = demo_config(tmp_path, quick=True)
    assert quick.pretrain.epochs < shipped.pretrain.epochs
    assert shipped.clip.custom and shipped.clip.pretrained is None  # a from-scratch CLIP: no download
    assert (shipped.caption.encoder_layers, shipped.caption.decoder_layers, shipped.pretrain.head) == (1, 3, "seqTransf")
