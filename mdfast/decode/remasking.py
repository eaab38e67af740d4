"""SPEC 3: the remasking decoders, one statistics pass per step.

- ``low_confidence`` (LLaDA generate.py): confidence = p(x0).
- ``maskgit_plus`` (Dream): confidence = p(1) (with temperature > 0, p of the sampled token).
- ``topk_margin`` (Dream): confidence = p(1) - p(2).
- ``entropy`` (Dream): confidence = -H_full.
- ``rcr`` (Running Confidence Remasking, MDPO paper): every masked position filled each step, the
  lowest running-maximum confidences re-masked.
- ``threshold`` (Fast-dLLM confidence-threshold parallel decoding): commit every masked token of
  the block whose confidence p(x0) > tau (default 0.9), at least the single most confident one.
- ``factor`` (Fast-dLLM's dynamic rule, SPEC 8): commit the n most confident masked tokens of the
  block, n the largest with c(n) >= 1 - f / (n + 1) (default f = 1), at least one.

The first four commit, per step, the counts[step] most confident masked tokens of each row's current
block (LLaDA's linear schedule over the block's length, ``schedule.transfer_counts``, one table per
row: ``schedule.Schedule``); committed tokens never change. The last two (``ParallelCommit``) run
a block until it is filled, so their step count is data-dependent.
"""

from __future__ import annotations

import math

import torch

from .base import MaskedTokens
from .schedule import top_positions


class LowConfidence(MaskedTokens):
    """LLaDA low-confidence remasking: confidence = p(x0)."""


class MaskGitPlus(MaskedTokens):
    """Dream ``maskgit_plus``: confidence = p(1), the probability of the predicted token."""


class TopKMargin(MaskedTokens):
    """Dream ``topk_margin``: confidence = p(1) - p(2)."""

    def confidence(self, p_x0, stats):
        return stats.margin


class Entropy(MaskedTokens):
    """Dream ``entropy``: confidence = -H_full (the full-vocabulary entropy, same pass)."""

    full_entropy = True

    def confidence(self, p_x0, stats):
        return -stats.entropy_full


class RunningConfidenceRemasking(MaskedTokens):
    """Running Confidence Remasking (SPEC 3): refill every masked position, re-mask the lowest running maxima.

    SPEC 3: "keep per position the highest confidence it reached; each step fill every masked
    position, then re-mask the n_t positions whose running maximum confidence is lowest (n_t from
    the same schedule)".

    Each step fills every masked entry of the row's block with its prediction x0 (raising that
    position's running maximum with p(x0)), then keeps decoded the block entries with the highest
    running maximum, as many as LLaDA's linear schedule has decoded after this step
    (``decoded_after``; ties: the smaller index stays decoded), and re-masks the rest. A decoded
    token can thus be taken back while a more confident one appears elsewhere. Padding entries keep
    the running maximum -inf and are never kept.
    """

    def __init__(self, adapter, schedule, **kwargs) -> None:
        super().__init__(adapter, schedule, **kwargs)
        self.running_max = torch.full((self.B, self.W), -math.inf, device=self.device)

    def update(self, logits, block):
        x0, p_x0, _ = self.predict(logits)
        masked = self.masked(block)
        filled = torch.where(masked, x0, self.ids.gather(1, block.slots))  # fill every masked position
        previous = self.running_max.gather(1, block.slots)
        running = torch.where(masked, torch.maximum(previous, p_x0), previous)
        keep = top_positions(running, self.schedule.now(self.schedule.decoded_after).unsqueeze(1)) & block.valid
        self.running_max.scatter_(1, block.slots, running)
        self.ids.scatter_(1, block.slots, torch.where(keep, filled, self.adapter.mask_token_id))
        self.decoded.scatter_(1, block.slots, keep)


class ParallelCommit(MaskedTokens):
    """Fast-dLLM parallel decoding (SPEC 8): each step commits what ``select`` picks; a block runs until it is filled.

    So ``steps`` bounds nothing (a block takes as many forwards as it needs, at most its length), and
    each row has its own number of steps. Each row moves to its next block on its own, on the device,
    in the step that fills its current block; a row past its last block idles (its entries are all
    decoded: nothing is selected). Whether every row is done is one host read per step, between
    steps (``finished``). A subclass says which still-masked entries a step commits (``select``: at
    least the most confident one of a row with any left).
    """

    def __init__(self, adapter, schedule, **kwargs) -> None:
        super().__init__(adapter, schedule, **kwargs)
        self.current = torch.zeros(self.B, dtype=torch.long, device=self.device)  # K_b once row b is done
        self.last_block = (schedule.block_counts - 1).clamp_min(0)
        self.running = [0 if K else -1 for K in schedule.blocks]  # host: each row's block at the next step

    @property
    def max_steps(self):
        return self.schedule.longest  # each step commits at least one token of every row not done

    def block_index(self):
        return torch.minimum(self.current, self.last_block)

    def after_step(self, block, stats, still_masked):
        full = ~still_masked.any(-1)
        self.current.add_((full & (self.current < self.schedule.block_counts)).long())

    def finished(self, step):
        current = self.current.tolist()
        self.running[:] = [c if c < K else -1 for c, K in zip(current, self.schedule.blocks)]
        return all(c < 0 for c in self.running)

    def blocks_at(self, step):
        return self.running


class Threshold(ParallelCommit):
    """Fast-dLLM threshold decoding: commit every masked token with confidence > tau, at least the top one."""

    def __init__(self, adapter, schedule, *, tau: float = 0.9, **kwargs) -> None:
        super().__init__(adapter, schedule, **kwargs)
        self.tau = float(tau)

    def select(self, score, masked):
        return ((score > self.tau) | top_positions(score, 1)) & masked


class Factor(ParallelCommit):
    """Fast-dLLM's dynamic (factor) rule: commit the largest n with c(n) >= 1 - f / (n + 1), at least one.

    SPEC 8: per row and block, over the still-masked positions' confidences p(x0) sorted
    c(1) >= c(2) >= ..., commit the n most confident (ties: the smaller index first), n the largest
    count with c(n) >= 1 - f / (n + 1), and at least one (default f = 1). The bounds 1 - f / (n + 1)
    are computed once in float64 and kept in float32 beside the confidences. At B > 1 each row counts
    its own n from its own confidences, so rows fill their blocks, and finish, at different steps.
    """

    def __init__(self, adapter, schedule, *, factor: float = 1.0, **kwargs) -> None:
        super().__init__(adapter, schedule, **kwargs)
        self.factor = float(factor)
        n = schedule.block_length
        self.sizes = torch.arange(1, n + 1, device=self.device)  # n = 1 .. the block length
        bounds = [1.0 - self.factor / (count + 1) for count in range(1, n + 1)]
        self.bounds = torch.tensor(bounds, dtype=torch.float32, device=self.device)

    def select(self, score, masked):
        ranked = torch.sort(score, dim=-1, descending=True, stable=True).values  # decoded, padding (-inf) last
        passes = ranked >= self.bounds
        count = torch.where(passes, self.sizes, 0).amax(-1, keepdim=True).clamp_min(1)
        return top_positions(score, count) & masked
