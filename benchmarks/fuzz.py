"""Fuzz every reader and entry point of ``vcap`` that takes outside input, longer than the test suite
does (issue 25): ``python -m benchmarks.fuzz --examples N [--target NAME ...]``.

Prints, per target, the examples run and the failures found, each with its (shrunk) failing example
and the error; exit 1 when any target failed. A failure found here becomes a fix and a test (add the
example to the target's ``always``). The targets: the dataset formats (``benchmarks.fuzz_targets``)
and, here, the other entry points - config files and ``key=value`` overrides, ``vcap score``'s
predictions and references (plain and dense), run logs, run folders (``run.json`` and the ownership
record on ``--resume``), index folders (``meta.json``, shard rows and arrays, with and without the
hashes recorded when written: an edited shard must be refused), stage-1 model folders' ``config.json``
and the web API's parameters. ``tests/test_fuzz_targets.py`` runs each with a few examples.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import sys
import tarfile
import tempfile
import time
import typing
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_dense_formats import DENSE_FORMAT_TARGETS
from benchmarks.fuzz_targets import (
    BAD_TEXT,
    FORMAT_TARGETS,
    HOSTILE,
    JSON,
    Target,
    cell,
    cli_property,
    json_text,
    near,
    refusal,
    text_cell,
    write_text,
)
from caption.caption_files import load_predictions, load_references, parse_dense_predictions, parse_dense_references
from caption.config import Config, load
from retrieval_pretrain.foundation.errors import ConfigError, DatasetError, FeatureStoreError, ModelFolderError
from retrieval_pretrain.foundation.run_log import VALUE_BOUND, read_log
from retrieval_pretrain.modeling.model_folder import read_spec
from retrieval_pretrain.modeling.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "videos" / "mmaction2" / "rawvideo_part_0.mp4"  # 32 frames, real

# ----------------------------------------------------------------------------- config files and overrides


def _leaf_keys(cls: type, where: str = "") -> dict[str, Any]:
    """``dotted key -> annotated type`` of every leaf field of a config dataclass."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{where}.{f.name}" if where else f.name
        out.update(_leaf_keys(tp, key) if dataclasses.is_dataclass(tp) else {key: tp})
    return out


LEAVES = _leaf_keys(Config)
_VALUE = text_cell("4", "8", "0.5", "1e-4", "true", "null", "jsonl", "ViT-B-32", "train") | st.sampled_from(
    ["-1", "0", ".nan", ".inf", "1e999", "[1", "{a: 1}", "[]", "!!python/object/apply:os.system [ls]", "2" * 400,
     "'x'", "~", "0x10", "yes", "2001-12-14", "&a [*a]", "\t"])
_KEY = text_cell(*sorted(LEAVES)) | st.sampled_from(["data", "video", "nosuch", "video.num_frames.x", ".x", "",
                                                     "data.split_files.train", "data.columns.video", "pretrain..lr"])


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _reflected(cfg: Any, overrides: list[tuple[str, str]]) -> None:
    """Each override of a leaf key (and of nothing around it) is what the config now holds."""
    for i, (key, text) in enumerate(overrides):
        if key not in LEAVES or any(_related(key, k) for j, (k, _) in enumerate(overrides) if j != i):
            continue
        value, got = yaml.safe_load(text) if text.strip() else "", cfg
        for part in key.split("."):
            got = getattr(got, part)
        if isinstance(got, float) and isinstance(value, (int, float, str)):  # YAML reads 1e-4 as text
            assert got == float(value), (key, text, got)
        elif isinstance(got, str) and isinstance(value, (int, float)) and not isinstance(value, bool):
            assert got == str(value), (key, text, got)
        else:
            assert got == value, (key, text, got)


def _config(example: Any, folder: Path) -> None:
    file_pairs, raw, overrides = example
    path = None
    if raw is not None:
        path = write_text(folder / "c.yaml", raw)
    elif file_pairs is not None:
        tree: dict[str, Any] = {}
        for key, text in file_pairs:
            node = tree
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
            try:
                node[last] = yaml.safe_load(text)
            except yaml.YAMLError:
                node[last] = text
        path = folder / "c.yaml"
        path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    items = [f"{k}={v}" for k, v in overrides]
    try:
        cfg = load(path, items)
    except Exception as e:
        refusal(e)
        alone_ok = path is not None  # without a file, every value is an override's: its key is named
        try:
            load(path, [])
        except ConfigError:
            alone_ok = False
        assert not alone_ok or "override '" in str(e), f"the file loads alone, but the error names no override: {e}"
    else:
        _reflected(cfg, [(k.strip(), v) for k, v in overrides])
    argv = ["data", "check", *(["--config", str(path)] if path else []), *[i for i in items if not i.startswith("-")]]
    cli_property(argv)


