"""The action kernel of a step (kernel 2 of ``xflow_step.py``): the policy's action, or the given lse's flag."""

from __future__ import annotations

import triton
import triton.language as tl

from .step_kernel import reedit_or_flow
from .step_launch import POLICY
from .step_policy import mean_action, policy_heads, policy_hidden

__all__ = ["_action_kernel"]


@triton.jit
def _flag_not_finite(lse_ptr, rows, live, bad_ptr):
    """Sets the flag when a live row's given lse is not finite (the row is no distribution)."""
    lse = tl.load(lse_ptr + rows, mask=live, other=0.0)
    not_finite = live & ((lse != lse) | (tl.abs(lse) == float("inf")))
    tl.store(bad_ptr, 1, mask=tl.max(not_finite.to(tl.int32), 0) > 0)


@triton.jit
def _action_kernel(
    c_ptr,
    c_stride,
    probs_ptr,
    entropy_topk_ptr,
    margin_ptr,
    lse_ptr,
    t_ptr,
    rho_ptr,
    rho_stride,
    w_ptr,
    action_ptr,
    confidence_ptr,
    reedited_ptr,
    t_new_ptr,
    bad_ptr,
    R,
    N,
    kappa_min,
    kappa_span,
    a_min,
    a_max,
    log_range,
    reedit_margin,
    kummer_terms,
    MODE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    K: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    DJ: tl.constexpr,
    B1: tl.constexpr,
    W2: tl.constexpr,
    B2: tl.constexpr,
    W_MU: tl.constexpr,
    W_KAPPA: tl.constexpr,
    B_MU: tl.constexpr,
    B_KAPPA: tl.constexpr,
):
    """Grid (cdiv(R, BLOCK_R),): the step of a block of rows after their statistics.

    c = p(1) is read at c_ptr + row * c_stride. MODE POLICY: SPEC 2.3-2.5, the policy's mean action
    (and c into confidence); MODE GIVEN (given statistics and action): the flag set for a row whose
    lse is not finite. Then SPEC 2.6 on t, into the workspace.
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < R
    c = tl.load(c_ptr + rows * c_stride, mask=live, other=0.0)
    t = tl.load(t_ptr + rows, mask=live, other=0.0)
    if MODE == POLICY:
        rho = tl.load(rho_ptr + (rows // N) * rho_stride, mask=live, other=0.0)
        h = policy_hidden(probs_ptr, entropy_topk_ptr, margin_ptr, rows, live, t, rho, w_ptr, BLOCK_R, K, D, DP, B1)
        u_mu, u_kappa = policy_heads(h, w_ptr, BLOCK_R, D, DP, DJ, W2, B2, W_MU, W_KAPPA)
        a = mean_action(
            u_mu, u_kappa, w_ptr, kappa_min, kappa_span, a_min, a_max, log_range, kummer_terms, BLOCK_R, B_MU, B_KAPPA
        )
        tl.store(action_ptr + rows, a, mask=live)
        tl.store(confidence_ptr + rows, c, mask=live)
    else:
        a = tl.load(action_ptr + rows, mask=live, other=0.0)
        _flag_not_finite(lse_ptr, rows, live, bad_ptr)
    reedited, t_new = reedit_or_flow(c, t, a, reedit_margin)
    tl.store(reedited_ptr + rows, reedited, mask=live)
    tl.store(t_new_ptr + rows, t_new, mask=live)
