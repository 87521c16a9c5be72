"""Stage-1 model, backbones and model folders, loss and transforms: a tiny real open_clip CLIP, CPU only, no network.

Parity references are open_clip's own ``encode_image`` / ``image_transform`` and hand-computed
values; the offline-weights test runs the real download code in a subprocess with the Hub offline.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import run_gloo_pair
from PIL import Image
from safetensors.torch import save_file

from retrieval_pretrain.foundation.errors import ModelFolderError, WeightsUnavailableError
from retrieval_pretrain.modeling.backbones import build_clip
from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer, tokenizer_from_spec
from retrieval_pretrain.modeling.loss import info_nce
from retrieval_pretrain.modeling.model_folder import from_pretrained, model_fingerprint, save_pretrained
from retrieval_pretrain.modeling.parts import build_video_text_model as build_model
from retrieval_pretrain.modeling.parts import param_groups
from retrieval_pretrain.reading.data_config import VideoConfig
from retrieval_pretrain.reading.transforms import preprocess_frames
from retrieval_pretrain.stage1.config import ClipConfig, PretrainConfig, RetrievalConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "embed_dim": 64,
    "vision_cfg": {"layers": 2, "width": 64, "patch_size": 16, "image_size": 64, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
T = 6  # frames per video in these tests


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: the module's torch ops on one thread


def tiny_cfg(head: str = "seqTransf", custom: dict | None = None, model: str = "tiny",
             pretrained: str | None = None) -> RetrievalConfig:
    return RetrievalConfig(
        clip=ClipConfig(model=model, pretrained=pretrained, custom=TINY if custom is None and model == "tiny" else custom),
        pretrain=PretrainConfig(head=head, head_layers=2, max_words=16),
        video=VideoConfig(num_frames=T),
    )


def tiny_model(head: str = "seqTransf", seed: int = 0):
    """A fresh model (tests may change it)."""
    torch.manual_seed(seed)
    return build_model(tiny_cfg(head)).eval()


@functools.lru_cache(maxsize=None)
def shared_model(head: str = "seqTransf"):
    """One model per head for the read-only tests."""
    return tiny_model(head)


def frames(b: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, T, 3, 64, 64, generator=g)  # (B, T, 3, S, S)


# ----------------------------------------------------------------------------- model


@torch.no_grad()
def test_meanp_equals_normalised_mean_of_open_clip_encode_image():
    """meanP = CLIP4Clip's pooling of open_clip's own per-frame image embeddings:
    normalise each frame's ``encode_image``, average the real frames, normalise."""
    model = shared_model("meanP")
    x = frames()
    mask = torch.tensor([[True] * T, [True, True, True, False, False, False]])
    got = model.encode_video(x, mask)
    expected = []
    for b in range(2):
        real = x[b][mask[b]]  # (n_real, 3, S, S)
        per_frame = model.clip.encode_image(real, normalize=True)  # (n_real, D)
        expected.append(F.normalize(per_frame.mean(0), dim=-1))
    torch.testing.assert_close(got, torch.stack(expected), atol=1e-6, rtol=0)
    # the sequence stage 2 caches is the raw (unnormalised) image-tower output for meanP
    seq = model.encode_frames(x, mask)
    torch.testing.assert_close(seq[0], model.clip.encode_image(x[0]), atol=1e-6, rtol=0)
    assert not torch.allclose(seq[0].norm(dim=-1), torch.ones(T))


@torch.no_grad()
def test_frame_order_matters_for_seqtransf_only():
    x = frames()
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    mean_p, seq_t = shared_model("meanP"), shared_model("seqTransf")
    torch.testing.assert_close(mean_p.encode_video(x), mean_p.encode_video(x[:, perm]), atol=1e-6, rtol=0)
    diff = (seq_t.encode_video(x) - seq_t.encode_video(x[:, perm])).abs().max()
    assert diff > 1e-4, f"seqTransf ignored frame order (max change {diff:.2e})"


