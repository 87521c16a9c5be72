"""Caption metrics as the papers report them: BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D) by pycocoevalcap.

The scorers are pycocoevalcap's own (the coco-caption code every captioning paper uses):
``Bleu(4)`` (Papineni et al. 2002, "closest" reference length), ``Meteor`` (Denkowski and Lavie
2014, METEOR 1.5 jar, ``-l en -norm``), ``Rouge`` (ROUGE-L F, beta 1.2, Lin 2004) and ``Cider``
(CIDEr-D, Vedantam et al. 2015; document frequencies come from the references of the set being
scored, so a one-item set always scores 0). Corpus BLEU and METEOR are computed from pooled
statistics, ROUGE-L and CIDEr are means over items.

Tokenisation (``tokenize``):

* ``"ptb"`` (default, as the papers): pycocoevalcap's ``PTBTokenizer`` (Stanford PTBTokenizer in
  Java, lower-cased, punctuation tokens removed).
* ``"none"``: whitespace split only (what nlg-eval's reference values use).

Java runs both the PTB tokenizer and METEOR. Without ``java`` on the PATH, ``score_captions``
warns, leaves METEOR out of the result, and tokenises ``"ptb"`` with ``ptb_tokenize_approx``, a
pure-Python approximation (see there). Scores then differ slightly from the papers' protocol.

METEOR starts a Java process that first loads its paraphrase tables (7-15 s); it is always closed
after scoring, or, inside ``with meteor_session():``, reused by every call in the block and closed
at its end (``meteor_session(start=True)`` starts it on entering the block). Its stderr is drained
by a thread so a chatty JVM can never fill the pipe and hang the request/response protocol (checked on 3,000 and 10,000 items x 20 references; MSR-VTT's test
split has 2,990 videos x 20).

The files ``vcap score`` reads are ``caption.caption_files``'.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import subprocess
import threading
import warnings
from collections import deque
from typing import Iterator, Mapping, Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer

from retrieval_pretrain.foundation.errors import DatasetError

METRICS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
TOKENIZERS = ("ptb", "none")

# ----------------------------------------------------------------------------- tokenisation

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "gotta": ["got", "ta"],
                "wanna": ["wan", "na"], "gimme": ["gim", "me"], "lemme": ["lem", "me"]}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "jr", "sr", "st", "co", "inc", "ltd", "vs", "etc", "mt", "prof"}
_CLITIC = re.compile(r"^(.+?)(n't|'s|'m|'d|'re|'ve|'ll)$")
_DROP = set(PUNCTUATIONS)


def ptb_tokenize_approx(text: str) -> str:
    """A pure-Python stand-in for coco-caption's PTB tokenisation (used only without Java).

    Mirrors ``java edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`` followed by
    pycocoevalcap's removal of punctuation tokens, on ordinary caption text: lower-case; quotes
    (``"``, leading/trailing ``'``, `````) and ``. , ; : ! ? ... - --`` tokens are dropped;
    clitics are split (``don't`` -> ``do n't``, ``man's`` -> ``man 's``, ``cannot`` -> ``can
    not``); ``$ # %`` become tokens; brackets become ``-lrb-``/``-rrb-``/``-lsb-``/... tokens, which
    coco-caption keeps (its list has the upper-case forms, the tokenizer writes lower-case ones);
    a word keeps its final period only if it is an abbreviation (``u.s.``, ``mr.``, one letter);
    commas and colons inside numbers (``10,000``, ``10:30``) and hyphens/slashes inside words stay.
    Known differences from Java: rare constructions (``rock'n'roll``, ``y'all``, ``!!``, periods
    glued between words) and Unicode quote/dash variants.
    """
    text = text.lower().replace("\n", " ").replace("\r", " ")
    for bracket, name in _BRACKETS.items():
        text = text.replace(bracket, f" {name} ")
    text = re.sub(r'["`]', " ", text)  # quotes become `` / '' tokens, which are dropped
    text = re.sub(r"\.{2,}", " ... ", text)  # ellipsis
    text = re.sub(r"--+", " -- ", text)
    text = re.sub(r"([!?]+)", r" \1 ", text)  # runs stay one token ("?!")
    text = re.sub(r"(?<!\d)([,:])|([,:])(?!\d)", lambda m: f" {m.group(0)} ", text)
    text = re.sub(r"([;%$#&])", r" \1 ", text)
    tokens: list[str] = []
    for word in text.split():
        tokens.extend(_split_word(word))
    return " ".join(t for t in tokens if t not in _DROP)


def _split_word(word: str) -> list[str]:
    if word in _SPLIT_WORDS:
        return list(_SPLIT_WORDS[word])
    head: list[str] = []
    tail: list[str] = []
    while len(word) > 1 and word[0] == "'" and not _CLITIC.match(word):
        head.append("`")  # opening single quote
        word = word[1:]
    while len(word) > 1 and word.endswith("'") and not word.endswith("n't"):
        tail.insert(0, "'")  # closing quote or plural possessive (boys')
        word = word[:-1]
    if word.endswith(".") and len(word) > 1:
        stem = word[:-1]
        if not ("." in stem or stem in _ABBREVIATIONS or len(stem) == 1):
            tail.insert(0, ".")
            word = stem
    m = _CLITIC.match(word)
    core = [m.group(1), m.group(2)] if m and len(word) > len(m.group(2)) else [word]
    return head + core + tail


def _tokenize(captions: Mapping[str, Sequence[str]], tokenize: str, java: bool) -> dict[str, list[str]]:
    """``{id: [tokenised caption, ...]}`` (tokens joined by single spaces)."""
    if tokenize == "none":
        return {k: [" ".join(c.split()) for c in v] for k, v in captions.items()}
    if not java:
        return {k: [ptb_tokenize_approx(c) for c in v] for k, v in captions.items()}
    # Blank captions are left out of the Java call: trailing empty lines would shift its output.
    todo = {k: [{"caption": " ".join(c.split())} for c in v if c.strip()] for k, v in captions.items()}
    todo = {k: v for k, v in todo.items() if v}
    done = PTBTokenizer().tokenize(todo) if todo else {}
    out: dict[str, list[str]] = {}
    for k, v in captions.items():
        it = iter(done.get(k, []))
        out[k] = [next(it) if c.strip() else "" for c in v]
    return out


def tokenize_captions(captions: Mapping[str, Sequence[str]], tokenize: str = "ptb") -> dict[str, list[str]]:
    """Tokenise ``{id: [caption, ...]}`` the way ``score_captions`` does before scoring (tokens joined
    by single spaces): ``"ptb"`` with Java's PTBTokenizer (``ptb_tokenize_approx`` without Java,
    silently), ``"none"`` whitespace only."""
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize must be one of {', '.join(TOKENIZERS)}, got {tokenize!r}")
    return _tokenize({str(k): list(v) for k, v in captions.items()}, tokenize, shutil.which("java") is not None)


# ----------------------------------------------------------------------------- METEOR (Java)

class _MeteorProcess:
    """pycocoevalcap's ``Meteor`` with its Java process closed deterministically and its stderr drained."""

    def __init__(self) -> None:
        self.scorer = Meteor()
        self.proc: subprocess.Popen = self.scorer.meteor_p
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._drain = threading.Thread(target=self._read_stderr, name="meteor-stderr", daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, b""):
            self.stderr_tail.append(line.decode("utf-8", "replace").rstrip())

    def score(self, gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
        clean = lambda s: " ".join(s.replace("|||", " ").split())  # noqa: E731 - the protocol's separator/newline
        gts = {k: [clean(r) for r in v] for k, v in gts.items()}
        res = {k: [clean(v[0])] for k, v in res.items()}
        try:
            score, scores = self.scorer.compute_score(gts, res)
        except BaseException as err:
            # pycocoevalcap's compute_score raises (a dead JVM, Ctrl-C) still holding its lock, which
            # close() and the scorer's __del__ take: released here, or both would wait for ever
            if self.scorer.lock.locked():
                self.scorer.lock.release()
            if not isinstance(err, (ValueError, OSError)):
                raise
            self.close()
            tail = "\n".join(self.stderr_tail) or "(nothing on stderr)"
            raise RuntimeError(f"METEOR (java -jar meteor-1.5.jar) failed: {err}\n{tail}") from err
        return float(score), [float(s) for s in scores]

    def close(self) -> None:
        """End the Java process (EOF on stdin, then kill if it lingers) and release the pipes."""
        with self.scorer.lock:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._drain.join(timeout=5)
            self.proc.stdout.close()
            self.proc.stderr.close()


_sessions: list[_MeteorProcess | None] = []  # one slot per open ``meteor_session`` block, innermost last


@contextlib.contextmanager
def meteor_session(start: bool = False) -> Iterator[None]:
    """Reuse one METEOR Java process for every ``score_captions`` call in the block (started on first
    use, closed on exit). Without a session each call starts and closes its own.

    ``start``: start the process on entering (where ``java`` is on the PATH), so that its start-up -
    seconds of loading the paraphrase table, in its own process - overlaps whatever the block does
    before its first score (``vcap demo`` enters before it loads torch). If that start fails, the
    first score starts it again and reports the failure."""
    started = None
    if start and shutil.which("java") is not None:
        with contextlib.suppress(OSError):
            started = _MeteorProcess()
    _sessions.append(started)
    try:
        yield
    except BaseException:
        # an error or Ctrl-C in the block: no score is coming, so the process is killed rather than
        # waited for (a JVM still loading its tables reads its closed input only once loaded, seconds)
        if _sessions[-1] is not None:
            _sessions[-1].proc.kill()
        raise
    finally:
        proc = _sessions.pop()
        if proc is not None:
            proc.close()


def _meteor(gts: dict[str, list[str]], res: dict[str, list[str]]) -> tuple[float, list[float]]:
    if _sessions:
        if _sessions[-1] is None:
            _sessions[-1] = _MeteorProcess()
        try:
            return _sessions[-1].score(gts, res)
        except RuntimeError:
            _sessions[-1] = None  # closed by ``score``; the next call starts a fresh one
            raise
    proc = _MeteorProcess()
    try:
        return proc.score(gts, res)
    finally:
        proc.close()


# ----------------------------------------------------------------------------- scoring

def _check(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    if not predictions:
        raise DatasetError("no predictions to score")
    extra = sorted(set(predictions) - set(references))
    missing = sorted(set(references) - set(predictions))
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} prediction id(s) have no references: {', '.join(extra[:10])}")
        if missing:
            parts.append(f"{len(missing)} reference id(s) have no prediction: {', '.join(missing[:10])}")
        raise DatasetError("predictions and references do not cover the same ids; " + "; ".join(parts))
    no_refs = sorted(k for k, v in references.items() if not v)
    if no_refs:
        raise DatasetError(f"{len(no_refs)} id(s) have an empty reference list: {', '.join(no_refs[:10])}")
    bad = sorted(k for k, v in predictions.items() if not isinstance(v, str))
    if bad:
        raise DatasetError(f"predictions must be strings; not for id(s) {', '.join(bad[:10])}")


def _score(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]], tokenize: str,
           metrics: Sequence[str]) -> tuple[dict[str, float], dict[str, list[float]], list[str]]:
    """Corpus scores, per-item scores (in ``ids`` order) and the ids."""
    if tokenize not in TOKENIZERS:
        raise ValueError(f"tokenize must be one of {', '.join(TOKENIZERS)}, got {tokenize!r}")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
    predictions = {str(k): v for k, v in predictions.items()}
    references = {str(k): list(v) for k, v in references.items()}
    _check(predictions, references)
    wanted = set(metrics)
    java = shutil.which("java") is not None
    if not java and (tokenize == "ptb" or "METEOR" in wanted):
        done = ["METEOR is left out"] if "METEOR" in wanted else []
        done += ["captions are tokenised with a pure-Python approximation of PTB"] if tokenize == "ptb" else []
        warnings.warn(f"java is not on the PATH; METEOR and the PTB tokenizer need Java: {' and '.join(done)}, "
                      "so scores differ from the papers' protocol. Install Java (e.g. openjdk-17-jre) for the "
                      "standard numbers.", RuntimeWarning, stacklevel=3)
        wanted.discard("METEOR")
    ids = list(references)
    gts = _tokenize({k: references[k] for k in ids}, tokenize, java)
    res = _tokenize({k: [predictions[k]] for k in ids}, tokenize, java)
    corpus: dict[str, float] = {}
    per_item: dict[str, list[float]] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocoevalcap's Bleu prints its statistics
        if wanted & {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"}:
            score, scores = Bleu(4).compute_score(gts, res, verbose=0)
            for n in range(4):
                corpus[f"BLEU-{n + 1}"] = float(score[n])
                per_item[f"BLEU-{n + 1}"] = [float(s) for s in scores[n]]
        if "METEOR" in wanted:
            corpus["METEOR"], per_item["METEOR"] = _meteor(gts, res)
        if "ROUGE-L" in wanted:
            score, scores = Rouge().compute_score(gts, res)
            corpus["ROUGE-L"], per_item["ROUGE-L"] = float(score), [float(s) for s in scores]
        if "CIDEr" in wanted:
            score, scores = Cider().compute_score(gts, res)
            corpus["CIDEr"], per_item["CIDEr"] = float(score), [float(s) for s in scores]
    order = [m for m in METRICS if m in corpus]
    return {m: corpus[m] for m in order}, {m: per_item[m] for m in order}, ids


def score_captions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                   tokenize: str = "ptb", metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Corpus scores ``{"BLEU-1": .., "BLEU-2": .., "BLEU-3": .., "BLEU-4": .., "METEOR": ..,
    "ROUGE-L": .., "CIDEr": ..}`` of ``predictions`` (``{id: caption}``) against ``references``
    (``{id: [caption, ...]}``).

    Args:
        predictions, references: must cover exactly the same ids (else ``ValueError`` naming them).
        tokenize: ``"ptb"`` (pycocoevalcap's PTBTokenizer, as the papers) or ``"none"`` (whitespace).
        metrics: the subset to compute (e.g. ``("CIDEr",)`` for quick validation).

    Without Java, METEOR is left out (with a ``RuntimeWarning``); see the module docstring.
    """
    return _score(predictions, references, tokenize, metrics)[0]


def per_caption_cider(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]],
                      tokenize: str = "ptb") -> dict[str, float]:
    """Each item's CIDEr-D ``{id: value}`` (document frequencies from the whole set's references)."""
    _, per_item, ids = _score(predictions, references, tokenize, ("CIDEr",))
    return dict(zip(ids, per_item["CIDEr"]))
