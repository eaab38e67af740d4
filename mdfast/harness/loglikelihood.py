"""The log-likelihood of a continuation under a masked diffusion LM: LLaDA's Monte Carlo estimate, batched.

For a context x and a continuation y of L tokens, LLaDA's bound (Nie et al. 2025, Eq. 12)

    log p(y | x)  >=  E_{t ~ U(0,1]} E_{y_t} [ (1/t) * sum_{i : y_t^i = [MASK]} log p_theta(y^i | x, y_t) ],

y_t masking each token of y independently with probability t. Integrating t out for a fixed count k of
masked tokens, C(L, k) * int_0^1 t^(k-1) (1 - t)^(L-k) dt = 1 / k, so the bound equals

    sum_{k=1}^{L} (1/k) E_{|S| = k} [ sum_{i in S} log p_theta(y^i | x, y with S masked) ]

(LLaDA's Eq. 14): draw the ratio t = k / L with k uniform on 1..L, mask k tokens chosen uniformly, weight by
1 / t = L / k. That is the form sampled here: it always masks at least one token, and its weights are at
most L, where the Bernoulli form's 1 / t is unbounded near t = 0 (its variance is infinite). The
``mc_samples`` draws of one pair are stratified: k_j = floor((j + u) / N * L) + 1 for one u ~ U[0, 1), so
every k is uniform and the N draws spread over the ratios. The estimate is the mean over the N draws.

The greedy flag: one extra forward with every continuation token masked; True where the argmax at each
position is the continuation's token (the one-step greedy fill, not a multi-step decode).

Deterministic: each pair's draws come from a CPU generator seeded from (seed, its token ids), so a pair's
estimate does not depend on the batch it shares or on the order of the requests.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from mdfast.models import ModelAdapter

__all__ = ["masking_draws", "mc_loglikelihood"]


@dataclass(frozen=True)
class _Row:
    """One forward row: request ``index``, its tokens with ``masked`` continuation positions replaced by [MASK].

    weight: L / k for a Monte Carlo row; None for the greedy row (every position masked).
    """

    index: int
    context: Sequence[int]
    continuation: Sequence[int]
    masked: tuple[int, ...]
    weight: float | None


def _seed_of(seed: int, context: Sequence[int], continuation: Sequence[int]) -> int:
    text = f"{seed}|{','.join(map(str, context))}|{','.join(map(str, continuation))}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def masking_draws(length: int, samples: int, generator: torch.Generator) -> list[tuple[int, ...]]:
    """``samples`` stratified draws of masked positions among ``length`` (module docstring), each sorted.

    Draw j masks k_j = floor((j + u) / samples * length) + 1 positions chosen uniformly, u ~ U[0, 1) shared.
    """
    if length < 1 or samples < 1:
        raise ValueError(f"length, samples: expected positive ints, got {length}, {samples}")
    u = float(torch.rand((), generator=generator))
    draws = []
    for j in range(samples):
        k = min(length, int((j + u) / samples * length) + 1)
        chosen = torch.randperm(length, generator=generator)[:k]
        draws.append(tuple(sorted(chosen.tolist())))
    return draws


def _rows(index: int, context, continuation, samples: int, seed: int) -> Iterator[_Row]:
    L = len(continuation)
    generator = torch.Generator().manual_seed(_seed_of(seed, context, continuation))
    for masked in masking_draws(L, samples, generator):
        yield _Row(index, context, continuation, masked, L / len(masked))
    yield _Row(index, context, continuation, tuple(range(L)), None)


def mc_loglikelihood(
    adapter: ModelAdapter,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    mc_samples: int = 32,
    batch_size: int = 8,
    seed: int = 0,
    pad_token_id: int = 0,
    on_done: Callable[[int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(estimated log p(continuation | context), greedy) per (context ids, continuation ids) pair.

    - adapter: the patched model's ``ModelAdapter`` (``model.mdfast_adapter``).
    - pairs: token ids, the context already holding any BOS and fitting the model with its continuation.
    - mc_samples: N draws per pair; batch_size: rows per forward (each pair takes N + 1 rows).
    - on_done: called with the number of pairs finished after each forward.
    An empty continuation scores (0.0, True).
    """
    for name, value in (("mc_samples", mc_samples), ("batch_size", batch_size)):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    totals = [0.0] * len(pairs)
    greedy = [True] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    batch: list[_Row] = []
    for i in order:
        context, continuation = pairs[i]
        if not continuation:
            if on_done is not None:
                on_done(1)
            continue
        for row in _rows(i, context, continuation, mc_samples, seed):
            batch.append(row)
            if len(batch) == batch_size:
                _score(adapter, batch, totals, greedy, pad_token_id, on_done)
                batch = []
    if batch:
        _score(adapter, batch, totals, greedy, pad_token_id, on_done)
    return [(total / mc_samples, g) for total, g in zip(totals, greedy)]


@torch.inference_mode()
def _score(adapter: ModelAdapter, rows: list[_Row], totals, greedy, pad: int, on_done) -> None:
    """One forward over ``rows`` (left-padded): add each Monte Carlo row's weighted sum, set the greedy flags."""
    device = adapter.embedding.device
    lengths = [len(r.context) + len(r.continuation) for r in rows]
    width, most = max(lengths), max(len(r.masked) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), most), dtype=torch.long)
    targets = torch.zeros((len(rows), most), dtype=torch.long)
    valid = torch.zeros((len(rows), most), dtype=torch.bool)
    for b, (row, length) in enumerate(zip(rows, lengths)):
        start = width - length
        tokens = torch.tensor([*row.context, *row.continuation], dtype=torch.long)
        masked = torch.tensor(row.masked, dtype=torch.long)
        at = start + len(row.context) + masked
        targets[b, : len(masked)] = tokens[len(row.context) + masked]
        tokens[len(row.context) + masked] = adapter.mask_token_id
        ids[b, start:] = tokens
        attention[b, start:] = 1
        positions[b, : len(masked)] = at
        positions[b, len(masked) :] = at[0]
        valid[b, : len(masked)] = True
    mask = None if min(lengths) == width else attention.to(device)
    ids, positions, targets, valid = ids.to(device), positions.to(device), targets.to(device), valid.to(device)
    logits = adapter.logits(adapter.embed(ids), mask, positions).float()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    sums = torch.where(valid, logp, torch.zeros_like(logp)).sum(-1).tolist()
    hits = ((logits.argmax(-1) == targets) | ~valid).all(-1).tolist()
    finished = 0
    for row, total, hit in zip(rows, sums, hits):
        if row.weight is None:
            greedy[row.index] = bool(hit)
            finished += 1
        else:
            totals[row.index] += row.weight * total
    if on_done is not None and finished:
        on_done(finished)
