"""What the training commands read: a JSONL file of records, a function named by its import path."""

from __future__ import annotations

import importlib
import json

__all__ = ["import_function", "read_jsonl"]


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per non-empty line of ``path``; a file without any raises ValueError."""
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def import_function(spec: str):
    """The callable named by ``spec``: "package.module:function" or "package.module.function"."""
    module_name, sep, name = spec.partition(":")
    if not sep:
        module_name, _, name = spec.rpartition(".")
    if not module_name or not name:
        raise ValueError(f"{spec!r}: expected an import path 'package.module:function'")
    function = getattr(importlib.import_module(module_name), name, None)
    if not callable(function):
        raise ValueError(f"{spec!r}: {module_name} has no callable {name!r}")
    return function
