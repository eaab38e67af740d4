"""The decoding loop: one generic, sync-free step loop for every decoder (``decode_loop``).

``mdfast.infill`` and ``mdfast.generate`` (``api.py``) check their inputs and options, then run

    schedule = Schedule(M, steps, block_length)   # slots, blocks and per-row tables (schedule.py)
    for each step:              # on CUDA: captured once per call, then replayed (graphs.py)
        block   = each row's current block            (B, n) slots, from the device step counter
        decoder.begin_step(block)
        inputs  = the given tokens' embeddings, with decoder.write_inputs(...) at the positions of M
        logits  = model forward, projected for the block's positions only (padding rows fixed)
        decoder.step(logits, block)     # one statistics pass (mdfast.ops), selection on device

Nothing inside a step waits on the device: schedules live on the device and are indexed by a
device step counter, selections are tensor ops, non-finite logits set a device flag read once
after the loop, progress output counts steps. Step times come from CUDA events read after the
loop. Every shape a step sees is fixed for the call (B, L, the block length n, the slots W), so
one captured step serves every step of every block.

With ``options.cache`` (SPEC 8, the native LLaDA body only) the forward is a refresh (the full
forward, also writing the KV cache) at each block's first step and every ``cache_refresh``-th step,
else a forward of S only over the cache, per row (``cache.py``); on CUDA the refresh step and the
cached step are each captured once and replayed (``StepGraphs``).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..models import ModelAdapter
from .base import Decoder
from .cache import CachedForward
from .graphs import StepGraphs
from .options import DECODERS, DecodeOptions
from .schedule import Schedule, fill_padding_rows

__all__ = ["DECODERS", "DecodeInputs", "GenerateOutput", "decode_loop", "fill_after_eos"]


@dataclass
class GenerateOutput:
    """What a ``generate`` / ``infill`` call returns.

    - sequences (B, L): the input with every decoded position filled (``generate``: prompt then
      response, (B, P + max_new_tokens)).
    - nfe: model forwards.
    - history: the decoder's state after every step (``return_history``), over the slots of the
      decoded positions (slot i of row b = its i-th masked position from the left; for ``generate``
      response position i), max_b |M_b| slots: "tokens" (B, |M|max) with the mask id where nothing
      is decoded yet and at a shorter row's padding slots; x-flow also "X" (B, |M|max, E), "t".
    - step_times: seconds per step.
    - log_probs: the x-flow policy's log pi(y) per step when sampling, (B, block length) over each
      row's current block.
    - graphed_blocks: how many blocks ran at least one step as a replay of the call's CUDA graph
      (on the row with the most such blocks; 0 when every step ran eagerly).
    - rollout: x-flow with ``sample=True, record_rollout=True``: SPEC 6.2's trajectory per row,
      step l and slot i (``positions`` (B, |M|max), ``valid`` False past a shorter row's |M_b|):
      "states" (B, T, |M|max, k + 4), "draws", "log_probs" log pi_old(y | s) (no graph), "active"
      (took the flow update), "reedited", "committed" (B, T) the hard-committed slot or -1,
      "t_final" (B, |M|max).
    """

    sequences: Tensor
    nfe: int
    history: list[dict[str, Tensor]] | None = None
    step_times: list[float] = field(default_factory=list)
    log_probs: list[Tensor] | None = None
    graphed_blocks: int = 0
    rollout: dict[str, Tensor] | None = None


@dataclass(frozen=True)
class DecodeInputs:
    """The tensors of one call, checked, on the model's device.

    - input_ids (B, L) int64: every position's token (the mask id at the positions to decode).
    - attention_mask (B, L) int64 or None: 0 at padding.
    - decode (B, L) bool: M, the positions to decode.
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    decode: Tensor


def decode_loop(adapter: ModelAdapter, inputs: DecodeInputs, options: DecodeOptions) -> GenerateOutput:
    """Decode M = ``inputs.decode`` under ``options`` (already validated against the model)."""
    input_ids, attention_mask, decode = inputs.input_ids, inputs.attention_mask, inputs.decode
    if adapter.shifted:
        _check_shifted(decode, attention_mask)
    schedule = Schedule(decode, options.steps, options.block_length)
    decoder = DECODERS[options.decoder](
        adapter,
        schedule,
        backend=options.backend,
        generator=options.generator,
        temperature=options.temperature,
        **options.decoder_kwargs(),
    )

    full_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask  # no padding: none
    device = input_ids.device
    on_gpu = device.type == "cuda"
    with torch.cuda.device(device) if on_gpu else contextlib.nullcontext():  # streams and graphs on the model's GPU
        cached = None
        if options.cache is not None:  # SPEC 8: refresh or S-only forwards, per row
            cached = CachedForward(
                adapter, schedule, options.cache, options.cache_refresh, full_mask, options.cache_vicinity
            )
        step = _Step(adapter, decoder, input_ids, full_mask, options.suppressed_ids(), cached)
        capture = options.cuda_graph and on_gpu and decoder.capturable
        kind = None if cached is None else cached.kind
        graph = StepGraphs(step, adapter.model, capture, decoder.max_steps, kind)
        plan = None if cached is None else cached.plan
        nfe, history, step_times, graphed_blocks = _run(decoder, graph, options.return_history, options.progress, plan)
    decoder.check_finite()
    tokens = decoder.tokens()
    if options.eos_token_id is not None:
        tokens = fill_after_eos(tokens, options.eos_ids())
    sequences = torch.where(decode, tokens.gather(1, schedule.slot_of), input_ids)
    log_probs = getattr(decoder, "log_probs", None) or None
    rollout = None
    if getattr(decoder, "rollout", None) is not None:
        n = schedule.longest
        positions = {"positions": schedule.positions[:, :n], "valid": schedule.valid[:, :n]}
        rollout = {**positions, **decoder.rollout.tensors(n)}
    return GenerateOutput(sequences, nfe, history, step_times, log_probs, graphed_blocks, rollout)


def _check_shifted(decode: Tensor, attention_mask: Tensor | None) -> None:
    """Dream predicts position j from row j - 1: that row must exist and be a real position."""
    real = torch.ones_like(decode) if attention_mask is None else attention_mask.bool()
    before = torch.cat([torch.zeros_like(real[:, :1]), real[:, :-1]], dim=1)
    bad = decode & ~before
    if bool(bad.any()):
        b, j = bad.nonzero()[0].tolist()
        raise ValueError(
            f"input_ids: a shifted-logit model (Dream) predicts position j from position j - 1, but the masked "
            f"position {j} of sequence {b} has no real position before it"
        )


class _Step:
    """One decoding step of a call (see the module docstring), run by ``StepGraph``.

    It writes only into tensors made here and in the decoder, so a CUDA graph of it replays any later step.
    With a KV cache (``cached``, SPEC 8) its forward is ``CachedForward.logits``, one graph per step kind.
    """

    def __init__(
        self,
        adapter: ModelAdapter,
        decoder: Decoder,
        input_ids: Tensor,
        attention_mask,
        suppress: list[int] | None = None,
        cached: CachedForward | None = None,
    ) -> None:
        self.adapter, self.decoder, self.attention_mask = adapter, decoder, attention_mask
        self.cached = cached
        schedule = decoder.schedule
        # suppress_tokens: the index tensor made once, so a step's in-place fill syncs nothing and replays
        self.suppress = None if suppress is None else torch.tensor(suppress, dtype=torch.long, device=input_ids.device)
        with torch.no_grad():
            self.given = adapter.embed(input_ids)  # (B, L, E): every position's own token
        E = self.given.shape[-1]
        self.inputs = torch.empty_like(self.given)
        self.slot_inputs = self.given.new_empty(schedule.B, schedule.width, E)  # each slot's input
        self.decode = schedule.decode.unsqueeze(-1)
        self.slot_of = schedule.slot_of.unsqueeze(-1).expand(-1, -1, E)

    def __call__(self) -> None:
        decoder, schedule = self.decoder, self.decoder.schedule
        with torch.set_grad_enabled(decoder.records_autograd):  # a sampling policy's log pi(y) keeps its graph
            block = schedule.block(decoder.block_index())
            decoder.begin_step(block)
            decoder.write_inputs(self.slot_inputs)
            torch.where(self.decode, self.slot_inputs.gather(1, self.slot_of), self.given, out=self.inputs)
            with torch.no_grad():
                if self.cached is None:
                    logits = self.adapter.logits(self.inputs, self.attention_mask, block.positions)
                else:
                    logits = self.cached.logits(self.inputs, self.attention_mask, block)
                if self.suppress is not None:  # before the padding rows are fixed: they keep p(mask id) = 1
                    logits.index_fill_(-1, self.suppress, -math.inf)
                if schedule.has_padding:
                    logits = fill_padding_rows(logits, block.valid, self.adapter.mask_token_id)
            decoder.step(logits, block)


def _run(decoder: Decoder, graph: StepGraphs, return_history: bool, progress: bool, plan=None):
    """Run the steps until the decoder is finished: (nfe, history, step times, graphed blocks).

    ``plan``: called on the host before each step with each row's block (a KV cache's refresh plan).
    """
    clock = _StepClock(decoder.device)
    history = [] if return_history else None
    replayed_blocks: list[set[int]] = [set() for _ in range(decoder.B)]
    step = 0
    while True:
        blocks = decoder.blocks_at(step)
        if plan is not None:
            plan(blocks)
        if graph():
            for b, block in enumerate(blocks):
                if block >= 0:
                    replayed_blocks[b].add(block)
        clock.tick()
        if history is not None:
            history.append(decoder.record())
        if progress:
            print(f"\r[mdfast] step {step + 1}/{decoder.max_steps}", end="", file=sys.stderr, flush=True)
        if decoder.finished(step):
            break
        step += 1
    if progress:
        print(file=sys.stderr)
    return step + 1, history, clock.seconds(), max(len(s) for s in replayed_blocks)


def fill_after_eos(tokens: Tensor, eos_token_id: int | list[int]) -> Tensor:
    """Every token after a sequence's first EOS becomes that EOS (over the slots of M, left to right)."""
    eos = torch.as_tensor(eos_token_id, device=tokens.device).reshape(-1)
    is_eos = torch.isin(tokens, eos)
    after = is_eos.long().cumsum(-1) > 0
    first = torch.argmax(is_eos.long(), dim=-1, keepdim=True)
    return torch.where(after, tokens.gather(-1, first), tokens)


class _StepClock:
    """Seconds per step: CUDA events recorded without waiting, read once after the loop."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks = [self._now()]

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def tick(self) -> None:
        self.marks.append(self._now())

    def seconds(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in zip(self.marks, self.marks[1:])]
        return [b - a for a, b in zip(self.marks, self.marks[1:])]
