"""SPEC 3: the confidence-ordered discrete decoders, one statistics pass per step.

- ``low_confidence`` (LLaDA generate.py): confidence = p(x0).
- ``maskgit_plus`` (Dream): confidence = p(1) (with temperature > 0, p of the sampled token).
- ``topk_margin`` (Dream): confidence = p(1) - p(2).
- ``entropy`` (Dream): confidence = -H_full.
- ``threshold`` (Fast-dLLM confidence-threshold parallel decoding): commit every masked token of
  the block whose confidence p(x0) > tau (default 0.9), at least the single most confident one.

The first four commit, per step, the counts[step] most confident masked tokens of the current block
(LLaDA's linear schedule, ``schedule.transfer_counts``); committed tokens never change.
"""

from __future__ import annotations

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


class Threshold(MaskedTokens):
    """Fast-dLLM: commit every masked token of the block with confidence > tau, at least the most
    confident one, until the block is filled (``steps`` then bounds nothing: a block takes as many
    forwards as it needs, at most its length). Knowing when a block is full is one host
    synchronisation per step, between steps."""

    def __init__(self, adapter, B, N, *, tau: float = 0.9, **kwargs) -> None:
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau: expected a confidence threshold in [0, 1], got {tau}")
        super().__init__(adapter, B, N, **kwargs)
        self.tau = float(tau)

    def select(self, score, masked):
        return ((score > self.tau) | top_positions(score, 1)) & masked

    def block_finished(self, step):
        return not bool(self.masked().any())
