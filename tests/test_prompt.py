"""TextPrompt (Ju et al.'s continuous prompts around a caption): exactness without prompts, where the
prompts go, and that a frozen CLIP passes gradients only to them."""

import pytest
import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.modeling.backbones import build_clip
from retrieval_pretrain.modeling.clip_tokenizer import ClipTokenizer
from retrieval_pretrain.modeling.prompt import TextPrompt


@pytest.fixture(scope="module")
def clip_and_tokens():
    torch.manual_seed(0)
    cfg = load(CONFIG_PATH, ["clip.pretrained=null"])
    clip, _, _, spec = build_clip(cfg.clip)
    tokens = ClipTokenizer(spec, 16)(["a red circle moving left", "a star", "the blue square growing slowly"])
    return clip.eval(), tokens


def _width(clip):
    return clip.token_embedding.weight.shape[1]


def test_no_prompts_is_clip_encode_text(clip_and_tokens):
    clip, tokens = clip_and_tokens
    prompt = TextPrompt(_width(clip), 0, 0)
    assert torch.allclose(prompt.encode(clip, tokens), clip.encode_text(tokens), atol=1e-6)


def test_positions_place_prompts_around_the_words(clip_and_tokens):
    _, tokens = clip_and_tokens
    ctx = tokens.shape[1]
    prompt = TextPrompt(8, 3, 2)
    index, end = prompt.positions(tokens)
    eot = tokens.argmax(dim=-1)
    for b in range(tokens.shape[0]):
        n = int(eot[b]) - 1
        row = index[b].tolist()
        assert row[0] == 0
        assert row[1:4] == [ctx, ctx + 1, ctx + 2]  # prefix
        assert row[4:4 + n] == list(range(1, 1 + n))  # the words, in order
        assert row[4 + n:6 + n] == [ctx + 3, ctx + 4]  # suffix
        assert row[6 + n] == int(eot[b]) and int(end[b]) == 6 + n  # the end token, moved


def test_frozen_clip_trains_only_the_prompts(clip_and_tokens):
    clip, tokens = clip_and_tokens
    for p in clip.parameters():
        p.requires_grad_(False)
    prompt = TextPrompt(_width(clip), 4, 4, init_std=0.01)
    out = prompt.encode(clip, tokens)
    assert not torch.allclose(out, clip.encode_text(tokens))  # the prompts change the features
    out.pow(2).sum().backward()
    assert prompt.prefix.grad is not None and prompt.prefix.grad.abs().sum() > 0
    assert prompt.suffix.grad is not None and prompt.suffix.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.parameters())
    for p in clip.parameters():
        p.requires_grad_(True)


def test_too_long_caption_is_refused(clip_and_tokens):
    clip, tokens = clip_and_tokens
    with pytest.raises(ValueError, match="do not fit"):
        TextPrompt(_width(clip), 8, 8).encode(clip, tokens)


def test_wrong_width_and_empty_batch(clip_and_tokens):
    clip, tokens = clip_and_tokens
    with pytest.raises(ValueError, match="wide"):
        TextPrompt(_width(clip) - 1, 2, 2).encode(clip, tokens)
    assert TextPrompt(_width(clip), 2, 2).encode(clip, tokens[:0]).shape[0] == 0


# ----------------------------------------------------------------------------- pretrain.mode=prompt

_TINY = ["video.num_frames=4", "pretrain.batch_size=4", "pretrain.epochs=3", "run.num_workers=0", "run.log_every=1",
         "pretrain.head_layers=1", "pretrain.save_every=0", "pretrain.max_words=12", "pretrain.mode=prompt",
         "pretrain.prompt.prefix=2", "pretrain.prompt.suffix=2",
         "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
         "clip.custom.text_cfg.layers=1"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """8 real mp4s of 8 frames (the demo world), one caption each, and a CLIP checkpoint file to start from."""
    from demo_clips import data_args, make_clips

    from retrieval_pretrain.modeling.parts import build_video_text_model

    root = tmp_path_factory.mktemp("prompt")
    data = make_clips(root / "data", num_test=1)
    torch.manual_seed(1)
    net = build_video_text_model(load(CONFIG_PATH, [*_TINY, "clip.pretrained=null"]))
    ckpt = root / "clip.pt"
    torch.save(net.clip.state_dict(), ckpt)
    args = [*data_args(data), f"clip.pretrained={ckpt}", *_TINY]
    return data, ckpt, args


def test_prompt_mode_gradients_reach_only_prompts_and_head(clips):
    from retrieval_pretrain.modeling.parts import build_training_mode, build_video_text_model, param_groups

    _, _, args = clips
    cfg = load(CONFIG_PATH, args)
    model = build_training_mode(cfg, build_video_text_model(cfg))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("prompt.", "head.")) for n in trainable)
    assert {"prompt.prefix", "prompt.suffix"} <= trainable
    assert not param_groups(model)[0] or not any(p.requires_grad for p in param_groups(model)[0])
    feats = torch.randn(3, 4, model.embed_dim)  # (B, T, D) image-tower features, as the cache gives
    mask = torch.tensor([[True] * 4, [True] * 4, [True, True, False, False]])
    from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer

    tokens = build_tokenizer(cfg)(["a red circle moves left", "a blue star grows", "the green square falls"])
    out = model(frames=feats, mask=mask, tokens=tokens)
    from retrieval_pretrain.modeling.loss import info_nce

    info_nce(out["video"], out["text"], out["logit_scale"]).backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"prompt.prefix", "prompt.suffix"} <= got and any(n.startswith("head.") for n in got)
    assert got <= trainable  # not one CLIP weight, the logit scale included
    # padding rows never matter: other values there give the same embedding
    other = feats.clone()
    other[2, 2:] = 100.0
    assert torch.allclose(model.encode_video(other, mask), model.encode_video(feats, mask), atol=1e-6)


