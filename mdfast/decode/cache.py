"""SPEC 8's approximate KV cache in the decoding loop: which steps refresh, and the positions S the others feed.

``DecodeOptions.cache`` ("dual" or "prefix") makes ``decode_loop`` build one ``CachedForward`` per
call: it allocates the native LLaDA body's ``KVCache`` once (B, L), decides on the host before each
step whether the step is a refresh (``plan``), and runs the step's forward (``logits``):

- a refresh is today's full forward over all L positions that also writes every layer's K, V; it
  runs at the first step of a block and, with ``cache_refresh`` k, at every k-th step inside it.
  Rows may be in different blocks (infilling with uneven masks, or the threshold and factor rules,
  whose rows move on when their blocks fill): a step refreshes when any row opens a block or
  reaches its k-th step, so rows with different schedules refresh more often than alone;
- every other step feeds only S, gathered from the step's inputs (x-flow's mixed embeddings and
  soft-mask inputs included): "dual", the block's positions (B, n); "prefix", every position at
  or after the block's first one, (B, max(n, L - the earliest start of a row)). The block's
  entries come first in S, so its logits rows are S's first n.

S is distinct per row. Where a row has fewer positions than S's width (a shorter row's padding
entries, a row with nothing to decode, a prefix shorter than another row's), the spare entries name
other positions of the row: first the ones the mode wants, then left padding (masked from every
key: harmless), then the row's earliest real positions, whose K, V are then recomputed against
the cache (approximate, like every cached step). Their logits are never read (padding rows are
replaced by the fixed row, as without a cache).

The host learns each row's block from the decoder (``Decoder.blocks_at``): the fixed schedules'
host table, or the threshold and factor rules' per-step read of "is every row done", so a cached
step adds no device synchronisation. Cached steps run eagerly: no CUDA graph is captured with a cache.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models import ModelAdapter
from .schedule import Block, Schedule


class CachedForward:
    """A call's KV cache and its refresh plan (see the module docstring)."""

    def __init__(
        self, adapter: ModelAdapter, schedule: Schedule, mode: str, every: int | None, attention_mask: Tensor | None
    ) -> None:
        self.adapter, self.mode, self.every = adapter, mode, every
        B, L, n = schedule.B, schedule.L, schedule.block_length
        self.B, self.L, self.n = B, L, n
        self.cache = adapter.model.allocate_cache(B, L)
        device = schedule.decode.device
        self.previous: list[int] | None = None  # host: each row's block at the last step
        self.in_block = [0] * B  # host: each row's step inside its block
        self.refresh = True
        self.width = n
        self.first_positions = schedule.positions[:, ::n].cpu() if mode == "prefix" else None  # one read per call
        self.index = torch.arange(L, device=device)
        # spare entries' order: left padding (1) before real positions (2); wanted (0), taken (3)
        real = torch.ones(B, L, dtype=torch.long, device=device) if attention_mask is None else attention_mask.long()
        self.spare_key = (1 + real.clamp(0, 1)) * L + self.index
        self.rows = torch.arange(n, device=device).expand(B, n)  # S's first n rows are the block's

    def plan(self, blocks: list[int]) -> None:
        """Host, before a step: whether it refreshes, given each row's block (-1: a row not decoding)."""
        refresh = self.previous is None
        for b, block in enumerate(blocks):
            if block < 0:
                continue
            if self.previous is None or self.previous[b] != block:
                self.in_block[b] = 0
                refresh = True
            else:
                self.in_block[b] += 1
                refresh |= self.every is not None and self.in_block[b] % self.every == 0
        self.previous = list(blocks)
        self.refresh = refresh
        if self.mode == "prefix":
            starts = [int(self.first_positions[b, j]) for b, j in enumerate(blocks) if j >= 0]
            self.width = max(self.n, self.L - min(starts, default=self.L))

    def logits(self, inputs: Tensor, attention_mask: Tensor | None, block: Block) -> Tensor:
        """The step's logits (B, n, V) at the block's positions: a refresh, or a forward of S over the cache."""
        if self.refresh:
            return self.adapter.logits(inputs, attention_mask, block.positions, cache=self.cache)
        S = self.positions(block)
        x = inputs.gather(1, S.unsqueeze(-1).expand(-1, -1, inputs.shape[-1]))
        return self.adapter.cached_logits(self.cache, S, x, attention_mask, self.rows)

    def positions(self, block: Block) -> Tensor:
        """S (B, width) int64, distinct per row: the block's valid positions first, then spare ones (on the device)."""
        B, L, n = self.B, self.L, self.n
        taken = torch.zeros(B, L, dtype=torch.long, device=self.index.device)
        taken = taken.scatter_add_(1, block.positions, block.valid.long()) > 0
        key = torch.where(taken, 3 * L + self.index, self.spare_key)
        if self.mode == "prefix":
            start = torch.where(block.valid[:, 0], block.positions[:, 0], L)
            key = torch.where(~taken & (self.index >= start.unsqueeze(1)), self.index, key)
        spare = torch.argsort(key, dim=1)  # distinct keys: the order is unique
        padding = ~block.valid
        rank = (padding.long().cumsum(1) - 1).clamp_min(0)
        head = torch.where(block.valid, block.positions, spare.gather(1, rank))
        if self.width == n:
            return head
        used = padding.long().sum(1, keepdim=True)
        rest = spare.gather(1, used + torch.arange(self.width - n, device=used.device))
        return torch.cat([head, rest], dim=1)
