"""The caption tokenizer of CLIP's text tower: open_clip's BPE ``SimpleTokenizer``, cut to
``max_words`` tokens, padded to the tower's context length."""

from __future__ import annotations

from typing import Any, Callable

import torch
from open_clip.tokenizer import SimpleTokenizer

from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.backbones import resolve_arch, tokenizer_spec
from retrieval_pretrain.modeling.spec import ModelSpec


def check_max_words(max_words: int, context_length: int) -> None:
    if not 2 <= max_words <= context_length:
        raise ConfigError(f"pretrain.max_words={max_words} must be between 2 and the text tower's context "
                         f"length {context_length}")


class ClipTokenizer:
    """Captions -> LongTensor (B, context_length) for CLIP's text tower, at most ``max_words`` BPE
    tokens each (start and end tokens included; a longer caption is cut and still ends with the
    end token, whose position the text tower pools at). Positions past ``max_words`` are zero
    padding; the causal text tower never lets them reach the end token, so the embedding equals
    that of the ``max_words``-long sequence. Picklable (DataLoader workers)."""

    def __init__(self, spec: dict[str, Any], max_words: int):
        self.context_length = int(spec["context_length"])
        check_max_words(max_words, self.context_length)
        self.max_words = int(max_words)
        self.spec = dict(spec)
        self._tok = SimpleTokenizer(context_length=self.max_words, **spec.get("kwargs", {}))

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        ids = self._tok(texts, context_length=self.max_words)  # (B, max_words)
        out = ids.new_zeros(ids.shape[0], self.context_length)  # (B, context_length)
        out[:, : self.max_words] = ids
        return out


def build_tokenizer(cfg: Any) -> Callable[[list[str]], torch.Tensor]:
    """The caption tokenizer for a config with ``.clip`` and ``.pretrain.max_words``."""
    return ClipTokenizer(tokenizer_spec(resolve_arch(cfg.clip)), cfg.pretrain.max_words)


def tokenizer_from_spec(spec: ModelSpec) -> Callable[[list[str]], torch.Tensor]:
    """The caption tokenizer of a stage-1 model (``spec`` as ``from_pretrained`` returns it, or ``model.spec``)."""
    return ClipTokenizer(spec.tokenizer.to_json(), spec.max_words)