def test_feature_cache_equals_the_image_tower_on_decoded_frames(clips, tmp_path):
    """A cached item is the frozen tower's features of exactly the frames a decoded item holds; an
    unreadable file keeps its reason (naming it) and gives a placeholder of the features' shape."""
    import numpy as np

    from retrieval_pretrain.modeling.parts import build_video_text_model
    from retrieval_pretrain.stage1.data import Preprocess
    from retrieval_pretrain.stage1.kept_frames import FeatureCache
    from retrieval_pretrain.stage1.preprocess import load_item as _load

    data, _, args = clips
    model = build_video_text_model(load(CONFIG_PATH, args)).eval()
    paths = sorted((data / "videos").glob("*.mp4"))[:3]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all")
    calls = []

    def encode(x):
        calls.append(len(x))
        with torch.no_grad():
            return model.clip.encode_image(x)

    cache = FeatureCache([*paths, bad], 8, 64, model.image_mean, model.image_std, encode, batch_frames=10)
    assert sum(calls) == 3 * 8 and len(calls) == 2  # every kept frame once, in batches of >= 10 frames
    pre = Preprocess(4, 64, model.image_mean, model.image_std)
    for i, path in enumerate(paths):
        got = cache.sample(i, pre, "tsn", np.random.default_rng([7, i]))
        decoded = pre(path, "tsn", np.random.default_rng([7, i]))
        with torch.no_grad():
            want = model.clip.encode_image(decoded["frames"])
        assert torch.equal(got["mask"], decoded["mask"])
        assert torch.allclose(got["frames"], want, atol=1e-5)
    assert "broken.mp4" in cache.errors[3]
    item = _load(pre, bad, "tsn", np.random.default_rng(0), lambda m, r: cache.sample(3, pre, m, r), cache.frame_shape)
    assert not item["ok"] and "broken.mp4" in item["error"] and item["frames"].shape == (4, model.embed_dim)


