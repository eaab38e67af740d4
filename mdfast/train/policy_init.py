"""A starting point for GRPO (SPEC 6.2): a StepPolicy whose mean action imitates the default policy.

SPEC 2's default policy, used without trained weights, is log-linear in the confidence c = p(1):

    a_default = a_min^(1 - c) * a_max^c

A freshly initialised StepPolicy acts at random instead (its mean action hardly depends on the
state), so GRPO from scratch first has to relearn what the default already does. ``fit_default_policy``
regresses the policy's deterministic action (SPEC 2.5, a = a_min * 1F1(alpha; alpha + beta; L ln 2))
onto a_default in log2 space,

    loss = mean over states of (log2 E[a](s) - log2 a_default(c))^2,

on states the decoding actually visits; ``default_policy_start`` collects them with rollouts and
alternates collection and fit (the policy's own trajectories visit the states it will act on). The
Beta's concentration kappa is left free: GRPO explores through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import reference
from ..errors import describe
from ..policy import StepPolicy
from .grpo_config import PolicyGRPOConfig
from .rollouts import collect_rollouts

__all__ = ["DefaultFit", "default_policy_start", "fit_default_policy"]


@dataclass
class DefaultFit:
    """What a fit reached.

    - rms_log2_before, rms_log2_after: the root-mean-square error of log2 a over the states, in units of log2
      (L = log2(a_max / a_min) is the whole range: 8 for the defaults).
    - states: how many states the fit used.
    """

    rms_log2_before: float
    rms_log2_after: float
    states: int


def _log2_error(policy: StepPolicy, states: Tensor) -> Tensor:
    alpha, beta = policy(states)
    action = reference.expected_action(alpha, beta, policy.a_min, policy.a_max)
    target = reference.heuristic_action(states[..., 0], policy.a_min, policy.a_max)
    return torch.log2(action) - torch.log2(target)


def fit_default_policy(policy: StepPolicy, states: Tensor, *, steps: int = 500, lr: float = 3e-3) -> DefaultFit:
    """Fit ``policy`` in place so that its mean action matches the default policy's on ``states``.

    - states: (M, k+4), moved to the policy's device (the loss: the module docstring).
    - steps, lr: full-batch AdamW steps and their learning rate.
    Only the policy's weights change. Returns the fit's error before and after.
    """
    if not isinstance(policy, StepPolicy):
        raise TypeError(f"policy: expected a mdfast.StepPolicy, got {type(policy).__name__}")
    if not isinstance(states, Tensor) or states.dim() != 2 or states.shape[1] != policy.state_dim:
        raise ValueError(f"states: expected a float tensor (M, {policy.state_dim}), got {describe(states)}")
    if states.shape[0] == 0 or not bool(torch.isfinite(states).all()):
        raise ValueError(f"states: expected at least one state, all finite, got {describe(states)}")
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps: expected a non-negative int, got {steps!r}")
    states = states.detach().to(device=policy.fc1.weight.device, dtype=torch.float32)
    with torch.no_grad():
        before = float(_log2_error(policy, states).pow(2).mean().sqrt())
    optimizer = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = _log2_error(policy, states).pow(2).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(_log2_error(policy, states).pow(2).mean().sqrt())
    return DefaultFit(before, after, int(states.shape[0]))


def default_policy_start(
    model,
    prompts: Sequence[Tensor],
    config: PolicyGRPOConfig,
    *,
    hidden: int = 64,
    rounds: int = 2,
    fit_steps: int = 500,
    mask_token_id: int,
    max_states: int = 65536,
) -> tuple[StepPolicy, list[DefaultFit]]:
    """A fresh StepPolicy(``hidden``), seeded by ``config.seed``, fitted to the default policy on its own rollouts.

    - prompts: 1-D int64 tensors holding ``mask_token_id`` at the positions to fill.
    - config: the run's PolicyGRPOConfig: G, the step count (``steps_for``), block_length, backend,
      suppress_tokens.
    - rounds: each decodes every prompt G times with sampled actions, then ``fit_default_policy`` (``fit_steps``)
      on the active states (at most ``max_states``, evenly spaced).
    Returns the policy and each round's fit.
    """
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"rounds: expected a positive int, got {rounds!r}")
    for index, ids in enumerate(prompts):
        if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype != torch.long:
            raise TypeError(f"prompts[{index}]: expected a 1-D int64 tensor, got {describe(ids)}")
    torch.manual_seed(config.seed)
    policy = StepPolicy(hidden).to(model.get_input_embeddings().weight.device)
    fits = []
    for round_index in range(rounds):
        states = []
        for index, ids in enumerate(prompts):
            generator = torch.Generator(device=ids.device).manual_seed(config.seed + 1000 * round_index + index)
            record = collect_rollouts(
                model,
                policy,
                ids[None],
                num_generations=config.num_generations,
                steps=config.steps_for(int((ids == mask_token_id).sum())),
                block_length=config.block_length,
                generator=generator,
                mask_token_id=mask_token_id,
                backend=config.backend,
                suppress_tokens=config.suppress_tokens,
            )
            states.append(record.states[record.active].cpu())
        states = torch.cat(states)
        if states.shape[0] > max_states:
            states = states[torch.linspace(0, states.shape[0] - 1, max_states).round().long()]
        fits.append(fit_default_policy(policy, states, steps=fit_steps))
    return policy, fits
