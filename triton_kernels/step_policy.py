"""SPEC 2.3-2.5, the step policy's deterministic action for a block of rows, as @triton.jit pieces.

    a = a_min * 1F1(alpha; alpha+beta; z), from the policy MLP of the row's state s.

Weights: the packed float32 vector of ``mdfast.backends.contract.PolicyLayout`` (W1 at 0, row-major
(d, k+4); B1, W2, B2, W_MU, W_KAPPA, B_MU, B_KAPPA: the offsets of b1, W2 (d, d) row-major, b2,
w_mu, w_kappa, b_mu, b_kappa). The hidden width d is padded to DP (zero weights: SiLU(0) = 0 adds
nothing). Broadcast-multiply-reduce in float32 over a block of BLOCK_R rows, the weights loaded once
per block: W1 s as k + 4 rank-one updates (``policy_hidden``), W2 h in chunks of DJ outputs, each
chunk's SiLU fed straight into the two heads (``policy_heads``: h2 is never stored whole), then
mu, kappa and Kummer's series (``mean_action``). The action kernel calls the three in this order.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["mean_action", "policy_heads", "policy_hidden"]


@triton.jit
def _sigmoid(x):
    """1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def policy_hidden(
    probs_ptr,
    entropy_topk_ptr,
    margin_ptr,
    rows,
    live,
    t,
    rho,
    w_ptr,
    BLOCK_R: tl.constexpr,
    K: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    B1: tl.constexpr,
):
    """The policy's first layer h1 (BLOCK_R, DP) for a block of rows (SPEC 2.3)."""
    W: tl.constexpr = K + 4
    j = tl.arange(0, DP)
    in_d = j < D
    # h1 = SiLU(W1 s + b1), s_i = [p(1), ..., p(k), H_k, margin, t_i, rho]  (SPEC 2.3, this order)
    h = tl.zeros([BLOCK_R, DP], tl.float32) + tl.load(w_ptr + B1 + j, mask=in_d, other=0.0)[None, :]
    for col in tl.static_range(W):
        if col < K:
            s_col = tl.load(probs_ptr + rows * K + col, mask=live, other=0.0)
        elif col == K:
            s_col = tl.load(entropy_topk_ptr + rows, mask=live, other=0.0)
        elif col == K + 1:
            s_col = tl.load(margin_ptr + rows, mask=live, other=0.0)
        elif col == K + 2:
            s_col = t
        else:
            s_col = rho
        h += s_col[:, None] * tl.load(w_ptr + j * W + col, mask=in_d, other=0.0)[None, :]
    return h * _sigmoid(h)


@triton.jit
def policy_heads(
    h,
    w_ptr,
    BLOCK_R: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    DJ: tl.constexpr,
    W2: tl.constexpr,
    B2: tl.constexpr,
    W_MU: tl.constexpr,
    W_KAPPA: tl.constexpr,
):
    """The policy's second layer and its two heads' sums (u_mu, u_kappa) from h1 (SPEC 2.4)."""
    j = tl.arange(0, DP)
    in_d = j < D
    # h2 = SiLU(W2 h1 + b2), DJ outputs at a time; u_mu = w_mu.h2, u_kappa = w_k.h2  (SPEC 2.4)
    u_mu = tl.zeros([BLOCK_R], tl.float32)
    u_kappa = tl.zeros([BLOCK_R], tl.float32)
    for j0 in range(0, D, DJ):
        out = j0 + tl.arange(0, DJ)
        in_out = out < D
        w2_rows = tl.load(w_ptr + W2 + out[:, None] * D + j[None, :], mask=in_out[:, None] & in_d[None, :], other=0.0)
        g = tl.sum(h[:, None, :] * w2_rows[None, :, :], 2) + tl.load(w_ptr + B2 + out, mask=in_out, other=0.0)[None, :]
        g = g * _sigmoid(g)
        u_mu += tl.sum(g * tl.load(w_ptr + W_MU + out, mask=in_out, other=0.0)[None, :], 1)
        u_kappa += tl.sum(g * tl.load(w_ptr + W_KAPPA + out, mask=in_out, other=0.0)[None, :], 1)
    return u_mu, u_kappa


@triton.jit
def mean_action(
    u_mu,
    u_kappa,
    w_ptr,
    kappa_min,
    kappa_span,
    a_min,
    a_max,
    log_range,
    kummer_terms,
    BLOCK_R: tl.constexpr,
    B_MU: tl.constexpr,
    B_KAPPA: tl.constexpr,
):
    """The deterministic action a_min * 1F1(alpha; alpha+beta; z) from the heads' sums (SPEC 2.4-2.5)."""
    # mu = 0.05 + 0.9 sigmoid(w_mu.h + b_mu); kappa = kmin + (kmax - kmin) sigmoid(w_k.h + b_k);
    # alpha = mu kappa, beta = (1 - mu) kappa
    mu = 0.05 + 0.9 * _sigmoid(u_mu + tl.load(w_ptr + B_MU))
    kappa = kappa_min + kappa_span * _sigmoid(u_kappa + tl.load(w_ptr + B_KAPPA))
    alpha = mu * kappa
    beta = (1.0 - mu) * kappa

    # a = a_min * 1F1(alpha; alpha+beta; z), z = L ln 2 = ln(a_max / a_min), summed over exactly
    # kummer_terms terms: term_{n+1} = term_n (alpha + n) / (alpha + beta + n) z / (n + 1).
    term = tl.full([BLOCK_R], 1.0, tl.float32)
    total = tl.full([BLOCK_R], 1.0, tl.float32)
    for n in range(kummer_terms - 1):  # term_0 is the first of the kummer_terms terms
        term = term * (alpha + n) / (alpha + beta + n) * (log_range / (n + 1))
        total += term
    return tl.minimum(tl.maximum(a_min * total, a_min), a_max)  # clamp to [a_min, a_max]
