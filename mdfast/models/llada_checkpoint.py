"""LLaDA checkpoints: ``load_llada``, ``save_llada`` and ``from_remote``, by exact key names (SPEC 5).

- ``load_llada`` / ``save_llada``: sharded safetensors checkpoints (``model-0000k-of-0000n.safetensors``
  plus ``model.safetensors.index.json``, or one ``model.safetensors``) with a ``config.json``;
- ``from_remote``: a native body over the weights of another LLaDA implementation (LLaDA's remote
  code), sharing its tensors; ``mdfast.patch`` drives remote-code LLaDA models through it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import Tensor, nn

from ..atomic import CorruptFileError, atomic_save_safetensors, atomic_write_text, checked_safe_open
from .llada_body import LLaDABlock, LLaDAModel
from .llada_config import LLaDAConfig, checkpoint_shapes

__all__ = ["CONFIG_FILE", "INDEX_FILE", "SINGLE_FILE", "from_remote", "load_llada", "save_llada"]

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def load_llada(
    path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu"
) -> LLaDAModel:
    """The LLaDA model in folder ``path``, its weights in ``dtype`` on ``device``, in eval mode.

    The folder holds ``config.json`` plus ``model.safetensors.index.json`` and its shards, or one
    ``model.safetensors``. Nothing is downloaded and no remote code runs. Every checkpoint key must be one of
    ``checkpoint_shapes(config)`` with that shape and every one of those must be present, or a
    ValueError lists the missing, unexpected and misshapen keys. The module is built on the meta
    device and the tensors are read straight onto ``device``, one block at a time (one copy, plus
    one block's projections while they are fused). A truncated or damaged shard, index or config raises
    ``mdfast.atomic.CorruptFileError`` (a ValueError) naming the file; a missing shard, a ValueError naming it.
    """
    folder = Path(path)
    config = LLaDAConfig.from_dict(_read_json(folder / CONFIG_FILE))
    located = _locate_keys(folder, checkpoint_shapes(config))
    device = str(torch.device(device))
    model = LLaDAModel(config, device="meta")
    with ExitStack() as stack:
        files = {file: stack.enter_context(checked_safe_open(file, device=device)) for file in set(located.values())}
        _assign_by_block(model, lambda key: files[located[key]].get_tensor(key).to(dtype))
    return model.eval()


def _assign_by_block(
    model: LLaDAModel, take: Callable[[str], Tensor], loaded: Callable[[str, LLaDABlock], None] | None = None
) -> None:
    """Give the meta-device ``model`` the tensor ``take(key)`` of every checkpoint key, one block at a time.

    ``load_state_dict(..., assign=True)``, block by block: fusing a block's projections
    copies them, and their parts are dropped before the next block is read, so no more than one
    block's projections exist twice. ``loaded(prefix, block)`` is called after each block.
    """
    keys = checkpoint_shapes(model.config)
    for i, block in enumerate(model.transformer["blocks"]):
        prefix = f"model.transformer.blocks.{i}."
        block.load_state_dict(
            {key.removeprefix(prefix): take(key) for key in keys if key.startswith(prefix)}, assign=True
        )
        if loaded is not None:
            loaded(prefix, block)
    for key in keys:
        if not key.startswith("model.transformer.blocks."):  # wte, ln_f, ff_out
            module, name = key.rsplit(".", 1)
            model.get_submodule(module).load_state_dict({name: take(key)}, assign=True)


def _checkpoint_files(folder: Path) -> tuple[list[Path], set[str] | None]:
    """The safetensors files of the checkpoint in ``folder`` and the keys its index lists (None without one).

    The files are the shards ``model.safetensors.index.json`` names, or the single ``model.safetensors``.
    """
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CorruptFileError(index, "no weight_map of key -> shard file name")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [str(file) for file in files if not file.is_file()]
        if absent:
            raise ValueError(f"{index}: names shards that do not exist: {absent}")
        return files, set(weight_map)
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE], None
    raise ValueError(f"{folder}: no checkpoint found (expected {INDEX_FILE} with its shards, or {SINGLE_FILE})")


def _locate_keys(folder: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, Path]:
    """Key -> file for the checkpoint in ``folder``, once its keys and shapes are checked to be ``expected``.

    The check reads the headers only; a ValueError lists every difference.
    """
    located: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    problems = []
    files, indexed = _checkpoint_files(folder)
    for file in files:
        with checked_safe_open(file) as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not iterable
                if key in located:
                    problems.append(f"key {key} is in both {located[key].name} and {file.name}")
                located[key], shapes[key] = file, tuple(f.get_slice(key).get_shape())
    if indexed is not None and indexed != shapes.keys():
        problems.append(f"{INDEX_FILE} and its shards disagree on keys: {sorted(indexed ^ shapes.keys())}")
    problems += _key_problems(shapes, expected)
    if problems:
        raise ValueError(
            f"{folder}: the checkpoint does not match its config.json (SPEC 5 keys):\n  " + "\n  ".join(problems)
        )
    return located


def _key_problems(shapes: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> list[str]:
    """How a state dict's ``shapes`` (key -> shape) differ from ``expected``, as lines (none when they match).

    The missing, the unexpected and the misshapen keys.
    """
    missing = sorted(expected.keys() - shapes.keys())
    unexpected = sorted(shapes.keys() - expected.keys())
    problems = [f"missing keys: {missing}"] if missing else []
    if unexpected:
        problems.append(f"unexpected keys: {unexpected}")
    misshapen = [key for key, shape in expected.items() if key in shapes and shapes[key] != shape]
    return problems + [f"{key}: shape {shapes[key]}, expected {expected[key]}" for key in misshapen]


def save_llada(model: LLaDAModel, path: str | os.PathLike, max_shard_bytes: int = 5 * 2**30) -> None:
    """Write ``model`` to folder ``path`` as ``load_llada`` reads it.

    ``config.json``, shards ``model-0000k-of-0000n.safetensors`` of at most ``max_shard_bytes`` each
    (a larger tensor gets a shard of its own) and ``model.safetensors.index.json``. Each file is written
    atomically (``mdfast.atomic``): shards first, then the index and the config, so a crash leaves every file
    whole (an old index may name an old shard set until the new index lands).
    """
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    shapes = {key: tuple(value.shape) for key, value in state.items()}
    if shapes != checkpoint_shapes(model.config):
        raise ValueError("save_llada: the model's state dict is not the SPEC 5 key set (is it still mdfast.patch-ed?)")
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        atomic_save_safetensors(shard, folder / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    atomic_write_text(folder / INDEX_FILE, json.dumps(index, indent=2))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2))


def _read_json(path: Path) -> dict:
    """The JSON object in ``path``; CorruptFileError naming the file when it is not one."""
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptFileError(path, f"not JSON ({error})") from None
    if not isinstance(value, dict):
        raise CorruptFileError(path, f"expected a JSON object, got {type(value).__name__}")
    return value


def from_remote(remote: nn.Module) -> LLaDAModel:
    """A native LLaDAModel over the weights of ``remote``, a LLaDA model of another implementation.

    ``remote`` is e.g. LLaDA's remote code (``modeling_llada.py``), with the checkpoint keys in its
    state dict. The body is built on the meta device from ``remote.config`` and given ``remote``'s
    tensors (``assign=True``).

    The fused projections concatenate q, k, v (ff_proj, up_proj) into one new tensor each, so
    ``remote``'s own q_proj ... up_proj parameters are then re-pointed at row views of those
    (``assign=True`` again), block by block: one copy of the weights remains, shared by both
    modules (at most one block's projections exist twice meanwhile), and ``remote``'s forward
    computes what it did. Parameters of ``remote`` held elsewhere (an optimizer) are no longer its
    parameters afterwards. ValueError, before anything changes, when
    ``remote.config`` is not SPEC 5's (``LLaDAConfig.from_dict``) or its state dict is not
    exactly ``checkpoint_shapes(config)``.
    """
    config = LLaDAConfig.from_dict(remote.config.to_dict())
    state = remote.state_dict()
    problems = _key_problems({key: tuple(value.shape) for key, value in state.items()}, checkpoint_shapes(config))
    if problems:
        raise ValueError(
            f"{type(remote).__name__}: the state dict is not a LLaDA checkpoint's (SPEC 5 keys):\n  "
            + "\n  ".join(problems)
        )
    native = LLaDAModel(config, device="meta")

    def repoint(prefix: str, block: LLaDABlock) -> None:
        remote.get_submodule(prefix[:-1]).load_state_dict(block.state_dict(), assign=True)

    # popped, so that remote's separate q, k, v ... tensors are freed once it is re-pointed
    _assign_by_block(native, state.pop, repoint)
    return native.eval()
