"""Fuzz targets: every reader and entry point of ``vcap`` that takes outside input (issue 25), each a
Hypothesis strategy of inputs - near-valid ones with hostile cells (numbers where text belongs, lists
in cells, NaN / inf, ``/``, ``.``, ``..``, NUL, control characters, lone surrogates, 300-byte names,
duplicated ids and columns, BOMs), and any JSON - and the property every input must keep:

    a correct result, or one ``VcapError`` - one line ``vcap: <kind>: ...`` with its documented exit
    code - never another exception (a traceback), never a result whose meaning changed.

The dataset formats are also run through the command line's edge in-process
(``vcap data check --config C``): exit 0 or 1, or the documented code of the error's kind with the
last line of stderr ``vcap: <kind>: ...``.

``tests/test_fuzz_targets.py`` runs each target with ``Target.examples`` examples (the suite stays
fast); ``python -m benchmarks.fuzz --examples N [--target NAME]`` runs them longer and prints what
it finds.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml
from hypothesis import strategies as st

from retrieval_pretrain.foundation.errors import EXIT_CODES, VcapError
from retrieval_pretrain.reading.annotation_table import file_problem
from retrieval_pretrain.reading.annotations import load_annotations
from retrieval_pretrain.reading.data_config import DataConfig
from vcap_toolkit.cli.main import main, one_line


@dataclass(frozen=True)
class Target:
    """One fuzz target: ``check(example, folder)`` asserts the property on one example drawn from
    ``strategy``, in an empty folder of its own; ``examples``: how many the test suite runs, besides
    the ``always`` ones."""

    name: str
    strategy: st.SearchStrategy[Any]
    check: Callable[[Any, Path], None]
    examples: int = 25
    always: tuple[Any, ...] = ()  # examples run every time: what a longer run found, kept as a test


# ----------------------------------------------------------------------------- values

BAD_TEXT = st.sampled_from(["", " ", "/", ".", "..", "../x", "a/b", "a\\b", "a\x00b", "a\nb", "a\tb", "\ufeffv1",
                            "x" * 300, "\ud800", "\udcff", "Train", "validation", "nan", "inf", "-1", "1e999",
                            "007", "é"])
HOSTILE = BAD_TEXT | st.text(max_size=8)
SCALAR = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | HOSTILE)
JSON = st.recursive(SCALAR, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids,
                                                                                      max_size=3), max_leaves=8)


@st.composite
def _pick(draw: Any, valid: tuple[Any, ...], bad: st.SearchStrategy[Any]) -> Any:
    roll = draw(st.integers(0, 9))  # explicit odds: Hypothesis alone would favour the varied JSON
    return draw(st.sampled_from(valid)) if roll < 6 else draw(BAD_TEXT) if roll < 8 else draw(bad)


def cell(*valid: Any) -> st.SearchStrategy[Any]:
    """Six times in ten one of the ``valid`` values, else a hostile one (``BAD_TEXT``, or any JSON):
    a row then has one bad cell or none more often than several, as a real file would."""
    return _pick(valid, JSON)


def text_cell(*valid: str) -> st.SearchStrategy[str]:
    """``cell`` for a place that can only hold text (a dictionary key, a line of a text file)."""
    return _pick(valid, st.text(max_size=8))


def rarely(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual``, or about one time in eight ``odd`` (a whole file or header that is wrong: most
    examples must get past it, to the rows)."""
    return st.integers(0, 7).flatmap(lambda roll: usual if roll else odd)


