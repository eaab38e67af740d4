"""Property-based tests of ``mdfast.token_stats`` and ``mdfast.xflow_step`` (SPEC 1, 2) on every backend.

Hypothesis draws the structure of a case (B, N, V with V < 4, V = 1 and V across the C++ kernel's
64-element slices and 4096-element tiles, k, the logits dtype, the layout: contiguous, a slice of a
wider tensor, a transposed (non-dense) last dimension, other leading dims) and which rows are
special (all -inf, a NaN or +inf entry, huge or tiny logits, exact ties, -inf entries, fewer finite
entries than k); the bulk values come from a torch generator seeded by a drawn integer. Each case
either matches ``mdfast.reference`` in float64 within DEVELOPERS.md's tolerance table (ids and
flags exactly; two runs bitwise equal) or raises the ValueError the op documents: k > V, or rows
that are not a finite distribution (with ``check_finite=False`` those rows show a non-finite lse and
``xflow_step`` writes no state). The hypothesis profile (tests/conftest.py) sets the example count:
``HYPOTHESIS_PROFILE=long`` for many.
"""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch
from checks import (
    RTOL,
    assert_close,
    assert_equal,
    check_step,
    random_policy,
    reference_step,
    reference_token_stats,
)
from hypothesis import given
from hypothesis import strategies as st

import mdfast
from mdfast import FlowConfig, backends

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["torch", "cpu", "triton", "cuda"]
# V at and beside the C++ kernel's boundaries (lanes of 16 and 32, slices of 64, runs of 256, tiles of 4096).
EDGE_V = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 4211]
ROW_KINDS = ["huge", "tiny", "ties", "constant", "some -inf", "few finite", "nan", "+inf", "all -inf"]
NOT_FINITE = {"nan", "+inf", "all -inf"}


def device_of(name: str) -> str:
    """Skip (saying why) where the backend cannot run a property run; the device of its inputs."""
    if name in ("triton", "cuda") and not torch.cuda.is_available():
        pytest.skip(
            f"backend {name!r} needs a CUDA device for property runs (the Triton interpreter is too slow for "
            "them; tests/test_token_stats.py and tests/test_xflow_step.py run it at fixed shapes)"
        )
    reason = backends.get(name).unavailable_reason()
    if reason is not None:
        if torch.cuda.is_available() and name in ("triton", "cuda"):
            pytest.fail(f"backend {name!r} does not load on this machine with CUDA: {reason}")
        pytest.skip(f"backend {name!r} unavailable here (the C++ extension builds just in time): {reason}")
    return "cuda" if name in ("triton", "cuda") else "cpu"


def fill_row(row: torch.Tensor, kind: str, dtype: torch.dtype, g: torch.Generator) -> None:
    """Make one float32 logits row (V,) of the given special ``kind`` in place, values representable in ``dtype``."""
    V = row.shape[0]
    big = torch.finfo(dtype).max * 0.99
    if kind == "huge":  # logits near the dtype's largest finite value, both signs
        row.copy_((torch.rand(V, generator=g) * 2 - 1) * big)
    elif kind == "tiny":  # denormal-sized logits: a near-uniform distribution
        row.copy_(torch.randn(V, generator=g) * 1e-30)
    elif kind == "ties":  # small integers: many exact ties
        row.copy_(torch.randint(-2, 3, (V,), generator=g).float())
    elif kind == "constant":
        row.fill_(1.5)
    elif kind == "some -inf":
        row[torch.rand(V, generator=g) < 0.5] = -math.inf
        row[int(torch.randint(V, (), generator=g))] = 0.25  # at least one finite entry
    elif kind == "few finite":  # fewer finite entries than k (at most 2)
        keep = row[: min(2, V)].clone()
        row.fill_(-math.inf)
        row[torch.randint(V, (keep.numel(),), generator=g)] = keep
    elif kind == "all -inf":
        row.fill_(-math.inf)
    else:  # "nan" / "+inf": one such entry
        row[int(torch.randint(V, (), generator=g))] = math.nan if kind == "nan" else math.inf


