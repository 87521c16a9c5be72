"""The demo dataset's vocabulary and language: which colours, shapes and motions exist, the
paraphrased captions written for a clip, and the parser that reads them back out of a generated
caption to score attribute accuracy (``caption_attributes``, ``attribute_accuracy``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

COLOURS: list[str] = ["red", "orange", "yellow", "green", "blue", "purple"]
SHAPES: list[str] = ["circle", "square", "triangle", "star", "cross"]
MOTIONS: list[str] = ["left", "right", "up", "down", "grow", "shrink", "still"]
ATTRIBUTE_KEYS = ("colour", "shape", "motion")

# Colour-shape pairs that never occur in train or val, but do in test.
HELD_OUT_PAIRS: list[tuple[str, str]] = [("red", "star"), ("green", "triangle"), ("blue", "cross"),
                                         ("yellow", "square")]


def is_held_out(attributes: Mapping[str, Any]) -> bool:
    """Whether an attribute dict's colour-shape pair is one of ``HELD_OUT_PAIRS``."""
    return (attributes.get("colour"), attributes.get("shape")) in HELD_OUT_PAIRS


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------

# Each motion: (finite verb phrase, participle phrase) paraphrases, all recognised by the parser.
_MOTION_PHRASES: dict[str, list[tuple[str, str]]] = {
    "left": [("moves to the left", "moving to the left"), ("moves left", "moving left"),
             ("heads left", "heading left"), ("slides leftward", "sliding leftward"),
             ("travels to the left", "travelling to the left"), ("drifts left", "drifting left"),
             ("goes from right to left", "going from right to left"), ("glides to the left", "gliding to the left")],
    "right": [("moves to the right", "moving to the right"), ("moves right", "moving right"),
              ("heads right", "heading right"), ("slides rightward", "sliding rightward"),
              ("travels to the right", "travelling to the right"), ("drifts right", "drifting right"),
              ("goes from left to right", "going from left to right"),
              ("glides to the right", "gliding to the right")],
    "up": [("moves up", "moving up"), ("rises", "rising"), ("goes upward", "going upward"),
           ("floats up", "floating up"), ("climbs upward", "climbing upward"), ("travels up", "travelling up"),
           ("goes from bottom to top", "going from bottom to top"), ("slides upward", "sliding upward")],
    "down": [("moves down", "moving down"), ("falls", "falling"), ("sinks", "sinking"),
             ("drops down", "dropping down"), ("slides downward", "sliding downward"), ("descends", "descending"),
             ("goes from top to bottom", "going from top to bottom"), ("travels down", "travelling down")],
    "grow": [("grows", "growing"), ("gets bigger", "getting bigger"), ("expands", "expanding"),
             ("grows larger", "growing larger"), ("becomes larger", "becoming larger"), ("swells", "swelling"),
             ("increases in size", "increasing in size"), ("gets larger", "getting larger")],
    "shrink": [("shrinks", "shrinking"), ("gets smaller", "getting smaller"), ("contracts", "contracting"),
               ("becomes smaller", "becoming smaller"), ("shrinks away", "shrinking away"),
               ("decreases in size", "decreasing in size"), ("dwindles", "dwindling"),
               ("gets smaller and smaller", "getting smaller and smaller")],
    "still": [("stays still", "staying still"), ("does not move", "not moving"),
              ("remains in place", "remaining in place"), ("stays in place", "staying in place"),
              ("sits still", "sitting still"), ("stays put", "staying put"), ("stands still", "standing still"),
              ("remains motionless", "remaining motionless")],
}
_SHAPE_WORDS: dict[str, list[str]] = {
    "circle": ["circle", "circle", "ball", "disc", "round shape"],
    "square": ["square", "square", "box", "block", "square shape"],
    "triangle": ["triangle", "triangle", "triangular shape", "triangle shape"],
    "star": ["star", "star", "star shape", "five-pointed star"],
    "cross": ["cross", "cross", "plus sign", "plus shape", "cross shape"],
}
_BG_PHRASES = ["on a {bg} background", "against a {bg} backdrop", "over a {bg} background",
               "in front of a {bg} background"]