@pytest.mark.parametrize("head", ["meanP", "seqTransf"])
@torch.no_grad()
def test_padding_frames_never_change_the_embedding(head):
    model = shared_model(head)
    x = frames()
    mask = torch.tensor([[True, True, False, True, False, False],  # padding in the middle too
                         [True, True, True, True, False, False]])
    ref = model.encode_video(x, mask)
    for seed in (5, 6):
        y = x.clone()
        y[~mask] = torch.randn(int((~mask).sum()), 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 10
        torch.testing.assert_close(model.encode_video(y, mask), ref, atol=1e-6, rtol=0)
        seq_ref, seq = model.encode_frames(x, mask), model.encode_frames(y, mask)
        torch.testing.assert_close(seq[mask], seq_ref[mask], atol=1e-6, rtol=0)  # what extraction stores
    # trailing padding = the shorter clip alone
    torch.testing.assert_close(model.encode_video(x[1:, :4], mask[1:, :4]), ref[1:], atol=1e-6, rtol=0)


def _normed_head_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny_cfg("seqTransf")
    cfg.pretrain.head_input_norm = True
    return build_model(cfg).eval()


@torch.no_grad()
def test_head_input_norm_makes_the_head_blind_to_feature_scale_not_to_order():
    """With head_input_norm the seqTransf head sees layer-normalised frame features, so scaling the
    image tower's output (from-scratch towers grow norms of ~100) changes nothing, while the frame
    positions start large enough (std 0.5) that order changes the embedding from the first step."""
    model = _normed_head_model()
    head = model.head
    assert head.input_norm and 0.4 < float(head.frame_position_embeddings.std()) < 0.6
    feats = torch.randn(2, T, model.embed_dim, generator=torch.Generator().manual_seed(3))  # (B, T, D)
    mask = torch.tensor([[True] * T, [True] * 4 + [False] * 2])
    out = head(feats, mask)
    torch.testing.assert_close(head(feats * 80.0, mask), out, atol=1e-4, rtol=1e-4)  # LayerNorm eps aside
    pooled = model.pool(out, mask)
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    reordered = model.pool(head(feats[:, perm], mask), mask)
    assert (pooled[0] - reordered[0]).abs().max() > 1e-2  # order matters
    plain = tiny_model()  # the CLIP4Clip form: features 80x larger drown its std-0.01 positions
    big = plain.pool(plain.head(feats * 80.0), None)
    assert (big - plain.pool(plain.head(feats[:, perm] * 80.0), None)).abs().max() < \
        0.1 * (pooled[0] - reordered[0]).abs().max()
    with pytest.raises(ValueError, match="seqTransf head only"):
        from retrieval_pretrain.modeling.heads import build_head
        build_head(64, "meanP", input_norm=True)


def test_head_input_norm_survives_the_model_folder(tmp_path):
    model = _normed_head_model()
    x, mask = frames(), torch.tensor([[True] * T, [True] * 3 + [False] * 3])
    loaded, spec = from_pretrained(save_pretrained(model, tmp_path / "m"))
    assert spec.head_input_norm is True and loaded.head.input_norm
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(x, mask), model.encode_video(x, mask))


def test_forward_outputs_gradients_and_logit_scale_clamp():
    model = tiny_model().train()
    tokens = build_tokenizer(tiny_cfg())(["a dog runs", "a man cooks pasta in a kitchen"])
    out = model(frames(), torch.ones(2, T, dtype=torch.bool), tokens)
    assert out["video"].shape == out["text"].shape == (2, 64) and out["logit_scale"].shape == ()
    torch.testing.assert_close(out["video"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["text"].norm(dim=-1), torch.ones(2))
    info_nce(out["video"], out["text"], out["logit_scale"]).backward()
    assert model.head.transformer.resblocks[0].mlp.c_fc.weight.grad.abs().sum() > 0
    assert model.clip.visual.conv1.weight.grad.abs().sum() > 0
    assert model.clip.logit_scale.grad is not None
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(1000.0))
        assert model(frames(), None, tokens)["logit_scale"].item() == pytest.approx(100.0)
        model.clip.logit_scale.fill_(math.log(20.0))
        assert model(frames(), None, tokens)["logit_scale"].item() == pytest.approx(20.0)


def test_param_groups_and_clip4clip_head_init():
    model = shared_model()
    clip_params, new_params = param_groups(model)
    assert len(clip_params) + len(new_params) == len(list(model.parameters()))
    assert {id(p) for p in new_params} == {id(p) for p in model.head.parameters()}
    assert any(p is model.clip.logit_scale for p in clip_params)
    # CLIP4Clip starts seqTransf as a copy of the text transformer's first blocks and positions
    assert model.head_from_text
    for head_block, text_block in zip(model.head.transformer.resblocks, model.clip.transformer.resblocks):
        for (k, a), (_, b) in zip(head_block.state_dict().items(), text_block.state_dict().items()):
            assert torch.equal(a, b), k
    assert torch.equal(model.head.frame_position_embeddings, model.clip.positional_embedding[:T])


