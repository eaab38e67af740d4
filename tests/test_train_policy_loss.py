"""SPEC 6.2's objective (mdfast/train/policy_loss.py) against hand computations in float64."""

from __future__ import annotations

import math

import pytest
import torch

from mdfast import StepPolicy
from mdfast.train.policy_loss import (
    beta_kl,
    group_advantages,
    policy_grpo_loss,
    policy_log_prob,
    token_rewards,
)

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy's Beta density is the hand computation's oracle")


def random_policy(hidden=5):
    policy = StepPolicy(hidden)
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0, 0.7)
    return policy


def random_states(shape):
    """Valid-looking policy states [p(1..4), H_4, margin, t, rho] in float64."""
    p = torch.rand(*shape, 4, dtype=torch.float64).sort(-1, descending=True).values
    p = p / p.sum(-1, keepdim=True) * torch.rand(*shape, 1, dtype=torch.float64)
    rest = torch.rand(*shape, 4, dtype=torch.float64)
    return torch.cat([p, rest], -1)


def hand_alpha_beta(policy, s):
    """SPEC 2.4 written out for one state (a list of floats), in float64."""

    def silu(x):
        return x / (1 + math.exp(-x))

    def linear(layer, x):
        W, b = layer.weight.double().tolist(), layer.bias.double().tolist()
        return [sum(w * v for w, v in zip(row, x)) + bias for row, bias in zip(W, b)]

    h = [silu(v) for v in linear(policy.fc2, [silu(v) for v in linear(policy.fc1, s)])]
    mu = 0.05 + 0.9 / (1 + math.exp(-linear(policy.mu_head, h)[0]))
    kappa = policy.kappa_min + (policy.kappa_max - policy.kappa_min) / (1 + math.exp(-linear(policy.kappa_head, h)[0]))
    return mu * kappa, (1 - mu) * kappa


def test_grpo_loss_equals_the_hand_computation():
    policy = random_policy()
    states = random_states((3, 4))
    draws = torch.rand(3, 4, dtype=torch.float64) * 0.98 + 0.01
    old = torch.randn(3, 4, dtype=torch.float64) * 0.3 + policy_log_prob(policy, states, draws).detach()
    advantages = torch.randn(3, 1, dtype=torch.float64)
    active = torch.rand(3, 4) < 0.7
    active[0, 0] = True
    eps = 0.2

    loss, metrics = policy_grpo_loss(policy, states, draws, old, advantages, active, epsilon=eps)

    terms, clipped = [], 0
    for b in range(3):
        for i in range(4):
            if not active[b, i]:
                continue
            a, c = hand_alpha_beta(policy, states[b, i].tolist())
            log_p = scipy_stats.beta.logpdf(float(draws[b, i]), a, c)
            r = math.exp(log_p - float(old[b, i]))
            A = float(advantages[b, 0])
            terms.append(min(r * A, min(max(r, 1 - eps), 1 + eps) * A))
            clipped += (r < 1 - eps and A < 0) or (r > 1 + eps and A > 0)
    want = -sum(terms) / len(terms)
    assert loss.dtype == torch.float64
    assert abs(loss.item() - want) <= 1e-10 * (1 + abs(want))
    assert float(metrics["num_active"]) == len(terms)
    assert abs(float(metrics["clip_ratio/region_mean"]) - clipped / len(terms)) < 1e-6  # metrics are float32


def test_the_normalizer_splits_the_loss_into_parts_that_sum_to_the_whole():
    policy = random_policy()
    states = random_states((4, 6))
    draws = torch.rand(4, 6, dtype=torch.float64) * 0.98 + 0.01
    old = policy_log_prob(policy, states, draws).detach() + 0.1 * torch.randn(4, 6, dtype=torch.float64)
    advantages = torch.randn(4, 6, dtype=torch.float64)
    active = torch.rand(4, 6) < 0.6
    whole, _ = policy_grpo_loss(policy, states, draws, old, advantages, active)
    n = int(active.sum())
    parts = [
        policy_grpo_loss(policy, states[rows], draws[rows], old[rows], advantages[rows], active[rows], normalizer=n)[0]
        for rows in (slice(0, 1), slice(1, 4))
    ]
    assert abs(sum(parts).item() - whole.item()) < 1e-12


