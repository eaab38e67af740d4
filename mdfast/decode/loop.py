"""The decoding loop: one generic, sync-free step loop for every decoder.

    for each block [start, stop) of the response (block_length; steps split evenly):
        for each step:              # on CUDA: captured once per block, then replayed (graphs.py)
            inputs  = [prompt embeddings ; decoder.write_inputs(response)]
            logits  = model forward, projected for the block's rows only
            decoder.step(logits)        # one statistics pass (mdfast.ops), selection on device

Nothing inside a step waits on the device: schedules live on the device and are indexed by a
device step counter, selections are tensor ops, non-finite logits set a device flag read once
after the loop, progress output counts steps. Step times come from CUDA events read after the
loop.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import describe
from ..models import ModelAdapter, adapt, release
from .base import Decoder
from .graphs import StepGraphs
from .rcr import RunningConfidenceRemasking
from .remasking import Entropy, LowConfidence, MaskGitPlus, Threshold, TopKMargin
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
    """sequences (B, prompt + max_new_tokens): prompt then response; nfe: model forwards;
    history: the decoder's state after every step (``return_history``: "tokens" (B, N), and for
    x-flow "X" (B, N, E) and "t" (B, N)); step_times: seconds per step; log_probs: the x-flow
    policy's log pi(y) per step when sampling; graphed_blocks: how many blocks replayed their step
    from a CUDA graph."""

    sequences: Tensor
    nfe: int
    history: list[dict[str, Tensor]] | None = None
    step_times: list[float] = field(default_factory=list)
    log_probs: list[Tensor] | None = None
    graphed_blocks: int = 0


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
    **decoder_options,
) -> GenerateOutput:
    """Generate ``max_new_tokens`` tokens after each (left-padded) prompt of ``input_ids`` (B, P).

    ``decoder``: "xflow" (SPEC 2; ``policy`` a StepPolicy or None for the heuristic; options
    ``config``, ``sample``), "low_confidence", "maskgit_plus", "topk_margin", "entropy", "rcr",
    "soft_mask" (options ``k``, ``w_s``, ``w_a``, ``w_b``), "threshold" (option ``tau``) (SPEC 3).
    ``block_length`` (default: the whole response) must divide ``max_new_tokens``, and the number
    of blocks must divide ``steps``. Tokens after an EOS (``eos_token_id``, one id or several) are
    set to that EOS. A model that was not ``mdfast.patch``-ed is adapted for this call only.

    On a CUDA device, with ``cuda_graph`` (the default) and a decoder that draws no random numbers
    (temperature 0, x-flow without ``sample``), each block's whole step (input embeddings, forward,
    decoder step) is captured in a CUDA graph once and replayed (``decode/graphs.py``); a model
    that cannot be captured falls back to eager steps with a warning. Logits rows that are not a
    finite distribution raise ValueError after the loop.
    """
    patched = getattr(model, "mdfast_adapter", None) is not None
    adapter = adapt(model, mask_token_id)
    try:
        return _generate(
            adapter,
            input_ids,
            attention_mask,
            max_new_tokens,
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
            decoder_options,
        )
    finally:
        if not patched:
            release(adapter)


def _run(
    adapter, decoder, prompt_embeds, full_mask, N, block_length, steps_per_block, return_history, progress, graphs
):
    B, P, E = prompt_embeds.shape
    inputs = torch.empty(B, P + N, E, dtype=prompt_embeds.dtype, device=prompt_embeds.device)
    inputs[:, :P] = prompt_embeds
    clock = _StepClock(inputs.device)
    history = [] if return_history else None
    nfe = 0
    n_blocks = N // block_length
    for b in range(n_blocks):
        start, stop = b * block_length, (b + 1) * block_length
        decoder.start_block(start, stop, steps_per_block)
        rows = slice(P + start, P + stop)

        def step_once(rows=rows):
            with torch.set_grad_enabled(decoder.keeps_graph):  # a sampling policy's log pi(y) keeps its graph
                decoder.write_inputs(inputs[:, P:])
                with torch.no_grad():
                    logits = adapter.logits(inputs, full_mask, rows)
                decoder.step(logits)

        graphs.start_block(step_once, steps_per_block)
        step = 0
        while True:
            graphs()
            nfe += 1
            clock.tick()
            if history is not None:
                history.append(decoder.record())
            if progress:
                print(f"\r[mdfast] block {b + 1}/{n_blocks} step {step + 1}", end="", file=sys.stderr, flush=True)
            if decoder.block_finished(step):
                break
            step += 1
    if progress:
        print(file=sys.stderr)
    return nfe, history, clock.seconds()


def _generate(
    adapter: ModelAdapter,
    input_ids,
    attention_mask,
    N,
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
    options,
) -> GenerateOutput:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise TypeError(f"input_ids: expected an int64 tensor (B, P), got {describe(input_ids)}")
    B, P = input_ids.shape
    device = adapter.embedding.device
    if input_ids.device != device:
        raise ValueError(f"input_ids: expected a tensor on {device} (the model's device), got {input_ids.device}")
    if attention_mask is not None:
        if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != (B, P):
            raise ValueError(
                f"attention_mask: expected shape ({B}, {P}) like input_ids, got {describe(attention_mask)}"
            )
        attention_mask = attention_mask.to(device=device, dtype=torch.long)
    if not (isinstance(N, int) and N >= 1):
        raise ValueError(f"max_new_tokens: expected a positive int, got {N!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    block_length = N if block_length is None else block_length
    if not (isinstance(block_length, int) and block_length >= 1 and N % block_length == 0):
        raise ValueError(f"block_length: expected a positive divisor of max_new_tokens={N}, got {block_length!r}")
    n_blocks = N // block_length
    if steps % n_blocks != 0:
        raise ValueError(f"steps: {steps} steps do not split evenly over {n_blocks} blocks of {block_length} tokens")
    if decoder_name not in DECODERS:
        raise ValueError(f"decoder: expected one of {sorted(DECODERS)}, got {decoder_name!r}")
    if adapter.shifted and P < 1:
        raise ValueError("input_ids: a shifted-logit model (Dream) needs a prompt of at least one token")
    if temperature < 0:
        raise ValueError(f"temperature: expected >= 0, got {temperature}")
    if policy is not None and decoder_name != "xflow":
        raise ValueError(f"policy: only the xflow decoder takes a step policy, not {decoder_name!r}")
    if policy is not None:
        options["policy"] = policy
    try:
        decoder = DECODERS[decoder_name](
            adapter, B, N, backend=backend, generator=generator, temperature=temperature, **options
        )
    except TypeError as error:
        raise TypeError(f"decoder {decoder_name!r}: {error}") from None

    full_mask = None
    if attention_mask is not None and not bool(attention_mask.all()):  # no padding: no mask at all
        full_mask = torch.cat([attention_mask, attention_mask.new_ones(B, N)], dim=1)
    with torch.no_grad():
        prompt_embeds = adapter.embed(input_ids)
    on_gpu = device.type == "cuda"
    with torch.cuda.device(device) if on_gpu else contextlib.nullcontext():  # streams and graphs on the model's GPU
        graphs = StepGraphs(adapter, cuda_graph and on_gpu and decoder.graphable)
        nfe, history, step_times = _run(
            adapter,
            decoder,
            prompt_embeds,
            full_mask,
            N,
            block_length,
            steps // n_blocks,
            return_history,
            progress,
            graphs,
        )
    decoder.check_finite()
    response = decoder.tokens()
    if eos_token_id is not None:
        response = fill_after_eos(response, eos_token_id)
    log_probs = getattr(decoder, "log_probs", None) or None
    return GenerateOutput(torch.cat([input_ids, response], dim=1), nfe, history, step_times, log_probs, graphs.captured)


def fill_after_eos(response: Tensor, eos_token_id: int | list[int]) -> Tensor:
    """Every token after a sequence's first EOS becomes that EOS."""
    eos = torch.as_tensor(eos_token_id, device=response.device).reshape(-1)
    is_eos = torch.isin(response, eos)
    after = is_eos.long().cumsum(-1) > 0
    first = torch.argmax(is_eos.long(), dim=-1, keepdim=True)
    return torch.where(after, response.gather(-1, first), response)


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
