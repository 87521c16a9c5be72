"""The sentencepiece caption tokenizer: normalisation, special ids, round trips, truncation,
determinism and atomic writes (real sentencepiece training, in-process)."""

from __future__ import annotations

import io
import os

import pytest
import sentencepiece as spm
import torch

from caption.tokenizer import CaptionTokenizer, normalize_caption
from retrieval_pretrain.foundation.errors import ModelFolderError

CAPTIONS = [
    "A man is cooking in the kitchen.", "a woman is singing a song!", "Two dogs play in the park",
    "a man slices bread", "someone cuts a loaf of bread.", "a cat sits on a mat",
    "The man is running fast...", "a girl is riding a horse", "people are dancing on a stage",
    "a chef is chopping an onion", "a man's car is red, and fast", "kids play with a ball",
] * 3


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> CaptionTokenizer:
    return CaptionTokenizer.train(CAPTIONS, 80, tmp_path_factory.mktemp("tok") / CaptionTokenizer.FILENAME)


def test_normalize_caption():
    assert normalize_caption("  A Man\tis   COOKING...  ") == "a man is cooking"
    assert normalize_caption("ＴＷＯ　dogs\nplay!?") == "two dogs play"  # NFKC: full-width letters and space
    assert normalize_caption("a man's car, red.") == "a man's car, red"  # inner punctuation stays
    assert normalize_caption("...") == "" and normalize_caption("") == ""
    for c in CAPTIONS + ["ﬁne ＡＢＣ .", "İstanbul ; ", "x ,.!"]:
        once = normalize_caption(c)
        assert normalize_caption(once) == once, c


def test_special_ids(tok):
    assert (tok.PAD, tok.UNK, tok.BOS, tok.EOS) == (0, 1, 2, 3)
    assert [tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (tok.sp.pad_id(), tok.sp.unk_id(), tok.sp.bos_id(), tok.sp.eos_id()) == (0, 1, 2, 3)
    assert CaptionTokenizer.FILENAME == "tokenizer.model"
    assert 4 < tok.vocab_size <= 80 and len(tok) == tok.vocab_size


def test_round_trip(tok):
    for c in CAPTIONS + ["a dog is cooking bread on a stage", "A CAT plays."]:
        ids = tok.encode(c, max_length=64)
        assert ids[0] == tok.BOS and ids[-1] == tok.EOS
        assert tok.PAD not in ids and tok.UNK not in ids
        assert tok.decode(ids) == normalize_caption(c)
    unseen = tok.encode("zebra", 64)  # 'z' never occurs in training
    assert tok.UNK in unseen and "⁇" in tok.decode(unseen)


def test_truncation_keeps_eos(tok):
    full = tok.encode("a man is cooking in the kitchen and a woman is singing a song", 64)
    cut = tok.encode("a man is cooking in the kitchen and a woman is singing a song", 6)
    assert len(full) > 6 and len(cut) == 6
    assert cut[:-1] == full[:5] and cut[-1] == tok.EOS
    assert tok.encode("", 5) == [tok.BOS, tok.EOS]
    with pytest.raises(ValueError, match="max_length"):
        tok.encode("a cat", 1)


def test_decode_stops_at_eos_and_drops_specials(tok):
    ids = tok.encode("a cat sits on a mat", 32)
    other = tok.encode("a dog", 32)
    assert tok.decode(ids + other[1:]) == "a cat sits on a mat"  # stops at the first EOS
    assert tok.decode(ids[1:-1]) == "a cat sits on a mat"  # no BOS/EOS: fine too
    assert tok.decode([tok.PAD, tok.BOS] + ids[1:] + [tok.PAD] * 3) == "a cat sits on a mat"
    batch = torch.full((2, len(ids)), tok.PAD, dtype=torch.long)  # (B, L), right-padded as a model returns them
    batch[0], batch[1, : len(other)] = torch.tensor(ids), torch.tensor(other)
    assert tok.decode_batch(batch) == tok.decode_batch(batch.tolist()) == ["a cat sits on a mat", "a dog"]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([5, 10_000])


def test_training_is_deterministic(tmp_path):
    a = CaptionTokenizer.train(CAPTIONS, 80, tmp_path / "a.model")
    b = CaptionTokenizer.train(list(CAPTIONS), 80, tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.encode("a man is cooking", 30) == b.encode("a man is cooking", 30)
    bpe1 = CaptionTokenizer.train(CAPTIONS, 60, tmp_path / "c.model", model_type="bpe")
    CaptionTokenizer.train(CAPTIONS, 60, tmp_path / "d.model", model_type="bpe")
    assert (tmp_path / "c.model").read_bytes() == (tmp_path / "d.model").read_bytes()
    assert bpe1.decode(bpe1.encode("a man is cooking", 30)) == "a man is cooking"


def test_tiny_corpus_and_large_vocab(tmp_path):
    small = CaptionTokenizer.train(["a cat", "a dog"], 8000, tmp_path / "s.model")  # hard_vocab_limit=False
    assert small.vocab_size < 8000
    assert small.decode(small.encode("A dog.", 10)) == "a dog"


def test_atomic_write_and_load_errors(tmp_path):
    path = tmp_path / "sub" / CaptionTokenizer.FILENAME
    CaptionTokenizer.train(CAPTIONS, 80, path)
    assert sorted(os.listdir(path.parent)) == [CaptionTokenizer.FILENAME]  # no temporary file left
    before = path.read_bytes()
    with pytest.raises(ValueError, match="no \\(non-empty\\) captions"):
        CaptionTokenizer.train(["...", "  "], 80, path)  # nothing to train on: the old file is untouched
    assert path.read_bytes() == before
    CaptionTokenizer.train(CAPTIONS[:4], 40, path)  # replaced in one rename
    assert path.read_bytes() != before and sorted(os.listdir(path.parent)) == [CaptionTokenizer.FILENAME]
    assert CaptionTokenizer.load(path).vocab_size <= 40
    with pytest.raises(ModelFolderError, match="missing.model"):
        CaptionTokenizer.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="junk.model"):
        CaptionTokenizer.load(tmp_path / "junk.model")


def test_rejects_models_with_other_special_ids(tmp_path):
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CAPTIONS), model_writer=buf, vocab_size=40,
                                   hard_vocab_limit=False, minloglevel=2)  # unk 0, bos 1, eos 2, no pad
    (tmp_path / "other.model").write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="pad/unk/bos/eos"):
        CaptionTokenizer.load(tmp_path / "other.model")