def test_ratio_is_one_when_old_log_probs_come_from_the_same_policy():
    policy = random_policy()
    states = random_states((5, 7)).float()
    draws = torch.rand(5, 7) * 0.98 + 0.01
    active = torch.rand(5, 7) < 0.8
    old = torch.zeros(5, 7)
    with torch.no_grad():
        old[active] = policy_log_prob(policy, states[active], draws[active])
    advantages = torch.randn(5, 1)
    loss, metrics = policy_grpo_loss(policy, states, draws, old, advantages, active)
    assert float(metrics["ratio_mean"]) == 1.0
    assert float(metrics["clip_ratio/region_mean"]) == 0.0
    assert float(metrics["approx_kl"]) == 0.0
    # with r = 1 the loss is -mean(A) and its gradient is the plain policy gradient -mean(A grad log pi)
    A = advantages.expand(5, 7)[active]
    assert torch.allclose(loss, -A.mean())
    grads = torch.autograd.grad(loss, list(policy.parameters()))
    plain = torch.autograd.grad(
        -(A * policy_log_prob(policy, states[active], draws[active])).mean(), list(policy.parameters())
    )
    for g, h in zip(grads, plain):
        assert torch.allclose(g, h, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("log_ratio", "sign", "clipped"),
    [
        (math.log(1.5), +1, True),  # r = 1.5 > 1 + eps with A > 0: clipped, no gradient
        (math.log(1.5), -1, False),  # r = 1.5 with A < 0: min picks r A, gradient flows
        (math.log(0.5), -1, True),  # r = 0.5 < 1 - eps with A < 0: clipped
        (math.log(0.5), +1, False),  # r = 0.5 with A > 0: r A
    ],
)
def test_clipping_acts_where_it_should(log_ratio, sign, clipped):
    policy = random_policy()
    states = random_states((3, 5)).float()
    draws = torch.rand(3, 5) * 0.98 + 0.01
    active = torch.ones(3, 5, dtype=torch.bool)
    with torch.no_grad():
        old = policy_log_prob(policy, states, draws) - log_ratio
    advantages = sign * (torch.rand(3, 1) + 0.5)
    loss, metrics = policy_grpo_loss(policy, states, draws, old, advantages, active, epsilon=0.2)
    grads = torch.autograd.grad(loss, list(policy.parameters()), allow_unused=True)
    norm = sum(float(g.abs().sum()) for g in grads if g is not None)
    r = math.exp(log_ratio)
    if clipped:
        assert norm == 0.0
        assert float(metrics["clip_ratio/region_mean"]) == 1.0
        assert float(metrics["clip_ratio/high_mean" if sign > 0 else "clip_ratio/low_mean"]) == 1.0
        want = -(min(max(r, 0.8), 1.2) * advantages.expand(3, 5)).mean()
    else:
        assert norm > 0.0
        assert float(metrics["clip_ratio/region_mean"]) == 0.0
        want = -(r * advantages.expand(3, 5)).mean()
    assert torch.allclose(loss, want, rtol=1e-5)


