"""What the ops return: ``TokenStats`` (SPEC 1) and ``XFlowStep`` (SPEC 2), and their empty forms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TokenStats", "XFlowStep", "empty_stats", "empty_step"]


@dataclass
class TokenStats:
    """SPEC 1 statistics of each logits row; batch shape = ``logits.shape[:-1]``.

    argmax (int64): smallest index among the maximal logits; topk_probs (..., k) float32: the k
    largest probabilities, descending, ties -> smaller index; topk_ids (..., k) int64: their ids;
    lse = log sum_v exp(z_v); margin = p(1) - p(2); entropy_topk = H_k; entropy_full = H_full =
    lse - sum_v p_v z_v (None unless asked). Float fields are float32.
    """

    argmax: Tensor
    topk_probs: Tensor
    topk_ids: Tensor
    lse: Tensor
    margin: Tensor
    entropy_topk: Tensor
    entropy_full: Tensor | None = None


@dataclass
class XFlowStep:
    """The result of one x-flow step (SPEC 2) for B sequences of N tokens.

    X (B, N, E), t (B, N): the new state (the inputs themselves when ``inplace``); tokens: x_pred
    = argmax; confidence: c = p(1); action: the step size a each token drew or was given (also
    for re-edited tokens, which do not use it); reedited (bool): c - t < -reedit_margin;
    committed (B,) int64: the token hard-committed this step, -1 if none; lse (B, N): log sum_v
    exp(z_v) (not finite for a row that is no distribution, seen only with ``check_finite=False``);
    log_prob: log pi(y) of the sampled actions (only when ``sample``; differentiable in the
    policy's weights); state (B, N, k + 4): the policy state s = [p(1..k), H_k, margin, t, rho] the
    draws were made from, and draw (B, N): the draws y ~ Beta(alpha, beta), a = a_min 2^(y L) (both
    only when ``sample``: what a policy-gradient update needs to recompute log pi(y | s)).
    """

    X: Tensor
    t: Tensor
    tokens: Tensor
    confidence: Tensor
    action: Tensor
    reedited: Tensor
    committed: Tensor
    lse: Tensor
    log_prob: Tensor | None = None
    state: Tensor | None = None
    draw: Tensor | None = None


def empty_stats(batch_shape, k: int, full_entropy: bool, device) -> TokenStats:
    """The statistics of no rows (a batch shape with a 0)."""
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    return TokenStats(
        argmax=torch.empty(batch_shape, **i64),
        topk_probs=torch.empty(*batch_shape, k, **f32),
        topk_ids=torch.empty(*batch_shape, k, **i64),
        lse=torch.empty(batch_shape, **f32),
        margin=torch.empty(batch_shape, **f32),
        entropy_topk=torch.empty(batch_shape, **f32),
        entropy_full=torch.empty(batch_shape, **f32) if full_entropy else None,
    )


def empty_step(X_out: Tensor, t_out: Tensor, B: int, N: int, sample: bool, width: int) -> XFlowStep:
    """N = 0 (or B = 0): nothing to update, nothing to commit."""
    device = t_out.device
    zeros = torch.zeros(B, N, dtype=torch.float32, device=device)
    return XFlowStep(
        X=X_out,
        t=t_out,
        tokens=torch.zeros(B, N, dtype=torch.int64, device=device),
        confidence=zeros,
        action=zeros.clone(),
        reedited=torch.zeros(B, N, dtype=torch.bool, device=device),
        committed=torch.full((B,), -1, dtype=torch.int64, device=device),
        lse=zeros.clone(),
        log_prob=zeros.clone() if sample else None,
        state=torch.zeros(B, N, width, device=device) if sample else None,
        draw=zeros.clone() if sample else None,
    )