_CONFIG = st.tuples(st.none() | st.lists(st.tuples(_KEY, _VALUE), max_size=4),
                    st.none() | st.none() | st.none() | HOSTILE | st.text(max_size=30),
                    st.lists(st.tuples(_KEY, _VALUE), max_size=3))

# ----------------------------------------------------------------------------- vcap score's files


def _score(example: Any, folder: Path) -> None:
    predictions, references = example
    p = write_text(folder / "p.json", json_text(predictions))
    r = write_text(folder / "r.json", json_text(references))
    try:
        got = load_predictions(p)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in got.items()), got
    except Exception as e:
        refusal(e)
        assert isinstance(e, DatasetError) and str(p) in str(e), e
    try:
        refs = load_references(r)
        assert all(isinstance(k, str) and v and all(isinstance(c, str) and c.strip() for c in v)
                   for k, v in refs.items()), refs
    except Exception as e:
        refusal(e)
        assert isinstance(e, DatasetError) and str(r) in str(e), e


_ITEM = st.fixed_dictionaries({"video_id": cell("v1", "v2", 7), "caption": cell("a cat", "a dog")})
_SCORE = st.tuples(near(st.dictionaries(text_cell("v1", "v2"), cell("a cat", "a dog"), max_size=3))
                   | st.lists(near(_ITEM), max_size=3),
                   near(st.dictionaries(text_cell("v1", "v2"), st.lists(cell("a cat", "a dog"), max_size=2),
                                        max_size=3))
                   | st.lists(near(_ITEM), max_size=3) | st.fixed_dictionaries({"annotations": st.lists(near(_ITEM))}))


def _dense(example: Any, folder: Path) -> None:
    predictions, references = example
    for parse, value, name in ((parse_dense_predictions, predictions, "p.json"),
                               (parse_dense_references, references, "r.json")):
        try:
            parsed = parse(value, name)
        except Exception as e:
            refusal(e)
            assert isinstance(e, DatasetError) and str(e).startswith(name), e
            continue
        spans = ([(c.start, c.end) for caps in parsed.values() for c in caps] if name == "p.json"
                 else [s for ref in parsed.values() for s in ref.segments])
        assert all(math.isfinite(s) and math.isfinite(e) and s <= e for s, e in spans), spans


_TIMES = near(st.lists(cell(0, 1.5, 10, 2), min_size=2, max_size=2))
_DENSE = st.tuples(
    near(st.fixed_dictionaries({"results": near(st.dictionaries(text_cell("v_a", "v_b"), near(st.lists(near(
        st.fixed_dictionaries({"sentence": cell("a man talks"), "timestamp": _TIMES})), max_size=3)), max_size=2))})),
    near(st.dictionaries(text_cell("v_a", "v_b"), near(st.fixed_dictionaries(
        {"timestamps": st.lists(_TIMES, max_size=2), "sentences": st.lists(cell("one", "two"), max_size=2)},
        optional={"duration": cell(12.5, 100)})), max_size=2)))

# ----------------------------------------------------------------------------- run logs and run folders


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or (math.isfinite(value) and abs(value) <= VALUE_BOUND)


def _run_log(example: Any, folder: Path) -> None:
    path = write_text(folder / "log.jsonl", "\n".join(example))
    try:
        records, problems = read_log(path)
    except Exception as e:
        refusal(e)
        return
    assert all(isinstance(r, dict) and _finite(r) for _, r in records), records
    assert all(isinstance(q.line, int) for q in problems), problems


_LOG_LINE = near(st.fixed_dictionaries({"step": cell(1, 2, 10), "loss": cell(0.5, 1.25)})).map(json_text) \
    | st.sampled_from(['{"step": 1e999}', '{"loss": NaN}', '{"a": [Infinity]}', '{"step": 3', "[1, 2]", "\ud800"])