# {np}: "a red ball", {the}: "the red ball", {mv}: finite motion, {ing}: participle, {bg}: background.
_TEMPLATES = [
    "{np} {mv}", "{np} {mv}", "{np} {mv} {bg}", "{np} {mv} {bg}", "{the} {mv}", "{the} {mv} {bg}",
    "there is {np} that {mv}", "in this clip {np} {mv}", "{np} {ing} {bg}", "{np} {ing}",
    "video of {np} {ing}", "a clip showing {np} {ing}", "we see {np} {ing} {bg}", "{np} {mv} {tail}",
]
_TAILS = {"left": ["across the screen", "across the frame"], "right": ["across the screen", "across the frame"],
          "up": ["across the screen", "through the frame"], "down": ["across the screen", "through the frame"],
          "grow": ["over time", "steadily"], "shrink": ["over time", "steadily"],
          "still": ["the whole time", "throughout"]}
MAX_CAPTION_WORDS = 12


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def make_captions(colour: str, shape: str, motion: str, background: str, n: int, rng: np.random.Generator,
                  object_size: float | None = None) -> list[str]:
    """``n`` distinct paraphrases naming the colour, the shape (or a synonym) and the motion;
    some mention the background; each at most ``MAX_CAPTION_WORDS`` words. ``object_size`` (a
    fraction of the frame side) allows a truthful "small"/"big" for objects that keep their size."""
    size_words: list[str] = []
    if object_size is not None and motion not in ("grow", "shrink"):
        size_words = ["small", "little"] if object_size < 0.37 else ["big", "large"] if object_size > 0.43 else []
    captions: list[str] = []
    for _ in range(200):
        if len(captions) == n:
            break
        shape_word = _SHAPE_WORDS[shape][int(rng.integers(len(_SHAPE_WORDS[shape])))]
        words = [colour, shape_word]
        if rng.random() < 0.15:
            words.insert(0, "bright")
        if size_words and rng.random() < 0.4:
            words.insert(0, size_words[int(rng.integers(len(size_words)))])
        noun = " ".join(words)
        mv, ing = _MOTION_PHRASES[motion][int(rng.integers(len(_MOTION_PHRASES[motion])))]
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        bg = _BG_PHRASES[int(rng.integers(len(_BG_PHRASES)))].format(bg=background)
        tail = _TAILS[motion][int(rng.integers(len(_TAILS[motion])))]
        text = template.format(np=_article(noun), the="the " + noun, mv=mv, ing=ing, bg=bg, tail=tail)
        if len(text.split()) <= MAX_CAPTION_WORDS and text not in captions:
            captions.append(text)
    if len(captions) < n:
        raise RuntimeError(f"could only make {len(captions)} distinct captions for {colour} {shape} {motion}")
    return captions


def _compile(table: list[tuple[str, str]]) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(rf"\b(?:{pattern})\b"), value) for pattern, value in table]


