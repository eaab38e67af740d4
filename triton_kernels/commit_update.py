"""A step's commit-and-update kernel (kernel 3 of ``xflow_step.py``): SPEC 2.7's hard commit, then X and t."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_commit_update_kernel"]


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
    """Grid (B * Y,): program (b, y) commits one token of sequence b and updates the rows n = y, y + Y, ...

    SPEC 2.7: among sequence b's tokens with t_i < 0.99 after 2.6, the one with the largest c_i
    (smallest index on ties) is committed (t_i = 1, X_i = E[x_pred_i]); committed[b] = its index, or
    -1 when every t_i >= 0.99 (or a row is bad). Then, for the rows n = y, y + Y, ...: t_out, and
    X_out (X_out may alias X: each element is read, then written, by this program): committed:
    E[x_pred]; re-edit (SPEC 2.6): c E[x_pred] + (1 - c) m; flow update: X + (E[x_pred] - X) a.
    Nothing is written to X_out or t_out when a row is bad.
    """
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
