"""Caption tokenizer: a sentencepiece model (Kudo and Richardson, 2018) trained on the captions.

Captions are normalised first (``normalize_caption``), and the same normalisation is applied
before encoding, so training text and decoded text share one form. The model is a unigram
language model (sentencepiece's default, Kudo 2018) with fixed special ids:

    PAD 0 ``<pad>``   UNK 1 ``<unk>``   BOS 2 ``<s>``   EOS 3 ``</s>``

which are also the caption model's pad, decoder start and end ids. Training runs in-process with
one thread and a fixed seed, so the same captions always give the byte-identical model file;
``hard_vocab_limit=False`` lets a tiny corpus give fewer pieces than asked (``vocab_size`` is the
real size). The model file is written atomically (temporary file, then rename); inside a caption
model folder it is called ``tokenizer.model`` (``CaptionTokenizer.FILENAME``).

    tok = CaptionTokenizer.train(captions, 8000, "runs/s2/tokenizer.model")
    ids = tok.encode("A man is cooking.", max_length=30)   # [2, ..., 3]
    tok.decode(ids)                                        # "a man is cooking"
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm
import torch

from retrieval_pretrain.foundation.atomic import write_file
from retrieval_pretrain.foundation.errors import ModelFolderError

_SPACES = re.compile(r"\s+")
_TRAILING_PUNCT = re.compile(r"[\s.!?;:,。！？…]+$")


def normalize_caption(text: str) -> str:
    """The one form captions take for training, decoding and scoring.

    Steps: Unicode NFKC (full-width forms, ligatures, compatibility characters), lower-case, NFKC
    again (lower-casing can leave non-normalised forms), every run of whitespace (newlines and
    tabs included) becomes one space, leading/trailing whitespace is stripped, and trailing sentence
    punctuation (``. ! ? ; : ,`` and ``…``, any number of them) is dropped. Punctuation inside a
    caption (``a man's car``, ``ping-pong``) is kept. Idempotent:
    ``normalize_caption(normalize_caption(s)) == normalize_caption(s)``.
    """
    text = unicodedata.normalize("NFKC", text)
    text = unicodedata.normalize("NFKC", text.lower())
    text = _SPACES.sub(" ", text).strip()
    return _TRAILING_PUNCT.sub("", text)


class CaptionTokenizer:
    """A sentencepiece model with the toolkit's special ids (see the module docstring)."""

    PAD = 0
    UNK = 1
    BOS = 2
    EOS = 3
    FILENAME = "tokenizer.model"

    def __init__(self, processor: spm.SentencePieceProcessor, path: Path | None = None):
        self.sp, self.path = processor, path
        have = (processor.pad_id(), processor.unk_id(), processor.bos_id(), processor.eos_id())
        if have != (self.PAD, self.UNK, self.BOS, self.EOS):
            where = f" {path}" if path else ""
            raise ModelFolderError(f"sentencepiece model{where} has pad/unk/bos/eos ids {have}, "
                             f"expected {(self.PAD, self.UNK, self.BOS, self.EOS)}")

    @classmethod
    def train(cls, captions: Sequence[str], vocab_size: int, model_path: str | Path,
              model_type: str = "unigram") -> "CaptionTokenizer":
        """Train on ``captions`` (normalised here) and write the model to ``model_path`` atomically.

        Args:
            captions: training captions (raw or already normalised; empty ones are skipped).
            vocab_size: the most pieces, special ids included (a soft limit: a small corpus gives
                fewer; ``vocab_size`` of the result is the real size).
            model_path: the ``.model`` file to write (folders are created).
            model_type: ``unigram`` (default) or ``bpe``.
        """
        texts = [t for t in (normalize_caption(c) for c in captions) if t]
        if not texts:
            raise ValueError("cannot train a tokenizer on no (non-empty) captions")
        if vocab_size < 5:
            raise ValueError(f"vocab_size must be at least 5 (4 special ids + 1), got {vocab_size}")
        spm.set_random_generator_seed(0)
        model = _BytesSink()
        with open(os.devnull, "w") as quiet:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, logstream=quiet if _stderr_is_a_file() else None,
                vocab_size=vocab_size, model_type=model_type, hard_vocab_limit=False,
                character_coverage=1.0, normalization_rule_name="identity",
                pad_id=cls.PAD, unk_id=cls.UNK, bos_id=cls.BOS, eos_id=cls.EOS,
                pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
                num_threads=1, input_sentence_size=0, shuffle_input_sentence=False,
                max_sentence_length=1 << 16, minloglevel=2,
            )
        write_file(Path(model_path), model.data)
        return cls.load(model_path)

    @classmethod
    def load(cls, model_path: str | Path) -> "CaptionTokenizer":
        """Read a ``.model`` file written by ``train`` (or any sentencepiece model with the same ids)."""
        path = Path(model_path)
        if not path.is_file():
            raise ModelFolderError(f"tokenizer model not found: {path}")
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(path.read_bytes())
        except (RuntimeError, OSError) as err:
            raise ModelFolderError(f"{path} is not a sentencepiece model: {err}") from err
        return cls(sp, path)

    @property
    def vocab_size(self) -> int:
        """Number of ids (special ids included)."""
        return self.sp.get_piece_size()

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, max_length: int) -> list[int]:
        """``[BOS] + pieces + [EOS]`` of the normalised text, at most ``max_length`` ids; a longer
        caption loses its last pieces but keeps its EOS."""
        if max_length < 2:
            raise ValueError(f"max_length must leave room for BOS and EOS, got {max_length}")
        pieces = self.sp.encode(normalize_caption(text), out_type=int)
        return [self.BOS] + pieces[: max_length - 2] + [self.EOS]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of ``ids``: stops at the first EOS; BOS and PAD are dropped (UNK shows as ``⁇``)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        kept: list[int] = []
        for i in ids:
            i = int(i)
            if i == self.EOS:
                break
            if i in (self.BOS, self.PAD):
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary (size {self.vocab_size})")
            kept.append(i)
        return " ".join(self.sp.decode(kept).split())

    def decode_batch(self, batch: Iterable[Iterable[int]] | torch.Tensor) -> list[str]:
        """``decode`` of each row (a (B, L) tensor or a list of id lists)."""
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        return [self.decode(row) for row in batch]


def _stderr_is_a_file() -> bool:
    """sentencepiece's ``logstream`` redirects the stderr file descriptor; under Jupyter or pytest's
    capture ``sys.stderr`` has none, and passing it would fail (``minloglevel`` still quiets it)."""
    try:
        sys.stderr.fileno()
        return True
    except (AttributeError, OSError, ValueError):
        return False


class _BytesSink:
    """The ``model_writer`` sentencepiece writes the serialised model to."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data