def _run_folder(example: Any, folder: Path) -> None:
    from accelerate import PartialState  # deferred: accelerate is slow to import; this target only

    from retrieval_pretrain.foundation.run_folder import claim  # deferred: with the line above

    run_json, record, names = example
    out = folder / "run"
    out.mkdir()
    for name in names:
        (out / name).mkdir() if name in ("model", "checkpoints") else write_text(out / name, "{}")
    if run_json is not None:
        write_text(out / "run.json", run_json if isinstance(run_json, str) else json_text(run_json))
    if record is not None:
        write_text(out / ".vcap.json", json_text(record))
    try:
        claim(out, "pretrain", load(None, []), resume=True, accelerator=PartialState())
    except Exception as e:
        refusal(e)
        assert isinstance(e, ConfigError), e


_RUN_JSON = st.none() | near(st.fixed_dictionaries({"command": cell("pretrain", "train"), "fingerprint": cell("ab"),
                                                     "config": near(st.fixed_dictionaries({})), "inputs": JSON})) \
    | st.sampled_from(["[" * 5000, "{", "\ud800"])
_RUN_FOLDER = st.tuples(_RUN_JSON, st.none() | near(st.fixed_dictionaries(
    {"kind": cell("training run folder", "search index"), "command": cell("vcap pretrain")},
    optional={"format": cell(1)})),
    st.lists(st.sampled_from(["model", "checkpoints", "log.jsonl", "notes.txt", "meta.json"]), unique=True, max_size=3))

# ----------------------------------------------------------------------------- index folders


def _index(example: Any, folder: Path) -> None:
    from vcap_toolkit.jobs.index_files import shard_record  # deferred: torch (via the jobs); this target only
    from vcap_toolkit.jobs.search import VideoIndex  # deferred: with the line above

    meta, rows, array, recorded, edit = example
    shards = folder / "shards"
    shards.mkdir()
    npy = shards / "000000.npy"
    np.save(npy, np.asarray(array[0], dtype=array[1]))
    write_text(shards / "000000.json", json_text(rows))
    if recorded and isinstance(meta, dict) and isinstance(rows, list):
        try:
            meta = {**meta, "shards": {"000000": shard_record({"video": npy}, rows)}}
        except (TypeError, ValueError):
            recorded = False
    if edit == "cut":
        npy.write_bytes(npy.read_bytes()[:-2])
    elif edit == "rows" and isinstance(rows, list):
        write_text(shards / "000000.json", json_text(rows[:-1]))
    write_text(folder / "meta.json", json_text(meta))
    index = VideoIndex(folder)
    try:
        for path, got_rows in index.shard_rows():
            dim = index.meta()["dim"]
            arrays = index.shard_arrays(path, len(got_rows), [])
            assert arrays["video"].dtype == np.float16 and arrays["video"].shape == (len(got_rows), dim)
            assert np.isfinite(arrays["video"]).all()
    except Exception as e:
        refusal(e)
        assert isinstance(e, FeatureStoreError), e
    else:
        assert not (recorded and edit), f"an edited shard ({edit}) was read although its hashes are recorded"


_ARRAY = st.tuples(near(st.lists(st.lists(cell(0.5, -1.0, 0.0), min_size=2, max_size=2), max_size=3)).filter(
    lambda a: isinstance(a, list) and all(isinstance(r, list) and len(r) == 2 and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in r) for r in a)) | st.just([[math.nan, 1.0]]),
    st.sampled_from(["float16", "float16", "float32"]))
_INDEX = st.tuples(near(st.fixed_dictionaries({"model": cell("/m"), "model_fingerprint": cell("ab"), "dim": cell(2)},
                                              optional={"format": cell(1), "scoring": cell("embedding")})),
                   near(st.lists(near(st.fixed_dictionaries({"path": cell("/v/a.mp4", "/v/b.mp4")})), max_size=3)),
                   _ARRAY, st.booleans(), st.sampled_from([None, None, "cut", "rows"]))

# ----------------------------------------------------------------------------- model folders' config.json


def _legacy_config() -> dict[str, Any]:
    with tarfile.open(ROOT / "tests" / "data" / "legacy_v1.tar.xz") as tar:
        return json.load(tar.extractfile("legacy_v1/stage1_model/config.json"))  # type: ignore[arg-type]


SPEC = _legacy_config()


@st.composite
def _spec_json(draw: Any) -> Any:
    """The stage-1 config.json an earlier release wrote, with up to three values replaced or removed."""
    data = json.loads(json.dumps(SPEC))
    for _ in range(draw(st.integers(0, 3))):
        node = data
        while isinstance(node, dict) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node)))
            if not isinstance(node[key], dict):
                break
            node = node[key]
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            if draw(st.integers(0, 4)) == 0:
                del node[key]
            else:
                node[key] = draw(JSON | BAD_TEXT)
    return data


