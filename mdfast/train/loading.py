"""What the training commands share: model-folder flags (the folder itself is read by ``mdfast.loading``), a
JSONL file, a function by import path."""

from __future__ import annotations

import importlib
import json

__all__ = ["add_model_arguments", "import_function", "read_jsonl"]


def add_model_arguments(parser) -> None:
    """--model, --mask-token-id, --trust-remote-code, --device, --dtype, --backend."""
    parser.add_argument("--model", required=True, help="a local model folder (the hub is never reached)")
    parser.add_argument("--mask-token-id", type=int, default=None, help="default: the config's or tokenizer's")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the folder's model code (Dream)")
    parser.add_argument("--device", default=None, help="default: cuda (cuda:LOCAL_RANK under torchrun) if available")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--backend", default="auto", help="mdfast backend of the decoding steps")


def read_jsonl(path: str) -> list[dict]:
    """One JSON object per non-empty line."""
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
