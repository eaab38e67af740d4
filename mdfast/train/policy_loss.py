"""SPEC 6.2, the GRPO objective of the step policy: token rewards, group advantages, the clipped loss.

Everything here reads stored rollout tensors (the policy states s, the draws y, who was active); nothing runs the
model. The log-probabilities are those of y ~ Beta(alpha, beta): the action a = a_min 2^(y L) is a fixed,
invertible map of y, so its Jacobian cancels in every ratio.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import describe
from ..policy import StepPolicy

__all__ = [
    "beta_kl",
    "clipped_objective",
    "group_advantages",
    "policy_grpo_loss",
    "policy_log_prob",
    "probability_ratio",
    "ratio_metrics",
    "token_rewards",
]

ADVANTAGE_EPS = 1e-4  # SPEC 6.2: A = (R - mean) / (std + 1e-4)
SCALE_REWARDS = ("group", "none")


def token_rewards(task_rewards: Tensor, t_final: Tensor, lam: float) -> Tensor:
    """SPEC 6.2 (paper eq. 18): R_{g,i} = R_task_g + lambda * t_final_{g,i}, in float32 (B, N).

    - task_rewards: (B,), one per trajectory.
    - t_final: (B, N), each decoded token's final progress.
    """
    if not isinstance(task_rewards, Tensor) or task_rewards.dim() != 1:
        raise ValueError(f"task_rewards: expected a (B,) tensor, got {describe(task_rewards)}")
    if not isinstance(t_final, Tensor) or t_final.dim() != 2 or t_final.shape[0] != task_rewards.shape[0]:
        raise ValueError(f"t_final: expected a (B, N) tensor with B = {task_rewards.shape[0]}, got {describe(t_final)}")
    return task_rewards.float().unsqueeze(-1) + lam * t_final.float()


def group_advantages(rewards: Tensor, group_size: int, *, scale_rewards: str = "group") -> Tensor:
    """SPEC 6.2: A_{g,i} = (R_{g,i} - mean_g R_{.,i}) / (std_g R_{.,i} + 1e-4), per prompt and token position i.

    - rewards: (B, ...), B = prompts x G rows, a prompt's G = ``group_size`` trajectories consecutive (row b is in
      group b // G); every other dimension is a position i.
    - scale_rewards: "group" divides by torch's (unbiased, as TRL) std + 1e-4; "none" (TRL's name) keeps R - mean.
    A group whose rewards are all equal gets advantages exactly 0.
    """
    if not isinstance(rewards, Tensor) or not rewards.is_floating_point() or rewards.dim() == 0:
        raise TypeError(f"rewards: expected a floating-point tensor (B, ...), got {describe(rewards)}")
    if not (isinstance(group_size, int) and group_size >= 2):
        raise ValueError(f"group_size: expected an int >= 2 (a std needs two trajectories), got {group_size!r}")
    if rewards.shape[0] % group_size:
        raise ValueError(
            f"rewards: {rewards.shape[0]} rows are not whole groups of group_size={group_size} (shape "
            f"{tuple(rewards.shape)})"
        )
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards: expected one of {SCALE_REWARDS}, got {scale_rewards!r}")
    grouped = rewards.reshape(rewards.shape[0] // group_size, group_size, *rewards.shape[1:])
    centred = grouped - grouped.mean(1, keepdim=True)
    if scale_rewards == "group":
        centred = centred / (grouped.std(1, keepdim=True) + ADVANTAGE_EPS)
    return centred.reshape(rewards.shape)


def policy_log_prob(policy: StepPolicy, states: Tensor, draws: Tensor) -> Tensor:
    """log pi(y | s) = log Beta(y; alpha(s), beta(s)) (SPEC 6.2), differentiable in the policy's weights.

    The same density ``reference.sample_action`` reports for its draws.
    """
    alpha, beta = policy(states)
    return torch.distributions.Beta(alpha, beta, validate_args=False).log_prob(draws.to(alpha.dtype))


def beta_kl(alpha_p: Tensor, beta_p: Tensor, alpha_q: Tensor, beta_q: Tensor) -> Tensor:
    """KL(Beta(alpha_p, beta_p) || Beta(alpha_q, beta_q)) in closed form:

    ln B(a_q, b_q) - ln B(a_p, b_p) + (a_p - a_q) psi(a_p) + (b_p - b_q) psi(b_p)
        + (a_q - a_p + b_q - b_p) psi(a_p + b_p),   ln B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b)
    """

    def log_beta_fn(a: Tensor, b: Tensor) -> Tensor:
        return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)

    return (
        log_beta_fn(alpha_q, beta_q)
        - log_beta_fn(alpha_p, beta_p)
        + (alpha_p - alpha_q) * torch.digamma(alpha_p)
        + (beta_p - beta_q) * torch.digamma(beta_p)
        + (alpha_q - alpha_p + beta_q - beta_p) * torch.digamma(alpha_p + beta_p)
    )


def policy_grpo_loss(
    policy: StepPolicy,
    states: Tensor,
    draws: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    active: Tensor,
    *,
    epsilon: float = 0.2,
    beta: float = 0.0,
    ref_policy: StepPolicy | None = None,
    normalizer: int | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SPEC 6.2, the PPO-clip loss over the active (l, i), and its metrics.

        r = exp(log pi_theta(y|s) - log pi_old(y|s))
        L = -mean over active (l, i) of min(r A, clip(r, 1 - eps, 1 + eps) A)  [+ beta KL(pi_theta || pi_initial)]

    - states: (..., k+4), e.g. (B, T, N, k+4); draws, old_log_probs and active (bool): states.shape[:-1].
    - advantages: broadcastable to states.shape[:-1], e.g. (B, 1, N): one A per trajectory and token.
    - epsilon: the clip; beta (> 0 needs ``ref_policy``, the initial policy): the weight of the closed-form Beta
      KL per active entry, averaged the same way.
    - normalizer: replaces the count of active entries in both means (the global count when the entries are split
      over several calls or processes, so that the parts sum to the whole loss); default the local count (>= 1).

    Only the active entries are evaluated. Returns (loss, metrics): detached float tensors, means over the active
    entries (``ratio_metrics``), ``kl`` when a ref_policy is given, and ``num_active``.
    """
    advantages = _check_loss_inputs(
        policy, states, draws, old_log_probs, advantages, active, epsilon=epsilon, beta=beta, ref_policy=ref_policy
    )
    s, y, old = states[active], draws[active], old_log_probs[active]
    count = s.shape[0]
    denominator = float(max(count, 1) if normalizer is None else normalizer)
    alpha, beta_ = policy(s)
    law = torch.distributions.Beta(alpha, beta_, validate_args=False)
    ratio = probability_ratio(law.log_prob(y.to(alpha.dtype)), old)
    A = advantages[active].to(states.dtype).to(ratio.dtype)
    loss = -clipped_objective(ratio, A, epsilon).sum() / denominator
    metrics: dict[str, Tensor] = {}
    if ref_policy is not None:
        with torch.no_grad():
            alpha_ref, beta_ref = ref_policy(s)
        kl = beta_kl(alpha, beta_, alpha_ref, beta_ref)
        if beta > 0:
            loss = loss + beta * kl.sum() / denominator
        metrics["kl"] = _mean(kl.detach())
    metrics.update(ratio_metrics(law, ratio, A, epsilon))
    metrics["num_active"] = torch.tensor(float(count), device=states.device)
    return loss, metrics


