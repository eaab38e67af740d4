"""SPEC 8's approximate KV cache in the decoding loop: which rows refresh at a step, what S the others feed.

``DecodeOptions.cache`` ("dual" or "prefix") makes ``decode_loop`` build one ``CachedForward`` per
call: it allocates the native LLaDA body's ``KVCache`` once (B, L), decides on the host before each
step which rows refresh (``plan``), and runs the step's forward (``logits``).

Refresh, per row: a row refreshes at the first step of each of its blocks and, with
``cache_refresh`` k, at every k-th step inside it, exactly as it would alone. A step is then
- a refresh, when every decoding row refreshes (always the call's first step): the full forward
  over all L positions, which also writes every layer's K, V of every row;
- a cached step, when none does: a forward of S only over the cache;
- mixed, when some do (rows in different blocks: infilling with uneven masks, or the threshold and
  factor rules, whose rows move on when their blocks fill): the cached step for every row, then a
  full forward of the refreshing rows R alone (``forward(cache_rows=R)``), whose logits replace
  theirs. So each row's cache and tokens are those of its solo run, at the cost of a second,
  smaller forward on mixed steps. Rows that are done (block -1) never ask for a refresh; they stay
  in the batch and their logits are not read (masked out, not skipped).

S, per row: "dual", the block's positions (n); "prefix", every position at or after the block's
first one; ``cache_vicinity`` w adds the w real positions before the block and, for "dual", the w
after it (dInfer's vicinity refresh). S has one width for all rows (dual: n + 2w; prefix: as
wide as the row that needs most), so a row that needs fewer entries (a shorter row's padding
slots, a row with nothing to decode, a prefix shorter than another row's) gets spare entries:
other positions of the row that only query (``write`` False: their K, V are not written, so the
cache stays that of the row's solo run) and whose logits are never read. The block's entries come
first in S, so its logits rows are S's first n.

CUDA graphs: the refresh step and the cached step of each width are each captured once per call
(``kind``); mixed steps run eagerly. "dual" has one cached width per call, "prefix" one per block
start (its S shrinks as the blocks move on), so prefix captures more often.

The host learns each row's block from the decoder (``Decoder.blocks_at``): the fixed schedules'
host table, or the threshold and factor rules' per-step read of each row's block counter (one
small device read per step, which those rules need anyway to know when to stop).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models import ModelAdapter
from .schedule import Block, Schedule

# S's order: the block's own entries, then positions the mode wants (written), then left padding,
# then the row's other real positions (both only query).
_WANTED, _PADDING, _OTHER, _TAKEN = range(4)


class CachedForward:
    """A call's KV cache, its per-row refresh plan and the positions S of its cached steps (see the module docstring).

    - mode: "dual" or "prefix"; every: k of ``cache_refresh`` (None: block starts only);
      vicinity: w of ``cache_vicinity``; attention_mask: the call's (None: no padding).
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        schedule: Schedule,
        mode: str,
        every: int | None,
        attention_mask: Tensor | None,
        vicinity: int = 0,
    ) -> None:
        self.adapter, self.mode, self.every, self.vicinity = adapter, mode, every, vicinity
        B, L, n = schedule.B, schedule.L, schedule.block_length
        self.B, self.L, self.n = B, L, n
        self.cache = adapter.model.allocate_cache(B, L)
        device = schedule.decode.device
        self.previous: list[int] | None = None  # host: each row's block at the last step
        self.in_block = [0] * B  # host: each row's step inside its block
        self.refresh_rows: list[int] | None = None  # host: None every row refreshes, [] none, else those
        self.rows_index: Tensor | None = None  # refresh_rows on the device (mixed steps)
        self.width = min(L, n + 2 * vicinity) if mode == "dual" else n
        self.first_positions = schedule.positions[:, ::n].cpu() if mode == "prefix" else None  # one read per call
        self.index = torch.arange(L, device=device)
        real = torch.ones(B, L, dtype=torch.bool, device=device) if attention_mask is None else attention_mask.bool()
        self.real = real
        self.spare_key = torch.where(real, _OTHER * L, _PADDING * L) + self.index
        self.rows = torch.arange(n, device=device).expand(B, n)  # S's first n rows are the block's
        # dual S without vicinity and every block full: every entry is the block's, so every entry writes
        self.writes_all = mode == "dual" and vicinity == 0 and not schedule.has_padding

    def plan(self, blocks: list[int]) -> None:
        """Host, before a step: which rows refresh, given each row's block (-1: a row not decoding)."""
        decoding = [b for b, block in enumerate(blocks) if block >= 0]
        need = []
        for b in decoding:
            if self.previous is None or self.previous[b] != blocks[b]:
                self.in_block[b] = 0
                need.append(b)
            else:
                self.in_block[b] += 1
                if self.every is not None and self.in_block[b] % self.every == 0:
                    need.append(b)
        first = self.previous is None
        self.previous = list(blocks)
        if first or len(need) == len(decoding):
            self.refresh_rows = None
        else:
            self.refresh_rows = need
            self.rows_index = torch.tensor(need, dtype=torch.long, device=self.index.device) if need else None
        if self.mode == "prefix":
            starts = [int(self.first_positions[b, blocks[b]]) for b in decoding]
            self.width = min(self.L, max(self.n, self.L - min(starts, default=self.L) + self.vicinity))

    def kind(self) -> tuple | None:
        """The step's kind for CUDA graphs: ("refresh",), ("cached", width), or None (mixed: eager only)."""
        if self.refresh_rows is None:
            return ("refresh",)
        return ("cached", self.width) if not self.refresh_rows else None

    def logits(self, inputs: Tensor, attention_mask: Tensor | None, block: Block) -> Tensor:
        """The step's logits (B, n, V) at the block's positions: a refresh, a forward of S over the cache, or both."""
        if self.refresh_rows is None:
            return self.adapter.logits(inputs, attention_mask, block.positions, cache=self.cache)
        S, write = self.positions(block)
        x = inputs.gather(1, S.unsqueeze(-1).expand(-1, -1, inputs.shape[-1]))
        logits = self.adapter.cached_logits(
            self.cache, S, x, attention_mask, self.rows, None if self.writes_all else write
        )
        if not self.refresh_rows:
            return logits
        R = self.rows_index
        mask = None if attention_mask is None else attention_mask.index_select(0, R)
        fresh = self.adapter.logits(
            inputs.index_select(0, R), mask, block.positions.index_select(0, R), cache=self.cache, cache_rows=R
        )
        return logits.index_copy(0, R, fresh)

    def positions(self, block: Block) -> tuple[Tensor, Tensor]:
        """S (B, width) int64, distinct per row, the block's valid positions first; ``write`` (B, width) bool."""
        B, L, n = self.B, self.L, self.n
        taken = torch.zeros(B, L, dtype=torch.long, device=self.index.device)
        taken = taken.scatter_add_(1, block.positions, block.valid.long()) > 0
        wanted = self._wanted(block) & self.real & ~taken
        key = torch.where(taken, _TAKEN * L + self.index, torch.where(wanted, self.index, self.spare_key))
        spare = torch.argsort(key, dim=1)  # distinct keys: the order is unique
        padding = ~block.valid
        rank = (padding.long().cumsum(1) - 1).clamp_min(0)
        S = torch.where(block.valid, block.positions, spare.gather(1, rank))
        if self.width > n:
            used = padding.long().sum(1, keepdim=True)
            rest = spare.gather(1, used + torch.arange(self.width - n, device=used.device))
            S = torch.cat([S, rest], dim=1)
        return S, (taken | wanted).gather(1, S)

    def _wanted(self, block: Block) -> Tensor:
        """(B, L) bool: the positions beside the block that S recomputes (before the real-position filter)."""
        start = torch.where(block.valid[:, :1], block.positions[:, :1], self.L)
        low = start - self.vicinity
        if self.mode == "prefix":
            return self.index >= low
        last = torch.where(block.valid, block.positions, -1).amax(dim=1, keepdim=True)
        before = (self.index >= low) & (self.index < start)
        after = (self.index > last) & (self.index <= last + self.vicinity) & (last >= 0)
        return before | after
