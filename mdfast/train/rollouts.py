"""SPEC 6.2 rollouts: x-flow trajectories with sampled actions, recorded per step and token.

Per prompt G trajectories of x-flow at a fixed budget T, actions sampled (SPEC 2.5); for every step
l and decoded token i the record keeps the policy state s_{l,i} (SPEC 2.3), the draw y_{l,i} (log pi
is a function of y, not of the action a = a_min 2^(y L)), log pi_old(y_{l,i} | s_{l,i}), and
active_{l,i} = the token took the flow update this step (not re-edited, not already at t >= 0.99).

TEMPORARY DRIVER. The decoding loop does not record rollouts yet, so ``collect_rollouts`` drives
``mdfast.ops.xflow_step(..., sample=True)`` itself, one step at a time on the model's logits, and
reproduces each step's draws (``_draw``) from a copy of the generator state to learn y and s. It
follows SPEC 2 and 7 like the decoder (the masked positions M of each row decoded in
left-to-right blocks of ``block_length``, steps split evenly, a finished block fed as the plain
embeddings of its tokens, later blocks at m) but with no CUDA graphs and one extra statistics
pass per step. Once the decoder provides the hook below, ``collect_rollouts`` becomes a call to it
and ``_draw`` and ``_decode`` go away:

    out = mdfast.infill(model, input_ids, attention_mask, steps=T, decoder="xflow",
                        block_length=..., policy=policy, sample=True, generator=generator,
                        backend=..., mask_token_id=..., record_rollout=True)
    out.rollout: dict of tensors on the model's device, B rows, N = |M| per row (equal for
    every row), S = k + 4, T = steps over all blocks (step l of the record = forward l):
        "positions" (B, N) int64   the decoded positions of each row, ascending
        "states"    (B, T, N, S)   float32, s_{l,i} as ops computes it for the policy
        "draws"     (B, T, N)      float32, y_{l,i}
        "log_probs" (B, T, N)      float32, log pi(y | s) of the draw (no autograd graph)
        "active"    (B, T, N)      bool, in the step's block and not re-edited and t_before < commit_threshold
        "reedited"  (B, T, N)      bool
        "committed" (B, T)         int64, the hard-committed token's index in 0..N-1, -1 if none
        "t_final"   (B, N)         float32, t after the last step of the token's block
    Entries of tokens outside the step's block are 0 / False. ``out.sequences`` and ``out.nfe`` as
    usual. For that, ``mdfast.xflow_step`` must return, when ``sample=True``, the state s it fed
    the policy and the draw y (e.g. ``XFlowStep.state`` (B, N, S) and ``XFlowStep.draw`` (B, N)),
    and take an explicit ``action=`` (B, N) (as ``mdfast.reference.xflow_step`` does) so a
    recorded trajectory can be replayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .. import ops, reference
from ..config import FlowConfig
from ..errors import describe
from ..models import adapt, release
from ..policy import StepPolicy

__all__ = ["Rollouts", "collect_rollouts"]


@dataclass
class Rollouts:
    """Recorded x-flow trajectories (SPEC 6.2), B rows (a prompt's G trajectories consecutive),
    N decoded tokens per row, T steps, S = k + 4.

    input_ids (B, L): what was decoded (the mask id at the positions to fill); attention_mask
    (B, L) or None; positions (B, N): the decoded positions, ascending; sequences (B, L): input_ids
    with those positions filled; states (B, T, N, S) float32: s_{l,i}; draws (B, T, N) float32:
    y_{l,i}; log_probs (B, T, N): log pi_old(y | s) at sampling time; active (B, T, N) bool;
    reedited (B, T, N) bool; committed (B, T) int64: the token hard-committed at step l (its
    index in 0..N-1), -1 if none; t_final (B, N): t after the last step of the token's block;
    nfe: model forwards per row (= T).
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
) -> Rollouts:
    """Decode each row of ``input_ids`` (B0, L) ``num_generations`` times with x-flow, actions
    sampled from ``policy``, and record the trajectories (SPEC 6.2); rows b * G .. b * G + G - 1
    of the result are row b's trajectories.

    The positions holding the mask id (and, with ``attention_mask``, not padding) are decoded,
    every other position is fed as its token's embedding (SPEC 7): a prompt followed by N masks is
    generation. Every row must hold the same number N >= 1 of masks. ``steps`` = T forwards in all,
    split evenly over the blocks of ``block_length`` decoded tokens (default: one block; the last
    block may be shorter). ``generator`` (on the model's device) drives the draws: the same
    generator state, model, policy and inputs give the same record bitwise. The model runs under
    ``torch.no_grad``; nothing in the record carries an autograd graph.
    """
    if not isinstance(policy, StepPolicy):
        raise TypeError(f"policy: expected a mdfast.StepPolicy, got {type(policy).__name__}")
    if not (isinstance(num_generations, int) and num_generations >= 1):
        raise ValueError(f"num_generations: expected a positive int, got {num_generations!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    config = FlowConfig(k=policy.k, a_min=policy.a_min, a_max=policy.a_max) if config is None else config
    patched = getattr(model, "mdfast_adapter", None) is not None
    adapter = adapt(model, mask_token_id)
    try:
        device = adapter.embedding.device
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise TypeError(f"input_ids: expected an int64 tensor (B, L), got {describe(input_ids)}")
        if input_ids.device != device:
            raise ValueError(f"input_ids: expected a tensor on {device} (the model's device), got {input_ids.device}")
        if attention_mask is not None and (
            not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape
        ):
            raise ValueError(
                f"attention_mask: expected shape {tuple(input_ids.shape)} like input_ids, "
                f"got {describe(attention_mask)}"
            )
        ids = input_ids.repeat_interleave(num_generations, 0)
        mask = None if attention_mask is None else attention_mask.to(device).repeat_interleave(num_generations, 0)
        if generator is None:
            generator = torch.Generator(device=device)
            generator.seed()
        with torch.no_grad():
            return _decode(adapter, policy, ids, mask, steps, block_length, config, generator, backend)
    finally:
        if not patched:
            release(adapter)


def _decode(adapter, policy, ids, attention_mask, steps, block_length, config, generator, backend) -> Rollouts:
    """TEMPORARY (see the module docstring): the x-flow loop of SPEC 2 / 7 with the recording."""
    B = ids.shape[0]
    device = ids.device
    decoded = ids == adapter.mask_token_id
    if attention_mask is not None:
        decoded &= attention_mask.bool()
    counts = decoded.sum(1)
    N = int(counts[0]) if B else 0
    if B == 0 or N == 0 or bool((counts != N).any()):
        raise ValueError(
            f"input_ids: every row must hold the same number (>= 1) of mask tokens (id {adapter.mask_token_id}) to "
            f"decode, got {counts.tolist()}"
        )
    positions = decoded.nonzero()[:, 1].view(B, N)  # row-major: ascending in each row
    block_length = N if block_length is None else block_length
    if not (isinstance(block_length, int) and block_length >= 1):
        raise ValueError(f"block_length: expected a positive int or None, got {block_length!r}")
    blocks = [(start, min(start + block_length, N)) for start in range(0, N, block_length)]
    if steps % len(blocks):
        raise ValueError(f"steps: {steps} steps do not split evenly over {len(blocks)} blocks of {block_length} tokens")
    steps_per_block = steps // len(blocks)
    if adapter.shifted and int(positions.min()) < 1:
        raise ValueError("input_ids: a shifted-logit model (Dream) cannot decode position 0")
    full_mask = None if attention_mask is None or bool(attention_mask.all()) else attention_mask

    W = adapter.embedding.detach()
    m = W[adapter.mask_token_id]
    E, S = W.shape[1], config.k + 4
    inputs = adapter.embed(ids)
    X = m.float().expand(B, N, E).clone()
    tokens = ids.gather(1, positions).clone()
    record = {
        "states": torch.zeros(B, steps, N, S, device=device),
        "draws": torch.zeros(B, steps, N, device=device),
        "log_probs": torch.zeros(B, steps, N, device=device),
        "active": torch.zeros(B, steps, N, dtype=torch.bool, device=device),
        "reedited": torch.zeros(B, steps, N, dtype=torch.bool, device=device),
    }
    committed = torch.full((B, steps), -1, dtype=torch.long, device=device)
    t_final = torch.zeros(B, N, device=device)
    L_exp = math.log2(config.a_max / config.a_min)
    for b, (start, stop) in enumerate(blocks):
        X_block = X[:, start:stop].contiguous()
        t_block = torch.zeros(B, stop - start, device=device)
        block_positions = positions[:, start:stop]
        first, last = int(block_positions.min()), int(block_positions.max())
        rows = block_positions - first
        contiguous = bool((rows == torch.arange(stop - start, device=device)).all())
        for l in range(steps_per_block):
            step = b * steps_per_block + l
            rho = l / max(steps_per_block - 1, 1)  # SPEC 2: rho = l / max(T - 1, 1), per block
            inputs.scatter_(1, positions.unsqueeze(-1).expand(B, N, E), (X * adapter.embed_scale).to(inputs.dtype))
            logits = adapter.logits(inputs, full_mask, slice(first, last + 1))
            if not contiguous:
                logits = logits.gather(1, rows.unsqueeze(-1).expand(*rows.shape, logits.shape[-1]))
            stats = ops.token_stats(logits, config.k, backend=backend)
            state = reference.policy_state(stats.topk_probs, stats.entropy_topk, stats.margin, t_block, rho)
            y = _draw(policy, state, generator)
            t_before = t_block.clone()
            out = ops.xflow_step(
                logits,
                X_block,
                t_block,
                W,
                m,
                policy,
                rho,
                config=config,
                sample=True,
                generator=generator,
                inplace=True,
                backend=backend,
            )
            if not torch.equal(out.action, config.a_min * torch.exp2(y * L_exp)):
                raise RuntimeError("collect_rollouts: the reproduced draw differs from the one xflow_step took")
            cols = slice(start, stop)
            record["states"][:, step, cols] = state
            record["draws"][:, step, cols] = y
            record["log_probs"][:, step, cols] = out.log_prob
            record["active"][:, step, cols] = ~out.reedited & (t_before < config.commit_threshold)
            record["reedited"][:, step, cols] = out.reedited
            committed[:, step] = torch.where(out.committed >= 0, out.committed + start, out.committed)
            X[:, cols] = X_block
            tokens[:, cols] = out.tokens
        t_final[:, start:stop] = t_block
        X[:, start:stop] = W[tokens[:, start:stop]].float()  # a finished block is fed as its tokens
    return Rollouts(
        input_ids=ids,
        attention_mask=attention_mask,
        positions=positions,
        sequences=ids.scatter(1, positions, tokens),
        committed=committed,
        t_final=t_final,
        nfe=steps,
        **record,
    )


def _draw(policy: StepPolicy, state: Tensor, generator: torch.Generator) -> Tensor:
    """TEMPORARY: y ~ Beta(alpha, beta) exactly as ``reference.sample_action`` draws it (the first
    coordinate of a Dirichlet draw), from a copy of the generator state: the generator is left as
    it was, so ``xflow_step`` then takes this same draw."""
    alpha, beta = policy(state)
    saved = generator.get_state()
    y = torch._sample_dirichlet(torch.stack([alpha, beta], dim=-1), generator=generator)[..., 0]
    generator.set_state(saved)
    return y
