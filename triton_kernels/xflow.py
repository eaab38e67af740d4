"""SPEC 2.2-2.7, one x-prediction flow step, in Triton, with no host synchronisation.

Four launches in a fixed order (a whole step can be captured in a CUDA graph):
1. the statistics pass of ``token_stats.py`` (one or two kernels), which also sets a one-element
   "bad" flag when a row's lse is not finite;
2. ``_action_kernel``, grid (row blocks,): confidence c = p(1), the policy state, the step policy
   MLP (broadcast-multiply-reduce over a block of rows, its weights loaded once per block), the
   action, the re-edit decision and the new t;
3. ``_commit_kernel``, grid (B,): the hard commit's choice per sequence;
4. ``_update_kernel``, grid (row blocks, E blocks): the new X, re-edit, flow update or commit.
Kernels 2-4 read the flag and write nothing to X_out or t_out when it is set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .token_stats import compute_token_stats

__all__ = ["xflow_step"]

# Where the action comes from (SPEC 2.5 and the default policy without trained weights).
_GIVEN = tl.constexpr(0)
_POLICY = tl.constexpr(1)
_HEURISTIC = tl.constexpr(2)


@dataclass(frozen=True)
class XflowConfig:
    """Launch parameters of the kernels after the statistics pass."""

    action_rows: int  # rows per program of the action kernel (the policy weights load once per block)
    policy_chunk: int  # outputs of W2 h1 per step of the policy's second layer
    commit_block: int  # t values per tile of the commit scan
    update_rows: int  # rows per program of the update kernel
    update_cols: int  # embedding columns per program of the update kernel


def xflow_config(E: int, hidden: int) -> XflowConfig:
    """The one place that tunes kernels 2-4. 16 rows per action program (128 programs for 2048 rows);
    its second layer multiplies (16, chunk, d) tiles of 4096 products (32 per thread of 4 warps).
    Update tiles of 4 rows x up to 1024 columns (4096 floats, 32 per thread of 4 warps)."""
    action_rows = 16
    return XflowConfig(
        action_rows=action_rows,
        policy_chunk=max(1, 4096 // (action_rows * triton.next_power_of_2(hidden))),
        commit_block=1024,
        update_rows=4,
        update_cols=min(1024, triton.next_power_of_2(E)),
    )


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _policy_mean_action(
    probs_ptr,
    entropy_topk_ptr,
    margin_ptr,
    rows,
    live,
    t,
    rho,
    w_ptr,
    kappa_min,
    kappa_span,
    a_min,
    a_max,
    log_range,
    kummer_terms,
    BLOCK_R: tl.constexpr,
    K: tl.constexpr,
    D: tl.constexpr,
    DP: tl.constexpr,
    DJ: tl.constexpr,
):
    """SPEC 2.3-2.5 for a block of rows: the deterministic action a_min * 1F1(alpha; alpha+beta; z).

    Weights: packed float32 [W1 (d, k+4) row-major, b1 (d), W2 (d, d), b2 (d), w_mu (d), w_kappa (d),
    b_mu, b_kappa]. The hidden width d is padded to DP (zero weights: SiLU(0) = 0 adds nothing).
    Broadcast-multiply-reduce in float32: W1 s as k + 4 rank-one updates, W2 h in chunks of DJ
    outputs, each chunk's SiLU fed straight into the two heads (h2 is never stored whole).
    """
    W: tl.constexpr = K + 4
    j = tl.arange(0, DP)
    in_d = j < D
    # h1 = SiLU(W1 s + b1), s_i = [p(1), ..., p(k), H_k, margin, t_i, rho]  (SPEC 2.3, this order)
    h = tl.zeros([BLOCK_R, DP], tl.float32) + tl.load(w_ptr + D * W + j, mask=in_d, other=0.0)[None, :]
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
    h = h * _sigmoid(h)

    # h2 = SiLU(W2 h1 + b2), DJ outputs at a time; u_mu = w_mu.h2, u_kappa = w_k.h2  (SPEC 2.4)
    w2 = w_ptr + D * W + D
    b2 = w2 + D * D
    heads = b2 + D
    u_mu = tl.zeros([BLOCK_R], tl.float32)
    u_kappa = tl.zeros([BLOCK_R], tl.float32)
    for j0 in range(0, D, DJ):
        out = j0 + tl.arange(0, DJ)
        in_out = out < D
        w2_rows = tl.load(w2 + out[:, None] * D + j[None, :], mask=in_out[:, None] & in_d[None, :], other=0.0)
        g = tl.sum(h[:, None, :] * w2_rows[None, :, :], 2) + tl.load(b2 + out, mask=in_out, other=0.0)[None, :]
        g = g * _sigmoid(g)
        u_mu += tl.sum(g * tl.load(heads + out, mask=in_out, other=0.0)[None, :], 1)
        u_kappa += tl.sum(g * tl.load(heads + D + out, mask=in_out, other=0.0)[None, :], 1)

    # mu = 0.05 + 0.9 sigmoid(w_mu.h + b_mu); kappa = kmin + (kmax - kmin) sigmoid(w_k.h + b_k);
    # alpha = mu kappa, beta = (1 - mu) kappa
    mu = 0.05 + 0.9 * _sigmoid(u_mu + tl.load(heads + 2 * D))
    kappa = kappa_min + kappa_span * _sigmoid(u_kappa + tl.load(heads + 2 * D + 1))
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


@triton.jit
def _action_kernel(
    probs_ptr,
    entropy_topk_ptr,
    margin_ptr,
    t_ptr,
    rho_ptr,
    rho_stride,
    action_in_ptr,
    w_ptr,
    confidence_ptr,
    action_ptr,
    reedited_ptr,
    t_out_ptr,
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
):
    """Grid (cdiv(R, BLOCK_R),): c, the action, the re-edit decision and the new t of a block of rows.

    t_out is read back by the commit kernel; it is written only when no row is bad, and t is read
    before t_out is written at the same place (t_out may alias t).
    """
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < R
    c = tl.load(probs_ptr + rows * K, mask=live, other=0.0)  # c_i = p(1)
    t = tl.load(t_ptr + rows, mask=live, other=0.0)
    if MODE == _GIVEN:
        a = tl.load(action_in_ptr + rows, mask=live, other=0.0)
    elif MODE == _POLICY:
        rho = tl.load(rho_ptr + (rows // N) * rho_stride, mask=live, other=0.0)
        a = _policy_mean_action(
            probs_ptr,
            entropy_topk_ptr,
            margin_ptr,
            rows,
            live,
            t,
            rho,
            w_ptr,
            kappa_min,
            kappa_span,
            a_min,
            a_max,
            log_range,
            kummer_terms,
            BLOCK_R,
            K,
            D,
            DP,
            DJ,
        )
    else:
        # a = a_min^(1 - c) * a_max^c = a_min * exp(c ln(a_max / a_min))
        a = a_min * tl.exp(c * log_range)
    # Re-edit (uses t_i before this step's update): if c_i - t_i < -0.1 then t_i = c_i;
    # otherwise the flow update t_i += a_i (1 - t_i).  (SPEC 2.6)
    reedited = (c - t) < -reedit_margin
    t_new = tl.where(reedited, c, t + a * (1.0 - t))
    tl.store(confidence_ptr + rows, c, mask=live)
    tl.store(action_ptr + rows, a, mask=live)
    tl.store(reedited_ptr + rows, reedited, mask=live)
    if tl.load(bad_ptr) == 0:
        tl.store(t_out_ptr + rows, t_new, mask=live)


@triton.jit
def _commit_kernel(confidence_ptr, t_out_ptr, committed_ptr, bad_ptr, N, commit_threshold, BLOCK_N: tl.constexpr):
    """Grid (B,), SPEC 2.7: among the sequence's tokens with t_i < 0.99 after 2.6, the one with the
    largest c_i (smallest index on ties); committed = its index, or -1 when every t_i >= 0.99 (or
    a row is bad). Sets its t_i = 1; the update kernel gives it X_i = E[x_pred_i]."""
    b = tl.program_id(0).to(tl.int64)
    best_c = tl.full([], -1.0, tl.float32)
    best_n = tl.full([], -1, tl.int32)
    for start in range(0, N, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        live = n < N
        t = tl.load(t_out_ptr + b * N + n, mask=live, other=1.0)
        c = tl.load(confidence_ptr + b * N + n, mask=live, other=0.0)
        score = tl.where(live & (t < commit_threshold), c, -1.0)
        tile_c = tl.max(score, 0)
        tile_n = tl.min(tl.where(score == tile_c, n, N), 0)
        # strictly larger: an earlier tile keeps a tie
        better = tile_c > best_c
        best_n = tl.where(better, tile_n, best_n)
        best_c = tl.where(better, tile_c, best_c)
    committed = tl.where(tl.load(bad_ptr) == 0, best_n, -1)
    tl.store(committed_ptr + b, committed.to(tl.int64))
    tl.store(t_out_ptr + b * N + committed, 1.0, mask=committed >= 0)


@triton.jit
def _update_kernel(
    X_ptr,
    X_out_ptr,
    embedding_ptr,
    embedding_stride,
    mask_embedding_ptr,
    tokens_ptr,
    confidence_ptr,
    action_ptr,
    reedited_ptr,
    committed_ptr,
    bad_ptr,
    R,
    N,
    E,
    BLOCK_R: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Grid (cdiv(R, BLOCK_R), cdiv(E, BLOCK_E)), SPEC 2.6-2.7 on a tile of X (X_out may alias X):
    committed: X_i = E[x_pred_i]; re-edit: X_i = c_i E[x_pred_i] + (1 - c_i) m;
    flow update: X_i += (E[x_pred_i] - X_i) a_i. Nothing is read or written when a row is bad."""
    if tl.load(bad_ptr) == 0:
        rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
        live = rows < R
        tile = live[:, None] & (cols < E)[None, :]
        x = tl.load(tokens_ptr + rows, mask=live, other=0)
        c = tl.load(confidence_ptr + rows, mask=live, other=0.0)[:, None]
        a = tl.load(action_ptr + rows, mask=live, other=0.0)[:, None]
        reedited = tl.load(reedited_ptr + rows, mask=live, other=0)[:, None]
        committed = (tl.load(committed_ptr + rows // N, mask=live, other=-1) == rows % N)[:, None]
        target = tl.load(embedding_ptr + x[:, None] * embedding_stride + cols[None, :], mask=tile, other=0.0)
        target = target.to(tl.float32)
        at = rows[:, None] * E + cols[None, :]
        X = tl.load(X_ptr + at, mask=tile, other=0.0)
        m = tl.load(mask_embedding_ptr + cols, mask=cols < E, other=0.0)[None, :]
        X_new = tl.where(committed, target, tl.where(reedited, c * target + (1.0 - c) * m, X + (target - X) * a))
        tl.store(X_out_ptr + at, X_new, mask=tile)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(f"xflow_step: {message}")


def xflow_step(
    logits: Tensor,
    X: Tensor,
    t: Tensor,
    embedding: Tensor,
    mask_embedding: Tensor,
    rho: Tensor,
    policy_weights: Tensor | None,
    hidden: int,
    kappa_min: float,
    kappa_max: float,
    action: Tensor | None,
    a_min: float,
    a_max: float,
    reedit_margin: float,
    commit_threshold: float,
    k: int,
    kummer_terms: int,
    X_out: Tensor,
    t_out: Tensor,
) -> list[Tensor]:
    """SPEC 2.2-2.7, one fused x-flow step (csrc/ops.h ``xflow_step``).

    logits (B,N,V) stride(2)==1; X, X_out (B,N,E) f32 contiguous; t, t_out (B,N) f32 contiguous
    (X_out may alias X, t_out may alias t); embedding (V,E) f32/bf16/f16 with stride(1)==1;
    mask_embedding (E,) f32 contiguous; rho (B,) f32; policy_weights packed f32 (layout in
    ``_policy_mean_action``) with d = hidden, or None for the heuristic a_min^(1-c) a_max^c;
    action (B,N) f32 or None. If any row's lse is not finite, X_out and t_out are left unwritten
    (the caller raises). Returns [tokens (B,N) int64, confidence (B,N) f32, action (B,N) f32,
    reedited (B,N) bool, committed (B,) int64, lse (B,N) f32]. No host synchronisation.
    """
    B, N, _V = logits.shape
    E = X.shape[-1]
    f32 = torch.float32
    _check(X.shape == (B, N, E) and X.dtype == f32 and X.is_contiguous(), "X must be (B, N, E) float32 contiguous")
    _check(X_out.shape == X.shape and X_out.dtype == f32 and X_out.is_contiguous(), "X_out must be like X")
    _check(t.shape == (B, N) and t.dtype == f32 and t.is_contiguous(), "t must be (B, N) float32 contiguous")
    _check(t_out.shape == t.shape and t_out.dtype == f32 and t_out.is_contiguous(), "t_out must be like t")
    _check(
        embedding.dim() == 2 and embedding.shape[1] == E and embedding.stride(1) == 1,
        "embedding must be (V, E) with stride(1) == 1",
    )
    _check(
        mask_embedding.shape == (E,) and mask_embedding.dtype == f32 and mask_embedding.is_contiguous(),
        "mask_embedding must be (E,) float32 contiguous",
    )
    _check(rho.shape == (B,) and rho.dtype == f32, "rho must be (B,) float32")
    d = 1  # the policy's hidden width, where there is a policy
    if action is not None:
        _check(
            action.shape == (B, N) and action.dtype == f32 and action.is_contiguous(),
            "action must be (B, N) float32 contiguous",
        )
        mode = _GIVEN
    elif policy_weights is not None:
        d = hidden
        size = d * (k + 4) + d + d * d + d + 2 * d + 2
        _check(
            policy_weights.shape == (size,) and policy_weights.dtype == f32 and policy_weights.is_contiguous(),
            f"policy_weights must be {size} float32 values (hidden={d}, k={k}), contiguous",
        )
        mode = _POLICY
    else:
        mode = _HEURISTIC

    device = logits.device
    bad = torch.zeros(1, device=device, dtype=torch.int32)
    tokens, probs, _, lse, margin, entropy_topk, _ = compute_token_stats(logits, k, False, bad=bad)
    confidence = torch.empty((B, N), device=device, dtype=f32)
    action_out = torch.empty((B, N), device=device, dtype=f32)
    reedited = torch.empty((B, N), device=device, dtype=torch.bool)
    committed = torch.empty((B,), device=device, dtype=torch.int64)
    R = B * N
    if R == 0:
        return [tokens, confidence, action_out, reedited, committed.fill_(-1), lse]

    cfg = xflow_config(E, d)
    _action_kernel[(triton.cdiv(R, cfg.action_rows),)](
        probs,
        entropy_topk,
        margin,
        t,
        rho,
        rho.stride(0),
        t if action is None else action,
        t if policy_weights is None else policy_weights,
        confidence,
        action_out,
        reedited,
        t_out,
        bad,
        R,
        N,
        kappa_min,
        kappa_max - kappa_min,
        a_min,
        a_max,
        math.log(a_max / a_min),
        reedit_margin,
        kummer_terms,
        MODE=mode,
        BLOCK_R=cfg.action_rows,
        K=k,
        D=d,
        DP=triton.next_power_of_2(d),
        DJ=cfg.policy_chunk,
        num_warps=4,
    )
    _commit_kernel[(B,)](confidence, t_out, committed, bad, N, commit_threshold, BLOCK_N=cfg.commit_block, num_warps=4)
    _update_kernel[(triton.cdiv(R, cfg.update_rows), triton.cdiv(E, cfg.update_cols))](
        X,
        X_out,
        embedding,
        embedding.stride(0),
        mask_embedding,
        tokens,
        confidence,
        action_out,
        reedited,
        committed,
        bad,
        R,
        N,
        E,
        BLOCK_R=cfg.update_rows,
        BLOCK_E=cfg.update_cols,
        num_warps=4,
    )
    return [tokens, confidence, action_out, reedited, committed, lse]
