"""The decoding loop: one generic, sync-free step loop for every decoder, and its two entry points.

``infill`` decodes the positions of each sequence that hold the mask id (SPEC 7); ``generate`` is
infilling of an appended masked suffix. Both run ``_decode``:

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
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import describe
from ..models import ModelAdapter, adapt, release
from .base import Decoder
from .graphs import StepGraph
from .remasking import Entropy, LowConfidence, MaskGitPlus, RunningConfidenceRemasking, Threshold, TopKMargin
from .schedule import Schedule, fill_padding_rows
from .soft_mask import SoftMask
from .xflow import XFlow

DECODERS: dict[str, type[Decoder]] = {
    "xflow": XFlow,
    "low_confidence": LowConfidence,
    "maskgit_plus": MaskGitPlus,
    "topk_margin": TopKMargin,
    "entropy": Entropy,
    "rcr": RunningConfidenceRemasking,
    "soft_mask": SoftMask,
    "threshold": Threshold,
}


@dataclass
class GenerateOutput:
    """sequences (B, L): the input with every decoded position filled (``generate``: prompt then
    response, (B, P + max_new_tokens)); nfe: model forwards; history: the decoder's state after
    every step (``return_history``), over the slots of the decoded positions, slot i of row b =
    its i-th masked position from the left, max_b |M_b| slots ("tokens" (B, |M|max) with the mask
    id where nothing is decoded yet and at a shorter row's padding slots, and for x-flow "X"
    (B, |M|max, E) and "t" (B, |M|max); for ``generate`` slot i is response position i);
    step_times: seconds per step; log_probs: the x-flow policy's log pi(y) per step when sampling,
    (B, block length) over each row's current block; graphed_blocks: how many blocks ran at least
    one of their steps as a replay of the call's CUDA graph (counted on the row with the most such
    blocks; 0 when every step ran eagerly); rollout: x-flow with ``sample=True, record_rollout=True``
    records SPEC 6.2's trajectory per row, step l and slot i (slot i = row b's i-th decoded
    position, ``positions`` (B, |M|max) with ``valid`` False past a shorter row's |M_b|): "states"
    (B, T, |M|max, k + 4) s_{l,i}, "draws" y_{l,i}, "log_probs" log pi_old(y | s) (no graph),
    "active" (took the flow update: in its block, not re-edited, t before < 0.99), "reedited",
    "committed" (B, T) the hard-committed slot or -1, "t_final" (B, |M|max)."""

    sequences: Tensor
    nfe: int
    history: list[dict[str, Tensor]] | None = None
    step_times: list[float] = field(default_factory=list)
    log_probs: list[Tensor] | None = None
    graphed_blocks: int = 0
    rollout: dict[str, Tensor] | None = None


def infill(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    steps: int,
    decoder: str = "xflow",
    block_length: int | None = None,
    policy=None,
    temperature: float = 0.0,
    eos_token_id: int | list[int] | None = None,
    return_history: bool = False,
    progress: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    mask_token_id: int | None = None,
    cuda_graph: bool = True,
    suppress_tokens: list[int] | None = None,
    **decoder_options,
) -> GenerateOutput:
    """Decode the positions of ``input_ids`` (B, L) that hold the mask id; keep every other one.

    SPEC 7: "the positions of a sequence that hold the mask id form the set M, anywhere (prefix,
    spans, right context); only M is decoded, every other position is fed as its token's
    embedding. block_length splits each row's M in left-to-right order into blocks; steps split
    evenly over blocks; a row with |M| = 0 is returned as is. x-flow's state (X, t) exists for
    positions in M only."

    - M_b: the positions of row b holding the mask id (``mask_token_id``, default the model's)
      where ``attention_mask`` (B, L), if given, is 1; the rows may hold different numbers of masks.
    - ``block_length`` n (default: each row's whole M is one block): row b's M, left to right,
      splits into ceil(|M_b| / n) blocks of n positions, the last one possibly shorter. Decoding
      runs inside a row's current block; earlier blocks are fed as their decoded tokens (x-flow:
      their plain embeddings), later ones as masks.
    - ``steps``: every row takes ``steps`` steps (forwards, all rows together), split over its own
      blocks: steps // K_b per block, one more for each of the first steps % K_b blocks. ``steps``
      must be at most the largest |M_b| and at least the number of blocks of every row; a row with
      fewer masked positions than steps gets steps that commit nothing (x-flow keeps refining).
    - ``decoder``: "xflow" (SPEC 2; ``policy`` a StepPolicy or None for the heuristic; options
      ``config``, ``sample``, ``record_rollout`` (with ``sample``: the trajectory in
      ``GenerateOutput.rollout``, SPEC 6.2)), "low_confidence", "maskgit_plus", "topk_margin", "entropy", "rcr",
      "soft_mask" (options ``k``, ``w_s``, ``w_a``, ``w_b``), "threshold" (option ``tau``; it takes
      as many steps as its blocks need, each row moving to its next block once its block is full).
    - ``eos_token_id`` (an id or a list of ids in the vocabulary): in each row, every decoded
      position after the first decoded EOS (left to right over M) becomes that EOS; given tokens
      never change.
    - ``suppress_tokens`` (a list of ids in the vocabulary, like transformers' ``generate``): their
      logits are set to -inf in every decoded row before any decoder sees them, so no decoded
      position ever takes one (SPEC 7: the code model's [MASK] logit is blocked when decoding);
      the padding entries of a block keep their fixed row. Suppressing every id is a ValueError.
    - Dream (shifted logits): position j is predicted by row j - 1, so a masked position needs a
      real token (or a masked one) right before it.

    A padded batch decodes every row exactly as that row decodes alone. On a CUDA device, with
    ``cuda_graph`` (the default) and a decoder that draws no random numbers (temperature 0, x-flow
    without ``sample``), one step (inputs, forward, decoder step) is captured in a CUDA graph and
    replayed for every later step of every block (``decode/graphs.py``); a model that cannot be
    captured falls back to eager steps with a warning. Logits rows that are not a finite
    distribution raise ValueError after the loop. A model that was not ``mdfast.patch``-ed is
    adapted for this call only.
    """
    patched = getattr(model, "mdfast_adapter", None) is not None
    adapter = adapt(model, mask_token_id)
    try:
        input_ids, attention_mask = _check_inputs(adapter, input_ids, attention_mask)
        decode = input_ids == adapter.mask_token_id
        if attention_mask is not None:
            decode &= attention_mask.bool()
        return _decode(
            adapter,
            input_ids,
            attention_mask,
            decode,
            steps,
            decoder,
            block_length,
            policy,
            temperature,
            eos_token_id,
            return_history,
            progress,
            generator,
            backend,
            cuda_graph,
            suppress_tokens,
            decoder_options,
        )
    finally:
        if not patched:
            release(adapter)


def generate(
    model,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    steps: int,
    decoder: str = "xflow",
    block_length: int | None = None,
    policy=None,
    temperature: float = 0.0,
    eos_token_id: int | list[int] | None = None,
    return_history: bool = False,
    progress: bool = False,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    mask_token_id: int | None = None,
    cuda_graph: bool = True,
    suppress_tokens: list[int] | None = None,
    **decoder_options,
) -> GenerateOutput:
    """Generate ``max_new_tokens`` tokens after each (left-padded) prompt of ``input_ids`` (B, P):
    ``infill`` of the prompt followed by ``max_new_tokens`` masks, where M is exactly that suffix
    (a mask id inside a prompt is fed as it is), and every argument means what it means there.

    ``block_length`` (default: the whole response) must divide ``max_new_tokens``, the number of
    blocks must divide ``steps`` (so every block gets steps / blocks steps, as in LLaDA's
    generate), and ``steps`` must be at most ``max_new_tokens``. Tokens after an EOS
    (``eos_token_id``, one id or several) are set to that EOS.
    """
    patched = getattr(model, "mdfast_adapter", None) is not None
    adapter = adapt(model, mask_token_id)
    try:
        input_ids, attention_mask = _check_inputs(adapter, input_ids, attention_mask, max_new_tokens)
        N = max_new_tokens
        if not (isinstance(steps, int) and steps >= 1):
            raise ValueError(f"steps: expected a positive int, got {steps!r}")
        if steps > N:
            raise ValueError(f"steps: expected at most max_new_tokens = {N} steps (one token each), got {steps}")
        block_length = N if block_length is None else block_length
        if not (isinstance(block_length, int) and block_length >= 1 and N % block_length == 0):
            raise ValueError(f"block_length: expected a positive divisor of max_new_tokens={N}, got {block_length!r}")
        n_blocks = N // block_length
        if steps % n_blocks != 0:
            raise ValueError(
                f"steps: {steps} steps do not split evenly over {n_blocks} blocks of {block_length} tokens"
            )
        B, P = input_ids.shape
        if adapter.shifted and P < 1:
            raise ValueError("input_ids: a shifted-logit model (Dream) needs a prompt of at least one token")
        masks = input_ids.new_full((B, N), adapter.mask_token_id)
        decode = torch.cat([torch.zeros_like(input_ids, dtype=torch.bool), torch.ones_like(masks, dtype=torch.bool)], 1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, torch.ones_like(masks)], dim=1)
        return _decode(
            adapter,
            torch.cat([input_ids, masks], dim=1),
            attention_mask,
            decode,
            steps,
            decoder,
            block_length,
            policy,
            temperature,
            eos_token_id,
            return_history,
            progress,
            generator,
            backend,
            cuda_graph,
            suppress_tokens,
            decoder_options,
        )
    finally:
        if not patched:
            release(adapter)


def _check_inputs(
    adapter: ModelAdapter, input_ids, attention_mask, max_new_tokens: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """Validated ``input_ids`` (B, L) and ``attention_mask`` (on the model's device, int64), checked
    up front: ids in the vocabulary, and L (+ ``max_new_tokens`` for ``generate``) within the
    model's positions."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        shape = "(B, P)" if max_new_tokens is not None else "(B, L)"
        raise TypeError(f"input_ids: expected an int64 tensor {shape}, got {describe(input_ids)}")
    B, L = input_ids.shape
    device = adapter.embedding.device
    if input_ids.device != device:
        raise ValueError(f"input_ids: expected a tensor on {device} (the model's device), got {input_ids.device}")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, L):
            raise ValueError(
                f"attention_mask: expected shape ({B}, {L}) like input_ids, got {describe(attention_mask)}"
            )
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if max_new_tokens is not None and not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens: expected a positive int, got {max_new_tokens!r}")
    V = adapter.vocab_size
    if input_ids.numel() and not bool(((input_ids >= 0) & (input_ids < V)).all()):
        low, high = int(input_ids.min()), int(input_ids.max())
        raise ValueError(
            f"input_ids: expected token ids in [0, {V}) (the model's vocabulary), got ids from {low} to {high}"
        )
    length = L + (max_new_tokens or 0)
    if adapter.max_positions is not None and length > adapter.max_positions:
        what = f"{L} prompt + {max_new_tokens} new tokens" if max_new_tokens is not None else f"{L} tokens"
        raise ValueError(
            f"input_ids: {what} = {length} positions, but {type(adapter.model).__name__} takes at most "
            f"{adapter.max_positions} (its config's maximum sequence length)"
        )
    return input_ids, attention_mask


def _check_eos(eos_token_id, V: int) -> list[int] | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if not isinstance(eos_token_id, (list, tuple)) else list(eos_token_id)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"eos_token_id: expected a token id (int) or a non-empty list of ids, got {eos_token_id!r}")
    if not all(0 <= i < V for i in ids):
        raise ValueError(f"eos_token_id: expected ids in [0, {V}) (the model's vocabulary), got {eos_token_id!r}")
    return ids


def _check_suppress(suppress_tokens, V: int) -> list[int] | None:
    """The ids of ``suppress_tokens`` (None or a list of ids, at least one id of the vocabulary left)."""
    if suppress_tokens is None:
        return None
    ids = list(suppress_tokens) if isinstance(suppress_tokens, (list, tuple)) else None
    if ids is None or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TypeError(f"suppress_tokens: expected a list of token ids (int) or None, got {suppress_tokens!r}")
    if not all(0 <= i < V for i in ids):
        raise ValueError(f"suppress_tokens: expected ids in [0, {V}) (the model's vocabulary), got {ids!r}")
    if len(set(ids)) >= V:
        raise ValueError(f"suppress_tokens: every one of the {V} ids of the vocabulary is suppressed; none is left")
    return sorted(set(ids)) or None


def _decode(
    adapter: ModelAdapter,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    decode: Tensor,
    steps,
    decoder_name,
    block_length,
    policy,
    temperature,
    eos_token_id,
    return_history,
    progress,
    generator,
    backend,
    cuda_graph,
    suppress_tokens,
    options,
) -> GenerateOutput:
    """The one decoding path: ``decode`` (B, L) bool is M."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if block_length is not None and not (isinstance(block_length, int) and block_length >= 1):
        raise ValueError(f"block_length: expected a positive int or None, got {block_length!r}")
    if decoder_name not in DECODERS:
        raise ValueError(f"decoder: expected one of {sorted(DECODERS)}, got {decoder_name!r}")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if policy is not None and decoder_name != "xflow":
        raise ValueError(f"policy: only the xflow decoder takes a step policy, not {decoder_name!r}")
    eos = _check_eos(eos_token_id, adapter.vocab_size)
    suppress = _check_suppress(suppress_tokens, adapter.vocab_size)
    if adapter.shifted:
        _check_shifted(decode, attention_mask)
    schedule = Schedule(decode, steps, block_length)
    if policy is not None:
        options["policy"] = policy
    try:
        decoder = DECODERS[decoder_name](
            adapter, schedule, backend=backend, generator=generator, temperature=temperature, **options
        )
    except TypeError as error:
        raise TypeError(f"decoder {decoder_name!r}: {error}") from None

    full_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask  # no padding: none
    device = input_ids.device
    on_gpu = device.type == "cuda"
    with torch.cuda.device(device) if on_gpu else contextlib.nullcontext():  # streams and graphs on the model's GPU
        step = _Step(adapter, decoder, input_ids, full_mask, suppress)
        graph = StepGraph(step, adapter.model, cuda_graph and on_gpu and decoder.capturable, decoder.max_steps)
        nfe, history, step_times, graphed_blocks = _run(decoder, graph, return_history, progress)
    decoder.check_finite()
    tokens = decoder.tokens()
    if eos is not None:
        tokens = fill_after_eos(tokens, eos)
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
    """One decoding step of a call (see the module docstring), run by ``StepGraph``: it writes only
    into tensors made here and in the decoder, so a CUDA graph of it replays any later step."""

    def __init__(
        self,
        adapter: ModelAdapter,
        decoder: Decoder,
        input_ids: Tensor,
        attention_mask,
        suppress: list[int] | None = None,
    ) -> None:
        self.adapter, self.decoder, self.attention_mask = adapter, decoder, attention_mask
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
                logits = self.adapter.logits(self.inputs, self.attention_mask, block.positions)
                if self.suppress is not None:  # before the padding rows are fixed: they keep p(mask id) = 1
                    logits.index_fill_(-1, self.suppress, -math.inf)
                if schedule.has_padding:
                    logits = fill_padding_rows(logits, block.valid, self.adapter.mask_token_id)
            decoder.step(logits, block)


def _run(decoder: Decoder, graph: StepGraph, return_history: bool, progress: bool):
    """Run the steps until the decoder is finished: (nfe, history, step times, graphed blocks)."""
    clock = _StepClock(decoder.device)
    history = [] if return_history else None
    replayed_blocks: list[set[int]] = [set() for _ in range(decoder.B)]
    step = 0
    while True:
        blocks = decoder.blocks_at(step)
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