@st.composite
def logits_cases(draw, *, three_d: bool = False, min_v: int = 1):
    """(logits as the op gets them, the special rows' kinds by flat row index b N + n): a layout, a dtype."""
    dtype = draw(st.sampled_from(DTYPES))
    B, N = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    V = draw(st.one_of(st.sampled_from([v for v in EDGE_V if v >= min_v]), st.integers(min_v, 700)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.5, 3.0, 30.0]))
    values = torch.randn(B, N, V, generator=g) * scale
    kinds = draw(st.dictionaries(st.tuples(st.integers(0, B - 1), st.integers(0, N - 1)), st.sampled_from(ROW_KINDS)))
    for (b, n), kind in kinds.items():
        fill_row(values[b, n], kind, dtype, g)
    values = values.to(dtype)
    layouts = ["contiguous", "sliced", "transposed"] + ([] if three_d else ["2-d", "4-d"])
    layout = draw(st.sampled_from(layouts))
    if layout == "sliced":  # a view of a wider, longer tensor: row stride, batch stride and an offset
        wide = torch.zeros(B, 2 * N + 1, V + 7, dtype=dtype)
        wide[:, 1::2, 3 : V + 3] = values
        values = wide[:, 1::2, 3 : V + 3]
    elif layout == "transposed":  # the last dimension not dense
        values = values.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "2-d":
        values = values.reshape(B * N, V)
    elif layout == "4-d":
        values = values.reshape(B, 1, N, V)
    return values, {b * N + n: kind for (b, n), kind in kinds.items()}


def not_finite_message(bad: torch.Tensor) -> str:
    """The ValueError ``raise_if_not_finite`` gives for the rows ``bad`` (batch shape) of logits."""
    first = tuple(bad.nonzero()[0].tolist())
    count = int(bad.sum())
    return rf"logits: {count} row\(s\) are not a finite distribution.*first at row index {re.escape(str(first))}"


def check_rows(stats: mdfast.TokenStats, want: dict, rows: torch.Tensor, rtol: float) -> None:
    """``check_against_reference`` on the rows ``rows`` (a bool mask over the batch shape) only."""
    rows = rows.cpu()
    for name in ("argmax", "topk_ids"):
        assert_equal(name, getattr(stats, name).cpu()[rows], want[name][rows])
    for name in ("topk_probs", "lse", "margin", "entropy_topk", "entropy_full"):
        got = getattr(stats, name)
        if want[name] is None:
            assert got is None, f"{name}: expected None"
            continue
        assert got.dtype == torch.float32, f"{name}: dtype {got.dtype}"
        scale = {
            "topk_probs": 0.0,
            "lse": 1.0,
            "margin": want["topk_probs"][rows][..., 0],
            "entropy_topk": 1.0,
            "entropy_full": 1.0 + want["lse"][rows].abs(),
        }[name]
        assert_close(name, got.cpu()[rows], want[name][rows], rtol, scale)


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=logits_cases(), k=st.integers(2, 8), full_entropy=st.booleans())
def test_token_stats_property(backend, case, k, full_entropy):
    """SPEC 1 on any rows: the float64 reference's values, or the named ValueError of k > V or of non-finite rows."""
    device = device_of(backend)
    logits, kinds = case
    logits = logits.to(device)
    V = logits.shape[-1]
    if k > V:
        with pytest.raises(ValueError, match=rf"logits: the vocabulary \(last dimension, {V}\) must hold at least k"):
            mdfast.token_stats(logits, k, full_entropy, backend=backend)
        return
    want = reference_token_stats(logits, k, full_entropy)
    bad = ~torch.isfinite(want["lse"])
    made_bad = sorted(row for row, kind in kinds.items() if kind in NOT_FINITE)
    assert bad.reshape(-1).nonzero().reshape(-1).tolist() == made_bad, "the reference flags the rows made bad"
    if bool(bad.any()):
        with pytest.raises(ValueError, match=not_finite_message(bad)):
            mdfast.token_stats(logits, k, full_entropy, backend=backend)
    stats = mdfast.token_stats(logits, k, full_entropy, backend=backend, check_finite=False)
    assert stats.argmax.shape == logits.shape[:-1] and stats.topk_probs.shape == (*logits.shape[:-1], k)
    assert not bool(torch.isfinite(stats.lse.cpu()[bad]).any()), "a non-finite row must show a non-finite lse"
    check_rows(stats, want, ~bad, RTOL[logits.dtype])
    again = mdfast.token_stats(logits, k, full_entropy, backend=backend, check_finite=False)
    for name in vars(stats):  # numpy's bytes: a size-1 dimension may carry any stride
        first, second = getattr(stats, name), getattr(again, name)
        as_bytes = [None if x is None else (x.dtype, x.cpu().numpy().tobytes()) for x in (first, second)]
        assert as_bytes[0] == as_bytes[1], f"{name}: two runs on the same input differ"


