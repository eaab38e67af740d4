"""The oracle against independent evaluations: full softmax and a stable sort, numerical
integration of E[a] over Beta, and the SPEC's selection rules written out as loops."""

from __future__ import annotations

import math

import pytest
import torch
from checks import assert_close, assert_equal

from mdfast import FlowConfig, reference

scipy_special = pytest.importorskip("scipy.special", reason="scipy checks Kummer's series (pip install scipy)")
scipy_integrate = pytest.importorskip("scipy.integrate", reason="scipy integrates E[a] over Beta (pip install scipy)")


def naive_stats(z: torch.Tensor, k: int):
    """SPEC 1 the slow way: the whole softmax in float64 and a stable sort for the top-k."""
    z = z.double()
    p = torch.softmax(z, -1)
    order = torch.sort(z, dim=-1, descending=True, stable=True).indices[..., :k]
    topk = p.gather(-1, order)
    q = topk / topk.sum(-1, keepdim=True)
    h_k = -(torch.where(q > 0, q * q.log(), torch.zeros_like(q))).sum(-1) / math.log(k)
    h_full = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)
    return order, topk, h_k, h_full


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("kind", ["random", "integer ties", "-inf entries", "few finite"])
def test_token_stats_matches_softmax_and_stable_sort(kind, k):
    z = torch.randn(5, 9, 300, dtype=torch.float64) * 4
    if kind == "integer ties":
        z = z.round().clamp(-3, 3)
        z[0, 0] = 1.0  # an all-equal row
    elif kind == "-inf entries":
        z[torch.rand_like(z) < 0.3] = -math.inf
    elif kind == "few finite":
        z[:] = -math.inf
        z[..., 7] = 0.5
        z[..., 100] = 0.5
    stats = reference.token_stats(z, k, full_entropy=True)
    order, topk, h_k, h_full = naive_stats(z, k)
    assert_equal("topk_ids", stats["topk_ids"], order)
    assert_equal("argmax", stats["argmax"], torch.argmax(z, -1))
    assert_close("topk_probs", stats["topk_probs"], topk, 1e-12)
    assert_close("margin", stats["margin"], topk[..., 0] - topk[..., 1], 1e-12, scale=topk[..., 0])
    assert_close("entropy_topk", stats["entropy_topk"], h_k, 1e-12, scale=1.0)
    assert_close("entropy_full", stats["entropy_full"], h_full, 1e-12, scale=1.0)
    assert_close("lse", stats["lse"], torch.logsumexp(z, -1), 1e-12, scale=1.0)


def test_kummer_series_matches_scipy():
    a = torch.tensor([0.1, 1.0, 2.5, 47.5, 95.0], dtype=torch.float64)
    b = a + torch.tensor([0.2, 1.0, 4.0, 2.5, 5.0], dtype=torch.float64)
    z = math.log(256)
    want = torch.tensor([scipy_special.hyp1f1(x, y, z) for x, y in zip(a.tolist(), b.tolist())], dtype=torch.float64)
    assert_close("1F1", reference.kummer_1f1(a, b, z), want, 1e-12)


@pytest.mark.parametrize("a_min, a_max", [(1 / 256, 1.0), (1e-3, 0.5)])
def test_expected_action_is_the_beta_mean_of_a(a_min, a_max):
    """E[a] = integral of a_min 2^(y L) Beta(y; alpha, beta) dy equals a_min 1F1(alpha; alpha+beta; L ln 2)."""
    L = math.log2(a_max / a_min)
    alpha = torch.tensor([0.1, 0.9, 5.0, 30.0, 95.0], dtype=torch.float64)
    beta = torch.tensor([1.9, 1.1, 5.0, 60.0, 5.0], dtype=torch.float64)
    integrals = []
    for al, be in zip(alpha.tolist(), beta.tolist()):

        def density(y, al=al, be=be):
            return math.exp((al - 1) * math.log(y) + (be - 1) * math.log1p(-y) - scipy_special.betaln(al, be))

        value, _ = scipy_integrate.quad(
            lambda y, d=density: a_min * 2 ** (y * L) * d(y), 0, 1, limit=400, epsabs=0, epsrel=1e-12
        )
        integrals.append(value)
    want = torch.tensor(integrals, dtype=torch.float64).clamp(a_min, a_max)
    assert_close("E[a]", reference.expected_action(alpha, beta, a_min, a_max), want, 1e-8)


