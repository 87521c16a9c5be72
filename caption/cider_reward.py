"""CIDEr-D as a reward for self-critical sequence training (Rennie et al., CVPR 2017).

CIDEr-D (Vedantam et al., "CIDEr: Consensus-based Image Description Evaluation", CVPR 2015), with
exactly the formula of pycocoevalcap's ``CiderScorer``: for each n-gram order ``k = 1..n``, the
candidate and each reference become tf-idf vectors ``g(s)[t] = tf(t, s) * (log(V) - log(max(1,
df(t))))``, where ``V`` is the number of videos and ``df(t)`` the number of videos whose reference
set contains ``t``; the clipped cosine ``sum_t min(g(c)[t], g(r)[t]) * g(r)[t] / (|g(c)| |g(r)|)``
is multiplied by the length penalty ``exp(-delta^2 / (2 sigma^2))``; the score is 10 x the mean over
orders of the mean over the video's references. ``delta`` is, as in pycocoevalcap, the difference
of the two sentences' numbers of *bigrams* (``max(words - 1, 0)``).

Unlike pycocoevalcap's ``Cider``, which recomputes the document frequencies from the references of
whatever set it is given, on every call (so a batch's rewards would depend on which videos share the
batch), ``CiderD`` takes them once from the training references - the usual SCST set-up - and
precomputes every reference's tf-idf vector, norms and length. The layout, all numpy arrays:

* words are interned to ids ``1..W``; an order-k n-gram's id is found from its (k-1)-gram prefix's
  id and its last word's id in one sorted key table per order, so n-gram lookup is a
  ``searchsorted`` for a whole batch, and no Python object per n-gram outlives the build;
* ``(video, n-gram)`` pairs are rows of one sorted key table, each row a slice of ``(reference,
  count)`` entries (CSR); a reference's tf-idf vector is its counts times the n-grams' idf.

A call maps the batch's words to ids (one dict look-up per word, the only Python loop), finds its
n-grams order by order, matches them to the rows of their videos, and sums the clipped products per
(candidate, order, reference) with one ``bincount``.

Tokens are taken as given (pycocoevalcap splits strings on whitespace, so a token holding a space
would differ). ``words`` tokenises raw text the way ``caption.metrics`` does without Java.
"""

from __future__ import annotations

from itertools import chain, repeat
from typing import Mapping, Sequence

import numpy as np

from caption.metrics import ptb_tokenize_approx


def words(text: str) -> list[str]:
    """The word tokens of a caption as ``caption.metrics`` scores it without Java: lower-cased, PTB
    tokenisation approximated in Python (``ptb_tokenize_approx``), punctuation dropped."""
    return ptb_tokenize_approx(text).split()


def _check_tokens(tokens: Sequence[str]) -> None:
    if isinstance(tokens, str):
        raise TypeError(f"expected a list of word tokens, got the string {tokens[:40]!r} (use words())")


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For sentences of ``lengths`` laid end to end: each token's (sentence, position in it,
    sentence length), each of shape ``(sum(lengths),)``."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    pos = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, pos, lengths[owner]


