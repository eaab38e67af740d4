"""SPEC 6.2's rollout record (mdfast/train/rollouts.py): what it holds, and that it replays bitwise.

The replay drives ``mdfast.reference.xflow_step(..., action=)`` with the recorded draws; once
``mdfast.xflow_step`` takes a public ``action=`` the same test applies to it.
"""

from __future__ import annotations

import math

import pytest
import torch

from mdfast import StepPolicy, reference
from mdfast.models import adapt, release
from mdfast.train.policy_loss import policy_log_prob
from mdfast.train.rollouts import collect_rollouts

pytest.importorskip("transformers", reason="the tests decode with a tiny transformers BERT")
from checks import tiny_bert
from train_fixtures import MASK, prompt_ids

T_COLUMN = 6  # the state is [p(1..4), H_4, margin, t, rho]


def policy_with_spread(seed=0):
    """A policy whose draws spread over the whole action range (wider weights than the default)."""
    torch.manual_seed(seed)
    policy = StepPolicy(16)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(3.0)
    return policy


def suffix_inputs(batch=2, P=5, N=6, seed=0):
    ids = torch.tensor(prompt_ids(batch, seed, lengths=(P,)))
    return torch.cat([ids, torch.full((batch, N), MASK)], 1)


def rollouts(model, policy, ids, seed=1, **kwargs):
    options = {"num_generations": 3, "steps": 4, "mask_token_id": MASK, "backend": "torch", **kwargs}
    return collect_rollouts(model, policy, ids, generator=torch.Generator().manual_seed(seed), **options)


def test_the_record_has_the_shapes_and_meanings_of_spec_6_2():
    model, policy = tiny_bert(), policy_with_spread()
    ids = suffix_inputs()
    r = rollouts(model, policy, ids)
    B, T, N = 6, 4, 6
    assert r.states.shape == (B, T, N, 8) and r.draws.shape == (B, T, N) and r.active.shape == (B, T, N)
    assert r.t_final.shape == (B, N) and r.committed.shape == (B, T) and r.nfe == T
    assert torch.equal(r.input_ids, ids.repeat_interleave(3, 0))
    assert torch.equal(r.positions, torch.arange(5, 11).expand(B, N))
    assert torch.equal(r.sequences[:, :5], r.input_ids[:, :5])
    assert bool((r.completion_ids != MASK).all())
    # rho = l / (T - 1) in the last column; t = 0 everywhere at the first step
    assert torch.equal(r.states[..., 7], (torch.arange(T) / (T - 1)).view(1, T, 1).expand(B, T, N))
    assert bool((r.states[:, 0, :, T_COLUMN] == 0).all())
    # active = took the flow update: not re-edited and t (before the step) < 0.99
    assert torch.equal(r.active, ~r.reedited & (r.states[..., T_COLUMN] < 0.99))
    assert bool(((r.draws > 0) & (r.draws < 1)).all())
    # one hard commit per step while a token is open
    assert bool((r.committed >= 0).all())