@pytest.mark.parametrize("a_min", [1 / 256, 1e-6])
def test_kernel_term_count_reaches_float32_accuracy(a_min):
    """The kernels sum a fixed FlowConfig.kummer_terms terms; that truncation stays below float32
    resolution over the whole policy range (kappa in [2, 100], mu in [0.05, 0.95])."""
    config = FlowConfig(a_min=a_min)
    z = math.log(config.a_max / config.a_min)
    mu, kappa = torch.meshgrid(
        torch.linspace(0.05, 0.95, 40, dtype=torch.float64),
        torch.linspace(2, 100, 40, dtype=torch.float64),
        indexing="ij",
    )
    alpha, beta = mu * kappa, (1 - mu) * kappa
    term, total = torch.ones_like(alpha), torch.ones_like(alpha)
    for n in range(config.kummer_terms - 1):
        term = term * (alpha + n) / (alpha + beta + n) * z / (n + 1)
        total = total + term
    assert_close("truncated 1F1", total, reference.kummer_1f1(alpha, alpha + beta, z), 2**-26)


def test_sampled_action_law():
    """a = a_min 2^(y L) with y ~ Beta: log2(a / a_min) / L has the Beta mean and log-density."""
    alpha = torch.full((20000,), 3.0, dtype=torch.float64)
    beta = torch.full((20000,), 7.0, dtype=torch.float64)
    a, log_prob = reference.sample_action(alpha, beta, 1 / 256, 1.0, torch.Generator().manual_seed(0))
    y = torch.log2(a * 256) / 8
    assert abs(y.mean().item() - 0.3) < 0.005
    want = torch.tensor([scipy_special.betaln(3.0, 7.0)], dtype=torch.float64)
    log_density = 2 * torch.log(y) + 6 * torch.log1p(-y) - want
    assert_close("log_prob", log_prob, log_density, 1e-10, scale=1.0)
    again, _ = reference.sample_action(alpha, beta, 1 / 256, 1.0, torch.Generator().manual_seed(0))
    assert torch.equal(a, again)


def test_xflow_step_follows_spec_loops():
    """SPEC 2.6-2.7 written as per-token loops, against the vectorised reference."""
    B, N, V, E = 3, 11, 50, 6
    logits = torch.randn(B, N, V, dtype=torch.float64) * 3
    X = torch.randn(B, N, E, dtype=torch.float64)
    t = torch.rand(B, N, dtype=torch.float64)
    t[2] = 0.995  # confident and nearly done: nothing left to commit (committed = -1)
    logits[2, :, 0] = 30.0
    emb = torch.randn(V, E, dtype=torch.float64)
    m = torch.randn(E, dtype=torch.float64)
    out = reference.xflow_step(logits, X, t, emb, m, None, 0.0)
    p = torch.softmax(logits, -1)
    for b in range(B):
        X_new, t_new = X[b].clone(), t[b].clone()
        for i in range(N):
            x = int(torch.argmax(logits[b, i]))
            c = p[b, i, x].item()
            a = (1 / 256) ** (1 - c) * 1.0**c
            if c - t[b, i].item() < -0.1:
                X_new[i] = c * emb[x] + (1 - c) * m
                t_new[i] = c
            else:
                X_new[i] = X[b, i] + (emb[x] - X[b, i]) * a
                t_new[i] = t[b, i] + a * (1 - t[b, i])
        open_ = [i for i in range(N) if t_new[i] < 0.99]
        committed = -1
        if open_:
            committed = max(open_, key=lambda i: (p[b, i].max().item(), -i))
            X_new[committed] = emb[int(torch.argmax(logits[b, committed]))]
            t_new[committed] = 1.0
        assert int(out["committed"][b]) == committed
        assert_close("X", out["X"][b], X_new, 1e-12, scale=1.0)
        assert_close("t", out["t"][b], t_new, 1e-12, scale=1.0)
    assert int(out["committed"][2]) == -1


def test_kummer_series_of_a_non_finite_argument_is_not_finite():
    """NaN in, NaN out (a step with a NaN rho is refused by mdfast.ops, not by a "did not converge")."""
    a = torch.tensor([0.5, math.nan, 2.0], dtype=torch.float64)
    total = reference.kummer_1f1(a, a + 1.0, math.log(256))
    assert math.isnan(total[1].item()) and bool(torch.isfinite(total[[0, 2]]).all())
    assert_close(
        "1F1",
        total[[0, 2]],
        torch.from_numpy(scipy_special.hyp1f1(a[[0, 2]].numpy(), a[[0, 2]].numpy() + 1, math.log(256))),
        1e-12,
    )
