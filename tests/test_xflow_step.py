"""mdfast.xflow_step, every backend against the float64 reference (SPEC 2)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from checks import (
    BACKENDS,
    BACKENDS_SLOW_TRITON,
    RTOL,
    assert_bitwise_equal,
    assert_close,
    check_step,
    make_state,
    random_policy,
    reference_step,
    require_backend,
    require_size,
)

import mdfast
from mdfast import FlowConfig, StepPolicy, backends, op_checks, ops


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("with_policy", [False, True], ids=["heuristic", "policy"])
@pytest.mark.parametrize(
    "B, N, V, E",
    [(1, 1, 111, 8), (3, 7, 111, 16), (2, 99, 32000, 64), (1, 512, 32000, 128), (1, 7, 126464, 32), (8, 64, 4099, 40)],
)
def test_matches_reference(backend, with_policy, B, N, V, E):
    device = require_backend(backend)
    require_size(backend, B * N * V)
    config = FlowConfig()
    policy = random_policy().to(device) if with_policy else None
    logits, X, t, embedding, m = make_state(B, N, V, E, device=device)
    rho = torch.rand(B, device=device)
    X_before = X.clone()
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, config=config, backend=backend)
    want = reference_step(logits, X, t, embedding, m, policy, rho, config)
    check_step(out, want, X_before, embedding, RTOL[torch.float32])
    assert torch.equal(X, X_before), "inplace=False must leave X untouched"
    if N >= 7:
        assert bool(out.reedited.any()) and bool((~out.reedited).any()), "the test data should exercise both branches"


@pytest.mark.parametrize("backend", BACKENDS_SLOW_TRITON)
@pytest.mark.parametrize(
    "logits_dtype, emb_dtype",
    [(torch.bfloat16, torch.bfloat16), (torch.float16, torch.float32), (torch.float32, torch.bfloat16)],
    ids=str,
)
def test_low_precision_inputs(backend, logits_dtype, emb_dtype):
    device = require_backend(backend)
    logits, X, t, embedding, m = make_state(
        2, 37, 1500, 24, device=device, logits_dtype=logits_dtype, emb_dtype=emb_dtype
    )
    policy = random_policy().to(device)
    X_before = X.clone()
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, 0.4, backend=backend)
    want = reference_step(logits, X, t, embedding, m, policy, 0.4, FlowConfig())
    check_step(out, want, X_before, embedding, RTOL[logits_dtype])


@pytest.mark.parametrize("backend", BACKENDS)
def test_inplace_strided_logits_and_config(backend):
    """Writes into X and t; logits rows strided; another a_min/a_max, margin, threshold and k."""
    device = require_backend(backend)
    config = FlowConfig(a_min=1e-3, a_max=0.5, reedit_margin=0.05, commit_threshold=0.9, k=6)
    policy = random_policy(k=6, hidden=24, a_min=1e-3, a_max=0.5, kappa_min=1.0, kappa_max=40.0).to(device)
    wide, X, t, embedding, m = make_state(2, 40, 700, 12, device=device)
    logits = wide[:, ::2, :650]
    embedding = embedding[:650]
    X_before, t_before = X[:, ::2].clone(), t[:, ::2].clone()
    X, t = X_before.clone(), t_before.clone()
    want = reference_step(logits, X, t, embedding, m, policy, 0.7, config)
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, 0.7, config=config, inplace=True, backend=backend)
    assert out.X.data_ptr() == X.data_ptr() and out.t.data_ptr() == t.data_ptr()
    check_step(out, want, X_before, embedding, RTOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampling_draws_like_the_reference(backend):
    """sample=True: the same generator seed gives the reference's draws (on the CPU, where the float64
    reference draws with the CPU generator; on a GPU, the torch backend's draws on the same device
    with the same seed), the step applies them as the float64 reference does, log pi(y) is the
    reference's, and it carries gradients to the policy's weights."""
    device = require_backend(backend)
    policy = random_policy().to(device)
    logits, X, t, embedding, m = make_state(2, 30, 900, 16, device=device)
    X_before = X.clone()

    def sampled(name):
        generator = torch.Generator(device).manual_seed(7)
        return mdfast.xflow_step(
            logits, X, t, embedding, m, policy, 0.25, sample=True, generator=generator, backend=name
        )

    out = sampled(backend)
    if device == "cpu":  # the reference draws in float64 with the same CPU generator
        cpu = torch.Generator().manual_seed(7)
        drawn = reference_step(logits, X, t, embedding, m, policy, 0.25, FlowConfig(), sample=True, generator=cpu)
    else:  # CUDA draws differ from CPU draws: the torch backend's, on the same device with the same seed
        torch_out = sampled("torch")
        drawn = {"action": torch_out.action, "log_prob": torch_out.log_prob}
    assert_close("drawn action", out.action, drawn["action"], RTOL[torch.float32])
    assert_close("log_prob", out.log_prob, drawn["log_prob"], 1e-4, scale=1.0)
    want = reference_step(logits, X, t, embedding, m, policy, 0.25, FlowConfig(), action=out.action.double().cpu())
    check_step(out, want, X_before, embedding, RTOL[torch.float32])
    out.log_prob.sum().backward()
    assert policy.fc1.weight.grad is not None and bool(policy.fc1.weight.grad.abs().sum() > 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_sampled_step_replays_from_its_action(backend):
    """sample=True returns the policy state s and the draws y it sampled from (SPEC 2.3, 2.5: what a
    policy-gradient update recomputes log pi(y | s) from); passing the step's ``action`` back on the
    same inputs, with no policy, reproduces that step bit for bit (a recorded trajectory replays)."""
    device = require_backend(backend)
    policy = random_policy().to(device)
    logits, X, t, embedding, m = make_state(2, 11, 300, 8, device=device)
    rho = torch.tensor([0.0, 0.6], device=device)
    generator = torch.Generator(device).manual_seed(5)
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, sample=True, generator=generator, backend=backend)
    stats = mdfast.token_stats(logits, 4, backend=backend)
    assert_bitwise_equal(
        "state", out.state, ops.reference.policy_state(stats.topk_probs, stats.entropy_topk, stats.margin, t, rho)
    )
    assert out.draw.shape == (2, 11) and bool(((out.draw >= 0) & (out.draw <= 1)).all())
    assert_bitwise_equal("action", out.action, ops.reference.draw_action(out.draw, 1 / 256, 1.0).float())
    alpha, beta = policy(out.state)
    assert_bitwise_equal("log_prob", out.log_prob, ops.reference.draw_log_prob(alpha, beta, out.draw))
    again = mdfast.xflow_step(logits, X, t, embedding, m, None, rho, action=out.action, backend=backend)
    for name in ("X", "t", "tokens", "confidence", "action", "reedited", "committed", "lse"):
        assert_bitwise_equal(name, getattr(again, name), getattr(out, name))
    assert again.state is None and again.draw is None and again.log_prob is None


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_a_step_from_given_statistics_does_not_read_the_logits(backend):
    """sample=True reads the logits once: the backend's step starts from the statistics ops computed
    (x_pred, p(1), lse) and the drawn action. Given them, the step must not depend on the logits."""
    device = require_backend(backend)
    logits, X, t, embedding, m = make_state(2, 20, 700, 12, device=device)
    stats = mdfast.token_stats(logits, 4, backend=backend)
    action = torch.rand(2, 20, device=device) * 0.5 + 1 / 256
    given = backends.GivenStats(stats.argmax, stats.topk_probs[..., 0].contiguous(), stats.lse)
    garbage = torch.full_like(logits, math.nan)  # would poison every row, were it read
    X_out, t_out = torch.empty_like(X), torch.empty_like(t)
    scalars = backends.StepScalars(1 / 256, 1.0, 0.1, 0.99, 4, FlowConfig().kummer_terms)
    rho = torch.zeros(2, device=device)
    impl = backends.get(backend)
    inputs = backends.StepInputs(garbage, X, t, embedding, m, rho, None, action, given, None, X_out, t_out, scalars)
    out = impl.xflow_step(inputs)
    want = reference_step(logits, X, t, embedding, m, None, 0.0, FlowConfig(), action=action.double().cpu())
    for name, value in (("X", X_out), ("t", t_out)):
        out[name] = value
    check_step(SimpleNamespace(**out), want, X, embedding, RTOL[torch.float32])


@pytest.mark.parametrize("backend", BACKENDS_SLOW_TRITON)
@pytest.mark.parametrize("with_policy", [False, True], ids=["heuristic", "policy"])
def test_runs_are_bitwise_equal(backend, with_policy):
    device = require_backend(backend)
    policy = random_policy().to(device) if with_policy else None
    logits, X, t, embedding, m = make_state(3, 45, 2000, 33, device=device)
    first = mdfast.xflow_step(logits, X, t, embedding, m, policy, 0.5, backend=backend)
    second = mdfast.xflow_step(logits, X, t, embedding, m, policy, 0.5, backend=backend)
    for name in ("X", "t", "tokens", "confidence", "action", "reedited", "committed"):
        assert_bitwise_equal(name, getattr(first, name), getattr(second, name))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_logits_write_nothing(backend):
    device = require_backend(backend)
    logits, X, t, embedding, m = make_state(2, 9, 300, 8, device=device)
    logits[0, 4, 100] = math.nan
    X_before, t_before = X.clone(), t.clone()
    with pytest.raises(
        ValueError, match=r"logits: 1 row\(s\) are not a finite distribution.*\(0, 4\).*no state was written"
    ):
        mdfast.xflow_step(logits, X, t, embedding, m, inplace=True, backend=backend)
    assert torch.equal(X, X_before) and torch.equal(t, t_before)
    mdfast.xflow_step(logits, X, t, embedding, m, inplace=True, backend=backend, check_finite=False)
    assert torch.equal(X, X_before) and torch.equal(t, t_before)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "spoil, message",
    [
        pytest.param(
            lambda s: s.update(rho=torch.tensor([0.5, math.nan])), r"rho: expected values in \[0, 1\]", id="rho-nan"
        ),
        pytest.param(lambda s: s.update(rho=torch.tensor(-3.0)), r"rho: expected values in \[0, 1\]", id="rho=-3"),
        pytest.param(
            lambda s: s["t"].__setitem__((1, 2), math.nan), r"t: expected token progress in \[0, 1\]", id="t-nan"
        ),
        pytest.param(lambda s: s["t"].__setitem__((0, 0), -1.0), r"t: expected token progress in \[0, 1\]", id="t=-1"),
        pytest.param(lambda s: s["t"].__setitem__((0, 3), 5.0), r"t: expected token progress in \[0, 1\]", id="t=5"),
        pytest.param(lambda s: s["X"].__setitem__((1, 4, 2), math.inf), "X: holds a NaN or infinite entry", id="X-inf"),
        pytest.param(lambda s: s["embedding"].__setitem__((7, 1), math.nan), "embedding: holds a NaN", id="table-nan"),
        pytest.param(
            lambda s: s["mask_embedding"].__setitem__(0, -math.inf), "mask_embedding: holds a NaN", id="mask-inf"
        ),
        pytest.param(
            lambda s: s.update(action=torch.full((2, 9), 2.0, device=s["t"].device), policy=None, sample=False),
            r"action: expected step sizes in \[a_min, a_max\]",
            id="action=2",
        ),
    ],
)
@pytest.mark.parametrize("sample", [False, True], ids=["mean", "sampled"])
def test_bad_values_are_named_and_write_nothing(backend, spoil, message, sample):
    """NaN, inf or out-of-range values in rho, t, X or the embeddings: the same named ValueError on
    every backend (not NaN actions, not a Kummer series that "did not converge"), no state written."""
    device = require_backend(backend)
    logits, X, t, embedding, m = make_state(2, 9, 300, 8, device=device)
    state = dict(X=X, t=t, embedding=embedding, mask_embedding=m, rho=torch.full((2,), 0.3, device=device))
    spoil(state)
    X_before, t_before = state["X"].clone(), state["t"].clone()
    call = dict(policy=random_policy().to(device), sample=sample)
    call.update({name: state.pop(name) for name in ("policy", "sample", "action") if name in state})
    generator = torch.Generator(device).manual_seed(1) if call["sample"] else None
    with pytest.raises(ValueError, match=message + ".*no state was written"):
        mdfast.xflow_step(logits, **state, **call, generator=generator, inplace=True, backend=backend)
    assert bool((state["X"] == X_before).logical_or(state["X"].isnan() & X_before.isnan()).all())
    assert bool((state["t"] == t_before).logical_or(state["t"].isnan() & t_before.isnan()).all())


def test_a_finite_embedding_table_is_checked_once_per_version():
    logits, X, t, embedding, m = make_state(1, 5, 60, 4, device="cpu")
    assert not op_checks.finite_tables.known(embedding)
    mdfast.xflow_step(logits, X, t, embedding, m, backend="torch")
    assert op_checks.finite_tables.known(embedding) and op_checks.finite_tables.known(embedding.detach())
    with torch.no_grad():
        embedding[3, 1] = math.nan  # an in-place change: a new version, checked again
    assert not op_checks.finite_tables.known(embedding)
    with pytest.raises(ValueError, match="embedding: holds a NaN"):
        mdfast.xflow_step(logits, X, t, embedding, m, backend="torch")
    assert not op_checks.finite_tables.known(torch.randn(60, 4)), "another table is not known"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_check_finite_false_never_synchronises(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.set_sync_debug_mode)")
    device = require_backend(backend)
    logits, X, t, embedding, m = make_state(2, 64, 4099, 32, device=device)
    policy = random_policy().to(device)
    rho = torch.full((2,), 0.5, device=device)
    mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, backend=backend, check_finite=False)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, backend=backend, check_finite=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize(
    "mode, launches", [("heuristic", 2), ("policy", 3), ("sampled", 2)], ids=["heuristic", "policy", "sampled"]
)
def test_a_triton_step_is_few_launches_on_one_allocation(mode, launches, monkeypatch):
    """Host-bound at B = 1 outside a CUDA graph, an eager Triton step launches the statistics pass with
    the per-row step in its epilogue (unless the statistics are given), the policy's kernel (with a
    policy, or given statistics) and one commit-and-update kernel; all of it on one workspace."""
    device = require_backend("triton")
    import mdfast.triton_kernels.xflow_step as step_module
    from mdfast.triton_kernels import workspace

    logits, X, t, embedding, m = make_state(1, 20, 500, 8, device=device)
    policy = random_policy().to(device) if mode != "heuristic" else None
    generator = torch.Generator(device).manual_seed(3) if mode == "sampled" else None
    run = type(step_module._commit_update_kernel).run
    seen, carved = [], []
    monkeypatch.setattr(
        type(step_module._commit_update_kernel),
        "run",
        lambda self, *args, **kwargs: seen.append(self.__name__) or run(self, *args, **kwargs),
    )
    carve = workspace.carve
    monkeypatch.setattr(step_module, "carve", lambda *specs: carved.append(len(specs)) or carve(*specs))
    impl = backends.get("triton")
    step = impl.xflow_step
    monkeypatch.setattr(impl, "xflow_step", lambda *args: seen.clear() or step(*args))  # count the step alone
    mdfast.xflow_step(
        logits, X, t, embedding, m, policy, 0.5, sample=mode == "sampled", generator=generator, backend="triton"
    )
    assert len(seen) == launches and seen[-1] == "_commit_update_kernel", seen
    assert len(carved) == 1, "one allocation for every intermediate and output"


def test_empty_response_is_a_no_op():
    X, t = torch.randn(2, 0, 8), torch.rand(2, 0)
    out = mdfast.xflow_step(torch.randn(2, 0, 50), X, t, torch.randn(50, 8), torch.randn(8), inplace=True)
    assert out.X is X and out.committed.tolist() == [-1, -1] and out.tokens.shape == (2, 0)


def _valid():
    return dict(
        logits=torch.randn(2, 5, 40),
        X=torch.randn(2, 5, 6),
        t=torch.rand(2, 5),
        embedding=torch.randn(40, 6),
        mask_embedding=torch.randn(6),
    )


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(logits=torch.randn(5, 40)), ValueError, "logits: expected a 3-d tensor"),
        (dict(logits=torch.randint(0, 3, (2, 5, 40))), TypeError, "logits: expected a floating-point tensor"),
        (dict(X=torch.randn(2, 5, 6, dtype=torch.float64)), TypeError, "X: expected dtype torch.float32"),
        (dict(X=torch.randn(2, 4, 6)), ValueError, r"X: expected shape \(2, 5, 6\)"),
        (dict(t=torch.rand(2, 5).half()), TypeError, "t: expected dtype torch.float32"),
        (dict(t=torch.rand(5)), ValueError, "t: expected a 2-d tensor"),
        (dict(embedding=torch.randn(41, 6)), ValueError, r"embedding: expected shape \(40, 6\) = \(V, E\)"),
        (dict(embedding=torch.randn(40, 7)), ValueError, r"embedding: expected shape \(40, 6\)"),
        (dict(mask_embedding=torch.randn(7)), ValueError, r"mask_embedding: expected shape \(6,\)"),
        (dict(X=torch.randn(2, 5, 6, device="meta")), ValueError, "X: expected a tensor on cpu"),
        (dict(rho=torch.rand(3)), ValueError, r"rho: expected a number or a tensor of shape \(\) or \(2,\)"),
        (dict(rho="0.5"), TypeError, "rho: expected a number or a tensor"),
        (dict(rho=math.nan), ValueError, r"rho: expected a number in \[0, 1\]"),
        (dict(rho=-3.0), ValueError, r"rho: expected a number in \[0, 1\]"),
        (dict(rho=math.inf, check_finite=False), ValueError, r"rho: expected a number in \[0, 1\]"),
        (dict(sample=True), ValueError, "sample=True needs a policy"),
        (dict(generator=torch.Generator()), ValueError, "generator: only used with sample=True"),
        (dict(action=torch.rand(2, 5).double()), TypeError, "action: expected dtype torch.float32"),
        (dict(action=torch.rand(2, 4)), ValueError, r"action: expected shape \(2, 5\)"),
        (dict(action=torch.rand(2, 5), policy=StepPolicy()), ValueError, "action: a given step size replaces"),
        (dict(policy=torch.nn.Linear(8, 2)), TypeError, "policy: expected a mdfast.StepPolicy"),
        (dict(policy=StepPolicy(a_min=0.01)), ValueError, "policy: trained with k=4, a_min=0.01"),
        (dict(policy=StepPolicy().to("meta")), ValueError, "policy: expected its weights on cpu"),
        (dict(config=dict(a_min=0.1)), TypeError, "config: expected a FlowConfig"),
        (
            dict(X=torch.randn(2, 6, 5).transpose(1, 2), inplace=True),
            ValueError,
            "inplace=True needs contiguous X and t",
        ),
    ],
)
def test_bad_input_is_named(change, error, message):
    args = {**_valid(), **change}
    with pytest.raises(error, match=message):
        mdfast.xflow_step(**args)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(a_min=0.0), "a_min"),
        (dict(a_min=0.5, a_max=0.4), "a_min"),
        (dict(a_max=1.5), "a_max"),
        (dict(reedit_margin=-0.1), "reedit_margin"),
        (dict(commit_threshold=0.0), "commit_threshold"),
        (dict(k=1), "k must be"),
    ],
)
def test_flow_config_checks_itself(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlowConfig(**kwargs)