def probability_ratio(log_prob: Tensor, old_log_probs: Tensor) -> Tensor:
    """SPEC 6.2: r = exp(log pi_theta(y|s) - log pi_old(y|s))."""
    return torch.exp(log_prob - old_log_probs.to(log_prob.dtype))


def clipped_objective(ratio: Tensor, advantages: Tensor, epsilon: float) -> Tensor:
    """SPEC 6.2, PPO's clipped surrogate per entry: min(r A, clip(r, 1 - eps, 1 + eps) A)."""
    return torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * advantages)


def ratio_metrics(law: torch.distributions.Beta, ratio: Tensor, advantages: Tensor, epsilon: float) -> dict:
    """The loss's metrics, means over the entries, detached, as TRL names them where it has the quantity.

    - clip_ratio/low_mean: r < 1 - eps with A < 0; clip_ratio/high_mean: r > 1 + eps with A > 0;
      clip_ratio/region_mean: either.
    - approx_kl: k3 = (r - 1) - log r.
    - entropy (of the Beta law), mu_mean (alpha / kappa), kappa_mean (kappa = alpha + beta), ratio_mean.
    """
    with torch.no_grad():
        low = (ratio < 1 - epsilon) & (advantages < 0)
        high = (ratio > 1 + epsilon) & (advantages > 0)
        kappa = law.concentration1 + law.concentration0
        values = {
            "clip_ratio/low_mean": low.to(ratio.dtype),
            "clip_ratio/high_mean": high.to(ratio.dtype),
            "clip_ratio/region_mean": (low | high).to(ratio.dtype),
            "approx_kl": (ratio - 1) - torch.log(ratio),
            "entropy": law.entropy(),
            "mu_mean": law.concentration1 / kappa,
            "kappa_mean": kappa,
            "ratio_mean": ratio,
        }
        return {name: _mean(value.detach()) for name, value in values.items()}


def _check_loss_inputs(
    policy, states, draws, old_log_probs, advantages, active, *, epsilon, beta, ref_policy
) -> Tensor:
    """policy_grpo_loss's arguments checked; returns ``advantages`` expanded to states.shape[:-1]."""
    if not isinstance(policy, StepPolicy):
        raise TypeError(f"policy: expected a mdfast.StepPolicy, got {type(policy).__name__}")
    if not isinstance(states, Tensor) or states.dim() < 2 or states.shape[-1] != policy.state_dim:
        raise ValueError(f"states: expected a tensor (..., {policy.state_dim}), got {describe(states)}")
    shape = tuple(states.shape[:-1])
    for name, value in (("draws", draws), ("old_log_probs", old_log_probs), ("active", active)):
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape} = states.shape[:-1], got {describe(value)}")
    if active.dtype != torch.bool:
        raise TypeError(f"active: expected a bool tensor, got {active.dtype}")
    if not isinstance(advantages, Tensor):
        raise TypeError(f"advantages: expected a tensor broadcastable to {shape}, got {describe(advantages)}")
    try:
        advantages = advantages.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"advantages: expected a shape broadcastable to {shape}, got {tuple(advantages.shape)}"
        ) from None
    if not epsilon >= 0:
        raise ValueError(f"epsilon: expected >= 0, got {epsilon}")
    if beta < 0 or (beta > 0 and ref_policy is None):
        raise ValueError(f"beta: expected 0, or > 0 with a ref_policy; got beta={beta}, ref_policy={ref_policy!r}")
    return advantages


def _mean(values: Tensor) -> Tensor:
    """The mean of a 1-d tensor, 0 for an empty one."""
    return values.float().sum() / max(values.numel(), 1)