def near(row: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A row as ``row`` draws it, or (about one time in eight) any JSON value in its place."""
    return rarely(row, JSON)


def _error_kinds() -> dict[int, str]:
    out: dict[int, str] = {}
    todo = list(VcapError.__subclasses__())
    while todo:
        cls = todo.pop()
        out.setdefault(cls.exit_code, cls.kind)
        todo += cls.__subclasses__()
    return out


KIND = _error_kinds()  # exit code -> the kind the one line names


def write_text(path: Path, text: str) -> Path:
    """``text`` as UTF-8 (a lone surrogate written as its bytes: a file that is not valid UTF-8)."""
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


def write_csv(path: Path, rows: list[list[Any]]) -> Path:
    out = io.StringIO()
    csv.writer(out).writerows([[str(c) for c in row] for row in rows])
    return write_text(path, out.getvalue())


def json_text(value: Any) -> str:
    return json.dumps(value)  # ASCII: lone surrogates and NUL as escapes, NaN / Infinity as JavaScript writes them


def refusal(err: BaseException) -> None:
    """The property of a refusal: a ``VcapError`` with a documented exit code, printable as one line."""
    assert isinstance(err, VcapError), f"not a vcap error: {type(err).__name__}: {err}"
    assert err.exit_code in EXIT_CODES and one_line(err).startswith(f"vcap: {err.kind}: ")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``vcap ARGV`` in this process: (exit code, stdout, stderr). An exception escaping ``main`` is a
    traceback the user would see: it propagates (the property fails)."""
    # as Python sets them up in a UTF-8 locale: stdout strict (a lone surrogate there is a traceback),
    # stderr with backslash escapes
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors=errors, write_through=True)
                for errors in ("strict", "backslashreplace"))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's usage error
            code = e.code if isinstance(e.code, int) else 2
    return code, out.buffer.getvalue().decode(), err.buffer.getvalue().decode()


def cli_property(argv: list[str], allowed: tuple[int, ...] = (0, 1)) -> int:
    """``vcap ARGV`` ends in one of ``allowed``, or with a documented code whose last stderr line is
    ``vcap: <kind>: ...`` (argparse's usage error: code 2 and a ``usage:`` text)."""
    code, _, err = run_cli(argv)
    if code in allowed:
        return code
    assert code in EXIT_CODES and code != 0, f"exit {code}: {err[-500:]}"
    last = (err.strip().splitlines() or [""])[-1]
    assert "Traceback" not in err, err[-2000:]
    assert last.startswith(f"vcap: {KIND.get(code, '')}") or ("usage:" in err and code == 2), f"exit {code}: {last}"
    return code


# ----------------------------------------------------------------------------- the dataset property


def _inside(path: Path, folder: Path) -> bool:
    p, f = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(folder))
    return p == f or p.startswith(f.rstrip(os.sep) + os.sep)


def dataset_property(data: dict[str, Any], folder: Path, labelled: bool = False) -> None:
    """``load_annotations`` gives entries that can be used (or refuses the dataset with one named
    error), and ``vcap data check`` on the same config ends as documented."""
    data = {"videos": str(folder / "videos"), **data}
    Path(data["videos"]).mkdir(exist_ok=True)  # there: what is looked up in it is stat()ed for real
    cfg = DataConfig(**data)
    refused: VcapError | None = None
    try:
        ann = load_annotations(cfg, warn=False)
    except Exception as e:  # the property: only a named error
        refusal(e)
        refused = e  # type: ignore[assignment]
    else:
        for e in ann.entries:
            assert isinstance(e.video_id, str) and e.video_id.strip() and isinstance(e.split, str) and e.split.strip()
            assert e.captions and all(isinstance(c, str) and c.strip() for c in e.captions), e
            assert e.path.name not in ("", ".", "..") and "\x00" not in str(e.path), e
            assert not labelled or (isinstance(e.label, str) and e.label.strip() and e.captions == [e.label]), e
            file_problem(e.path)  # what data check and training ask of each entry next: no exception
        outside = [e for e in ann.entries if not _inside(e.path, Path(cfg.videos))]
        assert len(outside) == len(ann.outside), (outside, ann.outside)
        for q in ann.problems + ann.outside:
            assert isinstance(q.source, str) and q.source and "\n" not in q.source + q.reason, q
    config = folder / "fuzz.yaml"
    config.write_text(yaml.safe_dump({"data": data}))
    code = cli_property(["data", "check", "--config", str(config)])
    assert refused is None or code == refused.exit_code, (code, refused)