def test_tokenizer_truncates_to_max_words_and_keeps_the_end_token():
    tok = build_tokenizer(tiny_cfg())  # max_words 16, tower context 32
    eot = 49407
    ids = tok(["a man is playing a guitar", " ".join(["word"] * 40)])
    assert ids.shape == (2, 32) and ids.dtype == torch.long
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=32)(["a man is playing a guitar"])
    assert torch.equal(ids[0], reference[0])  # short captions: exactly open_clip's tokens
    assert ids[1, 15] == eot and int(ids[1].argmax()) == 15 and not ids[1, 16:].any()
    with pytest.raises(ValueError, match="max_words"):
        build_model(RetrievalConfig(clip=ClipConfig(model="tiny", pretrained=None, custom=TINY),
                                    pretrain=PretrainConfig(max_words=40)))


# ----------------------------------------------------------------------------- model folders


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model()
    x, mask = frames(), torch.tensor([[True] * T, [True] * 3 + [False] * 3])
    tokens = build_tokenizer(tiny_cfg())(["a cat sleeps on a sofa"])
    folder = save_pretrained(model, tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folders left
    loaded, spec = from_pretrained(folder)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(x, mask), model.encode_video(x, mask))
        assert torch.equal(loaded.encode_frames(x, mask), model.encode_frames(x, mask))
        assert torch.equal(loaded.encode_text(tokens), model.encode_text(tokens))
    assert spec.clip.custom == TINY and spec.head == "seqTransf" and spec.num_frames == T
    assert spec.image_size == 64 and spec.embed_dim == 64 and spec.max_words == 16
    assert spec.eval_sampling == "uniform"
    assert loaded.image_mean == model.image_mean and loaded.image_size == 64
    assert torch.equal(tokenizer_from_spec(spec)(["a cat"]), build_tokenizer(tiny_cfg())(["a cat"]))

    # overwrite in place with other weights; the fingerprint follows the weights
    before = model_fingerprint(folder)
    assert model_fingerprint(folder) == before
    other = tiny_model(seed=1)
    save_pretrained(other, folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert model_fingerprint(folder) != before
    with torch.no_grad():
        assert torch.equal(from_pretrained(folder)[0].encode_video(x, mask), other.encode_video(x, mask))
    with pytest.raises(ValueError, match="num_frames"):
        save_pretrained(model, tmp_path / "bad", replace(model.spec, num_frames=T + 1))


def test_from_pretrained_errors_name_the_folder(tmp_path):
    with pytest.raises(ModelFolderError, match="not found"):
        from_pretrained(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match="config.json, model.safetensors missing"):
        from_pretrained(empty)
    good = save_pretrained(tiny_model(), tmp_path / "good")
    weights = (good / "model.safetensors").read_bytes()

    (good / "model.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: cannot load"):
        from_pretrained(good)
    (good / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # truncated copy
    with pytest.raises(ModelFolderError, match=str(good)):
        from_pretrained(good)

    (good / "model.safetensors").write_bytes(weights)
    config = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**config, "head_layers": 3}))  # weights do not fit
    with pytest.raises(ModelFolderError, match="cannot load"):
        from_pretrained(good)
    (good / "config.json").write_text(json.dumps(config))
    nan = tiny_model()
    with torch.no_grad():
        nan.clip.text_projection[0, 0] = float("nan")  # a diverged run's weights
    save_pretrained(nan, good)
    with pytest.raises(ModelFolderError, match="tensor 'clip.text_projection' holds NaN"):
        from_pretrained(good)
    (good / "config.json").write_text("{ truncated")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        from_pretrained(good)


# ----------------------------------------------------------------------------- backbones