_COLOUR_PATTERNS = _compile([(c, c) for c in COLOURS] + [("violet", "purple")])
_SHAPE_PATTERNS = _compile([
    ("circles?|circular|balls?|discs?|disks?|dots?|round", "circle"), ("squares?|box|boxes|blocks?|cube", "square"),
    ("triangles?|triangular", "triangle"), ("stars?|starry", "star"), ("cross|crosses|plus", "cross"),
])
# Tried in order; a match is blanked out before later patterns run, so "from right to left" is
# one leftward motion, and "does not move" never reads as a direction.
_MOTION_PATTERNS = _compile([
    (r"(?:stays?|staying|sits?|sitting|stands?|standing|remains?|remaining|is|keeps?)\s+"
     r"(?:still|in place|put|motionless|stationary|static)", "still"),
    (r"(?:does not|doesn't|do not|don't|is not|isn't|not)\s+(?:move|moves|moving)", "still"),
    (r"motionless|stationary|static|unmoving|without moving", "still"),
    (r"from (?:the )?right to (?:the )?left", "left"), (r"from (?:the )?left to (?:the )?right", "right"),
    (r"from (?:the )?bottom to (?:the )?top", "up"), (r"from (?:the )?top to (?:the )?bottom", "down"),
    (r"(?:increas\w*|grows?|growing) in size", "grow"), (r"(?:decreas\w*|reduc\w*) in size", "shrink"),
    (r"grows?|growing|grew|expands?|expanding|expanded|swells?|swelling|enlarg\w*|bigger|larger", "grow"),
    (r"shrinks?|shrinking|shrank|contracts?|contracting|dwindl\w*|smaller", "shrink"),
    (r"left|leftward|leftwards", "left"), (r"right|rightward|rightwards", "right"),
    (r"up|upward|upwards|rises|rising|rise|rose|climbs?|climbing|ascends?|ascending", "up"),
    (r"down|downward|downwards|falls?|falling|fell|sinks?|sinking|drops?|dropping|descends?|descending", "down"),
])


def _find(patterns: list[tuple[re.Pattern[str], str]], text: str, consume: bool) -> str | None:
    found: set[str] = set()
    for pattern, value in patterns:
        if pattern.search(text):
            found.add(value)
            if consume:
                text = pattern.sub(" | ", text)
    return found.pop() if len(found) == 1 else None


def caption_attributes(caption: str) -> dict[str, str | None]:
    """Which colour, shape and motion a caption names: ``{"colour", "shape", "motion"}``, each
    ``None`` when the caption names none, or names two different ones (ambiguous)."""
    text = " ".join(re.sub(r"[^a-z']+", " ", caption.lower()).split())
    return {"colour": _find(_COLOUR_PATTERNS, text, consume=False),
            "shape": _find(_SHAPE_PATTERNS, text, consume=False),
            "motion": _find(_MOTION_PATTERNS, text, consume=True)}


def _score(pairs: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    result: dict[str, Any] = {"videos": len(pairs)}
    hits = {k: 0 for k in ATTRIBUTE_KEYS + ("all",)}
    for caption, truth in pairs:
        named = caption_attributes(caption)
        ok = [named[k] == truth.get(k) for k in ATTRIBUTE_KEYS]
        for k, good in zip(ATTRIBUTE_KEYS, ok):
            hits[k] += good
        hits["all"] += all(ok)
    for k, v in hits.items():
        result[k] = round(v / len(pairs), 4) if pairs else None
    return result


def attribute_accuracy(predictions: Mapping[str, str], attributes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Share of generated captions that name the right colour / shape / motion / all three.

    Args:
        predictions: video id -> generated caption.
        attributes: video id -> ``{"colour", "shape", "motion", ...}`` (``load_attributes``).
            An id is matched exactly, else by its last path component.

    Returns ``{"colour", "shape", "motion", "all", "videos", "held_out": {...}, "seen_pairs": {...},
    "unmatched"}``: ``held_out`` scores only videos whose colour-shape pair is in
    ``HELD_OUT_PAIRS`` (never seen in training), ``seen_pairs`` the others; ``unmatched`` counts
    predictions with no attributes (left out). Fractions are ``None`` for an empty group.
    """
    by_name = {Path(k).name: v for k, v in attributes.items()}
    pairs, unmatched = [], 0
    for vid, caption in predictions.items():
        truth = attributes.get(vid) or by_name.get(Path(vid).name)
        if truth is None:
            unmatched += 1
            continue
        pairs.append((caption, truth))
    result = _score(pairs)
    result["held_out"] = _score([p for p in pairs if is_held_out(p[1])])
    result["seen_pairs"] = _score([p for p in pairs if not is_held_out(p[1])])
    result["unmatched"] = unmatched
    return result
