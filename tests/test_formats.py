"""The dataset formats are one table (``retrieval_pretrain.reading.formats.FORMATS``) that the
loader, the config check, ``vcap data check --help`` and README.md all read: a format added to the
table is loadable, accepted by the config and listed in the help at once, and README.md names
every format in the table and none other."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from caption.config import load
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.reading import formats
from retrieval_pretrain.reading.annotations import AnnotationError, load_annotations
from retrieval_pretrain.reading.data_config import DataConfig
from retrieval_pretrain.reading.formats import FORMATS, Format
from vcap_toolkit.cli.parser import build_parser

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN, END = "<!-- data.format table:", "<!-- end of the data.format table -->"


def _readme_rows() -> list[str]:
    text = README.read_text()
    assert BEGIN in text and END in text, f"README.md lost its table of formats ({BEGIN} ... {END})"
    block = text[text.index(BEGIN):text.index(END)].splitlines()
    rule = next(i for i, line in enumerate(block) if line.startswith("|---"))  # below the header row
    return [line for line in block[rule + 1:] if line.startswith("|")]


def test_the_table_is_the_formats_of_today():
    assert list(FORMATS) == ["msrvtt", "msrvtt-clip4clip", "msvd", "vatex", "activitynet", "youcook2", "jsonl", "hf",
                             "labels", "kinetics", "ucf101", "hmdb51"]
    assert all(name == f.name and callable(f.read) and f.summary and "\n" not in f.summary
               for name, f in FORMATS.items())
    assert {n for n, f in FORMATS.items() if f.labelled} == {"labels", "kinetics", "ucf101", "hmdb51"}
    assert {n for n, f in FORMATS.items() if f.split_files} == {"msrvtt-clip4clip", "msvd", "vatex", "activitynet", "kinetics",
                                                                "ucf101"}


def test_readme_lists_every_format_and_none_unknown():
    named = [re.match(r"\| `([^`]+)`", row).group(1) for row in _readme_rows()]
    assert sorted(named) == sorted(FORMATS), (f"README.md's table of formats names {named}; the table "
                                              f"(retrieval_pretrain/reading/formats.py) has {list(FORMATS)}")
    assert _readme_rows() == formats.markdown_rows(), \
        "README.md's table of formats differs from the table; paste these rows:\n" + "\n".join(formats.markdown_rows())
    # every data.format=X / data.format: X elsewhere in README is a format of the table
    used = set(re.findall(r"data\.format[=:] ?`?([A-Za-z0-9_-]+)", README.read_text()))
    assert used and used <= set(FORMATS), used - set(FORMATS)


def test_readme_labelled_paragraph_names_the_labelled_formats():
    text = README.read_text()
    para = text[text.index("**Labelled datasets** (`data.format`)"):].split("\n\n")[0]
    named = {n for n in re.findall(r"`([a-z0-9-]+)`", para) if n in FORMATS}
    assert named == {n for n, f in FORMATS.items() if f.labelled}


def test_the_config_check_reads_the_table(monkeypatch):
    with pytest.raises(ConfigError) as err:
        load(None, ["data.format=coco"])
    assert str(err.value) == f"data.format: 'coco' is not one of {', '.join(FORMATS)}"
    assert load(None, ["data.format=hmdb51"]).data.format == "hmdb51"
    monkeypatch.setitem(FORMATS, "toy", Format("toy", lambda data, table: None, "a toy format"))
    assert load(None, ["data.format=toy"]).data.format == "toy"  # a row in the table is a valid choice


def test_the_loader_dispatches_through_the_table(monkeypatch, tmp_path):
    seen = []

    def read_toy(data: DataConfig, table) -> None:
        seen.append(data.annotations)
        table.add("v1", tmp_path / "v1.mp4", ["a toy caption"], "train", "toy:1")

    monkeypatch.setitem(FORMATS, "toy", Format("toy", read_toy, "a toy format"))
    ann = load_annotations(DataConfig(format="toy", annotations="x", videos=str(tmp_path)))
    assert seen == ["x"] and [e.video_id for e in ann.entries] == ["v1"]
    with pytest.raises(AnnotationError, match="split_files"):  # the toy does not read them
        load_annotations(DataConfig(format="toy", split_files={"train": "a.txt"}))
    with pytest.raises(AnnotationError, match=f"unknown data.format 'coco'; one of: {', '.join(FORMATS)}"):
        load_annotations(DataConfig(format="coco"))


@pytest.mark.parametrize("name", [n for n, f in FORMATS.items() if not f.split_files])
def test_split_files_are_refused_where_a_format_does_not_read_them(name, tmp_path):
    with pytest.raises(AnnotationError, match=f"format '{name}' takes its splits from data.annotations"):
        load_annotations(DataConfig(format=name, annotations=str(tmp_path / "a"), split_files={"train": "t.txt"}))


def test_data_check_help_lists_the_formats_with_their_descriptions():
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args(["data", "check", "--help"])
    flat = " ".join(out.getvalue().split())
    for f in FORMATS.values():
        assert f"{f.name} - " in flat and " ".join(f.summary.split()) in flat, f.name


def test_data_config_points_at_the_table():
    doc = DataConfig.__doc__
    assert "retrieval_pretrain.reading.formats.FORMATS" in doc
    assert "``msrvtt-clip4clip``, ``msvd``" not in doc  # no hand-kept list of names
