"""What a GRPO step logs (SPEC 6.2, TRL's names where TRL has the quantity), gathered over every rank.

- rewards: reward, reward_std, frac_reward_zero_std, rewards/<func>/mean and /std.
- trajectories: completions/t_final_mean, completions/frac_t_below_commit, rollout/reedits_per_trajectory,
  rollout/hard_commits_per_trajectory, rollout/nfe, policy/log2_action_hist.
- the update: loss, grad_norm, clip_ratio/*, approx_kl, kl, policy/entropy, policy/mu_mean, policy/kappa_mean,
  policy/ratio_mean, policy/active_tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..config import FlowConfig
from . import distributed
from .rollouts import Rollouts

__all__ = ["HISTOGRAM_BINS", "LOSS_METRICS", "average", "log2_actions", "loss_metrics", "rollout_metrics"]

HISTOGRAM_BINS = 8
# Policy-loss metrics averaged over the active entries (weighted by their count across groups).
LOSS_METRICS = (
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "approx_kl",
    "entropy",
    "mu_mean",
    "kappa_mean",
    "ratio_mean",
)


def trajectory_table(groups: list[Rollouts], G: int, commit_threshold: float, device) -> Tensor:
    """(trajectories, 6): the trajectory counts rollout_metrics averages.

    Columns: t_final summed over the tokens, tokens below the commit threshold, tokens, re-edits, hard commits,
    model forwards.
    """
    rows = []
    for rollouts in groups:
        rows.append(
            torch.stack(
                [
                    rollouts.t_final.sum(1),
                    (rollouts.t_final < commit_threshold).sum(1).float(),
                    torch.full((G,), float(rollouts.t_final.shape[1]), device=device),
                    rollouts.reedited.sum((1, 2)).float(),
                    (rollouts.committed >= 0).sum(1).float(),
                    torch.full((G,), float(rollouts.nfe), device=device),
                ],
                dim=1,
            )
        )
    return torch.cat(rows)


def action_histogram(groups: list[Rollouts], device) -> list[int]:
    """Counts of the active draws y in HISTOGRAM_BINS equal bins of [0, 1] (log2 a is affine in y), all ranks."""
    hist = torch.zeros(HISTOGRAM_BINS, device=device)
    for rollouts in groups:
        y = rollouts.draws[rollouts.active]
        hist += torch.bincount((y * HISTOGRAM_BINS).long().clamp(0, HISTOGRAM_BINS - 1), minlength=HISTOGRAM_BINS)
    return [int(c) for c in distributed.all_reduce_sum(hist).tolist()]


def rollout_metrics(
    groups: list[Rollouts], per_func: Tensor, task: Tensor, reward_names: list[str], flow_config: FlowConfig
) -> dict:
    """The rewards' and trajectories' metrics over all ranks' trajectories.

    - groups: this rank's groups of G trajectories each.
    - per_func: (trajectories, functions) rewards, NaN where a function gave None; task: (trajectories,) their
      weighted sum.
    """
    G, device = groups[0].draws.shape[0], task.device
    trajectories = trajectory_table(groups, G, flow_config.commit_threshold, device)
    table = distributed.all_gather_rows(torch.cat([task.unsqueeze(1), per_func, trajectories], dim=1))
    functions = per_func.shape[1]
    task_all, per_func_all, trajectories = table[:, 0], table[:, 1 : 1 + functions], table[:, 1 + functions :]
    group_std = task_all.view(-1, G).std(1)
    out = {
        "reward": float(task_all.mean()),
        "reward_std": float(group_std.mean()),
        "frac_reward_zero_std": float(torch.isclose(group_std, torch.zeros_like(group_std)).float().mean()),
    }
    for j, name in enumerate(reward_names):
        values = per_func_all[:, j]
        values = values[~values.isnan()]
        out[f"rewards/{name}/mean"] = float(values.mean()) if values.numel() else math.nan
        out[f"rewards/{name}/std"] = float(values.std()) if values.numel() > 1 else math.nan
    tokens = float(trajectories[:, 2].sum())
    out["completions/t_final_mean"] = float(trajectories[:, 0].sum()) / tokens
    out["completions/frac_t_below_commit"] = float(trajectories[:, 1].sum()) / tokens
    out["rollout/reedits_per_trajectory"] = float(trajectories[:, 3].mean())
    out["rollout/hard_commits_per_trajectory"] = float(trajectories[:, 4].mean())
    out["rollout/nfe"] = float(trajectories[:, 5].mean())
    out["policy/log2_action_hist"] = action_histogram(groups, device)
    return out


def loss_metrics(sums: Tensor, names: list[str], epochs: int, grad_norms: list[float]) -> dict[str, float]:
    """The update's metrics from ``sums`` over every epoch, rank and group.

    - sums: [loss, active entries, each of ``names`` weighted by its group's active entries].
    - names: LOSS_METRICS, and "kl" when the run has a reference policy.
    """
    count = max(float(sums[1]), 1.0)
    out = {"loss": float(sums[0]) / epochs, "grad_norm": sum(grad_norms) / epochs}
    for i, name in enumerate(names, start=2):
        key = name if name.startswith(("clip_ratio", "approx_kl", "kl")) else f"policy/{name}"
        out[key] = float(sums[i]) / count
    out["policy/active_tokens"] = float(sums[1]) / epochs
    return out


def log2_actions(groups: list[Rollouts], flow_config: FlowConfig) -> Tensor:
    """log2 a of this rank's active draws: a = a_min 2^(y L), L = log2(a_max / a_min)."""
    y = torch.cat([rollouts.draws[rollouts.active] for rollouts in groups])
    return math.log2(flow_config.a_min) + y * math.log2(flow_config.a_max / flow_config.a_min)


def average(window: list[dict]) -> dict:
    """The logged steps' metrics: numbers averaged, lists (histogram counts) summed."""
    out = {}
    for name in window[-1]:
        values = [m[name] for m in window if name in m]
        if isinstance(values[0], list):
            out[name] = [sum(column) for column in zip(*values)]
        else:
            out[name] = sum(values) / len(values)
    return out
