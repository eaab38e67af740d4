"""Model folders on disk, the hub never reached: one loader for the commands, benchmarks and trainers.

A LLaDA checkpoint (``config.json`` with ``model_type`` "llada": SPEC 5's architecture, saved by
``mdfast.save_llada`` or LLaDA's own release) loads as mdfast's native ``LLaDAModel``, with no
remote code; any other folder as a transformers masked LM (``AutoModelForMaskedLM``) where
transformers has that class for its config, else ``AutoModel`` (remote-code families such as Dream,
with ``trust_remote_code``). dtype defaults to bfloat16 on CUDA and float32 on the CPU.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from .models.llada import LLaDAConfig, LLaDAModel, load_llada, save_llada

__all__ = ["load_config", "load_model", "load_tokenizer", "save_model"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


def _is_llada(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == "llada"


def load_config(path: str | os.PathLike, *, trust_remote_code: bool = False):
    """The folder's config: ``LLaDAConfig`` for a LLaDA checkpoint, else transformers' ``AutoConfig``.

    AutoConfig raises, naming ``trust_remote_code``, for a model that comes with its own code.
    """
    if _is_llada(path):
        return LLaDAConfig.from_json_file(Path(path) / "config.json")
    return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)


def load_model(
    path: str | os.PathLike,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    config=None,
) -> nn.Module:
    """The model in folder ``path`` on ``device``, in eval mode (see the module docstring).

    ``config`` (from ``load_config``) saves reading it again.
    """
    device = torch.device(device)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path}: holds no config.json (pass the folder a model was saved to)")
    if _is_llada(path):
        return load_llada(path, dtype=dtype, device=device).eval()
    config = config if config is not None else load_config(path, trust_remote_code=trust_remote_code)
    loader = AutoModelForMaskedLM if type(config) in AutoModelForMaskedLM._model_mapping else AutoModel
    model = loader.from_pretrained(
        path, config=config, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code
    )
    return model.to(device).eval()


def load_tokenizer(path: str | os.PathLike, *, trust_remote_code: bool = False):
    """The tokenizer saved in folder ``path``, or None where the folder holds none."""
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        return None
    options = {}
    if _is_llada(path):
        # transformers does not know config.json's model_type "llada" and warns when AutoTokenizer reads it:
        # a stand-in config keeps it from reading config.json, the tokenizer's class comes from its own files
        if "tokenizer_class" not in _tokenizer_config(path) and (Path(path) / "tokenizer.json").is_file():
            return PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
        options["config"] = PretrainedConfig()
    return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code, **options)


def _tokenizer_config(path: str | os.PathLike) -> dict:
    file = Path(path) / "tokenizer_config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def save_model(model: nn.Module, path: str | os.PathLike, tokenizer=None) -> None:
    """Write ``model`` (and its tokenizer) to folder ``path`` in the form ``load_model`` reads."""
    os.makedirs(path, exist_ok=True)
    if isinstance(model, LLaDAModel):
        save_llada(model, path)
    else:
        model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
