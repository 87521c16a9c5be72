"""Typed YAML configs: dataclass fields with checked constraints, and the loader.

A config file maps one-to-one onto nested dataclasses. An unknown key - in the file or in a
``key=value`` override on the command line - is an error that lists the valid keys, never
silently ignored. Values are coerced to the annotated type only where that is lossless; a field's
constraint (``choice``, ``at_least``, ``fraction``, ``positive``) and a dataclass's ``check(where)``
(across its fields) are applied when the config is read. Overrides use dotted keys
(``pretrain.lr=1e-4``) and YAML values. The schemas live in ``retrieval_pretrain.stage1.config`` (stage 1)
and ``caption.config`` (the whole ``vcap`` config).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Iterator

import yaml

from retrieval_pretrain.foundation.errors import ConfigError


def choice(default: str, *choices: str) -> Any:
    """A string field that must be one of ``choices`` (checked when the config is read)."""
    return field(default=default, metadata={"choices": choices})


def at_least(default: float, low: float, high: float | None = None) -> Any:
    """A number that must lie in ``[low, high]`` (checked when the config is read)."""
    return field(default=default, metadata={"range": (low, high, False)})


def fraction(default: float, below_one: bool = False) -> Any:
    """A number in ``[0, 1]`` (``[0, 1)`` with ``below_one``)."""
    return field(default=default, metadata={"range": (0.0, 1.0, below_one)})


def positive(default: float) -> Any:
    """A number that must be greater than 0."""
    return field(default=default, metadata={"positive": True})


def _check_value(path: str, value: Any, meta: Any) -> None:
    if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
        raise ConfigError(f"{path}: {value!r} is not a finite number")
    allowed = meta.get("choices")
    if allowed and value not in allowed:
        raise ConfigError(f"{path}: {value!r} is not one of {', '.join(allowed)}")
    if "range" in meta:
        low, high, open_high = meta["range"]
        if value < low or (high is not None and (value >= high if open_high else value > high)):
            want = f">= {low}" if high is None else f"in [{low}, {high}{')' if open_high else ']'}"
            raise ConfigError(f"{path}: {value!r} must be {want}")
    if meta.get("positive") and not value > 0:
        raise ConfigError(f"{path}: {value!r} must be greater than 0")
    if "pattern" in meta and not re.fullmatch(meta["pattern"][0], value):
        raise ConfigError(f"{path}: {value!r} is not {meta['pattern'][1]}")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotated type ``tp`` where that is lossless; raise otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_check_type(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, varg = typing.get_args(tp) or (Any, Any)
        return {str(k): _check_type(v, varg, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        try:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
                return float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ConfigError(f"{where}: {str(value)[:20]}... is too large a number") from None
        except ValueError:
            pass
        raise ConfigError(f"{where}: expected a number, got {str(value)[:80]!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        with _about(path):
            if key not in names:
                raise ConfigError(f"unknown config key '{path}'; valid keys here: {', '.join(names)}")
            tp = hints[key]
            if _is_dataclass_type(tp):
                kwargs[key] = _build(tp, value or {}, path)
            else:
                kwargs[key] = _check_type(value, tp, path)
            _check_value(path, kwargs[key], fields[key].metadata)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:  # checks across fields of one section
        with _about(where):
            check(where or "config")
    return obj


@contextlib.contextmanager
def _about(key: str) -> Iterator[None]:
    """Marks a ``ConfigError`` raised inside with the dotted ``key`` it is about (the innermost
    one; ``""``: the whole config), so ``load_config`` can say where its value came from."""
    try:
        yield
    except ConfigError as e:
        if not hasattr(e, "config_key"):
            e.config_key = key  # type: ignore[attr-defined]
        raise


_DOTTED = re.compile(r"\b[a-z_]+(?:\.[a-z_0-9]+)+\b")  # a dotted config key named in a message


def _related(a: str, b: str) -> bool:
    """Whether dotted keys ``a`` and ``b`` are one, or one holds the other (``""`` holds all)."""
    return a == b or not a or not b or a.startswith(b + ".") or b.startswith(a + ".")


def _leaves(raw: Any, where: str = "") -> list[str]:
    """The dotted keys a YAML mapping sets (its leaves, and empty sections)."""
    if not isinstance(raw, dict) or not raw:
        return [where] if where else []
    return [leaf for k, v in raw.items() for leaf in _leaves(v, f"{where}.{k}" if where else str(k))]


def _origin(e: ConfigError, path: Path | None, file_keys: list[str], overrides: list[tuple[str, str]]) -> str:
    """The message of ``e`` prefixed with where the value it is about was set, when a file is read:
    the YAML file (as before), ``override 'k=v' (over FILE)`` when only overrides set it (a file value
    an override replaced does not count), or ``FILE with override 'k=v'`` when both do (a check
    across the fields of a section)."""
    if path is None:  # no file: every value set came from an override, and the message names its key
        return str(e)
    key = getattr(e, "config_key", "")
    kept = [k for k in file_keys if not any(k and o and _related(k, o) for o, _ in overrides)]
    # a section's own check (across its fields) is about the keys its message names, when it names some
    named = [m for m in _DOTTED.findall(str(e)) if _related(m, key)
             and any(_related(m, k) for k in kept + [o for o, _ in overrides])]
    about = named or [key]
    given = [item for k, item in overrides if any(_related(k, a) for a in about)]
    in_file = not given or any(_related(k, a) for k in kept for a in about)
    if not given:
        return f"{path}: {e}"
    label = "override " + ", ".join(f"'{_shown(item)}'" for item in given)
    return f"{path} with {label}: {e}" if in_file else f"{label} (over {path}): {e}"


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def _shown(item: str) -> str:
    """An override as a message shows it: whole up to 100 characters."""
    return item if len(item) <= 100 else item[:97] + "..."


def parse_overrides(items: list[str], over: str | Path | None = None) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]`` with YAML-typed values. ``over``: the
    config file they apply to, named in errors."""
    out = []
    on = f" (over {over})" if over else ""
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{_shown(item)}'{on} is not of the form key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if not key or "" in key.split("."):
            raise ConfigError(f"override '{_shown(item)}'{on} has an empty key" + (" part" if key else ""))
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except (yaml.YAMLError, RecursionError) as e:
            problem = (str(e).splitlines() or [type(e).__name__])[0] if isinstance(e, yaml.YAMLError) else \
                "nested too deeply"
            raise ConfigError(f"override '{_shown(item)}'{on}: the value is not valid YAML ({problem})") from None
        out.append((key, value))
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a key given twice in one mapping is an error: YAML keeps the
    last one without a word, so a second ``data:`` section would silently replace the first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping (first on line {seen[key] + 1}); "
                    "YAML would keep only the last", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def load_config(cls: type, path: str | Path | None = None, overrides: list[str] | None = None) -> Any:
    """Read a YAML file (optional) into the dataclass ``cls`` and apply dotted overrides.

    Relative paths in ``data.*`` stay as written; they are resolved against the current directory
    by the readers, as a user typing them expects.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file (a YAML config is text)") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config: {e.strerror or e}") from None
        except RecursionError:
            raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        raw = loaded
    file_keys = _leaves(raw)
    items = [str(item) for item in overrides or []]
    parsed = parse_overrides(items, path)
    for key, value in parsed:
        _set_dotted(raw, key, value)
    try:
        return _build(cls, raw, "")
    except ConfigError as e:
        raise ConfigError(_origin(e, path, file_keys, [(k, item) for (k, _), item in zip(parsed, items)])) from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (for logs and model folders)."""
    return dataclasses.asdict(cfg)
