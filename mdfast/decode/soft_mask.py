"""SPEC 3, soft-masking (Hersche et al.) on top of low-confidence remasking.

A still-masked position of the current block does not go back to the model as the bare mask
embedding m but as

    (1 - lam) m + lam * sum_{j<=k} q_j W_e[top_j],   lam = w_s sigmoid(w_a (-H_full - w_b)),

q_j = p(j) / sum_{i<=k} p(i) over its k most likely tokens (defaults k = 3, w_s = 0.25, w_a = 5,
w_b = -1), from the same statistics pass as the selection. Committed tokens and the positions
outside the current block are fed as usual. The mixtures of the last step are kept for the
entries of its block (at most one block per row, (B, n, E)); a block's last step leaves none
masked, so nothing carries over into a row's next block.
"""

from __future__ import annotations

import torch

from .base import MaskedTokens


class SoftMask(MaskedTokens):
    """Low-confidence remasking that feeds still-masked positions a mixture of their top-k embeddings."""

    full_entropy = True

    def __init__(
        self, adapter, schedule, *, k: int = 3, w_s: float = 0.25, w_a: float = 5.0, w_b: float = -1.0, **kwargs
    ) -> None:
        super().__init__(adapter, schedule, **kwargs)
        self.k, self.w_s, self.w_a, self.w_b = k, float(w_s), float(w_a), float(w_b)
        n, E = schedule.block_length, adapter.embedding.shape[1]
        self.soft = torch.zeros(self.B, n, E, device=self.device)  # inputs of the still-masked entries
        self.soft_slots = torch.zeros(self.B, n, dtype=torch.long, device=self.device)  # their slots
        self.soft_rows = torch.zeros(self.B, n, dtype=torch.bool, device=self.device)  # where they apply

    def write_inputs(self, out):
        super().write_inputs(out)
        index = self.soft_slots.unsqueeze(-1).expand(-1, -1, out.shape[-1])
        out.scatter_(1, index, torch.where(self.soft_rows.unsqueeze(-1), self.soft.to(out.dtype), out.gather(1, index)))

    def after_step(self, block, stats, still_masked):
        W_e = self.adapter.embedding.detach()
        m = W_e[self.adapter.mask_token_id].float()
        q = stats.topk_probs / stats.topk_probs.sum(-1, keepdim=True)
        mixture = torch.einsum("bnk,bnke->bne", q, W_e[stats.topk_ids].float())
        lam = (self.w_s * torch.sigmoid(self.w_a * (-stats.entropy_full - self.w_b))).unsqueeze(-1)
        self.soft.copy_(((1 - lam) * m + lam * mixture) * self.adapter.embed_scale)
        self.soft_slots.copy_(block.slots)
        self.soft_rows.copy_(still_masked)
