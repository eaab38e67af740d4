"""mdfast.StepPolicy: the SPEC 2.4 network, its actions, and its file format."""

from __future__ import annotations

import math

import pytest
import torch
from checks import assert_close

from mdfast import StepPolicy, reference


def test_layers_and_law():
    policy = StepPolicy(hidden=16, kappa_min=3.0, kappa_max=50.0)
    assert (policy.fc1.in_features, policy.fc1.out_features) == (8, 16)
    assert (
        policy.fc2.in_features,
        policy.fc2.out_features,
        policy.mu_head.out_features,
        policy.kappa_head.out_features,
    ) == (16, 16, 1, 1)
    state = torch.rand(5, 3, 8)
    alpha, beta = policy(state)
    assert alpha.shape == beta.shape == (5, 3)
    kappa, mu = alpha + beta, alpha / (alpha + beta)
    assert bool(((kappa >= 3.0) & (kappa <= 50.0)).all()) and bool(((mu >= 0.05) & (mu <= 0.95)).all())
    # SPEC 2.4 by hand: h = SiLU(W2 SiLU(W1 s + b1) + b2), mu = 0.05 + 0.9 sigmoid(.),
    # kappa = kmin + (kmax - kmin) sigmoid(.)
    silu = torch.nn.functional.silu
    h = silu(silu(state @ policy.fc1.weight.T + policy.fc1.bias) @ policy.fc2.weight.T + policy.fc2.bias)
    mu_want = 0.05 + 0.9 * torch.sigmoid(h @ policy.mu_head.weight.T + policy.mu_head.bias).squeeze(-1)
    kappa_want = 3.0 + 47.0 * torch.sigmoid(h @ policy.kappa_head.weight.T + policy.kappa_head.bias).squeeze(-1)
    assert_close("alpha", alpha, mu_want * kappa_want, 1e-5)
    assert_close("beta", beta, (1 - mu_want) * kappa_want, 1e-5)


def test_expected_action_is_the_mean_of_sampled_actions():
    policy = StepPolicy()
    state = torch.rand(1, 8).expand(40000, 8)
    a, log_prob = policy.sample(state, torch.Generator().manual_seed(3))
    mean = policy.expected_action(state[:1])
    assert 1 / 256 <= mean.item() <= 1.0
    assert abs(a.mean().item() - mean.item()) < 4 * a.std().item() / math.sqrt(a.numel())
    assert log_prob.requires_grad and not a.requires_grad
    again, _ = policy.sample(state, torch.Generator().manual_seed(3))
    assert torch.equal(a, again)


def test_float64_state_evaluates_in_float64():
    policy = StepPolicy()
    alpha, _ = policy(torch.rand(4, 8, dtype=torch.float64))
    assert alpha.dtype == torch.float64


def test_save_and_load_round_trip(tmp_path):
    policy = StepPolicy(hidden=12, k=6, kappa_min=1.5, kappa_max=80.0, a_min=1e-3, a_max=0.5)
    path = tmp_path / "policy.safetensors"
    policy.save(path)
    loaded = StepPolicy.load(path)
    assert loaded.constants() == policy.constants()
    for (name, p), (_, q) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), name
    state = torch.rand(7, 10)
    assert torch.equal(loaded.expected_action(state), policy.expected_action(state))
    raw = path.read_bytes()
    assert b"pickle" not in raw and b"__reduce__" not in raw


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not a StepPolicy file"):
        StepPolicy.load(path)


def test_packed_weights_follow_the_kernel_layout():
    """[W1 (d, k+4), b1, W2 (d, d), b2, w_mu, w_kappa, b_mu, b_kappa]: unpack and evaluate SPEC 2.4."""
    policy = StepPolicy(hidden=5)
    flat = policy.packed_weights(torch.device("cpu"))
    d, s = 5, 8
    sizes = [d * s, d, d * d, d, d, d, 1, 1]
    W1, b1, W2, b2, w_mu, w_k, b_mu, b_k = torch.split(flat, sizes)
    state = torch.rand(3, 8)
    h = torch.nn.functional.silu(torch.nn.functional.silu(state @ W1.view(d, s).T + b1) @ W2.view(d, d).T + b2)
    mu = 0.05 + 0.9 * torch.sigmoid(h @ w_mu + b_mu)
    kappa = 2.0 + 98.0 * torch.sigmoid(h @ w_k + b_k)
    alpha, beta = policy(state)
    assert_close("alpha", alpha, mu * kappa, 1e-6)
    assert_close("beta", beta, (1 - mu) * kappa, 1e-6)
    layout = policy.layout  # the offsets csrc/ops.h's PolicyView computes too
    assert (layout.b1, layout.W2, layout.b2, layout.w_mu, layout.w_kappa) == (40, 45, 70, 75, 80)
    assert (layout.b_mu, layout.b_kappa, layout.size) == (85, 86, flat.numel())
    alpha_unpacked, beta_unpacked = reference.step_policy(layout.unpack(flat, 2.0, 100.0), state)
    assert torch.equal(alpha_unpacked, alpha) and torch.equal(beta_unpacked, beta)
    assert policy.packed_weights(torch.device("cpu"), torch.float64).dtype == torch.float64
    assert policy.packed_weights(torch.device("cpu")) is flat, "cached while the weights are unchanged"
    with torch.no_grad():
        policy.fc2.bias.add_(1.0)
    assert not torch.equal(policy.packed_weights(torch.device("cpu")), flat), "an in-place update refreshes the cache"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden=0), "hidden"),
        (dict(k=9), "k must be"),
        (dict(kappa_min=5.0, kappa_max=2.0), "kappa_min"),
        (dict(a_min=2.0), "a_min"),
    ],
)
def test_bad_constants(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StepPolicy(**kwargs)


def test_bad_state():
    with pytest.raises(ValueError, match=r"state: expected shape \(\.\.\., 8\)"):
        StepPolicy()(torch.rand(3, 7))
    with pytest.raises(TypeError, match="state: expected a floating-point tensor"):
        StepPolicy()(torch.ones(3, 8, dtype=torch.int64))


def test_reference_policy_is_differentiable():
    policy = StepPolicy()
    alpha, beta = reference.step_policy(policy, torch.rand(4, 8))
    (alpha.sum() + beta.sum()).backward()
    assert policy.fc1.weight.grad is not None
