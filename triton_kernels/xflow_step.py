"""SPEC 2.2-2.7, one x-prediction flow step, in Triton (csrc/ops.h ``xflow_step``), with no host
synchronisation: a fixed sequence of launches on one workspace allocation (every intermediate and
output is a view of it), so a whole step can be captured in a CUDA graph.

0. the one-element "bad" flag zeroed (unless ``mdfast.ops`` gives it, holding its input checks);
1. the statistics pass of ``token_stats.py`` (``_step_kernel``, one program per row, after the chunk
   kernel on the split path), whose rows' epilogue sets the flag for a row whose lse is not finite
   and, when no policy is needed, does the row's step: x_pred, c = p(1), the action (given, or the
   heuristic a_min^(1-c) a_max^c), the re-edit decision and t after SPEC 2.6 (into the workspace);
   skipped when the statistics are given (``sample=True``: ops drew the action from them);
2. with a policy, or given statistics: ``_action_kernel``, grid (row blocks,): c, the policy state,
   the step policy MLP (broadcast-multiply-reduce over a block of rows, its weights loaded once per
   block), the action, the re-edit decision and t after SPEC 2.6; with given statistics it sets the
   flag from their lse;
3. ``_commit_update_kernel``, grid (B x Y,): program (b, y) chooses sequence b's hard commit (every
   program of the sequence computes the same choice from the same data in the same order), then
   writes t_out and X_out for the rows n = y, y + Y, ... of sequence b; nothing when the flag is set.
So a step is 3 launches (4 with a policy, one more on the split path), the same design as
csrc/cuda/xflow_step.cu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

from mdfast.backends.contract import PolicyLayout

from .token_stats import (
    finish_row,
    launch_chunks,
    multiprocessors,
    partials,
    row_program,
    stats_launch,
    summarize_row,
)
from .workspace import carve

if TYPE_CHECKING:
    from mdfast.backends.contract import StepInputs

__all__ = ["StepLaunch", "step_launch", "xflow_step"]

# Where the action comes from (SPEC 2.5 and the default policy without trained weights).
_GIVEN = tl.constexpr(0)
_POLICY = tl.constexpr(1)
_HEURISTIC = tl.constexpr(2)


@dataclass(frozen=True)
class StepLaunch:
    """Launch parameters of the kernels of a step after the statistics pass."""

    action_rows: int  # rows per program of the action kernel (the policy weights load once per block)
    policy_chunk: int  # outputs of W2 h1 per step of the policy's second layer
    commit_tile: int  # t values per tile of the commit scan
    update_cols: int  # embedding columns per tile of the update
    sequence_programs: int  # Y: programs per sequence of the commit-and-update kernel


def step_launch(B: int, N: int, E: int, hidden: int, device: torch.device) -> StepLaunch:
    """The one place that tunes kernels 2-3. 16 rows per action program (128 programs for 2048 rows);
    its second layer multiplies (16, chunk, d) tiles of 4096 products (32 per thread of 4 warps).
    About 8 commit-and-update programs of 4 warps per multiprocessor in all (32 warps, as many as the
    update kernel it replaces kept busy; not yet measured on a GPU), at most one per row, each reading
    its sequence's 2N floats of t and c from L2 to recompute the commit and writing its rows in tiles
    of up to 1024 columns (8 floats per thread)."""
    action_rows = 16
    return StepLaunch(
        action_rows=action_rows,
        policy_chunk=max(1, 4096 // (action_rows * triton.next_power_of_2(max(hidden, 1)))),
        commit_tile=1024,
        update_cols=min(1024, triton.next_power_of_2(E)),
        sequence_programs=max(1, min(N, triton.cdiv(8 * multiprocessors(device), B))),
    )


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _reedit_or_flow(c, t, a, reedit_margin):
    """SPEC 2.6 on t, with t before this step's update: re-edit if c_i - t_i < -0.1 (t_i = c_i),
    otherwise the flow update t_i += a_i (1 - t_i). Returns (re-edited, the new t)."""
    reedited = (c - t) < -reedit_margin
    return reedited, tl.where(reedited, c, t + a * (1.0 - t))


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
    B1: tl.constexpr,
    W2: tl.constexpr,
    B2: tl.constexpr,
    W_MU: tl.constexpr,
    W_KAPPA: tl.constexpr,
    B_MU: tl.constexpr,
    B_KAPPA: tl.constexpr,
):
    """SPEC 2.3-2.5 for a block of rows: the deterministic action a_min * 1F1(alpha; alpha+beta; z).

    Weights: the packed float32 vector of ``mdfast.backends.contract.PolicyLayout`` (W1 at 0, row-major (d, k+4);
    B1, W2, B2, W_MU, W_KAPPA, B_MU, B_KAPPA: the offsets of b1, W2 (d, d) row-major, b2, w_mu,
    w_kappa, b_mu, b_kappa). The hidden width d is padded to DP (zero weights: SiLU(0) = 0 adds
    nothing). Broadcast-multiply-reduce in float32: W1 s as k + 4 rank-one updates, W2 h in chunks
    of DJ outputs, each chunk's SiLU fed straight into the two heads (h2 is never stored whole).
    """
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
    h = h * _sigmoid(h)

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


@triton.jit
def _row_step(
    row,
    c,
    lse,
    t_ptr,
    action_ptr,
    confidence_ptr,
    reedited_ptr,
    t_new_ptr,
    bad_ptr,
    a_min,
    log_range,
    reedit_margin,
    MODE: tl.constexpr,
):
    """The end of a row's statistics in a step: the flag for a row that is no distribution (a NaN or
    +inf in it, or all -inf: kernel 3 writes nothing; a benign race, every writer stores 1), and,
    when the action needs no policy, the row's step: SPEC 2.5 (the given action, or the default
    policy a = a_min^(1 - c) a_max^c = a_min exp(c ln(a_max / a_min))) and SPEC 2.6 on t."""
    tl.store(bad_ptr, 1, mask=(lse != lse) | (tl.abs(lse) == float("inf")))
    if MODE != _POLICY:
        if MODE == _GIVEN:
            a = tl.load(action_ptr + row)
        else:
            a = a_min * tl.exp(c * log_range)
            tl.store(action_ptr + row, a)
        reedited, t_new = _reedit_or_flow(c, tl.load(t_ptr + row), a, reedit_margin)
        tl.store(confidence_ptr + row, c)
        tl.store(reedited_ptr + row, reedited)
        tl.store(t_new_ptr + row, t_new)


@triton.jit
def _step_kernel(
    logits_ptr,
    N,
    V,
    stride_b,
    stride_n,
    part_ptr,
    part_v_ptr,
    part_i_ptr,
    n_chunks,
    tokens_ptr,
    probs_ptr,
    ids_ptr,
    lse_ptr,
    margin_ptr,
    entropy_topk_ptr,
    inv_log_k,
    t_ptr,
    action_ptr,
    confidence_ptr,
    reedited_ptr,
    t_new_ptr,
    bad_ptr,
    a_min,
    log_range,
    reedit_margin,
    MODE: tl.constexpr,
    BLOCK_V: tl.constexpr,
    GROUP: tl.constexpr,
    CHUNKS: tl.constexpr,
    CANDIDATES: tl.constexpr,
    K: tl.constexpr,
    KP: tl.constexpr,
    SPLIT: tl.constexpr,
):
    """Grid (rows,): a row's statistics (streamed whole, or on the split path merged from its chunks),
    then its step (``_row_step``)."""
    row = tl.program_id(0).to(tl.int64)
    m, S, D, top_v, top_i = summarize_row(
        logits_ptr,
        N,
        V,
        stride_b,
        stride_n,
        part_ptr,
        part_v_ptr,
        part_i_ptr,
        n_chunks,
        BLOCK_V,
        GROUP,
        CHUNKS,
        CANDIDATES,
        K,
        KP,
        False,
        SPLIT,
    )
    c, lse = finish_row(
        row,
        m,
        S,
        D,
        top_v,
        top_i,
        tokens_ptr,
        probs_ptr,
        ids_ptr,
        lse_ptr,
        margin_ptr,
        entropy_topk_ptr,
        lse_ptr,
        inv_log_k,
        K,
        KP,
        False,
    )
    _row_step(
        row,
        c,
        lse,
        t_ptr,
        action_ptr,
        confidence_ptr,
        reedited_ptr,
        t_new_ptr,
        bad_ptr,
        a_min,
        log_range,
        reedit_margin,
        MODE,
    )


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
    """Grid (cdiv(R, BLOCK_R),): the step of a block of rows after their statistics, c = p(1) read
    at c_ptr + row * c_stride. MODE _POLICY: SPEC 2.3-2.5, the policy's mean action (and c into
    confidence); MODE _GIVEN (given statistics and action): the flag set for a row whose lse is not
    finite. Then SPEC 2.6 on t, into the workspace."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = rows < R
    c = tl.load(c_ptr + rows * c_stride, mask=live, other=0.0)
    t = tl.load(t_ptr + rows, mask=live, other=0.0)
    if MODE == _POLICY:
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
            B1,
            W2,
            B2,
            W_MU,
            W_KAPPA,
            B_MU,
            B_KAPPA,
        )
        tl.store(action_ptr + rows, a, mask=live)
        tl.store(confidence_ptr + rows, c, mask=live)
    else:
        a = tl.load(action_ptr + rows, mask=live, other=0.0)
        lse = tl.load(lse_ptr + rows, mask=live, other=0.0)
        not_finite = live & ((lse != lse) | (tl.abs(lse) == float("inf")))
        tl.store(bad_ptr, 1, mask=tl.max(not_finite.to(tl.int32), 0) > 0)
    reedited, t_new = _reedit_or_flow(c, t, a, reedit_margin)
    tl.store(reedited_ptr + rows, reedited, mask=live)
    tl.store(t_new_ptr + rows, t_new, mask=live)


@triton.jit
def _commit_update_kernel(
    tokens_ptr,
    confidence_ptr,
    action_ptr,
    reedited_ptr,
    t_new_ptr,
    X_ptr,
    X_out_ptr,
    t_out_ptr,
    embedding_ptr,
    embedding_stride,
    mask_embedding_ptr,
    committed_ptr,
    bad_ptr,
    N,
    E,
    Y,
    commit_threshold,
    BLOCK_N: tl.constexpr,
    BLOCK_E: tl.constexpr,
):
    """Grid (B * Y,): program (b, y). SPEC 2.7: among sequence b's tokens with t_i < 0.99 after 2.6,
    the one with the largest c_i (smallest index on ties) is committed (t_i = 1, X_i = E[x_pred_i]);
    committed[b] = its index, or -1 when every t_i >= 0.99 (or a row is bad). Then, for the rows
    n = y, y + Y, ...: t_out, and X_out (X_out may alias X: each element is read, then written, by
    this program): committed: E[x_pred]; re-edit (SPEC 2.6): c E[x_pred] + (1 - c) m; flow update:
    X + (E[x_pred] - X) a. Nothing is written to X_out or t_out when a row is bad."""
    b = tl.program_id(0).to(tl.int64) // Y
    y = tl.program_id(0) % Y
    if tl.load(bad_ptr) != 0:
        tl.store(committed_ptr + b, -1, mask=y == 0)
    else:
        best_c = tl.full([], -1.0, tl.float32)
        best_n = tl.full([], -1, tl.int32)
        for start in range(0, N, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            live = n < N
            t = tl.load(t_new_ptr + b * N + n, mask=live, other=1.0)
            c = tl.load(confidence_ptr + b * N + n, mask=live, other=0.0)
            score = tl.where(live & (t < commit_threshold), c, -1.0)
            tile_c = tl.max(score, 0)
            tile_n = tl.min(tl.where(score == tile_c, n, N), 0)
            # strictly larger: an earlier tile keeps a tie
            better = tile_c > best_c
            best_n = tl.where(better, tile_n, best_n)
            best_c = tl.where(better, tile_c, best_c)
        tl.store(committed_ptr + b, best_n.to(tl.int64), mask=y == 0)
        cols = tl.arange(0, BLOCK_E)
        for n in range(y, N, Y):
            r = b * N + n
            committed = n == best_n
            tl.store(t_out_ptr + r, tl.where(committed, 1.0, tl.load(t_new_ptr + r)))
            token = tl.load(tokens_ptr + r)
            c = tl.load(confidence_ptr + r)
            a = tl.load(action_ptr + r)
            reedited = tl.load(reedited_ptr + r) != 0
            for e0 in range(0, E, BLOCK_E):
                col = e0 + cols
                in_row = col < E
                target = tl.load(embedding_ptr + token * embedding_stride + col, mask=in_row, other=0.0)
                target = target.to(tl.float32)
                m = tl.load(mask_embedding_ptr + col, mask=in_row, other=0.0)
                X = tl.load(X_ptr + r * E + col, mask=in_row, other=0.0)
                X_new = tl.where(
                    committed, target, tl.where(reedited, c * target + (1.0 - c) * m, X + (target - X) * a)
                )
                tl.store(X_out_ptr + r * E + col, X_new, mask=in_row)


def xflow_step(inputs: StepInputs) -> list[Tensor]:
    """SPEC 2.2-2.7, one fused x-flow step: the contract of csrc/ops.h ``xflow_step``, inputs as
    ``mdfast.ops`` validated them (B * N >= 1).

    Returns [tokens (B,N) int64, confidence (B,N) f32, action (B,N) f32, reedited (B,N) bool,
    committed (B,) int64, lse (B,N) f32]: views of the workspace, or the given tensors themselves.
    """
    logits, X, t, rho, action, given = inputs.logits, inputs.X, inputs.t, inputs.rho, inputs.action, inputs.given
    bad, scalars = inputs.bad, inputs.scalars
    B, N, V = logits.shape
    E = X.shape[2]
    R, k, device = B * N, scalars.k, X.device
    mode = _GIVEN if action is not None else _POLICY if inputs.policy_weights is not None else _HEURISTIC
    launch = step_launch(B, N, E, scalars.hidden, device)
    stats = stats_launch(R, V, device) if given is None else None
    split = stats is not None and stats.chunks > 1
    f32, i64 = torch.float32, torch.int64
    specs = {
        "committed": ((B,), i64),
        "reedited": ((B, N), torch.bool),
        "t_new": ((B, N), f32),
        "bad": ((1,) if bad is None else (0,), torch.int32),
        "action": ((B, N) if action is None else (0,), f32),
    }
    if given is None:
        specs.update(
            tokens=((B, N), i64),
            probs=((B, N, k), f32),
            ids=((B, N, k), i64),
            lse=((B, N), f32),
            margin=((B, N), f32),
            entropy_topk=((B, N), f32),
            confidence=((B, N), f32),
        )
        if split:
            specs.update(zip(("part", "part_v", "part_i"), partials(R, k, stats)))
    ws = dict(zip(specs, carve(device, *specs.values())))
    if bad is None:
        bad = ws["bad"].zero_()
    action_out = ws["action"] if action is None else action
    tokens, confidence, lse = (ws["tokens"], ws["confidence"], ws["lse"]) if given is None else given
    log_range = math.log(scalars.a_max / scalars.a_min)
    step = (
        t,
        action_out,
        confidence,
        ws["reedited"],
        ws["t_new"],
        bad,
        scalars.a_min,
        log_range,
        scalars.reedit_margin,
    )

    if given is None:
        parts = [ws[name] for name in ("part", "part_v", "part_i") if name in ws]
        if split:
            launch_chunks(logits, k, False, stats, *parts)
        arguments, constants = row_program(logits, k, stats, parts)
        stats_out = (tokens, ws["probs"], ws["ids"], lse, ws["margin"], ws["entropy_topk"], 1.0 / math.log(k))
        _step_kernel[(R,)](*arguments, *stats_out, *step, MODE=mode, **constants)

    if mode == _POLICY or given is not None:
        d = scalars.hidden if mode == _POLICY else 1
        layout = PolicyLayout(d, k)
        _action_kernel[(triton.cdiv(R, launch.action_rows),)](
            confidence if given is not None else ws["probs"],
            1 if given is not None else k,
            ws.get("probs", confidence),
            ws.get("entropy_topk", confidence),
            ws.get("margin", confidence),
            lse,
            t,
            rho,
            rho.stride(0),
            t if inputs.policy_weights is None else inputs.policy_weights,
            action_out,
            confidence,
            ws["reedited"],
            ws["t_new"],
            bad,
            R,
            N,
            scalars.kappa_min,
            scalars.kappa_max - scalars.kappa_min,
            scalars.a_min,
            scalars.a_max,
            log_range,
            scalars.reedit_margin,
            scalars.kummer_terms,
            MODE=mode,
            BLOCK_R=launch.action_rows,
            K=k,
            D=d,
            DP=triton.next_power_of_2(d),
            DJ=launch.policy_chunk,
            B1=layout.b1,
            W2=layout.W2,
            B2=layout.b2,
            W_MU=layout.w_mu,
            W_KAPPA=layout.w_kappa,
            B_MU=layout.b_mu,
            B_KAPPA=layout.b_kappa,
            num_warps=4,
        )

    Y = launch.sequence_programs
    _commit_update_kernel[(B * Y,)](
        tokens,
        confidence,
        action_out,
        ws["reedited"],
        ws["t_new"],
        X,
        inputs.X_out,
        inputs.t_out,
        inputs.embedding,
        inputs.embedding.stride(0),
        inputs.mask_embedding,
        ws["committed"],
        bad,
        N,
        E,
        Y,
        scalars.commit_threshold,
        BLOCK_N=launch.commit_tile,
        BLOCK_E=launch.update_cols,
        num_warps=4,
    )
    return [tokens, confidence, action_out, ws["reedited"], ws["committed"], lse]