def test_beta_kl_matches_a_numerical_integral_and_torch():
    integrate = pytest.importorskip("scipy.integrate", reason="the KL integral is computed with scipy.quad")
    ap, bp, aq, bq = 2.5, 4.0, 1.7, 6.5
    got = float(beta_kl(*(torch.tensor(v, dtype=torch.float64) for v in (ap, bp, aq, bq))))

    def integrand(y):
        p, q = scipy_stats.beta.pdf(y, ap, bp), scipy_stats.beta.pdf(y, aq, bq)
        return p * math.log(p / q) if p > 0 else 0.0

    want, _ = integrate.quad(integrand, 0, 1, limit=200)
    assert abs(got - want) < 1e-8
    a = torch.rand(10, dtype=torch.float64) * 20 + 0.1
    b = torch.rand(10, dtype=torch.float64) * 20 + 0.1
    c = torch.rand(10, dtype=torch.float64) * 20 + 0.1
    d = torch.rand(10, dtype=torch.float64) * 20 + 0.1
    reference = torch.distributions.kl_divergence(torch.distributions.Beta(a, b), torch.distributions.Beta(c, d))
    assert torch.allclose(beta_kl(a, b, c, d), reference, rtol=1e-10, atol=1e-12)


def test_kl_term_is_added_with_weight_beta_and_zero_against_itself():
    policy = random_policy()
    ref = random_policy()
    states = random_states((2, 5))
    draws = torch.rand(2, 5, dtype=torch.float64) * 0.98 + 0.01
    active = torch.ones(2, 5, dtype=torch.bool)
    old = policy_log_prob(policy, states, draws).detach()
    A = torch.randn(2, 1, dtype=torch.float64)
    plain, _ = policy_grpo_loss(policy, states, draws, old, A, active)
    with_kl, metrics = policy_grpo_loss(policy, states, draws, old, A, active, beta=0.3, ref_policy=ref)
    alpha, beta = policy(states)
    alpha_ref, beta_ref = ref(states)
    kl = beta_kl(alpha, beta, alpha_ref, beta_ref).mean()
    assert torch.allclose(with_kl, plain + 0.3 * kl, rtol=1e-12)
    assert torch.allclose(metrics["kl"], kl.float(), rtol=1e-6)
    _, self_metrics = policy_grpo_loss(policy, states, draws, old, A, active, beta=0.3, ref_policy=policy)
    assert abs(float(self_metrics["kl"])) < 1e-12
    with pytest.raises(ValueError, match="beta"):
        policy_grpo_loss(policy, states, draws, old, A, active, beta=0.1)


def test_group_advantages_equal_the_hand_computation():
    G, N = 4, 3
    rewards = torch.randn(2 * G, N, dtype=torch.float64)
    got = group_advantages(rewards, G)
    for group in range(2):
        for i in range(N):
            column = [float(rewards[group * G + g, i]) for g in range(G)]
            mean = sum(column) / G
            std = math.sqrt(sum((v - mean) ** 2 for v in column) / (G - 1))
            for g in range(G):
                assert abs(float(got[group * G + g, i]) - (column[g] - mean) / (std + 1e-4)) < 1e-12
    unscaled = group_advantages(rewards, G, scale_rewards="none")
    assert torch.allclose(unscaled, rewards - rewards.view(2, G, N).mean(1, keepdim=True).expand(2, G, N).reshape(8, N))


def test_group_advantages_are_zero_for_a_group_with_equal_rewards():
    rewards = torch.cat([torch.full((4, 5), 0.7), torch.randn(4, 5)])
    A = group_advantages(rewards, 4)
    assert torch.equal(A[:4], torch.zeros(4, 5))
    assert bool((A[4:] != 0).any())


def test_token_rewards_add_lambda_t_final():
    task = torch.tensor([1.0, 0.0])
    t_final = torch.tensor([[1.0, 0.5], [0.25, 1.0]])
    assert torch.equal(token_rewards(task, t_final, 0.2), torch.tensor([[1.2, 1.1], [0.05, 0.2]]))


def test_bad_inputs_are_reported():
    policy = random_policy()
    states = random_states((2, 3)).float()
    y = torch.rand(2, 3)
    active = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="draws"):
        policy_grpo_loss(policy, states, y[:, :2], y, y, active)
    with pytest.raises(TypeError, match="active"):
        policy_grpo_loss(policy, states, y, y, y, active.float())
    with pytest.raises(ValueError, match="advantages"):
        policy_grpo_loss(policy, states, y, y, torch.zeros(5), active)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6, 2), 4)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6, 2), 1)
