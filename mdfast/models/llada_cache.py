"""The approximate KV cache of the native LLaDA body (SPEC 8): ``KVCache``, its checks, RoPE at given positions.

The body (``mdfast/models/llada_body.py``) drives it: ``LLaDAModel.allocate_cache(B, L)`` allocates
one cache per call, ``LLaDAModel.forward(..., cache=cache)`` (the refresh) is the ordinary full
forward that also writes every layer's K and V, and ``LLaDAModel.forward_cached(cache, positions,
...)`` runs the positions S only, over all L cached keys. This module holds what those need that is
not the forward itself; it imports nothing of the body (the body imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import describe
from ..reference import compute_dtype, rope, rope_tables

__all__ = ["KVCache", "allocate_cache", "check_cache_rows", "check_positions", "rope_at_"]


@dataclass
class KVCache:
    """Per layer, K and V of every position of the sequence, after RoPE (SPEC 8 "Cache").

    keys, values: (n_layers, B, L, n_kv_heads, hd) in the model dtype, one tensor each, allocated
    once per call (``allocate_cache``) and only written in place afterwards (``copy_`` by a refresh,
    ``scatter_`` at S by a cached step), so their storage never moves; layer i's K and V are the
    views ``keys[i]``, ``values[i]`` (B, L, n_kv_heads, hd). Memory: 2 * n_layers * B * L *
    n_kv_heads * hd elements (``numel``; LLaDA-8B, B = 1, L = 1024, bfloat16: 512 MiB). filled:
    set by the first refresh; a cached step refuses a cache no refresh has written.

    Positions are fixed for a call (0..L-1, left padding included), so cached keys are never
    rotated again. The cache does not keep the padding mask: every forward on it must be given the
    attention mask of the refresh that filled it.
    """

    keys: Tensor
    values: Tensor
    filled: bool = False

    @property
    def batch(self) -> int:
        return self.keys.shape[1]

    @property
    def length(self) -> int:
        return self.keys.shape[2]

    def numel(self) -> int:
        """Elements held: 2 * n_layers * B * L * n_kv_heads * hd."""
        return self.keys.numel() + self.values.numel()

    def nbytes(self) -> int:
        """Bytes held: ``numel()`` times the element size of the model dtype."""
        return self.numel() * self.keys.element_size()

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer i's K and V, views (B, L, n_kv_heads, hd) of the cache."""
        return self.keys[i], self.values[i]

    def check(self, config, batch: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        """ValueError or TypeError, naming ``cache``, unless it fits a forward of ``batch`` rows of ``length``.

        config: the model's ``LLaDAConfig`` (n_layers, n_kv_heads, head_dim); dtype, device: the
        hidden states'.
        """
        if not isinstance(self.keys, Tensor) or not isinstance(self.values, Tensor):
            got = f"{describe(self.keys)}, {describe(self.values)}"
            raise TypeError(f"cache: keys and values must be tensors, got {got}")
        want = (config.n_layers, batch, length, config.n_kv_heads, config.head_dim)
        for name, t in (("keys", self.keys), ("values", self.values)):
            if tuple(t.shape) != want:
                raise ValueError(
                    f"cache: {name} of shape {tuple(t.shape)}, but this forward needs {want} = (n_layers, B, L, "
                    f"n_kv_heads, hd) for B = {batch}, L = {length}: allocate one with model.allocate_cache(B, L)"
                )
            if t.dtype != dtype or t.device != device:
                raise TypeError(
                    f"cache: {name} is {describe(t)}, but the hidden states are {dtype} on {device}: "
                    "allocate the cache after moving or casting the model"
                )


def allocate_cache(model: nn.Module, batch: int, length: int) -> KVCache:
    """A zeroed ``KVCache`` for ``batch`` rows of ``length`` positions, in the dtype and on the device of ``model``.

    model: a ``LLaDAModel`` (its config's n_layers, n_kv_heads, head_dim; its input embedding
    table's dtype and device). 2 * n_layers * batch * length * n_kv_heads * hd elements, allocated
    here once; no forward allocates cache memory again.
    """
    for name, value in (("batch", batch), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    config = model.config
    table = model.get_input_embeddings().weight
    shape = (config.n_layers, batch, length, config.n_kv_heads, config.head_dim)
    factory = {"dtype": table.dtype, "device": table.device}
    return KVCache(torch.zeros(shape, **factory), torch.zeros(shape, **factory))


def check_positions(positions: Tensor, cache: KVCache, n: int, check_range: bool) -> None:
    """TypeError or ValueError, naming ``positions``, unless it is int64 (B, n) of distinct indices in [0, L) per row.

    B and L are the cache's, n the number of input rows given. ``check_range`` reads the indices
    (one device synchronisation); without it an index outside [0, L) is the scatter's error (or a
    device-side assert) and a repeated one writes K, V in an unspecified order.
    """
    if not isinstance(positions, Tensor):
        raise TypeError(f"positions: expected an int64 tensor (B, n), got {describe(positions)}")
    if positions.dtype != torch.int64:
        raise TypeError(f"positions: expected dtype torch.int64, got {positions.dtype}")
    B, L = cache.batch, cache.length
    if tuple(positions.shape) != (B, n) or not 1 <= n <= L:
        raise ValueError(
            f"positions: expected shape (B, n) = ({B}, {n}) (the cache's rows, the inputs' positions, "
            f"1 <= n <= L = {L}), got {tuple(positions.shape)}"
        )
    if positions.device != cache.keys.device:
        raise ValueError(f"positions: expected a tensor on {cache.keys.device} (the cache's), got {positions.device}")
    if check_range:
        outside = ((positions < 0) | (positions >= L)).any()
        repeated = (positions.sort(dim=1).values.diff(dim=1) == 0).any() if n > 1 else torch.zeros_like(outside)
        outside, repeated = torch.stack([outside, repeated]).tolist()
        if outside:
            raise ValueError(f"positions: every index must be in [0, L) = [0, {L}), got {positions.tolist()}")
        if repeated:
            raise ValueError(f"positions: a row names a position twice, got {positions.tolist()}")


def check_cache_rows(rows: Tensor, cache: KVCache, batch: int) -> None:
    """TypeError or ValueError, naming ``cache_rows``, unless it is int64 (batch,) on the cache's device, cache filled.

    A refresh of some rows (``forward(..., cache_rows=)``) writes only those rows, so the cache must
    already hold every row (a full refresh filled it). The indices are not read (no device
    synchronisation): an index outside [0, B) is ``index_copy_``'s error.
    """
    if not isinstance(rows, Tensor) or rows.dtype != torch.int64:
        raise TypeError(f"cache_rows: expected an int64 tensor (b,), got {describe(rows)}")
    if tuple(rows.shape) != (batch,) or batch > cache.batch:
        raise ValueError(
            f"cache_rows: expected shape ({batch},) (one cache row per input row, at most the cache's "
            f"B = {cache.batch}), got {tuple(rows.shape)}"
        )
    if rows.device != cache.keys.device:
        raise ValueError(f"cache_rows: expected a tensor on {cache.keys.device} (the cache's), got {rows.device}")
    if not cache.filled:
        raise ValueError("cache: a refresh of some rows needs a filled cache; refresh every row first (no cache_rows)")


def rope_at_(y: Tensor, positions: Tensor, theta: float, tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """RoPE applied in place to y (B, n, H, hd) at the positions ``positions`` (B, n) int64; returns y.

    SPEC 5's rotation, pos the given position instead of 0..L-1: angles cat(a, a), a = pos *
    inv_freq, inv_freq = 1 / theta^(2j/hd) (``reference.rope_inv_freq``), u' = u cos + rot(u) sin in
    float32 (float64 for a float64 y), cast back. ``reference.rope`` on ``reference.rope_tables`` at
    ``positions``, so at the same position the same bits as the full forward's RoPE off CUDA (the
    Triton kernel's there may differ in the last bit).

    - tables: those (cos, sin_rot) tables, (B, n, 1, hd), built once by the caller and shared (default: built here).
    """
    if tables is None:
        tables = rope_tables(positions, y.shape[-1], theta, compute_dtype(y))
    return rope(y, theta, tables, out=y)
