"""The caption model's settings and its decoding settings: typed dataclasses under the names users type.

``CaptionModelSettings`` is the model's architecture - ``caption.hidden_size``, ``caption.num_heads``
... in a ``vcap`` config, whose ``caption`` section (``caption.config.CaptionConfig``) is built on
this class field for field. A new model setting is one new field here (plus its use); the one place
where these names become BART's is ``decoders.model.caption_model_config`` (and the same table reads
them back, ``CaptionModelConfig.settings``).

``DecodeConfig`` is how captions are decoded - the config's ``decode`` section - and is handed whole
to ``CaptionModel.generate_captions``. A caption model folder records the one it was validated with
(``config.json``'s ``decode``, a plain mapping), read back by ``DecodeConfig.from_saved``.

Constraints are field metadata ``{"range": (low, high or None, high is open)}``: the vocabulary of
the toolkit's config loader, which checks them when these classes are read as config sections. This
package imports nothing of the toolkit; it checks the same metadata itself (``field_problem``) where
it builds a model and reads a saved ``decode``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping


def _range(default: float, low: float, high: float | None = None, open_high: bool = False) -> Any:
    """A number that must lie in ``[low, high]`` (``[low, high)`` with ``open_high``)."""
    return field(default=default, metadata={"range": (low, high, open_high)})


def field_problem(obj: Any, f: dataclasses.Field, where: str) -> str | None:
    """What is wrong with ``obj``'s value of field ``f`` (type and range), or None."""
    value, tp = getattr(obj, f.name), typing.get_type_hints(type(obj))[f.name]
    name = f"{where}.{f.name}" if where else f.name
    if tp is int and (not isinstance(value, int) or isinstance(value, bool)):
        return f"{name}: expected an integer, got {value!r}"
    if tp is float and (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)):
        return f"{name}: expected a finite number, got {value!r}"
    low, high, open_high = f.metadata.get("range", (None, None, False))
    if (low is not None and value < low) or (high is not None and (value >= high if open_high else value > high)):
        want = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
        return f"{name}: {value!r} must be {want}"
    return None


@dataclass
class CaptionModelSettings:
    """The caption model's architecture (CLIP4Caption: 1-layer encoder, 3-layer decoder).

    ``hidden_size``/``num_heads``/``ffn_size``: transformer width, attention heads, MLP width (both
    stacks); ``encoder_layers``/``decoder_layers``; ``dropout``: hidden and attention dropout;
    ``max_frames``: frame positions; ``max_length``: caption tokens, BOS and EOS included;
    ``vocab_size``: the tokenizer's size (a config's ``caption.vocab_size`` is the most pieces a
    new tokenizer may have; the model gets the tokenizer's real size).
    """

    hidden_size: int = _range(512, 1)
    num_heads: int = _range(8, 1)
    ffn_size: int = _range(2048, 1)
    encoder_layers: int = _range(1, 1)
    decoder_layers: int = _range(3, 1)
    dropout: float = _range(0.1, 0.0, 1.0, open_high=True)
    max_frames: int = _range(32, 1)
    max_length: int = _range(30, 3)  # BOS, a token, EOS
    vocab_size: int = _range(8000, 5)  # 4 special ids + 1

    def check(self, where: str) -> None:
        """``ValueError`` naming the first bad setting (``where``: how to name this section)."""
        for f in dataclasses.fields(CaptionModelSettings):
            problem = field_problem(self, f, where)
            if problem:
                raise ValueError(problem)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"{where}.hidden_size={self.hidden_size} is not a multiple of "
                             f"{where}.num_heads={self.num_heads}")

    def model_settings(self) -> CaptionModelSettings:
        """Just the model's settings, by name (of a section built on them, e.g. a config's ``caption``)."""
        return CaptionModelSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(CaptionModelSettings)})


# The widest beam: each video keeps this many hypotheses at every step, so memory and time grow with
# it (a hostile round's --beam 100000 ran past 5 minutes on one short video); the papers use 3-5.
MAX_BEAMS = 100


@dataclass
class DecodeConfig:
    """Caption decoding with transformers' generation: beam search with ``num_beams`` (1: greedy),
    at most ``max_new_tokens`` tokens after BOS (EOS included), captions ranked by sum log p /
    length ** ``length_penalty``, no n-gram of ``no_repeat_ngram_size`` twice (0: no ban).
    ``batch_size``: videos per ``generate_captions`` call (the callers' batching; it does not
    change a caption)."""

    num_beams: int = _range(5, 1, MAX_BEAMS)
    max_new_tokens: int = _range(28, 1)
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = _range(0, 0)
    batch_size: int = _range(32, 1)

    def to_saved(self) -> dict[str, Any]:
        """What a model folder records of this decoding (``config.json``'s ``decode``): every field but
        ``batch_size``, which is the machine's choice, not the model's (and was never recorded)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "batch_size"}

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any] | None) -> tuple[DecodeConfig, list[str]]:
        """The decoding a model folder recorded (``config.json``'s ``decode``; None: the defaults),
        and the recorded names this class does not know (sorted; for the caller to warn about).
        A known name with a value of the wrong type or range is a ``ValueError`` naming it."""
        if saved is not None and not isinstance(saved, Mapping):
            raise ValueError(f"decode: expected a mapping, got {saved!r}")
        saved = dict(saved or {})
        names = {f.name for f in dataclasses.fields(cls)}
        decode = cls(**{k: v for k, v in saved.items() if k in names})
        for f in dataclasses.fields(cls):
            problem = field_problem(decode, f, "decode")
            if problem:
                raise ValueError(problem)
        return dataclasses.replace(decode, length_penalty=float(decode.length_penalty)), sorted(set(saved) - names)
