"""The exact running top-k of (value, index) pairs that the statistics pass keeps, as @triton.jit pieces.

SPEC 1's order: "the k largest p, descending, ties broken by smaller index" (p is monotone in z, so
logits rank as their probabilities). The k slots are padded to KP, a power of two.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["SENTINEL", "ranks_before", "topk_empty", "topk_insert"]

# The running top-k starts with k empty slots holding (-inf, SENTINEL + slot): each loses to every
# real entry, -inf ones too (their indices are smaller), and the slots stay distinct pairs.
# NO_CANDIDATE, the index of "no candidate left", loses even to the empty slots.
SENTINEL = tl.constexpr(2**31 - 16)
_NO_CANDIDATE = tl.constexpr(2**31 - 1)


@triton.jit
def ranks_before(v, i, w, j):
    """(v, i) ranks before (w, j) in SPEC 1's order (larger value first, then smaller index)."""
    return (v > w) | ((v == w) & (i < j))


@triton.jit
def topk_empty(K: tl.constexpr, KP: tl.constexpr):
    """k empty slots (padded to KP, a power of two) and the last-ranked of them."""
    slot = tl.arange(0, KP)
    top_v = tl.full([KP], float("-inf"), tl.float32)
    top_i = SENTINEL + slot
    return top_v, top_i, tl.full([], float("-inf"), tl.float32), tl.full([], SENTINEL + K - 1, tl.int32)


@triton.jit
def _topk_last(top_v, top_i, K: tl.constexpr, KP: tl.constexpr):
    """The last-ranked (smallest value, then largest index) of the k live slots."""
    live = tl.arange(0, KP) < K
    last_v = tl.min(tl.where(live, top_v, float("inf")), 0)
    last_i = tl.max(tl.where(live & (top_v == last_v), top_i, -1), 0)
    return last_v, last_i


@triton.jit
def _best_after(vals, idx, valid, after_v, after_i):
    """The first-ranked candidate among (vals, idx)[valid] that ranks after (after_v, after_i).

    (-inf, NO_CANDIDATE) when none is left.
    """
    rest = valid & ranks_before(after_v, after_i, vals, idx)
    best_v = tl.max(tl.where(rest, vals, float("-inf")), 0)
    best_i = tl.min(tl.where(rest & (vals == best_v), idx, _NO_CANDIDATE), 0)
    return best_v, best_i


@triton.jit
def topk_insert(top_v, top_i, last_v, last_i, vals, idx, valid, K: tl.constexpr, KP: tl.constexpr):
    """Merges the candidates (vals, idx)[valid] (distinct indices) into the running top-k.

    Candidates are taken best first; each replaces the last-ranked slot while it ranks before it,
    at most k times: once one loses, every later one loses too. Only scalars are carried from one
    candidate to the next, so the tile costs no extra registers.
    """
    cand_v, cand_i = _best_after(vals, idx, valid, float("inf"), -1)
    n = 0
    while (n < K) & ranks_before(cand_v, cand_i, last_v, last_i):
        replaced = (top_v == last_v) & (top_i == last_i)
        top_v = tl.where(replaced, cand_v, top_v)
        top_i = tl.where(replaced, cand_i, top_i)
        last_v, last_i = _topk_last(top_v, top_i, K, KP)
        cand_v, cand_i = _best_after(vals, idx, valid, cand_v, cand_i)
        n += 1
    return top_v, top_i, last_v, last_i
