"""Which positions a call decodes, their blocks, and each sequence's step schedule (SPEC 2, 3, 7).

SPEC 7: "the positions of a sequence that hold the mask id form the set M, anywhere (prefix, spans,
right context); only M is decoded, every other position is fed as its token's embedding.
block_length splits each row's M in left-to-right order into blocks; steps split evenly over
blocks; a row with |M| = 0 is returned as is." (``generate`` is the case M = an appended suffix.)

The layout. Row b's masked positions M_b, left to right, are packed into the slots 0 .. |M_b| - 1
of a (B, W) table (``positions``); the decoders keep their state per slot, so x-flow's X and t
exist for positions in M only. Slot i belongs to block i // n, n = the block length
(``block_length``, at most the longest row's |M|; without one, each row's whole M is one block).
Row b has K_b = ceil(|M_b| / n) blocks, the last one possibly shorter; W = max_b K_b * n, so that
every row has W slots and the slots past |M_b| are padding entries (``valid`` False).

The schedule. Every row takes the same ``steps`` steps, one forward each, all rows together; a row's
steps split over its own K_b blocks: block j gets steps // K_b steps, one more for the first
steps % K_b blocks (the first blocks get the extra steps; with steps divisible by K_b every block
gets steps / K_b, LLaDA's rule). So at one step the rows of a batch may be in different blocks, at
different steps of their blocks: every per-row quantity a step needs (which block, rho = l /
max(T - 1, 1) for step l of the T steps of a block, the number of tokens to commit, and whether
the step opens a new block) sits in a (B, steps) device table indexed by the device step counter
``step_index``, so no step waits on the host and a CUDA graph of one step replays every step.

Padding entries (the slots of a block past a shorter row's |M_b|, and every slot of a row with
|M_b| = 0) ride along in the (B, n) block views and must change nothing: their logits row is
replaced by a fixed distribution, 0 at the mask id and -inf elsewhere (``fill_padding_rows``: p = 1
exactly, a finite lse), they start at x-flow's t = 1 and X = m (a fixed point of the flow update:
never re-edited, never hard-committed, since c = 1 and t >= 0.99), and the discrete decoders
score them -inf and never select them. So each row decodes exactly as it does alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def transfer_counts(n_masked: int, steps: int) -> list[int]:
    """Tokens committed at each of ``steps`` steps for a block of ``n_masked`` masked tokens (SPEC 3, LLaDA).

    base = n_masked // steps, the first n_masked % steps steps get one more. Known on the host, so
    no step waits on the device to learn it.
    """
    base, extra = divmod(n_masked, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def steps_per_block(steps: int, blocks: int) -> list[int]:
    """Steps per block, "split evenly over blocks" (SPEC 2, 3, 7).

    steps // blocks each, and one more for each of the first steps % blocks blocks.
    """
    return transfer_counts(steps, blocks)


def top_positions(score: Tensor, count: int | Tensor) -> Tensor:
    """A (B, n) boolean mask of each row's ``count`` largest scores, ties -> the smaller index.

    A stable descending sort: the rule every decoder's selection follows. ``count`` is an int, an
    int64 tensor (1,) (the same count for every row) or (B, 1) (one per row), so a step can read it
    from a device-side schedule without a host synchronisation.
    """
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # rank[i]: place of score i in the order
    return rank < count


@dataclass
class Block:
    """The current block of every row, (B, n) each.

    - slots: into the packed (B, W) state.
    - valid: False for padding entries.
    - positions: in the sequence (0 for padding).
    """

    slots: Tensor
    valid: Tensor
    positions: Tensor


class Schedule:
    """The layout and per-row step schedule of one call (see the module docstring).

    ``decode`` (B, L) bool marks M. Host facts: ``B``, ``L``, ``steps``, ``block_length`` n,
    ``width`` W, ``masked`` |M_b| and ``blocks`` K_b per row, ``longest`` max_b |M_b|,
    ``has_padding`` (whether any block view holds a padding entry). Device tensors: ``decode``;
    ``positions`` (B, W) int64 and ``valid`` (B, W) bool per slot; ``slot_of`` (B, L) int64, the
    slot of each position of M (0 elsewhere); ``block_counts`` (B,) K_b; and the (B, steps) tables
    ``block_of``, ``rho``, ``counts`` (tokens to commit, SPEC 3's linear schedule over the block's
    own length), ``decoded_after`` (tokens of the block decoded after the step: the cumulative
    counts) and ``opens_block`` (the step is the first of block j > 0), read at the device counter
    ``step_index`` by ``now``.

    Raises ValueError when no row holds a masked position; ``steps`` against the rows' |M_b| is
    ``DecodeOptions.validate(masked=...)``'s check.
    """

    def __init__(self, decode: Tensor, steps: int, block_length: int | None) -> None:
        device = decode.device
        host = decode.cpu()
        self.B, self.L = B, L = host.shape
        self.steps = steps
        self.masked = host.sum(-1).tolist()
        self.longest = longest = max(self.masked, default=0)
        if longest == 0:
            raise ValueError("input_ids: no position holds the mask id in any sequence: nothing to decode")
        n = longest if block_length is None else min(block_length, longest)
        self.block_length = n
        self.blocks = [math.ceil(m / n) for m in self.masked]
        self.width = W = max(self.blocks) * n
        self.has_padding = any(m != W for m in self.masked)

        positions = torch.zeros(B, W, dtype=torch.long)
        slot_of = torch.zeros(B, L, dtype=torch.long)
        for b in range(B):
            where = host[b].nonzero().squeeze(-1)
            positions[b, : where.numel()] = where
            slot_of[b, where] = torch.arange(where.numel())
        valid = torch.arange(W).unsqueeze(0) < torch.tensor(self.masked).unsqueeze(1)

        # (B, steps) tables; a row without masked positions keeps block 0, commits nothing.
        self.block_of_host = [[0] * steps for _ in range(B)]
        step_in_block = [[0] * steps for _ in range(B)]
        block_steps = [[1] * steps for _ in range(B)]
        counts = [[0] * steps for _ in range(B)]
        decoded_after = [[0] * steps for _ in range(B)]
        for b in range(B):
            s = 0
            K = self.blocks[b]
            for j, T in enumerate(steps_per_block(steps, K) if K else []):
                size = min(n, self.masked[b] - j * n)
                done = 0
                for l, c in enumerate(transfer_counts(size, T)):
                    done += c
                    self.block_of_host[b][s] = j
                    step_in_block[b][s], block_steps[b][s] = l, T
                    counts[b][s], decoded_after[b][s] = c, done
                    s += 1

        def table(values, dtype=torch.long):
            return torch.tensor(values, dtype=dtype).to(device)

        self.decode = decode
        self.positions, self.valid, self.slot_of = positions.to(device), valid.to(device), slot_of.to(device)
        self.block_counts = table(self.blocks)
        self.block_of = table(self.block_of_host)
        step_in_block, block_steps = table(step_in_block), table(block_steps)
        self.rho = step_in_block / (block_steps - 1).clamp_min(1)  # l / max(T - 1, 1), float32
        self.counts = table(counts)
        self.decoded_after = table(decoded_after)
        self.opens_block = (step_in_block == 0) & (self.block_of > 0)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)  # 0-based step of the call
        self._offsets = torch.arange(n, device=device)

    def now(self, table: Tensor) -> Tensor:
        """``table[:, step]`` (B,) for the current step, read on the device."""
        return table.index_select(1, self.step_index.view(1)).squeeze(1)

    def advance(self) -> None:
        self.step_index.add_(1)

    def block(self, index: Tensor) -> Block:
        """The block ``index[b]`` (B,) int64 of every row b, as (B, n) views."""
        slots = index.unsqueeze(1) * self.block_length + self._offsets
        return Block(slots, self.valid.gather(1, slots), self.positions.gather(1, slots))

    def block_of_step(self, step: int) -> list[int]:
        """Host: the block each row runs at ``step`` of the fixed schedule (-1: a row with no masked position)."""
        return [self.block_of_host[b][step] if self.blocks[b] else -1 for b in range(self.B)]


def fill_padding_rows(logits: Tensor, valid: Tensor, mask_token_id: int) -> Tensor:
    """The logits (B, n, V) with every padding entry's row (``valid`` False) fixed: 0 at the mask id, -inf elsewhere.

    p(mask id) = 1 exactly, so a padding entry is never re-edited or committed by x-flow (c = 1,
    t stays 1) and its statistics are finite.
    """
    fixed = torch.full((logits.shape[-1],), -math.inf, dtype=logits.dtype, device=logits.device)
    fixed[mask_token_id] = 0.0
    return torch.where(valid.unsqueeze(-1), logits, fixed)