# ----------------------------------------------------------------------------- the formats

ID = cell("video1", "video7010", " video2 ", "vid1", "vid2")
TEXT_ID = text_cell("video1", "video7010", " video2 ", "vid1", "vid2")
CAPTION = cell("a cat sits", "a dog runs", "A man is cooking.")
SPLIT = cell("train", "validate", "test")
CAPTIONS = near(st.lists(CAPTION, min_size=1, max_size=2))


def _jsonl(example: Any, folder: Path) -> None:
    lines = [r if isinstance(r, str) and not r.startswith("{") else json_text(r) for r in example]
    f = write_text(folder / "ann.jsonl", "\n".join(lines) + "\n")
    dataset_property({"format": "jsonl", "annotations": str(f)}, folder)


_JSONL = st.lists(near(st.fixed_dictionaries({"video": cell("a.mp4", "d/b.avi", "../up.mp4"), "captions": CAPTIONS,
                                              "split": SPLIT})) | st.text(max_size=20), max_size=5)


def _msrvtt(example: Any, folder: Path) -> None:
    f = write_text(folder / "videodatainfo.json", json_text(example))
    dataset_property({"format": "msrvtt", "annotations": str(f)}, folder)


_MSRVTT = near(st.fixed_dictionaries({
    "videos": st.lists(near(st.fixed_dictionaries({"video_id": ID, "split": SPLIT})), max_size=4),
    "sentences": st.lists(near(st.fixed_dictionaries({"video_id": ID, "caption": CAPTION})), max_size=5)}))


def _clip4clip(example: Any, folder: Path) -> None:
    header, rows, sentences, raw = example
    f = folder / "split.csv"
    rows = [[row.get(c, "") for c in header] if isinstance(row, dict) else row for row in rows]  # dict: by header
    write_text(f, raw) if raw is not None else write_csv(f, [header, *rows])
    data: dict[str, Any] = {"format": "msrvtt-clip4clip", "split_files": {"test": str(f)}}
    if sentences is not None:
        data["annotations"] = str(write_text(folder / "MSRVTT_data.json", json_text({"sentences": sentences})))
    dataset_property(data, folder)


_CLIP4CLIP = st.tuples(
    rarely(st.sampled_from([["video_id", "sentence"], ["key", "vid_key", "video_id", "sentence"], ["video_id"]]),
           st.sampled_from([["video_id", "video_id"], ["sentence"], ["\ufeffvideo_id"]])),
    st.lists(rarely(st.fixed_dictionaries({"key": st.just("k"), "vid_key": st.just("vk"), "video_id": ID,
                                           "sentence": CAPTION}), st.lists(ID | CAPTION, min_size=1, max_size=5)),
             max_size=5),
    st.none() | st.lists(near(st.fixed_dictionaries({"video_id": ID, "caption": CAPTION})), max_size=3),
    rarely(st.none(), st.text(max_size=40)))


def _msvd(example: Any, folder: Path) -> None:
    raw, lists, mapping = example
    p = folder / "raw-captions.pkl"
    p.write_bytes(raw if isinstance(raw, bytes) else pickle.dumps(raw))
    split_files = {s: str(write_text(folder / f"{s}_list.txt", "\n".join(map(str, ids)))) for s, ids in lists.items()}
    if mapping is not None:
        split_files["youtube_mapping"] = str(write_text(folder / "youtube_mapping.txt",
                                                        "\n".join(" ".join(map(str, m)) for m in mapping)))
    dataset_property({"format": "msvd", "annotations": str(p), "split_files": split_files}, folder)


