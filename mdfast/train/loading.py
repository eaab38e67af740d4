"""What the training commands share: reading a model folder, a JSONL file, a function by import path."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

__all__ = ["add_model_arguments", "import_function", "load_model", "load_tokenizer", "read_jsonl", "save_model"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def add_model_arguments(parser) -> None:
    """--model, --mask-token-id, --trust-remote-code, --device, --dtype, --backend."""
    parser.add_argument("--model", required=True, help="a local model folder (the hub is never reached)")
    parser.add_argument("--mask-token-id", type=int, default=None, help="default: the config's or tokenizer's")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the folder's model code (Dream)")
    parser.add_argument("--device", default=None, help="default: cuda (cuda:LOCAL_RANK under torchrun) if available")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--backend", default="auto", help="mdfast backend of the decoding steps")


def load_model(path: str, *, device: torch.device, dtype: str | None, trust_remote_code: bool = False):
    """The model in folder ``path`` on ``device``, in eval mode: a LLaDA checkpoint
    (config.json model_type "llada") as mdfast's native LLaDAModel (no remote code), any other as
    a transformers masked LM (or AutoModel for remote-code families), all files local. dtype
    defaults to bfloat16 on CUDA and float32 on the CPU."""
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"--model: {path} holds no config.json")
    if json.loads(config_file.read_text()).get("model_type") == "llada":
        from ..models.llada import load_llada

        return load_llada(path, dtype=torch_dtype, device=device)
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    common = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    config = AutoConfig.from_pretrained(path, **common)
    loader = AutoModelForMaskedLM if type(config) in AutoModelForMaskedLM._model_mapping else AutoModel
    return loader.from_pretrained(path, dtype=torch_dtype, **common).to(device).eval()


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """The tokenizer saved in folder ``path``, or None where the folder holds none (then the data
    must give token ids)."""
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def save_model(model, path: str, tokenizer=None) -> None:
    """Write ``model`` (and its tokenizer) to folder ``path`` in the form ``load_model`` reads."""
    from ..models.llada import LLaDAModel, save_llada

    os.makedirs(path, exist_ok=True)
    if isinstance(model, LLaDAModel):
        save_llada(model, path)
    else:
        model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


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
