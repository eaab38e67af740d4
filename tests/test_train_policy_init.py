"""GRPO's starting point fitted to SPEC 2's default policy (mdfast/train/policy_init.py)."""

from __future__ import annotations

import pytest
import torch

from mdfast import StepPolicy, reference
from mdfast.train.grpo import PolicyGRPOConfig
from mdfast.train.policy_init import default_policy_start, fit_default_policy

pytest.importorskip("transformers", reason="the start is fitted on rollouts of a tiny transformers BERT")
from checks import tiny_bert
from train_fixtures import MASK, prompt_ids


def random_states(n=512, seed=0):
    """Plausible policy states: sorted top-4 probabilities, their entropy and margin, t and rho in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    scale = 10 * torch.rand(n, 1, generator=g)  # from flat to peaked rows
    p = (scale * torch.rand(n, 5, generator=g)).softmax(-1)[:, :4].sort(-1, descending=True).values
    q = p / p.sum(-1, keepdim=True)
    entropy = -(q * q.log()).sum(-1, keepdim=True)
    margin = p[:, :1] - p[:, 1:2]
    return torch.cat([p, entropy, margin, torch.rand(n, 2, generator=g)], 1)


def log2_error(policy, states):
    alpha, beta = policy(states)
    action = reference.expected_action(alpha, beta, policy.a_min, policy.a_max)
    return torch.log2(action) - torch.log2(reference.heuristic_action(states[:, 0], policy.a_min, policy.a_max))


def test_the_fit_brings_the_mean_action_to_the_default_policy_and_reports_its_error():
    torch.manual_seed(0)
    policy, states = StepPolicy(16), random_states()
    fit = fit_default_policy(policy, states, steps=300, lr=1e-2)
    error = log2_error(policy, states).detach()
    assert fit.states == 512
    assert fit.rms_log2_before > 1.0  # a fresh policy acts nothing like the default
    assert fit.rms_log2_after == pytest.approx(float(error.pow(2).mean().sqrt()), rel=1e-5)
    assert fit.rms_log2_after < 0.25 * fit.rms_log2_before
    # the fitted policy follows the confidence: on fresh states its action rises with p(1)
    fresh = random_states(seed=1)
    alpha, beta = policy(fresh)
    action = reference.expected_action(alpha, beta, policy.a_min, policy.a_max).detach()
    low, high = fresh[:, 0] < 0.3, fresh[:, 0] > 0.6
    assert int(low.sum()) > 20 and int(high.sum()) > 20
    assert float(action[high].mean()) > 2 * float(action[low].mean())


def test_zero_steps_changes_nothing_and_bad_states_are_named():
    torch.manual_seed(0)
    policy = StepPolicy(8)
    before = [p.detach().clone() for p in policy.parameters()]
    fit = fit_default_policy(policy, random_states(16), steps=0)
    assert fit.rms_log2_before == fit.rms_log2_after
    assert all(torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    with pytest.raises(ValueError, match="states: expected a float tensor"):
        fit_default_policy(policy, torch.rand(4, 7))
    with pytest.raises(ValueError, match="all finite"):
        fit_default_policy(policy, torch.full((4, 8), float("nan")))
    with pytest.raises(TypeError, match=r"policy: expected a mdfast\.StepPolicy"):
        fit_default_policy(torch.nn.Linear(8, 1), random_states(4))


def test_the_start_from_rollouts_is_seeded_and_improves_round_by_round():
    model = tiny_bert()
    prompts = [torch.cat([torch.tensor(row), torch.full((6,), MASK)]) for row in prompt_ids(3, 0, lengths=(5,))]
    config = PolicyGRPOConfig(num_generations=2, budget=0.5, seed=3, backend="torch")
    policy, fits = default_policy_start(model, prompts, config, hidden=8, fit_steps=200, mask_token_id=MASK)
    again, fits_again = default_policy_start(model, prompts, config, hidden=8, fit_steps=200, mask_token_id=MASK)
    assert all(torch.equal(a, b) for a, b in zip(policy.parameters(), again.parameters()))
    assert fits == fits_again and len(fits) == 2
    assert fits[0].rms_log2_after < fits[0].rms_log2_before
    assert fits[1].rms_log2_before < fits[0].rms_log2_before  # the second round starts from the fitted policy
    assert fits[0].states > 0 and fits[1].states > 0
    with pytest.raises(TypeError, match=r"prompts\[0\]: expected a 1-D int64 tensor"):
        default_policy_start(model, [prompts[0][None]], config, mask_token_id=MASK)
