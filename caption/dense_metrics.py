"""Dense (time-stamped) captioning scored as the ActivityNet Captions challenge scores it.

What the official evaluator (``ranjaykrishna/densevid_eval``, ``evaluate.py``; its Python 3 port
``wjn922/densevid_val_py3``) reports, reproduced here on already-read tables (the files are read
by ``caption.caption_files``): BLEU-1..4, METEOR, ROUGE-L, CIDEr(-D), Recall and Precision at each
tIoU (0.3 / 0.5 / 0.7 / 0.9) and their mean over the tIoUs, in its units (percent, x100) and under
its names (``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``, ``CIDEr``, ``Recall``, ``Precision``).

The protocol, as the evaluator does it:

* **Videos.** Every video of the reference files (the union when there are several) counts; a
  reference video without predictions scores 0 in every metric; predicted videos that no reference
  file holds are ignored. Each video's predictions are cut to the first ``max_proposals`` (1000).
* **tIoU** of a prediction ``p`` and a reference segment ``g``: ``max(0, min(ends) - max(starts)) /
  (min(max(ends) - min(starts), len(p) + len(g)) + 1e-8)`` (``tiou``).
* **Language metrics at tIoU t.** Every (prediction, reference segment) pair with tIoU >= t, over
  all reference files, is one scored item: the prediction's sentence against that one reference
  sentence. A prediction overlapping none is scored against a random string of 10-20 lower-case
  letters (no word of any caption, so it matches nothing). Sentences have their non-ASCII characters
  replaced by spaces and are tokenised by pycocoevalcap's PTB tokenizer; each video's items are
  scored on their own by pycocoevalcap's ``Bleu(4)``, ``Meteor``, ``Rouge`` and ``Cider`` (so
  CIDEr's document frequencies come from that video's items), and the per-video scores are averaged
  over all reference videos.
* **Recall / Precision at tIoU t** (strict: tIoU > t). Per video and reference file: Recall is the
  share of its reference segments some prediction covers, Precision the share of the predictions
  that cover some segment; the better value over the reference files is kept (each separately),
  then both are averaged over all reference videos. (A video with an empty prediction list gets
  Precision 0; the evaluator would divide by zero there.)

Without Java (METEOR and the PTB tokenizer need it) METEOR is left out with one warning and the PTB
tokenisation is approximated in Python (``caption.metrics.ptb_tokenize_approx``).
"""

from __future__ import annotations

import random
import shutil
import string
import warnings
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from caption.metrics import meteor_session, score_captions, tokenize_captions

TIOUS = (0.3, 0.5, 0.7, 0.9)
MAX_PROPOSALS = 1000
LANGUAGE = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
DETECTION = ("Recall", "Precision")
# the evaluator's names for caption.metrics' names
_NAMES = {"BLEU-1": "Bleu_1", "BLEU-2": "Bleu_2", "BLEU-3": "Bleu_3", "BLEU-4": "Bleu_4",
          "METEOR": "METEOR", "ROUGE-L": "ROUGE_L", "CIDEr": "CIDEr"}


@dataclass(frozen=True)
class DenseCaption:
    """One predicted caption of a video: a sentence and its ``[start, end]`` in seconds."""

    start: float
    end: float
    sentence: str


@dataclass(frozen=True)
class DenseReference:
    """A video's reference segments (``[start, end]`` seconds) and their sentences, one for one."""

    duration: float | None
    segments: tuple[tuple[float, float], ...]
    sentences: tuple[str, ...]


Predictions = Mapping[str, Sequence[DenseCaption]]
References = Mapping[str, DenseReference]


def tiou(prediction: tuple[float, float], reference: tuple[float, float]) -> float:
    """Temporal IoU as the evaluator computes it (its arithmetic, its ``+ 1e-8``; see the module)."""
    p_start, p_end = prediction
    g_start, g_end = reference
    overlap = max(0, min(g_end, p_end) - max(g_start, p_start))
    span = min(max(g_end, p_end) - min(g_start, p_start), g_end - g_start + p_end - p_start)
    return float(overlap) / (span + 1e-8)


def _ascii(text: str) -> str:
    return "".join(c if ord(c) < 128 else " " for c in text)


def detection_scores(predictions: Predictions, references: Sequence[References], threshold: float,
                     max_proposals: int = MAX_PROPOSALS) -> tuple[float, float]:
    """``(recall, precision)`` at one tIoU threshold (strict ``>``), as fractions (module docstring)."""
    vids = _reference_videos(references)
    recall = precision = 0.0
    for vid in vids:
        caps = list(predictions[vid])[:max_proposals] if vid in predictions else None
        best_recall = best_precision = 0.0
        for table in references:
            if vid not in table:
                continue
            segments = table[vid].segments
            hit_refs: set[int] = set()
            hit_preds: set[int] = set()
            for i, cap in enumerate(caps or ()):
                for j, segment in enumerate(segments):
                    if tiou((cap.start, cap.end), segment) > threshold:
                        hit_refs.add(j)
                        hit_preds.add(i)
            if caps:
                best_precision = max(best_precision, len(hit_preds) / len(caps))
            if segments:
                best_recall = max(best_recall, len(hit_refs) / len(segments))
        recall += best_recall
        precision += best_precision
    return recall / len(vids), precision / len(vids)


def _reference_videos(references: Sequence[References]) -> list[str]:
    vids = sorted({vid for table in references for vid in table})
    if not vids:
        raise ValueError("no reference videos to score against")
    return vids