_TOKENS = st.lists(near(st.lists(cell("a", "cat", "is", "running"), min_size=1, max_size=3)), min_size=1, max_size=3)
_MSVD = st.tuples(
    rarely(st.dictionaries(TEXT_ID, rarely(_TOKENS, CAPTION | JSON), max_size=4), st.binary(max_size=30) | JSON),
    st.dictionaries(st.sampled_from(["train", "val", "test"]), st.lists(TEXT_ID, max_size=4), min_size=1, max_size=2),
    st.none() | st.lists(st.tuples(text_cell("yt1_5_15", "yt2_0_9"), TEXT_ID) | st.lists(TEXT_ID, max_size=3),
                         max_size=3))


def _vatex(example: Any, folder: Path) -> None:
    items, per_split = example
    f = write_text(folder / "vatex.json", json_text(items))
    data = {"format": "vatex", **({"split_files": {"train": str(f)}} if per_split else {"annotations": str(f)})}
    dataset_property(data, folder)


_VATEX = st.tuples(near(st.lists(near(st.fixed_dictionaries({"videoID": ID, "enCap": CAPTIONS},
                                                           optional={"split": SPLIT})), max_size=4)), st.booleans())


def _labels(example: Any, folder: Path) -> None:
    rows, as_csv = example
    if as_csv:
        f = write_csv(folder / "labels.csv", [["video", "label", "split"],
                                              *[[r.get(k, "") for k in ("video", "label", "split")] for r in rows]])
    else:
        f = write_text(folder / "labels.jsonl", "\n".join(json_text(r) for r in rows) + "\n")
    dataset_property({"format": "labels", "annotations": str(f)}, folder, labelled=True)


_LABELS = st.tuples(st.lists(st.fixed_dictionaries(
    {"video": cell("a.mp4", "s/b.avi", "c.webm"), "label": cell("running", "abseiling"), "split": SPLIT}),
    max_size=5), st.booleans())


def _kinetics(example: Any, folder: Path) -> None:
    f = write_csv(folder / "kinetics.csv", [["label", "youtube_id", "time_start", "time_end", "split"], *example])
    dataset_property({"format": "kinetics", "annotations": str(f)}, folder, labelled=True)


_TIME = cell("3", "13", "0", "3.5") | st.sampled_from(["inf", "nan", "-1", "1e300", "999999"]) | st.floats().map(str)
_KINETICS = st.lists(st.tuples(cell("abseiling", "arm wrestling"), cell("xyz", "-abc_1", "q"), _TIME, _TIME, SPLIT)
                     .map(list) | st.lists(HOSTILE, max_size=6), max_size=5)


def _ucf101(example: Any, folder: Path) -> None:
    classes, lines = example
    ind = write_text(folder / "classInd.txt", "\n".join(" ".join(map(str, c)) for c in classes))
    lst = write_text(folder / "trainlist01.txt", "\n".join(lines))
    dataset_property({"format": "ucf101", "annotations": str(ind), "split_files": {"train": str(lst)}}, folder,
                     labelled=True)


_CLASS = cell("ApplyEyeMakeup", "YoYo")
_UCF101 = st.tuples(
    rarely(st.just([("1", "ApplyEyeMakeup"), ("2", "YoYo")]), st.lists(st.tuples(
        cell("1", "2") | st.sampled_from(["٣", "x", "99999999999999999999"]), _CLASS) | st.lists(HOSTILE, max_size=3),
        max_size=4)),
    st.lists(st.tuples(_CLASS, cell("v_a.avi", "v_b.avi") | st.sampled_from(["..", "", "x/y.avi"]),
                       cell("", " 1", " 2") | st.sampled_from([" 7", " x", " 1 2"]))
             .map(lambda t: f"{t[0]}/{t[1]}{t[2]}") | HOSTILE, max_size=5))


def _hmdb51(example: Any, folder: Path) -> None:
    split_dir = folder / "splits"
    split_dir.mkdir()
    for name, lines in example.items():
        write_text(split_dir / f"{name}_test_split1.txt", "\n".join(lines))
    dataset_property({"format": "hmdb51", "annotations": str(split_dir / "*_test_split1.txt")}, folder, labelled=True)


