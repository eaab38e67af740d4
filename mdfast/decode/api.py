"""The public decoding calls: ``generate`` and ``infill``, and their forms that take a ``DecodeOptions``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from ..errors import describe
from ..models import ModelAdapter, adapt, release
from ..models.llada import LLaDAModel
from .loop import DecodeInputs, GenerateOutput, decode_loop
from .options import DecodeOptions

__all__ = ["generate", "generate_with_options", "infill", "infill_with_options"]


def infill_with_options(
    model, input_ids: Tensor, options: DecodeOptions, attention_mask: Tensor | None = None, *, mask_token_id=None
) -> GenerateOutput:
    """Decode the positions of ``input_ids`` (B, L) that hold the mask id (M, SPEC 7); keep every other one.

    - M_b: row b's positions holding the mask id where ``attention_mask`` (B, L), if given, is 1;
      rows may hold different numbers of masks (a row with none is returned as it is).
    - ``options.block_length`` n (None: each row's M is one block): row b's M, left to right, splits
      into ceil(|M_b| / n) blocks; earlier blocks are fed as their decoded tokens, later ones as masks.
    - ``options.steps``: every row's forwards, split over its own blocks (steps // K_b each, one more
      for the first steps % K_b); at most the largest |M_b|, at least every row's number of blocks.
    - ``options.eos_token_id``: each row's decoded positions after its first decoded EOS become it.
    - ``options.suppress_tokens``: their logits are -inf in every decoded row, before any decoder.
    - ``mask_token_id``: the [MASK] id (None: the patched one, else the model config's).
    - Dream (shifted logits): a masked position needs a real position right before it.

    - ``options.cache`` ("dual" | "prefix", SPEC 8; the native LLaDA body only),
      ``options.cache_refresh`` k and ``options.cache_vicinity`` w: an approximate KV cache, each
      row refreshed at its block's first step (and every k-th step in a block; k = 1 is exact);
      the steps between feed only the block ("dual") or everything from its first position
      ("prefix"), plus w positions beside the block.

    A padded batch decodes every row exactly as that row alone, with a cache too (each row
    refreshes on its own schedule); where the decoder draws (temperature > 0, x-flow's
    ``sample``), pass ``options.generator`` as a list of one torch.Generator per row for that
    (a single generator's draws for a row depend on the batch). On CUDA with
    ``options.cuda_graph`` and a decoder drawing no random numbers, one captured step (with a
    cache: one per step kind) is replayed for every later step.
    Non-finite logits raise ValueError after the loop. An unpatched model is adapted for this call only.
    """
    with _adapted(model, mask_token_id) as adapter:
        input_ids, attention_mask = _check_inputs(adapter, input_ids, attention_mask)
        decode = input_ids == adapter.mask_token_id
        if attention_mask is not None:
            decode &= attention_mask.bool()
        options.validate(vocab_size=adapter.vocab_size, masked=decode.sum(-1).tolist())
        _check_cache_body(adapter, options)
        return decode_loop(adapter, DecodeInputs(input_ids, attention_mask, decode), options)


def generate_with_options(
    model,
    input_ids: Tensor,
    options: DecodeOptions,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int,
    mask_token_id=None,
) -> GenerateOutput:
    """Generate ``max_new_tokens`` tokens after each (left-padded) prompt of ``input_ids`` (B, P).

    ``infill_with_options`` of the prompt followed by ``max_new_tokens`` masks, M exactly that
    suffix (a mask id inside a prompt is fed as it is). ``options.block_length`` (None: the whole
    response) must divide ``max_new_tokens``, ``options.steps`` must split evenly over the blocks
    (LLaDA's generate) and be at most ``max_new_tokens``. Returns sequences (B, P + max_new_tokens).
    """
    with _adapted(model, mask_token_id) as adapter:
        options.validate(max_new_tokens=max_new_tokens, vocab_size=adapter.vocab_size)
        _check_cache_body(adapter, options)
        input_ids, attention_mask = _check_inputs(adapter, input_ids, attention_mask, max_new_tokens)
        B, P = input_ids.shape
        if adapter.shifted and P < 1:
            raise ValueError("input_ids: a shifted-logit model (Dream) needs a prompt of at least one token")
        masks = input_ids.new_full((B, max_new_tokens), adapter.mask_token_id)
        decode = torch.cat([torch.zeros_like(input_ids, dtype=torch.bool), torch.ones_like(masks, dtype=torch.bool)], 1)
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, torch.ones_like(masks)], dim=1)
        inputs = DecodeInputs(torch.cat([input_ids, masks], dim=1), attention_mask, decode)
        return decode_loop(adapter, inputs, options)


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
    """Decode the positions of ``input_ids`` that hold the mask id: ``infill_with_options`` with these keywords.

    Every keyword but ``mask_token_id`` is the ``DecodeOptions`` field of its name;
    ``decoder_options`` are its per-decoder fields (xflow: ``config``, ``sample``,
    ``record_rollout``; threshold: ``tau``; factor: ``factor``; soft_mask: ``k``, ``w_s``, ``w_a``, ``w_b``)
    and the KV cache's ``cache`` and ``cache_refresh`` (SPEC 8; any decoder, the native LLaDA body only).
    """
    options = DecodeOptions.from_kwargs(
        steps=steps,
        decoder=decoder,
        block_length=block_length,
        policy=policy,
        temperature=temperature,
        eos_token_id=eos_token_id,
        return_history=return_history,
        progress=progress,
        generator=generator,
        backend=backend,
        cuda_graph=cuda_graph,
        suppress_tokens=suppress_tokens,
        **decoder_options,
    )
    return infill_with_options(model, input_ids, options, attention_mask, mask_token_id=mask_token_id)


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
    """Generate ``max_new_tokens`` tokens after each prompt: ``generate_with_options`` with these keywords.

    The keywords mean what they mean for ``infill``.
    """
    options = DecodeOptions.from_kwargs(
        steps=steps,
        decoder=decoder,
        block_length=block_length,
        policy=policy,
        temperature=temperature,
        eos_token_id=eos_token_id,
        return_history=return_history,
        progress=progress,
        generator=generator,
        backend=backend,
        cuda_graph=cuda_graph,
        suppress_tokens=suppress_tokens,
        **decoder_options,
    )
    return generate_with_options(
        model, input_ids, options, attention_mask, max_new_tokens=max_new_tokens, mask_token_id=mask_token_id
    )


def _check_cache_body(adapter: ModelAdapter, options: DecodeOptions) -> None:
    """ValueError, naming ``cache``, when a cache is asked of a model driven through a body that keeps none."""
    if options.cache is None or isinstance(adapter.model, LLaDAModel):
        return
    raise ValueError(
        "cache: only the native LLaDA body (mdfast.LLaDAModel, mdfast.load_llada, or LLaDA remote code that "
        f"mdfast drives through it) keeps a KV cache; {type(adapter.model).__name__} (family {adapter.family!r}) "
        "is driven through its own forward, which has none: pass cache=None"
    )


@contextlib.contextmanager
def _adapted(model, mask_token_id: int | None) -> Iterator[ModelAdapter]:
    """The model's adapter for one call: the patched one, else one made now and released after."""
    patched = getattr(model, "mdfast_adapter", None) is not None
    adapter = adapt(model, mask_token_id)
    try:
        yield adapter
    finally:
        if not patched:
            release(adapter)


def _check_inputs(
    adapter: ModelAdapter, input_ids, attention_mask, max_new_tokens: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """``input_ids`` (B, L) and ``attention_mask`` checked, the mask on the model's device as int64.

    Ids in the vocabulary; L (+ ``max_new_tokens`` for ``generate``, already validated) within the
    model's positions; for ``generate`` the mask left-padded (``_check_left_padded``).
    """
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
        if max_new_tokens is not None:
            _check_left_padded(attention_mask)
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


def _check_left_padded(attention_mask: Tensor) -> None:
    """ValueError naming ``attention_mask`` where a row has padding after a real token (``generate`` only).

    ``generate`` appends the new tokens after the last column, so a right-padded prompt would get
    them after its padding; a row must be zeros then ones (no padding, or left padding).
    """
    real = attention_mask != 0
    after = real.long().cummax(-1).values.bool() & ~real  # padding after a real token of its row
    if bool(after.any()):
        row = int(after.any(-1).nonzero()[0, 0])
        raise ValueError(
            f"attention_mask: row {row} has padding after its prompt (right padding), but generate appends the new "
            "tokens after the last column, so they would follow the padding; pad prompts on the left "
            '(tokenizer.padding_side = "left")'
        )