@st.composite
def step_cases(draw):
    """The inputs of one ``xflow_step`` call (logits from ``logits_cases``) and how it is called."""
    logits, kinds = draw(logits_cases(three_d=True, min_v=2))
    B, N, V = logits.shape
    k = draw(st.sampled_from([k for k in (2, 4, 8) if k <= V]))
    E = draw(st.integers(1, 9))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    t = torch.rand(B, N, generator=g)
    t[torch.rand(B, N, generator=g) < 0.2] = 0.995  # some tokens finished
    state = dict(
        logits=logits,
        X=torch.randn(B, N, E, generator=g),
        t=t,
        embedding=(torch.randn(V, E, generator=g)).to(draw(st.sampled_from(DTYPES))),
        mask_embedding=torch.randn(E, generator=g),
    )
    policy = draw(st.sampled_from(["none", "mean", "sample"]))
    rho = draw(st.one_of(st.floats(0.0, 1.0), st.just("tensor")))
    call = dict(
        config=FlowConfig(k=k),
        policy=None if policy == "none" else random_policy(k=k, hidden=draw(st.sampled_from([1, 8, 64])), seed=k),
        sample=policy == "sample",
        rho=torch.rand(B, generator=g) if rho == "tensor" else rho,
        inplace=draw(st.booleans()),
    )
    return state, call, kinds


@pytest.mark.parametrize("backend", BACKENDS)
@given(case=step_cases(), check_finite=st.booleans())
def test_xflow_step_property(backend, case, check_finite):
    """SPEC 2.2-2.7 on any rows: the float64 reference's step, or no state written and (checked) the named ValueError.

    A sampled step is compared with the reference step applying its drawn action (the draws
    themselves are tested against the reference's in tests/test_xflow_step.py).
    """
    device = device_of(backend)
    state, call, _ = case
    state = {name: value.to(device) for name, value in state.items()}
    call = {name: value.to(device) if hasattr(value, "to") else value for name, value in call.items()}
    if call["sample"]:
        call["generator"] = torch.Generator(device).manual_seed(3)
    logits, X, t = state["logits"], state["X"], state["t"]
    X_before, t_before = X.clone(), t.clone()
    bad = ~torch.isfinite(reference_token_stats(logits, call["config"].k, False)["lse"])
    if bool(bad.any()):
        call["inplace"] = True  # what "no state written" is observed on
        if check_finite:
            with pytest.raises(ValueError, match=not_finite_message(bad) + ".*no state was written"):
                mdfast.xflow_step(**state, **call, backend=backend)
        else:
            out = mdfast.xflow_step(**state, **call, backend=backend, check_finite=False)
            assert not bool(torch.isfinite(out.lse.cpu()[bad]).any())
        assert torch.equal(X, X_before) and torch.equal(t, t_before), "no state may be written"
        return
    out = mdfast.xflow_step(**state, **call, backend=backend, check_finite=check_finite)
    if call["inplace"]:
        assert out.X is X and out.t is t
    config, rtol = call["config"], RTOL[logits.dtype]
    reference_call = dict(policy=call["policy"], rho=call["rho"])
    if call["sample"]:
        assert bool(((out.action >= config.a_min) & (out.action <= config.a_max)).all()), "drawn actions in range"
        assert bool(torch.isfinite(out.log_prob).all()), "log pi(y) of a draw is finite"
        reference_call = dict(policy=None, rho=call["rho"], action=out.action.double().cpu())
    inputs = (logits, X_before, t_before, state["embedding"], state["mask_embedding"])
    check_step_tie_aware(out, inputs, config, reference_call, rtol)


