"""The temporal heads as one small module per kind (``heads.MeanP`` / ``SeqTransf`` / ``SeqLSTM``,
picked by ``heads.build_head``): state-dict keys and shapes, weights and outputs exactly as the
one-class ``TemporalHead`` gave them before the split (recorded from that code, same seed, same
input), so model folders written before still load strictly and give the same embeddings.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from caption.config import load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer
from retrieval_pretrain.modeling.heads import HEAD_CLASSES, HEADS, MeanP, SeqLSTM, SeqTransf, TemporalHead, build_head
from retrieval_pretrain.modeling.parts import build_backbone, build_temporal_head, build_video_text_model

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: results do not depend on the thread count

TINY = ["video.num_frames=4", "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}"]

# One open_clip ResidualAttentionBlock of width 128 (the tiny demo CLIP's joint width), as recorded.
_BLOCK = [("ln_1.weight", [128]), ("ln_1.bias", [128]), ("attn.in_proj_weight", [384, 128]),
          ("attn.in_proj_bias", [384]), ("attn.out_proj.weight", [128, 128]), ("attn.out_proj.bias", [128]),
          ("ln_2.weight", [128]), ("ln_2.bias", [128]), ("mlp.c_fc.weight", [512, 128]), ("mlp.c_fc.bias", [512]),
          ("mlp.c_proj.weight", [128, 512]), ("mlp.c_proj.bias", [128])]


def _transf_keys(layers: int, prefix: str = "") -> list[tuple[str, list[int]]]:
    return [(f"{prefix}transformer.resblocks.{i}.{name}", shape) for i in range(layers) for name, shape in _BLOCK]


# Recorded from the one-class TemporalHead (before the split), 6 frame positions, width 128.
KEYS = {
    "meanP": [],
    "seqLSTM2": [("lstm.weight_ih_l0", [512, 128]), ("lstm.weight_hh_l0", [512, 128]), ("lstm.bias_ih_l0", [512]),
                 ("lstm.bias_hh_l0", [512]), ("lstm.weight_ih_l1", [512, 128]), ("lstm.weight_hh_l1", [512, 128]),
                 ("lstm.bias_ih_l1", [512]), ("lstm.bias_hh_l1", [512])],
    "seqTransf1": [("frame_position_embeddings", [6, 128]), *_transf_keys(1)],
    "seqTransf2": [("frame_position_embeddings", [6, 128]), *_transf_keys(2)],
}

# (kind, layers, input_norm, init_from_text, started from text, sum of all weights,
#  y[0, 0, :3] + y[1, 3, -3:] with the mask, y[0, 3, :3] without it, sum of y with the mask)
RECORDED = [
    ("meanP", 1, False, True, False, 0.0,
     [-1.5255959, -0.7502318, -0.65398091, 0.16362053, 0.8414191, 1.05615246],
     [-0.56187165, -0.15792575, 1.50425935], 20.649044071440585),
    ("seqLSTM", 2, False, True, False, 9.972226126182989,
     [-1.55462158, -0.71813524, -0.67411864, 0.2034156, 0.8284446, 1.0440017],
     [-0.57093972, -0.09916639, 1.44681406], 22.97275284677744),
    ("seqTransf", 1, False, True, True, 239.3537760003165,
     [-3.04395914, -1.20839393, -2.23794675, -0.00360048, 1.7461338, 2.32773471],
     [-0.97743398, -0.92679381, 2.66609001], 79.53595362231135),
    ("seqTransf", 2, False, True, False, 523.1776015340793,
     [-2.44176674, -2.1283021, -2.48613954, 0.62142903, 1.69034541, 2.4170599],
     [-0.60705948, -0.51107562, 1.51388049], 40.790122631937265),
    ("seqTransf", 1, True, True, True, 263.7832228453627,
     [-3.39552546, -1.52827048, -1.20025969, -0.48549825, 2.36733127, 1.35541987],
     [-0.13038257, 0.24765711, 3.14985704], 102.01639946363866),
    ("seqTransf", 1, False, False, False, 281.619720931344,
     [-3.07716298, -1.75972223, -1.87632298, 0.36186975, 1.95569706, 2.34329987],
     [-1.25888395, -0.35236037, 2.32413483], 12.82422866486013),
]
CLASSES = {"meanP": MeanP, "seqLSTM": SeqLSTM, "seqTransf": SeqTransf}


@pytest.fixture(scope="module")
def clip() -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(load(CONFIG_PATH, TINY))[0]


def _key_shapes(module: nn.Module, prefixes: tuple[str, ...] = ("",)) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in module.state_dict().items() if k.startswith(prefixes)]


def _weight_sum(module: nn.Module) -> float:
    return float(sum(v.double().sum() for v in module.state_dict().values()))


@pytest.mark.parametrize("kind, layers, norm, from_text, started, weights, masked, unmasked, total", RECORDED)
@torch.no_grad()
def test_each_kind_keeps_its_keys_weights_and_outputs(clip, kind, layers, norm, from_text, started, weights, masked,
                                                      unmasked, total):
    torch.manual_seed(0)
    head, got_started = build_temporal_head(kind, layers, 6, clip, input_norm=norm, init_from_text=from_text)
    assert type(head) is CLASSES[kind] and isinstance(head, TemporalHead)
    assert _key_shapes(head) == KEYS[kind if kind == "meanP" else f"{kind}{layers}"]
    assert got_started is started
    # what model_folder / VideoTextModel read of a head
    assert (head.kind, head.dim, head.layers, head.num_frames, head.heads, head.input_norm) == \
        (kind, 128, layers, 6, 4, norm)
    assert _weight_sum(head) == pytest.approx(weights, abs=1e-6)
    x = torch.randn(2, 4, 128, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    y, y0 = head.eval()(x, mask), head(x, None)
    got = torch.cat([y[0, 0, :3], y[1, 3, -3:]])
    torch.testing.assert_close(got, torch.tensor(masked), atol=1e-6, rtol=0)
    torch.testing.assert_close(y0[0, 3, :3], torch.tensor(unmasked), atol=1e-6, rtol=0)
    assert float(y.double().sum()) == pytest.approx(total, abs=1e-4)  # a checksum of all 1024 values


@torch.no_grad()
def test_tight_transf_keeps_its_keys_and_scores():
    """tightTransf's model holds a parameter-free meanP head (no ``head.*`` keys) and the cross encoder."""
    torch.manual_seed(0)
    cfg = load(CONFIG_PATH, [*TINY, "pretrain.head=tightTransf", "pretrain.head_layers=1"])
    model = build_video_text_model(cfg).eval()
    assert isinstance(model.head, MeanP) and (model.head.heads, model.head.num_frames, model.head.layers) == (2, 4, 1)
    assert model.head_from_text and len(model.state_dict()) == 58
    assert not _key_shapes(model, ("head.",))
    cross = [("cross.type_embeddings", [2, 128]), ("cross.frame_position_embeddings", [4, 128]),
             *_transf_keys(1, "cross."), ("cross.ln_pool.weight", [128]), ("cross.ln_pool.bias", [128]),
             ("cross.pool_dense.weight", [128, 128]), ("cross.pool_dense.bias", [128]),
             ("cross.score.weight", [1, 128]), ("cross.score.bias", [1])]
    assert _key_shapes(model, ("cross.",)) == cross
    assert _weight_sum(model.cross) == pytest.approx(365.01034172192664, abs=1e-6)
    frames = torch.randn(2, 4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    out = model(frames, mask, build_tokenizer(cfg)(["a red square", "a dog runs"]))
    torch.testing.assert_close(out["logits"].flatten(), torch.tensor([-0.20394149, -0.17601968, -0.19604771,
                                                                      -0.17002906]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["video"][:, :3].flatten(), torch.tensor(
        [-0.06571114, 0.01261634, 0.1476801, -0.06084849, 0.01434496, 0.14666303]), atol=1e-6, rtol=0)


def test_one_module_per_kind_and_the_builder():
    assert HEADS == ("meanP", "seqTransf", "seqLSTM") and set(HEAD_CLASSES) == set(HEADS)
    torch.manual_seed(3)
    a = build_head(32, "seqTransf", layers=1, num_frames=4)
    torch.manual_seed(3)
    b = SeqTransf(32, 1, 4)  # the builder only picks the class
    assert type(a) is type(b) is SeqTransf and isinstance(a.norm, nn.Identity) and isinstance(a, TemporalHead)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    normed = build_head(32, "seqTransf", layers=1, num_frames=4, input_norm=True)
    assert isinstance(normed.norm, nn.LayerNorm) and normed.state_dict().keys() == a.state_dict().keys()
    assert type(build_head(32, "meanP")) is MeanP and not list(build_head(32, "meanP").parameters())
    assert MeanP(32, 1, 4).kind == "meanP"  # a head class is also built directly
    with pytest.raises(ConfigError, match="unknown temporal head 'seqGRU'; choose one of meanP, seqTransf, seqLSTM"):
        build_head(32, "seqGRU")
    with pytest.raises(ConfigError, match="applies to the seqTransf head only, not seqLSTM"):
        build_head(32, "seqLSTM", input_norm=True)
