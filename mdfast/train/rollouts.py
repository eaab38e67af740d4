"""SPEC 6.2 rollouts: x-flow trajectories with sampled actions, recorded per step and token.

Per prompt G trajectories of x-flow at a fixed budget T, actions sampled (SPEC 2.5); for every step
l and decoded token i the record keeps the policy state s_{l,i} (SPEC 2.3), the draw y_{l,i} (log pi
is a function of y, not of the action a = a_min 2^(y L)), log pi_old(y_{l,i} | s_{l,i}), and
active_{l,i} = the token took the flow update this step (not re-edited, not already at t >= 0.99).
``collect_rollouts`` is one call of mdfast's decoding loop (``mdfast.infill_with_options`` with the
x-flow decoder, ``sample=True, record_rollout=True``: the fused step, one statistics pass per
step), which records exactly these (``GenerateOutput.rollout``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..config import FlowConfig
from ..decode import DecodeOptions, infill_with_options
from ..errors import describe
from ..policy import StepPolicy

__all__ = ["Rollouts", "collect_rollouts"]


@dataclass
class Rollouts:
    """Recorded x-flow trajectories (SPEC 6.2): B rows, N decoded tokens per row, T steps, S = k + 4.

    A prompt's G trajectories are consecutive rows.

    - input_ids (B, L): what was decoded (the mask id at the positions to fill); attention_mask (B, L) or None.
    - positions (B, N): the decoded positions, ascending; sequences (B, L): input_ids with them filled.
    - states (B, T, N, S) float32: s_{l,i}; draws (B, T, N) float32: y_{l,i}.
    - log_probs (B, T, N): log pi_old(y | s) at sampling time; active, reedited (B, T, N) bool.
    - committed (B, T) int64: the token hard-committed at step l (its index in 0..N-1), -1 if none.
    - t_final (B, N): t after the last step of the token's block; nfe: model forwards per row (= T).
    """

    input_ids: Tensor
    attention_mask: Tensor | None
    positions: Tensor
    sequences: Tensor
    states: Tensor
    draws: Tensor
    log_probs: Tensor
    active: Tensor
    reedited: Tensor
    committed: Tensor
    t_final: Tensor
    nfe: int

    @property
    def completion_ids(self) -> Tensor:
        """(B, N): the decoded tokens, in position order."""
        return self.sequences.gather(1, self.positions)

    def rows(self, index: slice) -> Rollouts:
        """The record of rows ``index`` (e.g. one prompt's G trajectories)."""
        return Rollouts(
            **{
                f.name: value[index] if isinstance(value := getattr(self, f.name), Tensor) else value
                for f in fields(self)
            }
        )


def collect_rollouts(
    model,
    policy: StepPolicy,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    num_generations: int = 8,
    steps: int,
    block_length: int | None = None,
    config: FlowConfig | None = None,
    generator: torch.Generator | None = None,
    mask_token_id: int | None = None,
    backend: str = "auto",
    suppress_tokens: list[int] | None = None,
) -> Rollouts:
    """Decode each row of ``input_ids`` (B0, L) ``num_generations`` times with sampled x-flow, and record it.

    Rows b * G .. b * G + G - 1 of the result are row b's trajectories (SPEC 6.2). The positions
    holding the mask id (and, with ``attention_mask``, not padding) are decoded, every other
    position is fed as its token's embedding (SPEC 7); every row must hold the same number N >= 1
    of masks. The options are one ``DecodeOptions`` (xflow, ``sample=True, record_rollout=True``),
    checked by its ``validate``:

    - steps: T forwards in all, split over the blocks of ``block_length`` tokens as ``mdfast.infill`` does.
    - suppress_tokens: ids never predicted (their logits -inf).
    - generator (on the model's device): drives the draws; the same state, model, policy and inputs
      give the same record bitwise (None: a freshly seeded one).

    The model runs under ``torch.no_grad``; nothing in the record carries an autograd graph.
    """
    if not isinstance(policy, StepPolicy):
        raise TypeError(f"policy: expected a mdfast.StepPolicy, got {type(policy).__name__}")
    if not (isinstance(num_generations, int) and num_generations >= 1):
        raise ValueError(f"num_generations: expected a positive int, got {num_generations!r}")
    ids, mask = _repeat_rows(input_ids, attention_mask, num_generations)
    if generator is None:
        generator = torch.Generator(device=ids.device)
        generator.seed()
    config = FlowConfig(k=policy.k, a_min=policy.a_min, a_max=policy.a_max) if config is None else config
    options = DecodeOptions(
        steps=steps,
        decoder="xflow",
        block_length=block_length,
        policy=policy,
        config=config,
        sample=True,
        record_rollout=True,
        generator=generator,
        backend=backend,
        suppress_tokens=suppress_tokens,
    ).validate()
    _check_same_mask_count(ids, mask, mask_token_id if mask_token_id is not None else _mask_id(model))
    with torch.no_grad():
        out = infill_with_options(model, ids, options, mask, mask_token_id=mask_token_id)
    record = dict(out.rollout)
    record.pop("valid")
    return Rollouts(input_ids=ids, attention_mask=mask, sequences=out.sequences, nfe=out.nfe, **record)


def _repeat_rows(input_ids, attention_mask, G: int) -> tuple[Tensor, Tensor | None]:
    """Each row of ``input_ids`` (B0, L) and ``attention_mask`` G times in a row: (B0 * G, L)."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
        raise TypeError(f"input_ids: expected an int64 tensor (B, L), got {describe(input_ids)}")
    if attention_mask is not None and (
        not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape
    ):
        raise ValueError(
            f"attention_mask: expected shape {tuple(input_ids.shape)} like input_ids, got {describe(attention_mask)}"
        )
    mask = None if attention_mask is None else attention_mask.repeat_interleave(G, 0)
    return input_ids.repeat_interleave(G, 0), mask


def _check_same_mask_count(ids: Tensor, mask: Tensor | None, mask_id: int | None) -> None:
    """Every row must hold the same number N >= 1 of mask tokens (an unknown mask id: infill raises)."""
    if mask_id is None:
        return
    decoded = ids == mask_id
    counts = (decoded if mask is None else decoded & mask.bool()).sum(1)
    if ids.shape[0] == 0 or int(counts.min()) == 0 or bool((counts != counts[0]).any()):
        raise ValueError(
            f"input_ids: every row must hold the same number (>= 1) of mask tokens (id {mask_id}) to decode, "
            f"got {counts.tolist()}"
        )


def _mask_id(model) -> int | None:
    """The mask id the loop will use: the patched one, else the config's (None: infill raises)."""
    adapter = getattr(model, "mdfast_adapter", None)
    if adapter is not None:
        return adapter.mask_token_id
    return getattr(getattr(model, "config", None), "mask_token_id", None)
