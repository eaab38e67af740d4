"""How the statistics pass is launched: tile sizes, warps, and whether rows are split into chunks.

``stats_launch`` is the one place that tunes the pass; ``partials`` gives the workspace of its split
path. The x-flow step launches the same pass, so it plans with these too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

__all__ = ["META_MULTIPROCESSORS", "StatsLaunch", "multiprocessors", "partials", "stats_launch"]


@dataclass(frozen=True)
class StatsLaunch:
    """Launch parameters of the statistics pass."""

    block_v: int  # logits per tile of the streaming loop
    group: int  # tiles per top-k decision
    num_warps: int
    chunks: int  # programs per row; 1: a single program streams the whole row
    chunk_len: int  # logits per chunk, whole tiles (the row's length when chunks == 1)


# Multiprocessors assumed for "meta" tensors, which plan GPU launches without a device (an H100 SXM:
# tests/compile_kernels.py compiles the kernels for sm_90 from the launches the wrappers make).
META_MULTIPROCESSORS = 132


@functools.cache
def multiprocessors(device: torch.device) -> int:
    """The device's multiprocessor count (a few for the interpreter's CPU tensors)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    if device.type == "meta":
        return META_MULTIPROCESSORS
    return 4  # the interpreter: a few, so that small test shapes take the split path


def stats_launch(n_rows: int, V: int, device: torch.device) -> StatsLaunch:
    """The one place that tunes the statistics pass.

    On the GPU, tiles of 2048 logits over 8 warps: 8 per thread, one 16-byte load of bf16 (two of
    float32), two tiles of loads in flight, a top-k decision every 4 tiles (registers and spills for
    sm_90: ``python tests/compile_kernels.py``). With fewer than 2 rows per multiprocessor, rows are
    split to give about 4 programs per multiprocessor, in chunks of whole tiles. Under the
    interpreter (CPU tensors) the tiles are small (256) and the groups 2 tiles, so that short test
    rows still take several tiles, groups and chunks.
    """
    interpreted = device.type == "cpu"
    block_v = min(256 if interpreted else 2048, triton.next_power_of_2(V))
    num_warps = max(1, min(8, block_v // 256))
    sms = multiprocessors(device)
    split = 1 if n_rows >= 2 * sms else min(triton.cdiv(V, block_v), triton.cdiv(4 * sms, n_rows))
    n_tiles = triton.cdiv(V, block_v)
    chunk_tiles = triton.cdiv(n_tiles, max(1, min(split, n_tiles)))
    return StatsLaunch(
        block_v=block_v,
        group=2 if interpreted else 4,
        num_warps=num_warps,
        chunks=triton.cdiv(n_tiles, chunk_tiles),
        chunk_len=chunk_tiles * block_v,
    )


def partials(rows: int, k: int, launch: StatsLaunch) -> tuple[tuple[tuple[int, ...], torch.dtype], ...]:
    """(shape, dtype) of the split path's workspace: (m, S, D) per chunk, and its top-k slots."""
    return (
        ((3, rows, launch.chunks), torch.float32),
        ((rows, launch.chunks, k), torch.float32),
        ((rows, launch.chunks, k), torch.int32),
    )
