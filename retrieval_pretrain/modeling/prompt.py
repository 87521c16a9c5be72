"""Continuous prompt vectors around a caption in CLIP's text tower (Ju et al., "Prompting
Visual-Language Models for Efficient Video Understanding", ECCV 2022).

The text side of ``pretrain.mode=prompt`` (``parts.build_video_text_model`` attaches it to the model
as ``VideoTextModel.prompt``): ``TextPrompt`` encodes token ids as

    [SOT] p_1 .. p_P  w_1 .. w_n  s_1 .. s_S [EOT] (padding)

where ``p``/``s`` are learnt vectors in the token-embedding space (init std 0.01, as the paper's
code), ``w`` the caption's word embeddings, and the pooled feature is taken at the moved end token,
as open_clip's ``argmax`` pooling does for plain captions. With ``P = S = 0`` it is exactly
``clip.encode_text``. Everything of CLIP is only read, so a frozen CLIP trains only the prompts.
"""

from __future__ import annotations

import torch
from torch import nn

from retrieval_pretrain.modeling.backbones import text_tower


def _text_owner(clip: nn.Module) -> nn.Module:
    """The text tower's module, checked to have what prompting reads."""
    owner = text_tower(clip)
    for name in ("token_embedding", "positional_embedding", "transformer", "ln_final"):
        if not hasattr(owner, name):
            raise ValueError(f"prompt tuning needs an open_clip text tower with {name}; this one has none")
    if getattr(owner, "text_pool_type", "argmax") != "argmax":
        raise ValueError(f"prompt tuning pools at the end token (argmax); this text tower pools "
                         f"{owner.text_pool_type!r}")
    return owner


class TextPrompt(nn.Module):
    """``prefix`` learnt vectors before and ``suffix`` after the caption's words."""

    def __init__(self, width: int, prefix: int = 16, suffix: int = 16, init_std: float = 0.01):
        super().__init__()
        if prefix < 0 or suffix < 0:
            raise ValueError(f"prompt lengths must be >= 0, got prefix={prefix} suffix={suffix}")
        self.prefix = nn.Parameter(torch.randn(prefix, width) * init_std)
        self.suffix = nn.Parameter(torch.randn(suffix, width) * init_std)

    @property
    def length(self) -> int:
        return self.prefix.shape[0] + self.suffix.shape[0]

    def positions(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index, end)``: for each output position, where its embedding comes from in
        ``cat([token embeddings (ctx), prefix (P), suffix (S)])``, and the end token's new position.
        ``ValueError`` when a caption leaves no room for the prompts."""
        B, ctx = tokens.shape
        P, S = self.prefix.shape[0], self.suffix.shape[0]
        if B == 0:
            return tokens.new_zeros((0, ctx)), tokens.new_zeros((0,))
        eot = tokens.argmax(dim=-1)  # (B,) the end token: the highest id (open_clip's argmax pooling)
        if int(eot.max()) + P + S >= ctx:
            raise ValueError(f"a caption of {int(eot.max()) - 1} tokens and {P + S} prompt vectors do not fit the "
                             f"text tower's {ctx} positions; shorten pretrain.max_words or the prompts")
        j = torch.arange(ctx, device=tokens.device).expand(B, ctx)  # output positions
        n = (eot - 1).unsqueeze(1)  # words per caption
        index = eot.unsqueeze(1).expand(B, ctx).clone()  # after the end token: any row (causal mask)
        index = torch.where(j == 0, torch.zeros_like(j), index)  # start token
        index = torch.where((j >= 1) & (j <= P), ctx + j - 1, index)  # prefix
        words = (j > P) & (j <= P + n)
        index = torch.where(words, j - P, index)
        suffix = (j > P + n) & (j <= P + n + S)
        index = torch.where(suffix, ctx + P + (j - P - n - 1), index)
        return index, eot + P + S

    def encode(self, clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The prompted caption features (B, D), not normalised, as ``clip.encode_text`` returns."""
        t = _text_owner(clip)
        width = t.token_embedding.weight.shape[1]
        if self.prefix.shape[1] != width:
            raise ValueError(f"the prompt vectors are {self.prefix.shape[1]} wide, the text tower's token "
                             f"embeddings {width}; build TextPrompt with width={width}")
        cast = t.transformer.get_cast_dtype()
        emb = t.token_embedding(tokens).to(cast)  # (B, ctx, W)
        B = tokens.shape[0]
        bank = torch.cat([emb, self.prefix.to(cast).expand(B, -1, -1), self.suffix.to(cast).expand(B, -1, -1)], dim=1)
        index, end = self.positions(tokens)
        x = torch.gather(bank, 1, index.unsqueeze(-1).expand(-1, -1, bank.shape[-1]))  # (B, ctx, W)
        x = x + t.positional_embedding.to(cast)
        x = t.transformer(x, attn_mask=t.attn_mask)
        x = t.ln_final(x)
        x = x[torch.arange(B, device=x.device), end]
        proj = t.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj
