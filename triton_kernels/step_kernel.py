"""A step's statistics pass with the per-row step in its rows' epilogue (kernel 1 of ``xflow_step.py``).

``_step_kernel`` runs the pass of ``row_stats.py`` on a row and, when the action needs no policy,
finishes the row's step (``row_step``); ``reedit_or_flow`` (SPEC 2.6) is shared with the action kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .row_stats import row_statistics
from .step_launch import GIVEN, POLICY

__all__ = ["reedit_or_flow", "row_step"]


@triton.jit
def reedit_or_flow(c, t, a, reedit_margin):
    """SPEC 2.6 on t, with t before this step's update: returns (re-edited, the new t).

    Re-edit if c_i - t_i < -0.1 (t_i = c_i), otherwise the flow update t_i += a_i (1 - t_i).
    """
    reedited = (c - t) < -reedit_margin
    return reedited, tl.where(reedited, c, t + a * (1.0 - t))


@triton.jit
def row_step(
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
    """The end of a row's statistics in a step: the flag for a bad row, and the step of a row that needs no policy.

    A row that is no distribution (a NaN or +inf in it, or all -inf: kernel 3 writes nothing) sets
    the flag (a benign race, every writer stores 1). When the action needs no policy: SPEC 2.5 (the
    given action, or the default policy a = a_min^(1 - c) a_max^c = a_min exp(c ln(a_max / a_min)))
    and SPEC 2.6 on t.
    """
    tl.store(bad_ptr, 1, mask=(lse != lse) | (tl.abs(lse) == float("inf")))
    if MODE != POLICY:
        if MODE == GIVEN:
            a = tl.load(action_ptr + row)
        else:
            a = a_min * tl.exp(c * log_range)
            tl.store(action_ptr + row, a)
        reedited, t_new = reedit_or_flow(c, tl.load(t_ptr + row), a, reedit_margin)
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
    """Grid (rows,): a row's statistics (streamed whole, or merged from its chunks), then its step (``row_step``)."""
    c, lse = row_statistics(
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
        lse_ptr,
        inv_log_k,
        BLOCK_V,
        GROUP,
        CHUNKS,
        CANDIDATES,
        K,
        KP,
        False,
        SPLIT,
    )
    row_step(
        tl.program_id(0).to(tl.int64),
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
