"""mdfast.token_stats, every backend against the float64 reference (SPEC 1)."""

from __future__ import annotations

import math

import pytest
import torch
from checks import (
    BACKENDS,
    BACKENDS_SLOW_TRITON,
    assert_bitwise_equal,
    check_against_reference,
    random_logits,
    require_backend,
    require_size,
)

import mdfast

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("V", [111, 32000, pytest.param(126464, marks=pytest.mark.slow)])
@pytest.mark.parametrize("N", [1, 7, 99, pytest.param(512, marks=pytest.mark.slow)])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(backend, dtype, N, V):
    device = require_backend(backend)
    require_size(backend, N * V)
    logits = random_logits((1, N, V), dtype, device=device)
    check_against_reference(mdfast.token_stats(logits, backend=backend, full_entropy=True), logits, 4, True)


@pytest.mark.parametrize("backend", BACKENDS_SLOW_TRITON)
@pytest.mark.parametrize("k", [2, 4, 8])
def test_batches_strides_and_k(backend, k):
    """Leading batch dims, strided rows (a slice of a wider, longer tensor), every k."""
    device = require_backend(backend)
    wide = random_logits((3, 14, 1013), device=device)
    logits = wide[:, ::2, 5:1005]  # row stride 2 * 1013, batch stride 14 * 1013, offset 5
    assert logits.stride() == (14 * 1013, 2 * 1013, 1)
    stats = mdfast.token_stats(logits, k, full_entropy=False, backend=backend)
    check_against_reference(stats, logits, k, False)
    assert stats.argmax.shape == (3, 7) and stats.topk_probs.shape == (3, 7, k)

    four_d = random_logits((2, 3, 4, 517), device=device)
    check_against_reference(mdfast.token_stats(four_d, k, backend=backend), four_d, k, False)
    one_row = random_logits((517,), device=device)
    one = mdfast.token_stats(one_row, k, backend=backend)
    assert one.argmax.shape == () and one.topk_probs.shape == (k,)
    check_against_reference(one, one_row, k, False)


@pytest.mark.parametrize("backend", BACKENDS_SLOW_TRITON)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_ties_and_minus_inf(backend, dtype):
    """Ties resolve to the smaller index; -inf entries have p = 0 and fill the top-k last."""
    device = require_backend(backend)
    V = 2500
    logits = torch.randint(-3, 4, (2, 8, V)).to(dtype)  # many exact ties
    logits[0, 0] = 1.0  # one all-equal row
    logits[0, 1, torch.rand(V) < 0.5] = -math.inf  # half the row -inf
    logits[0, 2] = -math.inf  # fewer finite entries than k: two, and equal
    logits[0, 2, V - 1] = 2.0
    logits[0, 2, 3] = 2.0
    logits[0, 3] = -math.inf
    logits[0, 3, 1234] = 0.0  # a single finite entry: p = 1, entropy 0
    logits[1, :, -7:] = 50.0  # the maximum tied at the end of the rows
    logits = logits.to(device)
    for k in (2, 4, 8):
        check_against_reference(mdfast.token_stats(logits, k, True, backend=backend), logits, k, True)


@pytest.mark.parametrize("backend", BACKENDS_SLOW_TRITON)
def test_runs_are_bitwise_equal(backend):
    device = require_backend(backend)
    logits = random_logits((2, 33, 3001), torch.float32, device=device)
    first = mdfast.token_stats(logits, 4, True, backend=backend)
    second = mdfast.token_stats(logits, 4, True, backend=backend)
    for name in vars(first):
        assert_bitwise_equal(name, getattr(first, name), getattr(second, name))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", ["nan", "+inf", "all -inf"])
def test_non_finite_rows_are_reported(backend, bad):
    device = require_backend(backend)
    logits = random_logits((2, 5, 300), device=device)
    logits[1, 3, 17] = {"nan": math.nan, "+inf": math.inf, "all -inf": -math.inf}[bad]
    if bad == "all -inf":
        logits[1, 3] = -math.inf
    with pytest.raises(ValueError, match=r"logits: 1 row\(s\) are not a finite distribution.*\(1, 3\)"):
        mdfast.token_stats(logits, backend=backend)
    stats = mdfast.token_stats(logits, backend=backend, check_finite=False)
    assert not math.isfinite(stats.lse[1, 3].item())
    assert bool(torch.isfinite(stats.lse[0]).all())


def test_empty_batch_is_a_no_op():
    stats = mdfast.token_stats(torch.empty(0, 7, 111), 4, True)
    assert stats.argmax.shape == (0, 7) and stats.topk_probs.shape == (0, 7, 4) and stats.entropy_full.shape == (0, 7)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: mdfast.token_stats([1.0, 2.0]), TypeError, "logits: expected a tensor"),
        (lambda: mdfast.token_stats(torch.arange(10)), TypeError, "logits: expected a floating-point tensor"),
        (lambda: mdfast.token_stats(torch.tensor(1.0)), ValueError, "logits: expected shape"),
        (lambda: mdfast.token_stats(torch.randn(4, 3), 4), ValueError, "at least k = 4"),
        (lambda: mdfast.token_stats(torch.randn(4, 30), 9), ValueError, r"k: expected an int in \[2, 8\]"),
        (lambda: mdfast.token_stats(torch.randn(4, 30), 1), ValueError, r"k: expected an int in \[2, 8\]"),
        (lambda: mdfast.token_stats(torch.randn(4, 30), backend="gpu"), ValueError, "backend: expected one of"),
        (lambda: mdfast.token_stats(torch.randn(4, 30), backend="cuda"), ValueError, "runs on cuda tensors"),
        (
            lambda: mdfast.token_stats(torch.randn(4, 30, dtype=torch.float64), backend="cpu"),
            TypeError,
            "logits: backend 'cpu' reads",
        ),
    ],
)
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()