def _lookup(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in the sorted ``table``, -1 where absent."""
    if len(table) == 0:
        return np.full(len(keys), -1, dtype=np.int64)
    # Sorted, distinct queries: searchsorted then walks the table in order (~3x faster on 1M rows).
    distinct, inverse = np.unique(keys, return_inverse=True)
    at = np.minimum(np.searchsorted(table, distinct), len(table) - 1)
    return np.where(table[at] == distinct, at, -1)[inverse]


class CiderD:
    """CIDEr-D of candidate captions against fixed references, document frequencies computed once.

    Args:
        references: ``{video_id: [reference, ...]}``, each reference a list of word tokens; every
            video needs at least one reference. Document frequencies and ``log(len(references))``
            come from these alone.
        n: highest n-gram order (pycocoevalcap uses 4; its ``Cider`` only works with 4).
        sigma: standard deviation of the gaussian length penalty.
    """

    def __init__(self, references: Mapping[str, Sequence[Sequence[str]]], n: int = 4, sigma: float = 6.0):
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if not references:
            raise ValueError("CiderD needs references for at least one video")
        self.n, self.sigma = n, float(sigma)
        self._video_index: dict[str, int] = {}
        self._vocab: dict[str, int] = {}  # word -> id in 1..W (0: not in any reference)
        word, ref_count, ref_words = self._intern(references)
        self._base = len(self._vocab) + 1  # key of an n-gram = prefix id * base + last word id
        ref_of, pos, length = _positions(ref_words)
        gram_refs, gram_ids = self._gram_tables(word, ref_of, pos, length)
        self._index_entries(gram_refs, gram_ids, ref_count, ref_words)

    def _intern(self, references: Mapping[str, Sequence[Sequence[str]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Number the videos and the reference words; returns every reference token's word id end to
        end ``(T,)``, each video's number of references ``(V,)`` and each reference's length ``(R,)``."""
        intern = self._vocab.setdefault
        flat: list[int] = []
        ref_count, ref_words = [], []
        for v, (video_id, refs) in enumerate(references.items()):
            if not refs:
                raise ValueError(f"video {video_id!r} has no references")
            self._video_index[video_id] = v
            ref_count.append(len(refs))
            for ref in refs:
                _check_tokens(ref)
                # len() is evaluated before each setdefault, so a new word gets the next id.
                flat.extend([intern(w, len(self._vocab) + 1) for w in ref])
                ref_words.append(len(ref))
        return (np.asarray(flat, dtype=np.int64), np.asarray(ref_count, dtype=np.int64),
                np.asarray(ref_words, dtype=np.int64))

    def _gram_tables(self, word: np.ndarray, ref_of: np.ndarray, pos: np.ndarray,
                     length: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """N-gram ids, order by order: unique keys of the order's n-grams (``self._tables``), ids after
        the lower orders'. Returns, per order, the reference and the n-gram id of each occurrence."""
        self._tables: list[np.ndarray] = []
        gram_refs, gram_ids = [], []
        prefix = np.zeros(len(word), dtype=np.int64)  # id of the (k-1)-gram starting at each token
        offset = 0
        for k in range(1, self.n + 1):
            at = np.flatnonzero(pos <= length - k)  # tokens that start a k-gram
            keys = word[at] if k == 1 else prefix[at] * self._base + word[at + k - 1]
            table, inverse = np.unique(keys, return_inverse=True)
            self._tables.append(table)
            prefix[at] = offset + inverse
            gram_refs.append(ref_of[at])
            gram_ids.append(offset + inverse)
            offset += len(table)
        self._num_grams = offset
        self._offsets = np.cumsum([0] + [len(t) for t in self._tables])[:-1]  # (n,) first id of each order
        return gram_refs, gram_ids

    def _index_entries(self, gram_refs: list[np.ndarray], gram_ids: list[np.ndarray], ref_count: np.ndarray,
                       ref_words: np.ndarray) -> None:
        """The (video, n-gram) rows of (reference, count) entries, the idf, and every reference's
        tf-idf norms per order and length."""
        n, num_grams, num_refs = self.n, self._num_grams, len(ref_words)
        order = np.repeat(np.arange(n), [len(t) for t in self._tables])  # (G,) 0-based order of each id
        # Each reference's term frequencies, as (reference, n-gram id) -> count entries.
        ref_gram, tf = np.unique(np.concatenate(gram_refs) * num_grams + np.concatenate(gram_ids), return_counts=True)
        ref, gid = ref_gram // num_grams, ref_gram % num_grams  # (E,) sorted by reference
        self._ref_count = ref_count  # (V,)
        self._ref_start = np.cumsum(self._ref_count) - self._ref_count  # (V,) first reference of each video
        video = np.repeat(np.arange(len(ref_count)), ref_count)[ref]  # (E,)
        pair = video * num_grams + gid  # (E,) (video, n-gram) key
        sort = np.argsort(pair, kind="stable")  # stable: a row's entries stay in reference order
        pair, ref, gid, tf = pair[sort], ref[sort], gid[sort], tf[sort]
        self._pair_keys, row_first = np.unique(pair, return_index=True)  # (P,) one row per (video, n-gram)
        self._row_ptr = np.append(row_first, len(pair))  # (P + 1,)
        self._ent_tf = tf.astype(np.int32)  # (E,)
        self._ent_ref = (ref - self._ref_start[video[sort]]).astype(np.int32)  # (E,) reference within its video

        # df: in how many videos' reference sets each n-gram occurs = its number of rows.
        df = np.bincount(gid[row_first], minlength=num_grams)  # (G,)
        self.log_num_videos = float(np.log(float(len(ref_count))))
        self._idf = self.log_num_videos - np.log(np.maximum(1.0, df))  # (G,) >= 0 since df <= V
        norm2 = np.bincount(ref * n + order[gid], weights=(tf * self._idf[gid]) ** 2, minlength=num_refs * n)
        # One extra all-zero reference pads videos with fewer references than the batch's widest.
        self._ref_norm = np.vstack([np.sqrt(norm2).reshape(num_refs, n), np.zeros((1, n))])  # (R + 1, n)
        self._ref_length = np.append(np.maximum(ref_words.astype(np.float64) - 1, 0), 0.0)  # (R + 1,)

    def __len__(self) -> int:
        """Number of videos with references."""
        return len(self._video_index)

    def __contains__(self, video_id: object) -> bool:
        return video_id in self._video_index

    def _word_ids(self, tokens: list[str]) -> np.ndarray:
        """(T,) word ids; a word in no reference gets an id above ``W``, the same one for each of its
        occurrences in this call (so its n-grams are counted right), never matching a reference."""
        ids = np.fromiter(map(self._vocab.get, tokens, repeat(0)), dtype=np.int64, count=len(tokens))
        unseen: dict[str, int] = {}
        for i in np.flatnonzero(ids == 0).tolist():
            ids[i] = self._base + unseen.setdefault(tokens[i], len(unseen))
        return ids

    def score(self, video_ids: Sequence[str], candidates: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of ``candidates[i]`` (a list of word tokens) against the references of
        ``video_ids[i]``; a video id may repeat (k samples per video). Returns a float64 array of
        shape ``(len(candidates),)``. An empty candidate scores 0; an unknown video id is a
        ``KeyError`` naming it."""
        if len(video_ids) != len(candidates):
            raise ValueError(f"{len(video_ids)} video ids for {len(candidates)} candidates")
        for tokens in candidates:
            _check_tokens(tokens)
        try:
            video = np.fromiter(map(self._video_index.__getitem__, video_ids), dtype=np.int64, count=len(video_ids))
        except KeyError as e:
            raise KeyError(f"no references for video id {e.args[0]!r}") from None
        lengths = np.fromiter(map(len, candidates), dtype=np.int64, count=len(candidates))  # (B,)
        cell, gid, tf, idf = self._candidate_grams(lengths, list(chain.from_iterable(candidates)))
        cand_norm = np.sqrt(np.bincount(cell, weights=(tf * idf) ** 2, minlength=len(candidates) * self.n))
        dots = self._dots(video, cell, gid, tf, idf)  # (B, n, W)
        return self._combine(video, lengths, dots, cand_norm.reshape(len(candidates), self.n))

    def _candidate_grams(self, lengths: np.ndarray,
                         tokens: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every distinct n-gram of each candidate and order: its cell (``candidate * n + order``),
        global id (-1: in no reference), term frequency and idf (an unseen one's df counts as 1)."""
        n = self.n
        word = self._word_ids(tokens)  # (T,)
        cand_of, pos, length = _positions(lengths)
        span = len(word) + self._base + 1  # local ids (< T) and word ids (< span) both fit below it
        # Every candidate n-gram: a call-local id (same word sequence, same id) and its global id.
        local, glob, cells = [], [], []
        local_prefix, glob_prefix = np.zeros_like(word), np.zeros_like(word)
        for k in range(1, n + 1):
            at = np.flatnonzero(pos <= length - k)  # tokens that start a k-gram
            last = word[at + k - 1]
            if k == 1:
                lid, gid = last, _lookup(self._tables[0], last)
            else:
                lid = np.unique(local_prefix[at] * span + last, return_inverse=True)[1]
                known = (glob_prefix[at] >= 0) & (last < self._base)
                gid = np.where(known, _lookup(self._tables[k - 1], glob_prefix[at] * self._base + last), -1)
            gid = np.where(gid >= 0, gid + self._offsets[k - 1], -1)
            local_prefix[at], glob_prefix[at] = lid, gid
            local.append(lid)
            glob.append(gid)
            cells.append(cand_of[at] * n + (k - 1))
        # Term frequencies: occurrences of each (candidate, order, local id).
        cell_lid = np.concatenate(cells) * span + np.concatenate(local)
        key, sample, tf = np.unique(cell_lid, return_index=True, return_counts=True)  # (M,)
        cell, gid, tf = key // span, np.concatenate(glob)[sample], tf.astype(np.float64)
        idf = np.where(gid >= 0, self._idf[np.maximum(gid, 0)], self.log_num_videos)
        return cell, gid, tf, idf

    def _dots(self, video: np.ndarray, cell: np.ndarray, gid: np.ndarray, tf: np.ndarray,
              idf: np.ndarray) -> np.ndarray:
        """The clipped dot products ``(B, n, W)`` of each candidate's tf-idf vector per order with
        each reference of its video (``W``: the widest reference set of the batch)."""
        n, num_cands = self.n, len(video)
        # Rows of the (video, n-gram) table the candidate n-grams match, expanded to their entries.
        hit = np.flatnonzero(gid >= 0)
        row = _lookup(self._pair_keys, video[cell[hit] // n] * self._num_grams + gid[hit])
        hit, row = hit[row >= 0], row[row >= 0]  # (H,)
        first, size = self._row_ptr[row], self._row_ptr[row + 1] - self._row_ptr[row]
        owner = np.repeat(hit, size)  # (K,) candidate n-gram of each entry
        entry = np.arange(int(size.sum())) + np.repeat(first - (np.cumsum(size) - size), size)  # (K,)
        ref_tf = self._ent_tf[entry].astype(np.float64)
        # min(tf_c idf, tf_r idf) * tf_r idf == min(tf_c, tf_r) * tf_r * idf^2, since idf >= 0.
        products = np.minimum(tf[owner], ref_tf) * ref_tf * idf[owner] ** 2
        width = int(self._ref_count[video].max(initial=1))  # widest reference set in the batch
        dots = np.bincount(cell[owner] * width + self._ent_ref[entry], weights=products,
                           minlength=num_cands * n * width)  # int64 when nothing matched
        return dots.astype(np.float64, copy=False).reshape(num_cands, n, width)

    def _combine(self, video: np.ndarray, lengths: np.ndarray, dots: np.ndarray, cand_norm: np.ndarray) -> np.ndarray:
        """CIDEr-D from the dot products ``(B, n, W)`` and the candidates' norms ``(B, n)``: cosine
        times length penalty, mean over references and orders, times 10."""
        width = dots.shape[2]
        slot = np.arange(width)
        real = slot[None, :] < self._ref_count[video][:, None]  # (B, W)
        ref_id = np.where(real, self._ref_start[video][:, None] + slot[None, :], len(self._ref_length) - 1)
        denom = cand_norm[:, :, None] * self._ref_norm[ref_id].transpose(0, 2, 1)  # (B, n, W)
        cos = np.divide(dots, denom, out=dots.copy(), where=denom != 0)  # pycocoevalcap: no division by 0
        delta = np.maximum(lengths - 1, 0)[:, None] - self._ref_length[ref_id]  # (B, W) bigram counts
        penalty = np.exp(-(delta ** 2) / (2 * self.sigma ** 2)) * real
        return 10.0 * (cos * penalty[:, None, :]).sum(axis=(1, 2)) / (self.n * self._ref_count[video])