def test_pretrained_tag_offline_raises_weights_unavailable(tmp_path):
    """The real open_clip download path, with the Hub offline and an empty cache, in a fresh
    process (huggingface_hub reads HF_HUB_OFFLINE at import)."""
    code = (
        "from retrieval_pretrain.stage1.config import ClipConfig\n"
        "from retrieval_pretrain.modeling.backbones import build_clip\nfrom retrieval_pretrain.foundation.errors import WeightsUnavailableError\n"
        "try:\n"
        "    build_clip(ClipConfig(model='ViT-B-32', pretrained='openai'))\n"
        "except WeightsUnavailableError as e:\n"
        "    print('WEIGHTS_UNAVAILABLE'); print(e)\n"
        "else:\n"
        "    print('BUILT')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    try:
        run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=90)
    except subprocess.TimeoutExpired:
        pytest.skip("building ViT-B-32/openai offline did not fail within 90 s")
    assert "WEIGHTS_UNAVAILABLE" in run.stdout, run.stdout + run.stderr
    assert "clip.pretrained=/path/to/file" in run.stdout and "clip.custom" in run.stdout
    assert time.perf_counter() - t0 < 60


def test_unknown_tag_or_missing_file_raises_weights_unavailable(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="neither a known tag of this model .tags: .*openai"):
        build_clip(ClipConfig(model="ViT-B-32", pretrained="no-such-tag"))
    missing = tmp_path / "missing.pt"
    with pytest.raises(WeightsUnavailableError, match=f"checkpoint file clip.pretrained={missing} does not exist") as e:
        build_clip(ClipConfig(model="ViT-B-32", pretrained=str(missing)))
    assert "Fix the path" in str(e.value) and "openai" in str(e.value)  # and the tags it could use instead
    with pytest.raises(WeightsUnavailableError, match="custom architecture.*clip.pretrained=openai does not exist"):
        build_clip(ClipConfig(model="tiny", pretrained="openai", custom=TINY))


@pytest.fixture
def registered_tiny_arch(tmp_path):
    """A tiny architecture registered by name from a local json config, as open_clip's own
    model_configs/*.json are (ViT-B-32 takes over 10 s to build, save and load here)."""
    name = "vcap-test-tiny-vit"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / f"{name}.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(tmp_path / "configs")
    yield name
    open_clip.factory._MODEL_CONFIGS.pop(name, None)


@pytest.mark.parametrize("fmt", ["state_dict.pt", "training_checkpoint.pt", "safetensors"])
def test_named_model_loads_a_local_checkpoint_file(registered_tiny_arch, tmp_path, fmt):
    """``clip.pretrained`` = a local file goes through open_clip's ``load_checkpoint``: a plain state
    dict (torch.save), an open_clip training checkpoint ({"state_dict": {"module.*"}}) or
    .safetensors all load, exactly."""
    torch.manual_seed(3)
    source = open_clip.create_model(registered_tiny_arch, pretrained=None)
    state = source.state_dict()
    path = tmp_path / ("ckpt.safetensors" if fmt == "safetensors" else "ckpt.pt")
    if fmt == "state_dict.pt":
        torch.save(state, path)
    elif fmt == "training_checkpoint.pt":
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    clip, mean, std, spec = build_clip(ClipConfig(model=registered_tiny_arch, pretrained=str(path)))
    loaded = clip.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert mean == tuple(open_clip.OPENAI_DATASET_MEAN) and spec["context_length"] == 32
    if fmt == "safetensors":  # the model folder rebuilds the architecture without the registry
        model = build_model(tiny_cfg(model=registered_tiny_arch, pretrained=str(path)))
        folder = save_pretrained(model, tmp_path / "model")
        open_clip.factory._MODEL_CONFIGS.pop(registered_tiny_arch)
        loaded_model, spec = from_pretrained(folder)
        assert spec.clip.pretrained == str(path) and spec.clip.arch == TINY
        assert all(torch.equal(loaded_model.clip.state_dict()[k], state[k]) for k in state)


# ----------------------------------------------------------------------------- loss


def test_info_nce_by_hand():
    """Two pairs, scale 2. video = [[1,0],[0,1]], text = [[1,0],[0.6,0.8]].
    v2t logits = 2 * video @ text.T = [[2, 1.2], [0, 1.6]]
      row 0: -log(e^2 / (e^2 + e^1.2))     = log(1 + e^-0.8) = 0.371101
      row 1: -log(e^1.6 / (e^0 + e^1.6))   = log(1 + e^-1.6) = 0.183901
    t2v logits = the transpose = [[2, 0], [1.2, 1.6]]
      row 0: -log(e^2 / (e^2 + e^0))       = log(1 + e^-2)   = 0.126928
      row 1: -log(e^1.6 / (e^1.2 + e^1.6)) = log(1 + e^-0.4) = 0.513015
    loss = (mean(v2t) + mean(t2v)) / 2 = (0.371101 + 0.183901 + 0.126928 + 0.513015) / 4 = 0.298736
    """
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    by_hand = sum(math.log1p(math.exp(-d)) for d in (0.8, 1.6, 2.0, 0.4)) / 4
    assert by_hand == pytest.approx(0.298736, abs=1e-6)
    assert info_nce(video, text, torch.tensor(2.0, dtype=torch.float64)).item() == pytest.approx(by_hand, abs=1e-12)


