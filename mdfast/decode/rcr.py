"""SPEC 3, Running Confidence Remasking (RCR, MDPO paper).

Each position keeps the highest confidence it has reached. Every step fills every masked position
of the block with its prediction x0 (raising that position's running maximum with p(x0)), then
re-masks the block positions whose running maximum is lowest, so that exactly as many stay masked
as LLaDA's linear schedule leaves masked after this step (ties: the smaller index stays decoded).
A decoded token can thus be taken back while a more confident one appears elsewhere.
"""

from __future__ import annotations

import math

import torch

from .base import MaskedTokens
from .schedule import top_positions


class RunningConfidenceRemasking(MaskedTokens):
    def __init__(self, adapter, B, N, **kwargs) -> None:
        super().__init__(adapter, B, N, **kwargs)
        self.running_max = torch.full((B, N), -math.inf, device=self.device)

    def start_block(self, start, stop, steps) -> None:
        super().start_block(start, stop, steps)
        self.decoded_after = self.counts.cumsum(0)  # tokens decoded after each step

    def update(self, logits):
        x0, p_x0, _ = self.predict(logits)
        masked = self.masked()
        self.commit(masked, x0)  # fill every masked position
        running = torch.where(
            masked, torch.maximum(self.running_max[:, self.block], p_x0), self.running_max[:, self.block]
        )
        self.running_max[:, self.block] = running
        remask = ~top_positions(running, self.at_step(self.decoded_after))
        self.ids[:, self.block] = torch.where(remask, self.adapter.mask_token_id, self.ids[:, self.block])
        self.decoded[:, self.block] &= ~remask