def _garbage(rng: random.Random, vocabulary: set[str]) -> str:
    """The evaluator's stand-in reference for a prediction overlapping nothing: 10-20 random
    lower-case letters, here also never a word of any caption being scored."""
    while True:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(10, 20)))
        if word not in vocabulary:
            return word


def _pairs(caps: Sequence[DenseCaption], vid: str, references: Sequence[References], threshold: float,
           garbage: Iterator[str]) -> tuple[list[str], list[str]]:
    """A video's scored items at one tIoU: (prediction sentences, reference sentences), one for one."""
    hyps: list[str] = []
    refs: list[str] = []
    for cap in caps:
        added = False
        for table in references:
            if vid not in table:
                continue
            ref = table[vid]
            for segment, sentence in zip(ref.segments, ref.sentences):
                if tiou((cap.start, cap.end), segment) >= threshold:
                    hyps.append(cap.sentence)
                    refs.append(sentence)
                    added = True
        if not added:
            hyps.append(cap.sentence)
            refs.append(next(garbage))
    return hyps, refs


def language_scores(predictions: Predictions, references: Sequence[References], threshold: float,
                    max_proposals: int = MAX_PROPOSALS, tokenize: str = "ptb",
                    seed: int = 0) -> dict[str, float]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr at one tIoU threshold (``>=``), as fractions, averaged over
    the reference videos (module docstring). ``seed`` picks the random stand-in references."""
    return _language_all(predictions, references, (threshold,), max_proposals, tokenize, seed)[0]


def _tokenized(predictions: Predictions, references: Sequence[References], vids: list[str],
               tokenize: str) -> dict[str, str]:
    """Every sentence that can be scored -> its tokenised form (one tokenizer call for all)."""
    texts = {cap.sentence for vid in vids for cap in predictions.get(vid, ())}
    texts |= {s for table in references for vid in vids if vid in predictions and vid in table
              for s in table[vid].sentences}
    order = sorted(texts)
    done = tokenize_captions({str(i): [_ascii(t)] for i, t in enumerate(order)}, tokenize)
    return {t: done[str(i)][0] for i, t in enumerate(order)}


def _language_all(predictions: Predictions, references: Sequence[References], tious: Sequence[float],
                  max_proposals: int, tokenize: str, seed: int) -> list[dict[str, float]]:
    vids = _reference_videos(references)
    cut = {vid: list(predictions[vid])[:max_proposals] for vid in vids if vid in predictions}
    tokens = _tokenized(cut, references, vids, tokenize)
    vocabulary = {w for text in tokens.values() for w in text.split()}
    rng = random.Random(seed)
    garbage = iter(lambda: _garbage(rng, vocabulary), None)
    metrics = list(_NAMES) if shutil.which("java") else [m for m in _NAMES if m != "METEOR"]
    if "METEOR" not in metrics:
        warnings.warn("java is not on the PATH; METEOR and the PTB tokenizer need Java: METEOR is left out and "
                      "captions are tokenised with a pure-Python approximation of PTB, so dense scores differ from "
                      "the official evaluator's. Install Java (e.g. openjdk-17-jre) for its numbers.",
                      RuntimeWarning, stacklevel=3)
    out = []
    with meteor_session():
        for threshold in tious:
            sums = {_NAMES[m]: 0.0 for m in metrics}
            for vid, caps in cut.items():
                hyps, refs = _pairs(caps, vid, references, threshold, garbage)
                if not hyps:
                    continue  # an empty prediction list: no items, 0 like a video without predictions
                res = {str(i): tokens[h] for i, h in enumerate(hyps)}
                gts = {str(i): [tokens.get(r, r)] for i, r in enumerate(refs)}
                for name, value in score_captions(res, gts, tokenize="none", metrics=metrics).items():
                    sums[_NAMES[name]] += value
            out.append({name: total / len(vids) for name, total in sums.items()})
    return out


def score_dense(predictions: Predictions, references: Sequence[References], tious: Sequence[float] = TIOUS,
                max_proposals: int = MAX_PROPOSALS, tokenize: str = "ptb", seed: int = 0) -> dict:
    """The evaluator's report ``{"average": {metric: value}, "tIoU": {"0.3": {metric: value}, ...}}``
    in percent (x100), metrics in its order ``Bleu_1`` .. ``Bleu_4``, ``METEOR``, ``ROUGE_L``,
    ``CIDEr``, ``Recall``, ``Precision``.

    Args:
        predictions: ``{video: [DenseCaption, ...]}`` (videos absent from ``references`` are ignored).
        references: one or more ``{video: DenseReference}`` tables (e.g. ``val_1.json`` and ``val_2.json``).
        tious: the thresholds; max_proposals: predictions kept per video (the first ones).
        tokenize: ``"ptb"`` (the evaluator's) or ``"none"`` (whitespace).
        seed: for the random stand-in references (they never change a value; see the module).
    """
    if not tious:
        raise ValueError("give at least one tIoU threshold")
    if max_proposals < 1:
        raise ValueError(f"max_proposals must be at least 1, got {max_proposals}")
    references = list(references)
    language = _language_all(predictions, references, tious, max_proposals, tokenize, seed)
    rows = []
    for threshold, scores in zip(tious, language):
        recall, precision = detection_scores(predictions, references, threshold, max_proposals)
        rows.append({**scores, "Recall": recall, "Precision": precision})
    average = {name: 100 * sum(row[name] for row in rows) / len(rows) for name in rows[0]}
    per_tiou = {str(t): {name: 100 * value for name, value in row.items()} for t, row in zip(tious, rows)}
    return {"average": average, "tIoU": per_tiou}