def test_prompt_mode_end_to_end_no_decoding_after_the_cache(clips, tmp_path, monkeypatch):
    """`vcap pretrain` with pretrain.mode=prompt on real mp4s: each video decoded once and its frames
    through the image tower once (3 epochs later, still once), CLIP's weights exactly the checkpoint's,
    the prompts trained, and the model folder rebuilding the prompted text tower."""
    import json

    from open_clip.model import CLIP

    from retrieval_pretrain.modeling.model_folder import from_pretrained
    from retrieval_pretrain.stage1 import kept_frames as kept_module
    from retrieval_pretrain.stage1.train import train

    _, ckpt, args = clips
    decoded, encoded = [], []
    read, encode_image = kept_module.read_frames, CLIP.encode_image
    monkeypatch.setattr(kept_module, "read_frames", lambda path, *a, **k: decoded.append(path) or read(path, *a, **k))
    monkeypatch.setattr(CLIP, "encode_image", lambda self, x, **k: encoded.append(len(x)) or encode_image(self, x, **k))
    from retrieval_pretrain.modeling import parts

    born = []

    class Recorded(TextPrompt):  # keeps the prompts' initial values
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            born.append(self.prefix.detach().clone())

    monkeypatch.setattr(parts, "TextPrompt", Recorded)
    folder = train(load(CONFIG_PATH, args), tmp_path / "run")
    assert len(decoded) == 8 and sum(encoded) == 8 * 8  # once per video, never again in 3 epochs
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(log) == 6 and all(r["lr_clip"] == 0.0 for r in log) and log[0]["lr_new"] > 0  # no CLIP group
    assert len({round(r["logit_scale"], 6) for r in log}) == 1  # the temperature is CLIP's, frozen
    model, spec = from_pretrained(folder)
    assert spec.prompt.to_json() == {"prefix": 2, "suffix": 2}
    start = torch.load(ckpt, weights_only=True)
    assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in start.items())
    # built twice by the one builder: for training, then for loading the folder
    assert len(born) == 2 and (model.prompt.prefix.detach() - born[0]).abs().max() > 1e-3  # trained
    tokens = torch.zeros(1, 16, dtype=torch.long)
    tokens[0, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        assert not torch.allclose(model.encode_text(tokens), torch.nn.functional.normalize(
            model.clip.encode_text(tokens), dim=-1), atol=1e-3)  # the reloaded model uses its prompts


@pytest.mark.parametrize("extra, match", [
    # refused when training starts, before a backbone is built (no download) or a video decoded
    (["pretrain.head=tightTransf", "clip.custom=null", "clip.model=ViT-B-32", "clip.pretrained=openai"], "tightTransf"),
    (["clip.kind=xclip", "clip.custom=null"], "X-CLIP"),
    (["clip.temporal_attention=st_mix"], "st_mix"),
    (["video.train_sampling=fps"], "fps"),
    (["pretrain.interpolation.enabled=true"], "changes nothing"),
])
def test_prompt_mode_refuses_before_training_builds_anything(clips, tmp_path, extra, match):
    from retrieval_pretrain.foundation.errors import ConfigError
    from retrieval_pretrain.stage1.train import train

    _, _, args = clips
    cfg = load(CONFIG_PATH, [*args, *extra])  # reading it is fine: eval, classify, caption never train
    with pytest.raises(ConfigError, match=match):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("extra, match", [
    (["pretrain.max_words=14"], "exceed the text tower's 16 positions"),
    (["pretrain.freeze=[prompt, head]"], "leaves nothing to train"),
])
def test_prompt_mode_refuses_what_it_cannot_build(clips, extra, match):
    from retrieval_pretrain.foundation.errors import ConfigError
    from retrieval_pretrain.modeling.parts import build_training_mode, build_video_text_model

    _, _, args = clips
    cfg = load(CONFIG_PATH, [*args, *extra])
    with pytest.raises(ConfigError, match=match):
        build_training_mode(cfg, build_video_text_model(cfg))


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(max_words=16), "exceed the text tower's 16 positions"),
    (lambda c: c["prompt"].update(prefix=10 ** 11), "exceed"),  # refused before allocating 51 TB
    (lambda c: c["prompt"].update(prefix=2.7), "whole numbers"),
    (lambda c: c["prompt"].update(depth=3), "whole numbers"),
    (lambda c: c.update(prompt={}), "whole numbers"),
    (lambda c: c.update(prompt=None), "whole numbers"),
])
def test_a_hand_edited_prompt_folder_is_refused_naming_its_config(clips, tmp_path, edit, match):
    import json

    from retrieval_pretrain.foundation.errors import ModelFolderError
    from retrieval_pretrain.modeling.model_folder import from_pretrained, save_pretrained
    from retrieval_pretrain.modeling.parts import build_video_text_model

    _, _, args = clips
    folder = save_pretrained(build_video_text_model(load(CONFIG_PATH, args)), tmp_path / "m")
    info = json.loads((folder / "config.json").read_text())
    assert info["prompt"] == {"prefix": 2, "suffix": 2}
    edit(info)
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(ModelFolderError, match=match) as e:
        from_pretrained(folder)
    assert "config.json" in str(e.value)


@pytest.mark.parametrize("mode", ["full", "prompt"])
def test_a_batch_of_one_video_is_refused_before_a_run_that_would_train_nothing(clips, tmp_path, mode):
    from retrieval_pretrain.foundation.errors import ConfigError
    from retrieval_pretrain.stage1.train import train

    _, _, args = clips
    with pytest.raises(ConfigError, match="at least 2 videos"):
        train(load(CONFIG_PATH, [*args, f"pretrain.mode={mode}", "pretrain.batch_size=1"]), tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists()


def test_the_zero_shot_baseline_ignores_a_training_configs_prompts_and_head(clips):
    """`vcap classify --pretrained CKPT` with a prompt-tuning YAML (seqTransf, head_input_norm, mode=prompt):
    plain CLIP text and mean-pooled frames, not random untrained prompts or a random head."""
    from retrieval_pretrain.modeling.clip_tokenizer import build_tokenizer
    from vcap_toolkit.jobs.recognition import load_recognizer

    _, ckpt, args = clips
    cfg = load(CONFIG_PATH, [*args, "pretrain.head=seqTransf", "pretrain.head_input_norm=true"])
    net, _ = load_recognizer(cfg, None, str(ckpt), torch.device("cpu"))
    assert net.prompt is None and net.head_kind == "meanP"
    tokens = build_tokenizer(cfg)(["a red circle"])
    with torch.no_grad():
        want = torch.nn.functional.normalize(net.clip.encode_text(tokens), dim=-1)
        assert torch.allclose(net.encode_text(tokens), want)