def _model_spec(example: Any, folder: Path) -> None:
    data, raw = example
    try:
        spec = ModelSpec.from_json(data, "m/config.json")
    except Exception as e:
        refusal(e)
        assert isinstance(e, ModelFolderError) and str(e).startswith("m/config.json"), e
    else:
        again = ModelSpec.from_json(json.loads(json.dumps(spec.to_json())), "again")
        assert again == spec  # what was read is what is written back: nothing changed reading it
    if raw is not None:
        write_text(folder / "config.json", raw)
        (folder / "model.safetensors").write_bytes(b"")
        try:
            read_spec(folder)
        except Exception as e:
            refusal(e)


_MODEL_SPEC = st.tuples(_spec_json() | JSON, st.none() | HOSTILE | st.sampled_from(["[" * 5000, '{"format": 1}']))

# ----------------------------------------------------------------------------- the web API's parameters

_STATUS = {200, 206, 304, 400, 403, 404, 405, 413, 416, 422}


def _web(example: Any, folder: Path) -> None:
    """The app with no model loaded: every request fuzzed here is answered before a model would run
    (the model routes get paths that name no readable video), as JSON ``{"error"}`` with a 4xx status."""
    from vcap_toolkit.web.models import ServeModels  # deferred: torch, flask; this target only
    from vcap_toolkit.web.serve import create_app  # deferred: with the line above
    from vcap_toolkit.web.serve_paths import PathGuard  # deferred: with the line above

    method, route, params, headers = example
    root = folder / "allowed"
    (root / "sub").mkdir(parents=True)
    if CLIP.is_file():
        shutil.copy(CLIP, root / "clip.mp4")
    else:  # without the shared data: a file named like a video that is none
        write_text(root / "clip.mp4", "not a video")
    write_text(root / "notes.txt", "not a video")
    write_text(root / "broken.mp4", "not a video either")
    models = ServeModels(pipe=None, caption_name="-", recognizer=(None, {}),  # type: ignore[arg-type]
                         recognizer_name="-")
    client = create_app(models, PathGuard([root])).test_client()
    # as a browser sends them: UTF-8, percent-encoded (a lone surrogate: bytes that are not UTF-8)
    headers = {k: " ".join(v.splitlines()).encode("latin-1", "replace").decode("latin-1")  # what HTTP can carry
               for k, v in headers.items()}
    form = urlencode({k: v.replace("{root}", str(root)).encode("utf-8", "surrogatepass") for k, v in params.items()})
    if method == "GET":
        response = client.get(route, query_string=form, headers=headers)
    else:
        response = client.post(route, data=form, headers=headers, content_type="application/x-www-form-urlencoded")
    assert response.status_code in _STATUS, (response.status_code, response.get_data()[:300])
    if response.status_code >= 400:
        body = response.get_json(silent=True)
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


_NUMBER = text_cell("1", "4", "12") | st.sampled_from(["0", "13", "-1", "²", "1e3", "9" * 30, " 4", "4.0"])
_PATH = text_cell("clip.mp4", "{root}/clip.mp4", "notes.txt", "broken.mp4") | st.sampled_from(
    ["missing.mp4", "/etc/passwd", "../allowed/clip.mp4", "sub", "{root}", "x" * 5000, "{root}/" + "y" * 300, "\x00"])
_NO_VIDEO = text_cell("missing.mp4", "/etc/passwd", "sub", "{root}/none.mp4", "../clip.mp4") | st.just("y" * 5000)
_RANGE = st.sampled_from(["bytes=0-10", "bytes=-5", "bytes=10-0", "bytes=999999-", "bytes=0-0,5-6", "bytes=x",
                          "items=0-1", "bytes=" + "9" * 40 + "-"])