def check_step_tie_aware(out: mdfast.XFlowStep, inputs: tuple, config: FlowConfig, call: dict, rtol: float) -> None:
    """``check_step`` against the float64 reference, where the hard commit may break a float32 tie differently.

    SPEC 2.7 commits the most confident open token, smallest index on ties; two confidences that
    differ below float32's resolution (say 1 - 3e-12 and 1 - 2e-22: both 1.0 in float32) tie in
    float32 and not in float64. So a committed index other than the reference's passes where that
    token was open and its float64 confidence is the largest open one within the tolerance; X and t
    are then the reference's state before the commit with that token committed.
    """
    want = reference_step(*inputs, config=config, **call)
    committed = out.committed.cpu()
    if torch.equal(committed, want["committed"]):
        check_step(out, want, inputs[1], inputs[3], rtol)
        return
    threshold = config.commit_threshold
    before = reference_step(*inputs, config=dataclasses.replace(config, commit_threshold=1e-30), **call)
    confidence = before["confidence"]
    for b, j in enumerate(committed.tolist()):
        open_ = before["t"][b] < threshold
        if not bool(open_.any()):
            assert j == -1, f"committed: sequence {b} has no open token, got {j}"
            continue
        best = confidence[b][open_].max().item()
        assert j >= 0 and bool(open_[j]), f"committed: sequence {b}: token {j} is not open"
        assert confidence[b, j] >= best * (1 - 4 * rtol), f"committed: sequence {b}: {j} is not the most confident"
        target = inputs[3][before["tokens"][b, j]].double().cpu()
        before["X"][b, j], before["t"][b, j] = target, 1.0
    before["committed"] = committed
    check_step(out, before, inputs[1], inputs[3], rtol)


# Regressions of what the properties above found.


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_probabilities_keep_their_precision_at_large_logits(backend):
    """p(1) = 1 - 1.8e-6 from float32 logits 46.23 and 33.02: the torch backend evaluated exp(z - lse),
    and lse's float32 rounding (an ulp of 3.8e-6) gave p(1) = 1.0 and the heuristic action 1.0
    against 0.9999899 (over the 1e-5 bound: the action amplifies p(1)'s error by L ln 2 = 5.5)."""
    device = device_of(backend)
    logits = torch.tensor([[[46.2299, 33.0181, -8.8029, 17.0529]]], device=device)
    want = reference_token_stats(logits, 2, False)
    assert_close("topk_probs", mdfast.token_stats(logits, 2, backend=backend).topk_probs, want["topk_probs"], 1e-6)
    X, t = torch.zeros(1, 1, 1, device=device), torch.full((1, 1), 0.5, device=device)
    embedding, m = torch.ones(4, 1, device=device), torch.zeros(1, device=device)
    out = mdfast.xflow_step(logits, X, t, embedding, m, config=FlowConfig(k=2), backend=backend)
    step = reference_step(logits, X, t, embedding, m, None, 0.0, FlowConfig(k=2))
    assert_close("action", out.action, step["action"], 1e-6)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_full_entropy_of_huge_tied_logits(backend):
    """Two maxima at 3.2e38 (bfloat16), the rest far below: H_full = log 2. The reference evaluated
    lse - sum p z, which loses everything at |z| ~ 1e38 even in float64 (it gave -3.2e38), and in
    float32 z - lse overflowed (-inf)."""
    device = device_of(backend)
    logits = torch.tensor([-3.0e38, 3.2e38, 3.2e38, -1.0e38, 0.0], dtype=torch.bfloat16, device=device)
    want = reference_token_stats(logits, 2, True)["entropy_full"]
    assert_close("reference H_full", want, torch.tensor(math.log(2), dtype=torch.float64), 1e-12)
    got = mdfast.token_stats(logits, 2, True, backend=backend).entropy_full
    assert_close("H_full", got, want, RTOL[torch.bfloat16], 1.0)