# Each process runs this (a fresh interpreter: forking a process whose OpenMP pool has run hangs).
_DIST_WORKER = """
import json, sys
import torch, torch.distributed as dist, torch.nn.functional as F
from retrieval_pretrain.modeling.loss import info_nce
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
results = {}
for sizes in SIZES:
    g = torch.Generator().manual_seed(0)
    video = F.normalize(torch.randn(sum(sizes), 8, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(sum(sizes), 8, generator=g, dtype=torch.float64), dim=-1)
    own = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    v, t = video[own].clone().requires_grad_(), text[own].clone().requires_grad_()
    loss = info_nce(v, t, 5.0)
    loss.backward()
    results[str(sizes)] = [loss.item(), v.grad.tolist(), t.grad.tolist()]
dist.destroy_process_group()
json.dump(results, open(out, "w"))
"""
SIZES = [[2, 2], [3, 1]]  # equal and unequal per-process batches


def test_info_nce_over_processes_equals_the_global_batch(tmp_path):
    """Two gloo processes: the mean of their losses and of their gradients (what DDP averages)
    equals the single-process loss and gradient over the concatenated batch, for equal and
    unequal per-process batch sizes."""
    ranks = run_gloo_pair(_DIST_WORKER.replace("SIZES", repr(SIZES)), tmp_path)
    for sizes in SIZES:
        g = torch.Generator().manual_seed(0)
        video = F.normalize(torch.randn(sum(sizes), 8, generator=g, dtype=torch.float64), dim=-1)
        text = F.normalize(torch.randn(sum(sizes), 8, generator=g, dtype=torch.float64), dim=-1)
        video.requires_grad_()
        text.requires_grad_()
        loss = info_nce(video, text, 5.0)
        loss.backward()
        per_rank = [r[str(sizes)] for r in ranks]
        assert np.mean([r[0] for r in per_rank]) == pytest.approx(loss.item(), abs=1e-12)
        grad_v = torch.tensor([row for r in per_rank for row in r[1]], dtype=torch.float64) / 2
        grad_t = torch.tensor([row for r in per_rank for row in r[2]], dtype=torch.float64) / 2
        torch.testing.assert_close(grad_v, video.grad, atol=1e-12, rtol=0)
        torch.testing.assert_close(grad_t, text.grad, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- transforms


def _test_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour waves + a checkerboard + noise: edges, gradients and texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    waves = np.stack([128 + 100 * np.sin(xx / 17.0 + c) * np.cos(yy / 23.0) for c in range(3)], -1)
    board = ((xx // 40 + yy // 40) % 2)[..., None] * 60
    return np.clip(waves + board + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("h,w,size", [(240, 320, 224), (480, 270, 224), (100, 80, 64), (224, 300, 224)])
def test_preprocess_frames_matches_open_clip_preprocess(h, w, size):
    """Against open_clip's evaluation transform on PIL images (resize shorter side, bicubic, centre
    crop, normalise). Tolerance: PIL's and torch's uint8 bicubic differ by at most one grey level on
    a small share of pixels (measured: < 1% of values), i.e. 1/255/std <= 0.0150 after normalising."""
    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    reference_tf = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
    images = np.stack([_test_image(h, w, seed) for seed in range(3)])  # (N, H, W, 3)
    got = preprocess_frames(images, size, mean, std)
    assert got.shape == (3, 3, size, size) and got.dtype == torch.float32
    expected = torch.stack([reference_tf(Image.fromarray(im)) for im in images])
    grey_levels = (got - expected).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255.0
    assert grey_levels.max() <= 1.0 + 1e-3
    assert (grey_levels > 0.5).float().mean() < 0.01
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(images.astype(np.float32), size, mean, std)