_HMDB_CLASS = rarely(st.sampled_from(["brush_hair", "wave", "ride_bike"]), st.sampled_from(
    ["", "..", " ", "é", "x" * 200]) | st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)),
                                                max_size=8))
_HMDB51 = st.dictionaries(_HMDB_CLASS, st.lists(st.tuples(cell("a.avi", "b.avi"), cell("0", "1", "2"))
                                                .map(lambda t: f"{t[0]} {t[1]}") | HOSTILE, max_size=4), max_size=3)


def _hf(example: Any, folder: Path) -> None:
    rows, kind = example
    if kind == "parquet":
        import pyarrow as pa  # deferred: the hf target only
        import pyarrow.parquet as pq  # deferred: the hf target only

        def text(v: Any) -> str | None:
            return None if v is None else str(v).encode("utf-8", "replace").decode("utf-8")

        table = pa.table({"video": [text(r["video"]) for r in rows],
                          "captions": pa.array([[text(c) for c in r["captions"]] if isinstance(r["captions"], list)
                                                else [text(r["captions"])] for r in rows], pa.list_(pa.string())),
                          "split": [text(r["split"]) for r in rows]})
        pq.write_table(table, folder / "t.parquet")
        f = folder / "t.parquet"
    elif kind == "csv":
        f = write_csv(folder / "t.csv", [["video", "captions", "split"],
                                          *[[r["video"], r["captions"], r["split"]] for r in rows]])
    else:
        f = write_text(folder / f"t.{kind}", "\n".join(json_text(r) for r in rows) + "\n" if kind == "jsonl"
                       else json_text(rows))
    dataset_property({"format": "hf", "annotations": str(f)}, folder)


_HF = st.tuples(st.lists(st.fixed_dictionaries({
    "video": cell("a.mp4", "b", "clips/c.mp4"), "captions": CAPTIONS | CAPTION, "split": SPLIT}), max_size=4),
    st.sampled_from(["jsonl", "json", "csv", "parquet"]))


_ROW = {"captions": ["a cat sits"], "split": "train"}
# ``always``: what longer runs found (each was a traceback or a misleading line before its fix)
FORMAT_TARGETS = [
    Target("jsonl", _JSONL, _jsonl, 40, always=([{"video": "x" * 300, **_ROW}],  # vcap data check: ENAMETOOLONG
                                                [{"video": "a.mp4", **_ROW, "split": "a\nb"}])),  # a line break
    Target("msrvtt", _MSRVTT, _msrvtt, 40, always=(
        {"videos": [{"video_id": "y" * 5000, "split": "train"}], "sentences": []},  # ENAMETOOLONG while reading
        {"videos": [], "sentences": [{"video_id": "a\nb", "caption": "a cat"}]})),
    Target("msrvtt-clip4clip", _CLIP4CLIP, _clip4clip, 40, always=(
        (["video_id", "sentence"], [["v1", "a" * 200_000]], None, None),)),  # csv.Error: field larger than limit
    Target("msvd", _MSVD, _msvd, 40),
    Target("vatex", _VATEX, _vatex, 40),
    Target("labels", _LABELS, _labels, 25, always=(([{"video": "a.mp4", "label": "run", "split": "a\nb"}], False),)),
    Target("kinetics", _KINETICS, _kinetics, 30, always=([["run", "q", "0", "1e300", "train"]],)),  # ENAMETOOLONG
    Target("ucf101", _UCF101, _ucf101, 40),
    Target("hmdb51", _HMDB51, _hmdb51, 30, always=({"0\n": ["a.avi 1"]},)),
    Target("hf", _HF, _hf, 12, always=(([{"video": "x" * 300, **_ROW}], "parquet"),)),  # ENAMETOOLONG
]
