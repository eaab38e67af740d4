"""SPEC 3, soft-masking (Hersche et al.) on top of low-confidence remasking.

A still-masked position of the current block does not go back to the model as the bare mask
embedding m but as

    (1 - lam) m + lam * sum_{j<=k} q_j W_e[top_j],   lam = w_s sigmoid(w_a (-H_full - w_b)),

q_j = p(j) / sum_{i<=k} p(i) over its k most likely tokens (defaults k = 3, w_s = 0.25, w_a = 5,
w_b = -1), from the same statistics pass as the selection. Committed tokens and the positions
outside the current block are fed as usual.
"""

from __future__ import annotations

import torch

from .base import MaskedTokens


class SoftMask(MaskedTokens):
    full_entropy = True

    def __init__(
        self, adapter, B, N, *, k: int = 3, w_s: float = 0.25, w_a: float = 5.0, w_b: float = -1.0, **kwargs
    ) -> None:
        if not (isinstance(k, int) and 2 <= k <= 8):
            raise ValueError(f"k: expected an int in [2, 8] tokens to mix, got {k!r}")
        super().__init__(adapter, B, N, **kwargs)
        self.k, self.w_s, self.w_a, self.w_b = k, float(w_s), float(w_a), float(w_b)

    def start_block(self, start, stop, steps) -> None:
        super().start_block(start, stop, steps)
        E = self.adapter.embedding.shape[1]
        self.soft = torch.zeros(self.B, stop - start, E, device=self.device)  # inputs of the still-masked positions
        self.soft_rows = torch.zeros(self.B, stop - start, dtype=torch.bool, device=self.device)  # where they apply

    def write_inputs(self, out):
        super().write_inputs(out)
        block = out[:, self.block]
        block.copy_(torch.where(self.soft_rows.unsqueeze(-1), self.soft.to(out.dtype), block))

    def after_step(self, stats, still_masked):
        W_e = self.adapter.embedding.detach()
        m = W_e[self.adapter.mask_token_id].float()
        q = stats.topk_probs / stats.topk_probs.sum(-1, keepdim=True)
        mixture = torch.einsum("bnk,bnke->bne", q, W_e[stats.topk_ids].float())
        lam = (self.w_s * torch.sigmoid(self.w_a * (-stats.entropy_full - self.w_b))).unsqueeze(-1)
        self.soft.copy_(((1 - lam) * m + lam * mixture) * self.adapter.embed_scale)
        self.soft_rows.copy_(still_masked)
