"""SPEC 6.2, the GRPO objective of the step policy: token rewards, group advantages, the clipped loss.

Everything here reads stored rollout tensors (the policy states s, the draws y, who was active);
nothing runs the model. The log-probabilities are those of y ~ Beta(alpha, beta): the action
a = a_min 2^(y L) is a fixed, invertible map of y, so its Jacobian cancels in every ratio.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import describe
from ..policy import StepPolicy

__all__ = ["beta_kl", "group_advantages", "policy_grpo_loss", "policy_log_prob", "token_rewards"]

ADVANTAGE_EPS = 1e-4  # SPEC 6.2: A = (R - mean) / (std + 1e-4)
SCALE_REWARDS = ("group", "none")


def token_rewards(task_rewards: Tensor, t_final: Tensor, lam: float) -> Tensor:
    """SPEC 6.2 (paper eq. 18): R_{g,i} = R_task_g + lambda * t_final_{g,i}, for task rewards (B,)
    and final progresses t_final (B, N); returns (B, N) in float32."""
    if not isinstance(task_rewards, Tensor) or task_rewards.dim() != 1:
        raise ValueError(f"task_rewards: expected a (B,) tensor, got {describe(task_rewards)}")
    if not isinstance(t_final, Tensor) or t_final.dim() != 2 or t_final.shape[0] != task_rewards.shape[0]:
        raise ValueError(f"t_final: expected a (B, N) tensor with B = {task_rewards.shape[0]}, got {describe(t_final)}")
    return task_rewards.float().unsqueeze(-1) + lam * t_final.float()


def group_advantages(rewards: Tensor, group_size: int, *, scale_rewards: str = "group") -> Tensor:
    """SPEC 6.2: A_{g,i} = (R_{g,i} - mean_g R_{.,i}) / (std_g R_{.,i} + 1e-4), over the G =
    ``group_size`` trajectories of one prompt at the same token position i.

    ``rewards`` (B, ...) holds B = (number of prompts) x G rows, a prompt's G trajectories
    consecutive (row b belongs to group b // G); every other dimension is a position i. std is
    torch's (unbiased, as TRL). ``scale_rewards="none"`` (TRL's name) keeps R - mean unscaled. A
    group whose rewards are all equal gets advantages exactly 0.
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
    """log pi(y | s) = log Beta(y; alpha(s), beta(s)) (SPEC 6.2), differentiable in the policy's
    weights; the same density ``reference.sample_action`` reports for its draws."""
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
    """SPEC 6.2, the PPO-clip loss over the active (l, i):

        r = exp(log pi_theta(y|s) - log pi_old(y|s))
        L = -mean over active (l, i) of min(r A, clip(r, 1 - eps, 1 + eps) A)  [+ beta KL(pi_theta || pi_initial)]

    states (..., k+4) (e.g. (B, T, N, k+4)); draws, old_log_probs and active (bool) of shape
    states.shape[:-1]; advantages broadcastable to it (e.g. (B, 1, N): one A per trajectory and
    token). Only the active entries are evaluated. The KL term (``beta`` > 0, against
    ``ref_policy``, the initial policy) is the closed-form Beta KL per active entry, averaged the
    same way. ``normalizer`` replaces the count of active entries in both means (the global count
    when the entries are split over several calls or processes, so that the parts sum to the whole
    loss); by default the local count (at least 1).

    Returns (loss, metrics): detached float tensors, means over the active entries, named as TRL
    names them where it has the quantity: ``clip_ratio/low_mean`` (r < 1 - eps with A < 0),
    ``clip_ratio/high_mean`` (r > 1 + eps with A > 0), ``clip_ratio/region_mean`` (either),
    ``approx_kl`` (k3 = (r - 1) - log r), ``kl`` (when a ref_policy is given), and ``entropy``
    (of the Beta law), ``mu_mean``, ``kappa_mean``, ``ratio_mean``, ``num_active``.
    """
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

    s, y, old, A = states[active], draws[active], old_log_probs[active], advantages[active].to(states.dtype)
    count = s.shape[0]
    denominator = float(max(count, 1) if normalizer is None else normalizer)
    alpha, beta_ = policy(s)
    law = torch.distributions.Beta(alpha, beta_, validate_args=False)
    log_prob = law.log_prob(y.to(alpha.dtype))
    ratio = torch.exp(log_prob - old.to(log_prob.dtype))
    A = A.to(ratio.dtype)
    objective = torch.minimum(ratio * A, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * A)
    loss = -objective.sum() / denominator
    metrics: dict[str, Tensor] = {}
    if ref_policy is not None:
        with torch.no_grad():
            alpha_ref, beta_ref = ref_policy(s)
        kl = beta_kl(alpha, beta_, alpha_ref, beta_ref)
        if beta > 0:
            loss = loss + beta * kl.sum() / denominator
        metrics["kl"] = kl.detach()

    with torch.no_grad():
        low = (ratio < 1 - epsilon) & (A < 0)
        high = (ratio > 1 + epsilon) & (A > 0)
        kappa = alpha + beta_
        metrics.update(
            {
                "clip_ratio/low_mean": low.to(ratio.dtype),
                "clip_ratio/high_mean": high.to(ratio.dtype),
                "clip_ratio/region_mean": (low | high).to(ratio.dtype),
                "approx_kl": (ratio - 1) - torch.log(ratio),
                "entropy": law.entropy(),
                "mu_mean": alpha / kappa,
                "kappa_mean": kappa,
                "ratio_mean": ratio,
            }
        )
        metrics = {name: _mean(value.detach()) for name, value in metrics.items()}
        metrics["num_active"] = torch.tensor(float(count), device=states.device)
    return loss, metrics


def _mean(values: Tensor) -> Tensor:
    """The mean of a 1-d tensor, 0 for an empty one."""
    return values.float().sum() / max(values.numel(), 1)
