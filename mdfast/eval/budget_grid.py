"""What the infilling benchmarks share (SPEC 7): budgets, step counts, and the grid of (decoder, budget) runs.

Both benchmarks (antibody genes, the code model's held-out functions) decode items, each a token sequence with
masked positions, by ``mdfast.infill`` at every budget (SPEC 2: a budget is T / N). Choices the SPEC leaves open:
- budget b gives ``steps = max(1, ceil(b * n_masked))`` per item (exact fractions, no float rounding);
- ``mdfast.infill`` gives every row of a call the same number of steps, so items are batched by their step
  count (in item order, at most ``batch_size`` rows a call); rows of different lengths in one call are
  left-padded with the pad id (attention mask 0), rows of different mask counts need nothing;
- the reference decode (``REFERENCE_DECODER`` at budget 1, one token per step) runs once, first, and serves as
  that (decoder, budget) cell too;
- each decoder is warmed up by a one-step call on one item before its first timed call (extension builds and
  allocator warm-up stay out of the timing); ``seconds`` is the wall time of the timed calls, NFE per item the
  forwards of the call that decoded it;
- a resumed run passes the cells it has (``done``) and decodes only the others; ``on_cell`` sees each new one;
- ``cache`` and ``cache_refresh`` (SPEC 8's KV cache, the native LLaDA body only) go to every call, the
  reference decode's included: its agreement is then with the one-token-per-step decode under the same cache.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

import mdfast
from mdfast.decode import DECODERS

from .progress import progress_bar

__all__ = [
    "DEFAULT_BUDGETS",
    "REFERENCE_DECODER",
    "Decoded",
    "InfillItem",
    "budget_steps",
    "check_grid",
    "decode_grid",
    "grid_runs",
    "parse_budget",
    "step_batches",
]

REFERENCE_DECODER = "low_confidence"
DEFAULT_BUDGETS = (Fraction(1, 8), Fraction(1, 4), Fraction(1, 2), Fraction(1))


def parse_budget(budget) -> Fraction:
    """A budget (steps over masked tokens) as an exact fraction in (0, 1]: 0.25, "1/4", Fraction(1, 4)."""
    try:
        value = Fraction(budget) if not isinstance(budget, float) else Fraction(str(budget))
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(f"budgets: expected fractions in (0, 1] such as 1/4 or 0.25, got {budget!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"budgets: expected fractions in (0, 1] such as 1/4 or 0.25, got {budget!r}")
    return value


def budget_steps(budget: Fraction, n_masked: int) -> int:
    """steps = max(1, ceil(budget * n_masked)), exactly."""
    return max(1, math.ceil(budget * n_masked))


def check_grid(decoders, budgets, batch_size) -> tuple[list[str], list[Fraction]]:
    """The decoder names and the sorted distinct budgets, checked (ValueError naming the argument).

    decoders: names of ``mdfast.decode.DECODERS`` (None: all). batch_size: a positive int.
    """
    decoders = list(DECODERS) if decoders is None else list(decoders)
    unknown = [d for d in decoders if d not in DECODERS]
    if unknown or not decoders:
        raise ValueError(f"decoders: expected names among {sorted(DECODERS)}, got {decoders!r}")
    budgets = sorted({parse_budget(b) for b in budgets})
    if not budgets:
        raise ValueError("budgets: expected at least one budget")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    return decoders, budgets


@dataclass(frozen=True)
class InfillItem:
    """One input of a benchmark: ``input_ids`` with the mask id at the ascending ``positions``.

    The antibody benchmark's ``MaskedGene`` has the same two fields.
    """

    input_ids: tuple[int, ...]
    positions: tuple[int, ...]


@dataclass
class Decoded:
    """One (decoder, budget) run: per item, the decoded ids, the call's NFE and steps; the timed wall seconds.

    tokens: per item, the ids decoded at its positions. nfe, steps: per item, those of the call that decoded it.
    seconds: the wall time of the timed calls.
    """

    tokens: list[tuple[int, ...]]
    nfe: list[int]
    steps: list[int]
    seconds: float

    def timing(self, masked_tokens: int) -> dict:
        """Record fields: nfe and steps (means per item), seconds, tokens_per_s (``masked_tokens`` / seconds)."""
        n = len(self.nfe)
        return {
            "nfe": sum(self.nfe) / n,
            "steps": sum(self.steps) / n,
            "seconds": self.seconds,
            "tokens_per_s": masked_tokens / self.seconds,
        }

    def to_json(self) -> dict:
        """A JSON-ready dict (a run log's line); ``from_json`` reads it back."""
        return {"tokens": [list(t) for t in self.tokens], "nfe": self.nfe, "steps": self.steps, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: dict) -> Decoded:
        """The ``Decoded`` that ``to_json`` wrote."""
        return cls([tuple(t) for t in data["tokens"]], list(data["nfe"]), list(data["steps"]), float(data["seconds"]))


def step_batches(counts: Sequence[int], budget: Fraction, batch_size: int) -> list[tuple[int, list[int]]]:
    """(steps, item indices) per ``infill`` call for items with ``counts`` masked tokens.

    Items are grouped by their step count at ``budget``, in item order, at most ``batch_size`` a call.
    """
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(counts):
        groups.setdefault(budget_steps(budget, n), []).append(i)
    return [
        (steps, rows[k : k + batch_size])
        for steps, rows in sorted(groups.items())
        for k in range(0, len(rows), batch_size)
    ]


def grid_runs(decoders: list[str], budgets: list[Fraction], reference: bool = True) -> list[tuple[str, Fraction]]:
    """The (decoder, budget) cells a grid decodes, in order: the reference decode first (``reference``)."""
    shared = [(REFERENCE_DECODER, Fraction(1))] if reference else []
    return shared + [(d, b) for d in decoders for b in budgets if (d, b) not in shared]


def decode_grid(
    model,
    items: Sequence,
    *,
    decoders: list[str],
    budgets: list[Fraction],
    pad_id: int,
    mask_id: int,
    batch_size: int,
    backend: str = "auto",
    policy=None,
    suppress_tokens: list[int] | None = None,
    progress: bool = False,
    description: str = "mdfast eval",
    reference: bool = True,
    done: dict[tuple[str, Fraction], Decoded] | None = None,
    on_cell: Callable[[str, Fraction, Decoded], None] | None = None,
    cache: str | None = None,
    cache_refresh: int | None = None,
) -> dict[tuple[str, Fraction], Decoded]:
    """Decode every item with every decoder at every budget, and the reference decode; keyed by (decoder, budget).

    items: ``InfillItem``s, or anything with ``input_ids`` and ``positions``.
    reference: the reference decode, under (``REFERENCE_DECODER``, 1); False leaves it out unless asked for.
    policy: to x-flow only. suppress_tokens: to every call.
    progress: a bar over the forwards still to run, with elapsed and remaining time.
    done: cells decoded before (a resumed run), kept as they are. on_cell: called as ``on_cell(decoder, budget,
    decoded)`` after each cell decoded here. cache, cache_refresh: ``mdfast.infill``'s, to every call.
    """
    runs = grid_runs(decoders, budgets, reference)
    results = {key: value for key, value in (done or {}).items() if key in runs}
    todo = [key for key in runs if key not in results]
    counts = [len(item.positions) for item in items]
    batches = {b: step_batches(counts, b, batch_size) for b in {b for _, b in todo}}
    forwards = sum(steps for _, b in todo for steps, _ in batches[b])
    bar = progress_bar(forwards, description, "forward", progress)
    cache_options = {} if cache is None and cache_refresh is None else {"cache": cache, "cache_refresh": cache_refresh}
    runner = _Runner(model, items, pad_id, mask_id, backend, policy, suppress_tokens, cache_options)
    try:
        for d, b in todo:
            results[d, b] = runner.decode(d, batches[b], bar)
            if on_cell is not None:
                on_cell(d, b, results[d, b])
    finally:
        if bar is not None:
            bar.close()
    return {key: results[key] for key in runs}


class _Runner:
    """Left-pads each batch, calls ``mdfast.infill`` and reads the masked positions back."""

    def __init__(self, model, items, pad_id, mask_id, backend, policy, suppress_tokens, cache_options) -> None:
        self.model, self.items, self.pad_id, self.mask_id = model, items, pad_id, mask_id
        self.backend, self.policy, self.suppress_tokens = backend, policy, suppress_tokens
        self.cache_options = cache_options  # cache and cache_refresh, or nothing
        self.device = next(model.parameters()).device
        self.warm: set[str] = set()

    def decode(self, decoder: str, batches, bar) -> Decoded:
        n = len(self.items)
        out = Decoded([()] * n, [0] * n, [0] * n, 0.0)
        for steps, rows in batches:
            if decoder not in self.warm:
                self._infill(decoder, 1, rows[:1])
                self.warm.add(decoder)
            start = time.perf_counter()
            sequences, nfe, offsets = self._infill(decoder, steps, rows)
            out.seconds += time.perf_counter() - start
            for row, i in enumerate(rows):
                picked = [offsets[row] + p for p in self.items[i].positions]
                out.tokens[i] = tuple(sequences[row, picked].tolist())
                out.nfe[i], out.steps[i] = nfe, steps
            if bar is not None:
                bar.update(steps)
        return out

    def _infill(self, decoder: str, steps: int, rows: list[int]):
        inputs = [self.items[i].input_ids for i in rows]
        length = max(len(ids) for ids in inputs)
        offsets = [length - len(ids) for ids in inputs]
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, (ids, offset) in enumerate(zip(inputs, offsets)):
            input_ids[row, offset:] = torch.as_tensor(ids)
            attention_mask[row, offset:] = 1
        options = {"policy": self.policy} if decoder == "xflow" and self.policy is not None else {}
        options.update(self.cache_options)
        if self.suppress_tokens:
            options["suppress_tokens"] = self.suppress_tokens
        out = mdfast.infill(
            self.model,
            input_ids.to(self.device),
            attention_mask.to(self.device),
            steps=steps,
            decoder=decoder,
            backend=self.backend,
            mask_token_id=self.mask_id,
            **options,
        )
        return out.sequences.cpu(), out.nfe, offsets