def test_same_generator_same_record_and_recorded_log_probs_are_the_policys():
    model, policy = tiny_bert(), policy_with_spread()
    ids = suffix_inputs()
    a, b = rollouts(model, policy, ids, seed=7), rollouts(model, policy, ids, seed=7)
    for name in ("states", "draws", "log_probs", "active", "t_final", "sequences", "committed"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    c = rollouts(model, policy, ids, seed=8)
    assert not torch.equal(a.draws, c.draws)
    with torch.no_grad():
        recomputed = policy_log_prob(policy, a.states, a.draws)
    assert torch.allclose(recomputed, a.log_probs, rtol=1e-5, atol=1e-5)
    assert a.log_probs.grad_fn is None and not a.states.requires_grad


def test_replaying_the_recorded_draws_reproduces_the_trajectory_bitwise():
    """Feed each recorded y as the action a = a_min 2^(y L) to reference.xflow_step(action=): the
    states (hence every t), re-edits, commits, final tokens and t_final come out bitwise equal."""
    model, policy = tiny_bert(), policy_with_spread()
    P, N, T = 5, 6, 5
    ids = suffix_inputs(P=P, N=N)
    r = rollouts(model, policy, ids, steps=T)
    B = r.input_ids.shape[0]
    adapter = adapt(model, MASK)
    try:
        W = adapter.embedding.detach()
        m = W[MASK]
        X = m.float().expand(B, N, W.shape[1]).clone()
        t = torch.zeros(B, N)
        L = math.log2(policy.a_max / policy.a_min)
        with torch.no_grad():
            for l in range(T):
                inputs = adapter.embed(r.input_ids)
                inputs[:, P:] = X
                logits = adapter.logits(inputs, None, torch.arange(P, P + N).expand(B, N))
                stats = reference.token_stats(logits.float(), 4)
                rho = l / (T - 1)
                state = reference.policy_state(stats["topk_probs"], stats["entropy_topk"], stats["margin"], t, rho)
                assert torch.equal(state, r.states[:, l]), f"step {l}"
                action = policy.a_min * torch.exp2(r.draws[:, l] * L)
                out = reference.xflow_step(logits, X, t, W, m, policy, rho, action=action)
                assert torch.equal(out["reedited"], r.reedited[:, l])
                assert torch.equal(out["committed"], r.committed[:, l])
                X, t = out["X"], out["t"]
        assert torch.equal(out["tokens"], r.completion_ids)
        assert torch.equal(t, r.t_final)
    finally:
        release(adapter)


def test_blocks_record_only_the_current_blocks_tokens():
    model, policy = tiny_bert(), policy_with_spread()
    r = rollouts(model, policy, suffix_inputs(N=6), steps=4, block_length=4)  # blocks of 4 and 2 tokens
    assert not bool(r.active[:, :2, 4:].any()) and not bool(r.active[:, 2:, :4].any())
    assert bool((r.states[:, :2, 4:] == 0).all()) and bool((r.states[:, 2:, :4] == 0).all())
    assert bool((r.committed[:, :2] < 4).all()) and bool((r.committed[:, 2:] >= 4).all())
    assert torch.equal(r.states[:, :, :4, 7][:, :2], torch.tensor([0.0, 1.0]).view(1, 2, 1).expand(6, 2, 4))


def test_infilling_decodes_only_the_masked_positions():
    model, policy = tiny_bert(), policy_with_spread()
    template = torch.tensor([[7, 8, MASK, 9, MASK, MASK, 10, 11], [12, MASK, MASK, 13, 14, MASK, 15, 16]])
    r = rollouts(model, policy, template, num_generations=2, steps=3)
    assert torch.equal(r.positions, torch.tensor([[2, 4, 5]] * 2 + [[1, 2, 5]] * 2))
    kept = r.input_ids != MASK
    assert torch.equal(r.sequences[kept], r.input_ids[kept])
    with pytest.raises(ValueError, match="same number"):
        rollouts(model, policy, torch.tensor([[7, MASK, 8], [MASK, MASK, 9]]))
    with pytest.raises(ValueError, match="steps: expected at most 6 steps"):
        rollouts(model, policy, suffix_inputs(N=6), steps=7, block_length=4)


def test_suppressed_tokens_are_never_decoded_and_none_changes_nothing():
    model, policy = tiny_bert(), policy_with_spread()
    ids = suffix_inputs(N=6)
    free = rollouts(model, policy, ids)
    assert torch.equal(rollouts(model, policy, ids, suppress_tokens=None).completion_ids, free.completion_ids)
    decoded = sorted(set(free.completion_ids.flatten().tolist()))
    r = rollouts(model, policy, ids, suppress_tokens=decoded)
    assert not bool(torch.isin(r.completion_ids, torch.tensor(decoded)).any())
    with pytest.raises(TypeError, match="suppress_tokens"):
        rollouts(model, policy, ids, suppress_tokens=3)