_WEB = st.one_of(
    st.tuples(st.just("GET"), st.just("/api/thumbnails"), st.fixed_dictionaries({"path": _PATH}, optional={
        "count": _NUMBER}), st.just({})),
    st.tuples(st.just("GET"), st.just("/api/video"), st.fixed_dictionaries({"path": _PATH}),
              st.fixed_dictionaries({}, optional={"Range": _RANGE, "If-None-Match": st.text(max_size=10)})),
    st.tuples(st.just("GET"), st.just("/api/search"), st.fixed_dictionaries({}, optional={
        "q": text_cell("a dog"), "top": _NUMBER}), st.just({})),
    st.tuples(st.just("POST"), st.just("/api/caption"), st.fixed_dictionaries({}, optional={
        "path": _NO_VIDEO | st.just("notes.txt") | st.just("broken.mp4"), "beam": _NUMBER}), st.just({})),
    st.tuples(st.just("POST"), st.just("/api/classify"), st.fixed_dictionaries({}, optional={
        "path": _NO_VIDEO, "labels": text_cell("cat,dog", "a\nb\nc", "x,x"), "top": _NUMBER}), st.just({})),
    st.tuples(st.just("GET"), st.sampled_from(["/api/videos", "/nosuch"]), st.just({}),
              st.fixed_dictionaries({}, optional={"Host": text_cell("127.0.0.1", "evil.example"),
                                                  "Origin": text_cell("http://localhost", "http://evil.example")})))

# ----------------------------------------------------------------------------- all targets, and the runner

TARGETS: list[Target] = [
    *FORMAT_TARGETS,
    *DENSE_FORMAT_TARGETS,
    Target("config", _CONFIG, _config, 40, always=((None, None, [("caption.label_smoothing", "2" * 400)]),)),
    Target("score", _SCORE, _score, 40, always=(([], [{"video_id": "v1", "caption": ""}]),
                                                ([{"video_id": None, "caption": "a"}], {}))),
    Target("dense", _DENSE, _dense, 30),
    Target("run-log", st.lists(_LOG_LINE, max_size=5), _run_log, 30),
    Target("run-folder", _RUN_FOLDER, _run_folder, 25, always=(
        ({"command": "pretrain", "fingerprint": "ab", "config": {}, "inputs": None}, None, ["model"]),
        ({"command": [], "fingerprint": "ab", "config": {}, "inputs": {}}, None, ["model"]),
        ("[" * 5000, None, ["model"]))),
    Target("index", _INDEX, _index, 40),
    Target("model-spec", _MODEL_SPEC, _model_spec, 40),
    Target("web", _WEB, _web, 40, always=(("GET", "/api/thumbnails", {"path": "x" * 5000}, {}),
                                          ("POST", "/api/classify", {"path": "{root}/" + "y" * 300, "labels": "a"},
                                           {}))),
]


def run_target(target: Target, examples: int, derandomize: bool = False) -> tuple[int, list[str]]:
    """Run ``target`` on ``examples`` generated examples (and its ``always`` ones): ``(examples run,
    failures)``, each failure its failing example and the error, as Hypothesis reports them.
    ``derandomize``: the same examples every run (the test suite's choice: no flaky runs)."""
    count = [0]

    def one(example: Any) -> None:
        count[0] += 1
        with tempfile.TemporaryDirectory(prefix=f"vcap-fuzz-{target.name}-") as folder:
            target.check(example, Path(folder))

    failures: list[str] = []
    for example in target.always:
        try:
            one(example)
        except Exception as e:
            failures.append(f"always-run example {example!r:.300}: {type(e).__name__}: {e}")
    test = settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=True,
                    phases=[Phase.explicit, Phase.generate, Phase.shrink])(given(target.strategy)(one))
    try:
        test()
    except BaseException as e:  # what Hypothesis raises: the failure (or several) with its example
        if isinstance(e, KeyboardInterrupt):
            raise
        errors = list(getattr(e, "exceptions", None) or [e])  # several distinct bugs: an exception group
        for err in errors:
            notes = " | ".join(n for n in getattr(err, "__notes__", []) if "reproduce" not in n)
            failures.append(f"{type(err).__name__}: {str(err)[:500]} | {notes[:1500]}")
    return count[0], failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m benchmarks.fuzz")
    parser.add_argument("--examples", type=int, default=1000, help="examples per target (default 1000)")
    parser.add_argument("--target", action="append", choices=[t.name for t in TARGETS], default=None,
                        help="only this target (repeatable; default: all)")
    args = parser.parse_args(argv)
    failed = 0
    for target in [t for t in TARGETS if not args.target or t.name in args.target]:
        start = time.perf_counter()
        count, failures = run_target(target, args.examples)
        failed += bool(failures)
        print(f"{target.name}: {count} examples run, {len(failures)} failure(s) "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        for failure in failures:
            print(f"  FAILED {failure}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
