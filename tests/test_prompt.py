"""TextPrompt (Ju et al.'s continuous prompts around a caption): exactness without prompts, where the
prompts go, and that a frozen CLIP passes gradients only to them."""

import pytest
import torch

from caption.config import load
from caption.demo import CONFIG_PATH
from retrieval_pretrain.backbones import build_clip
from retrieval_pretrain.clip_tokenizer import ClipTokenizer
from retrieval_pretrain.prompt import TextPrompt


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
