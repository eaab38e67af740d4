"""The ``generate_until`` work of the harness model: batched ``mdfast.generate`` and ``mdfast.infill``, decoded text.

- ``generate_texts``: prompts (token ids) left-padded ``batch_size`` at a time, longest first, each batch one
  ``generate_with_options`` call; every response decoded without special tokens and cut at its first stop string.
- ``infill_texts``: inputs holding [MASK] ids (a context written with the tokenizer's mask token), batched among
  inputs with the same number of masks (one step budget per call: ``min(steps, masks)``); the response is the
  text of the decoded masked positions, special tokens kept (a [MASK] left or an [EOS] shows, as in
  ``mdfast eval code``); no EOS rule inside a span.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch

from mdfast.decode import DecodeOptions, generate_with_options, infill_with_options

__all__ = ["cut_at_stop", "generate_texts", "infill_texts", "left_pad"]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the first occurrence of any stop string of ``until`` (all of it where none occurs)."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:cut]


def left_pad(batch: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(input_ids (B, P), attention_mask (B, P) or None where no row is padded), rows right-aligned."""
    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, length - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
    padded = any(len(ids) != length for ids in batch)
    return input_ids.to(device), attention_mask.to(device) if padded else None


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    stops: Sequence[Sequence[str]],
    options: DecodeOptions,
    *,
    max_new_tokens: int,
    batch_size: int,
    pad_token_id: int,
    on_done: Callable[[int], None] | None = None,
) -> list[str]:
    """The response to each prompt, cut at its stop strings ``stops[i]`` (module docstring)."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    texts = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        input_ids, attention_mask = left_pad([prompts[i] for i in chosen], pad_token_id, device)
        out = generate_with_options(model, input_ids, options, attention_mask, max_new_tokens=max_new_tokens)
        responses = out.sequences[:, input_ids.shape[1] :].cpu()
        for row, i in enumerate(chosen):
            text = tokenizer.decode(responses[row].tolist(), skip_special_tokens=True)
            texts[i] = cut_at_stop(text, stops[i])
        if on_done is not None:
            on_done(len(chosen))
    return texts


def infill_texts(
    model,
    tokenizer,
    inputs: Sequence[Sequence[int]],
    options: DecodeOptions,
    *,
    mask_token_id: int,
    batch_size: int,
    pad_token_id: int,
    on_done: Callable[[int], None] | None = None,
) -> list[str]:
    """The text of the decoded [MASK] positions of each input (module docstring)."""
    device = next(model.parameters()).device
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(inputs):
        groups[sum(1 for t in ids if t == mask_token_id)].append(i)
    texts = [""] * len(inputs)
    for masks, members in sorted(groups.items()):
        budget = dataclasses.replace(options, steps=min(options.steps, masks), eos_token_id=None)
        for start in range(0, len(members), batch_size):
            chosen = members[start : start + batch_size]
            input_ids, attention_mask = left_pad([inputs[i] for i in chosen], pad_token_id, device)
            decode = input_ids == mask_token_id
            if attention_mask is not None:
                decode &= attention_mask.bool()
            out = infill_with_options(model, input_ids, budget, attention_mask, mask_token_id=mask_token_id)
            filled = out.sequences.cpu()
            for row, i in enumerate(chosen):
                span = filled[row][decode[row].cpu()].tolist()
                texts[i] = tokenizer.decode(span, skip_special_tokens=False)
            if on_done is not None:
                on_done(len(chosen))
    return texts
