"""The masked-diffusion training objective of the code model (SPEC 7), LLaDA's with span masking mixed in.

SPEC 7: "LLaDA's masked-diffusion objective: mask ratio r ~ U(0, 1) per sequence, cross-entropy on masked
positions weighted 1/r". Per sequence b of a batch: a region R_b of n_b positions and a mask ratio r_b; each
position of R_b is masked (replaced by [MASK]) with probability r_b, independently; the loss of the sequence is

    loss_b = (1 / n_b) * sum over masked i of CE(logits_i, x0_i) / r_b,

and the batch loss is the mean of loss_b over b (a sequence with no masked position contributes 0). Two kinds
of region (``sample_masks``), mixed per sequence:
- i.i.d.: R_b = the whole sequence (n_b = L), exactly LLaDA's pre-training loss (their sum over masked tokens
  of CE / r, divided by B * L);
- span (with probability ``span_prob``): R_b = one contiguous span of n_b ~ U{span_min .. span_max} positions
  at a uniform place: the same estimator of the span given everything around it, which is what infilling a
  span asks of the model (SPEC 7's trial found i.i.d. masking alone far too weak for that).
r is stratified over the batch, r_b = eps + (1 - eps) * frac(u + b / B) with one u ~ U(0, 1): each r_b is
U(eps, 1) as in LLaDA (eps = 1e-3 keeps 1/r finite), the batch covers (0, 1) evenly (less variance).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import describe

__all__ = ["MaskedBatch", "mdlm_loss", "sample_masks"]

RATIO_EPS = 1e-3


@dataclass
class MaskedBatch:
    """The masks of one batch and the weights of their cross-entropies.

    - masked (B, L) bool: the positions replaced by [MASK].
    - weight (B,) float32: 1 / (r_b n_b), the factor of each masked position's cross-entropy.
    - span (B,) bool: the sequence's region is a span (else i.i.d.).
    """

    masked: Tensor
    weight: Tensor
    span: Tensor

    def inputs(self, ids: Tensor, mask_token_id: int) -> Tensor:
        """``ids`` with [MASK] at the masked positions."""
        return ids.masked_fill(self.masked.to(ids.device), mask_token_id)


def sample_masks(
    batch_size: int,
    seq_len: int,
    *,
    span_prob: float,
    span_min: int,
    span_max: int,
    generator: torch.Generator,
    ratio: Tensor | None = None,
) -> MaskedBatch:
    """Regions, ratios and masks of one batch (module docstring), drawn on the CPU from ``generator``.

    ``ratio`` (B,) fixes r_b instead of drawing it (fixed-ratio evaluation).
    """
    if not 1 <= span_min <= span_max <= seq_len:
        raise ValueError(
            f"span_min, span_max: need 1 <= span_min <= span_max <= seq_len {seq_len}, got {span_min}, {span_max}"
        )
    if not 0.0 <= span_prob <= 1.0:
        raise ValueError(f"span_prob: expected a probability, got {span_prob}")
    B, L = batch_size, seq_len
    if ratio is None:
        u = torch.rand((), generator=generator)
        ratio = RATIO_EPS + (1 - RATIO_EPS) * torch.remainder(u + torch.arange(B) / B, 1.0)
    elif not isinstance(ratio, Tensor) or ratio.shape != (B,) or not bool(((ratio > 0) & (ratio <= 1)).all()):
        raise ValueError(f"ratio: expected a ({B},) tensor of values in (0, 1], got {describe(ratio)}")
    span = torch.rand(B, generator=generator) < span_prob
    length = torch.randint(span_min, span_max + 1, (B,), generator=generator)
    start = (torch.rand(B, generator=generator) * (L - length + 1)).floor().long()
    pos = torch.arange(L)
    in_span = (pos >= start[:, None]) & (pos < (start + length)[:, None])
    region = torch.where(span[:, None], in_span, torch.ones(B, L, dtype=torch.bool))
    masked = region & (torch.rand(B, L, generator=generator) < ratio[:, None])
    n = torch.where(span, length, torch.full_like(length, L))
    return MaskedBatch(masked, (1.0 / (ratio.float() * n)).float(), span)


def mdlm_loss(masked_logits: Tensor, targets: Tensor, batch: MaskedBatch) -> Tensor:
    """loss_b of every sequence (B,) float32 (module docstring; the batch loss is their mean).

    - masked_logits (N, V): the logits at the N masked positions of ``batch`` in row-major order
      (``logits[batch.masked]``); cross-entropy in float32.
    - targets (N,): the clean tokens there.
    """
    if masked_logits.dim() != 2 or masked_logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"masked_logits, targets: expected (N, V) and (N,), got {describe(masked_logits)} and {describe(targets)}"
        )
    masked = batch.masked.to(masked_logits.device)
    ce = torch.zeros(masked.shape, device=masked.device)  # (B, L): CE at the masked positions, 0 elsewhere
    ce[masked] = F.cross_entropy(masked_logits.float(), targets, reduction="none")
    return ce.sum(dim=1) * batch.weight.to(ce.device)
