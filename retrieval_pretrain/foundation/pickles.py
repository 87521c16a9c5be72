"""What a pickle file would import when loaded, read from its opcodes without loading it: a local
checkpoint that would run code is named in the warning that refuses it, whatever protocol wrote it
(``modeling.backbones``). Imports nothing of the toolkit."""

from __future__ import annotations

import pickletools
import zipfile
from typing import Any

# Modules whose globals a plain tensor checkpoint names (torch's rebuild functions and storages, the
# OrderedDict of a state dict, the codec of byte strings); any other global is code a load would run.
_CHECKPOINT_MODULES = ("torch", "collections", "_codecs")
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def pickled_code(path: str) -> list[str]:
    """The callables a pickle (a bare one, or the ``data.pkl`` of torch's zip format) would import when
    loaded, other than a tensor checkpoint's own: read from its opcodes, nothing is run. Whatever
    protocol wrote it (torch's loader words its refusal differently for each). Empty when the file is
    not a pickle."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        found: list[str] = []
        last: list[str | None] = []  # what the last opcodes pushed, as far as it is a string (memo gets too)
        memo: dict[Any, str | None] = {}
        for op, arg, _ in pickletools.genops(data):
            if op.name in _STRING_OPS:
                last.append(str(arg))
            elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                memo[len(memo) if op.name == "MEMOIZE" else arg] = last[-1] if last else None
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                last.append(memo.get(arg))
            elif op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(last) >= 2 and None not in last[-2:]:
                found.append(f"{last[-2]}.{last[-1]}")
            else:
                last.append(None)
    except Exception:  # not a pickle, cut short, unreadable: nothing to name (the load's own error stands)
        return []
    return [g for g in found if g.split(".")[0] not in _CHECKPOINT_MODULES]
