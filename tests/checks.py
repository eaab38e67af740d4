"""Shared test machinery: the backends under test, tolerances, and the float64 comparison.

Tolerances (DEVELOPERS.md): every backend is compared with ``mdfast.reference`` evaluated in
float64 on the same input values; relative error <= 1e-5 for float32 logits and <= 1e-3 for
bfloat16/float16 logits, where "relative" is |got - want| / (|want| + scale) and scale is the size
of the terms a quantity is the difference of (see ``assert_close``); ids and flags exactly equal.
"""

from __future__ import annotations

import copy
import itertools
import os

import pytest
import torch

import mdfast
from mdfast import (
    StepPolicy,
    backends,
    reference,
)

RTOL = {torch.float32: 1e-5, torch.float64: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}

# The backends every op test runs on; in the second list the Triton interpreter's long runs are
# marked slow (deselected by the quick subset, `pytest -m "not slow"`).
BACKENDS = ["torch", "cpu", "triton", "cuda"]
BACKENDS_SLOW_TRITON = ["torch", "cpu", pytest.param("triton", marks=pytest.mark.slow), "cuda"]

# Elements of logits the Triton interpreter gets through in a few seconds.
INTERPRETER_MAX_ELEMENTS = 60_000

# Logits elements per float64 reference evaluation on a GPU (512 MB of float64 at a time).
CHUNK_ELEMENTS = 2**26


def interpreted(name: str) -> bool:
    return name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"


def backend_device(name: str) -> str:
    """Where a backend's inputs live in these tests."""
    if name in ("cuda",) or (name == "triton" and not interpreted(name)):
        return "cuda"
    return "cpu"


def require_backend(name: str) -> str:
    """Skip (saying why) where ``name`` cannot run; returns the device for its inputs. On a machine
    with CUDA a GPU backend that does not load fails instead: a broken build must not pass as a skip."""
    reason = backends.get(name).unavailable_reason()
    if reason is not None:
        if name in ("cuda", "triton") and torch.cuda.is_available():
            pytest.fail(f"backend {name!r} does not load on this machine with CUDA: {reason}")
        pytest.skip(f"backend {name!r} unavailable here: {reason}")
    return backend_device(name)


def require_size(name: str, elements: int) -> None:
    if interpreted(name) and elements > INTERPRETER_MAX_ELEMENTS:
        pytest.skip(
            f"Triton interpreter on the CPU: {elements} logits elements is too slow "
            "(this test runs it on a CUDA device)"
        )


def assert_close(name: str, got: torch.Tensor, want: torch.Tensor, rtol: float, scale=0.0) -> None:
    """|got - want| <= rtol * (|want| + scale), elementwise, with a message naming the worst entry.

    ``scale`` (a number or a tensor broadcasting against ``want``) is the magnitude of the terms a
    quantity is computed as the difference of: p(1) for margin = p(1) - p(2), 1 for entropies in
    [0, 1], |X| + |E[x]| for the flow update; 0 (pure relative error) for probabilities.
    """
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    got64, want64 = got.detach().double().cpu(), want.detach().double().cpu()
    if torch.is_tensor(scale):
        scale = scale.detach().double().cpu()
    bound = rtol * (want64.abs() + scale) + 1e-35  # + the float32 denormal floor
    err = (got64 - want64).abs()
    both_inf = torch.isinf(got64) & (got64 == want64)
    bad = (err > bound) & ~both_inf | (torch.isnan(got64) != torch.isnan(want64))
    if bool(bad.any()):
        index = tuple(bad.nonzero()[0].tolist())
        ratio = (err / bound).nan_to_num(posinf=float("inf"))
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {bad.numel()} entries off; first at {index}: got {got64[index].item()!r}, "
            f"want {want64[index].item()!r} (rtol {rtol}); worst error/bound = {ratio.max().item():.3g}"
        )


def assert_equal(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    mismatch = got != want
    if bool(mismatch.any()):
        index = tuple(mismatch.nonzero()[0].tolist())
        raise AssertionError(
            f"{name}: {int(mismatch.sum())} entries differ; first at {index}: "
            f"got {got[index].item()}, want {want[index].item()}"
        )


def assert_bitwise_equal(name: str, first: torch.Tensor | None, second: torch.Tensor | None) -> None:
    """The same bytes (NaN payloads included): what two runs on the same input must give."""
    if first is None or second is None:
        assert first is None and second is None, f"{name}: one run returned None"
        return
    as_bytes = [x.detach().cpu().contiguous().reshape(-1).view(torch.uint8) for x in (first, second)]
    assert first.dtype == second.dtype and torch.equal(*as_bytes), f"{name}: two runs on the same input differ"


def random_logits(shape, dtype=torch.float32, *, device="cpu", scale=3.0, generator=None) -> torch.Tensor:
    """Fresh random logits in the given dtype (values then exactly representable in float64)."""
    return (torch.randn(shape, generator=generator, dtype=torch.float32) * scale).to(dtype).to(device)


def reference_token_stats(
    logits: torch.Tensor, k: int, full_entropy: bool, *, on_device: bool = False, chunk_elements: int = CHUNK_ELEMENTS
) -> dict:
    """``reference.token_stats`` on the values of ``logits`` in float64, the results on the CPU.

    Evaluated on the CPU, or with ``on_device`` on the device of ``logits`` itself, about
    ``chunk_elements`` logits (whole rows, views of ``logits``: no copy of a strided input) at a time:
    production shapes on a GPU take well under a second there, against about 10 s per 65 M logits
    on a CPU.
    """
    if not on_device:
        return reference.token_stats(logits.double().cpu(), k, full_entropy)
    matrix = logits.reshape(1, -1) if logits.dim() == 1 else logits
    *lead, N, V = matrix.shape
    rows = max(1, chunk_elements // V)
    parts = [
        reference.token_stats(matrix[index][start : start + rows].double(), k, full_entropy)
        for index in itertools.product(*map(range, lead))
        for start in range(0, N, rows)
    ]
    batch = tuple(logits.shape[:-1])
    out = {}
    for name, first in parts[0].items():
        if first is None:
            out[name] = None
            continue
        joined = torch.cat([part[name] for part in parts]).cpu()
        out[name] = joined.reshape(batch + tuple(first.shape[1:]))
    return out


def check_against_reference(
    stats: mdfast.TokenStats, logits: torch.Tensor, k: int, full_entropy: bool, *, on_device: bool = False
) -> None:
    """Every field of ``stats`` against the reference on the same values in float64 (evaluated on
    the device of ``logits`` with ``on_device``: see ``reference_token_stats``)."""
    want = reference_token_stats(logits, k, full_entropy, on_device=on_device)
    rtol = RTOL[logits.dtype]
    assert_equal("argmax", stats.argmax, want["argmax"])
    assert_equal("topk_ids", stats.topk_ids, want["topk_ids"])
    for name in ("topk_probs", "lse", "margin", "entropy_topk", "entropy_full"):
        got = getattr(stats, name)
        if want[name] is None:
            assert got is None, f"{name}: expected None"
            continue
        assert got.dtype == torch.float32, f"{name}: dtype {got.dtype}"
        scale = {
            "topk_probs": 0.0,
            "lse": 1.0,
            "margin": want["topk_probs"][..., 0],
            "entropy_topk": 1.0,
            "entropy_full": 1.0 + want["lse"].abs(),
        }[name]
        assert_close(name, got, want[name], rtol, scale)


def make_state(B, N, V, E, *, device, logits_dtype=torch.float32, emb_dtype=torch.float32):
    """Random logits, X, t spread over [0, 1] (so re-edits, updates and finished tokens all
    occur), an embedding table and a mask embedding."""
    logits = random_logits((B, N, V), logits_dtype, device=device)
    logits[..., : N // 3, 0] += 12.0  # a third of the tokens confident: t grows past 0.99
    X = torch.randn(B, N, E, device=device)
    t = torch.rand(B, N, device=device)
    t[..., : N // 5] = 0.995
    embedding = torch.randn(V, E, device=device).to(emb_dtype)
    mask_embedding = torch.randn(E, device=device)
    return logits, X, t, embedding, mask_embedding


def random_policy(k=4, hidden=64, seed=0, **constants):
    """A StepPolicy with weights spread enough that alpha, beta cover the kappa range."""
    torch.manual_seed(seed)
    policy = StepPolicy(hidden, k=k, **constants)
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0, 0.7)
    return policy


def reference_step(logits, X, t, embedding, mask_embedding, policy, rho, config, *, on_device=False, **kwargs):
    """``reference.xflow_step`` on the same values in float64, the results on the CPU.

    With ``on_device`` it is evaluated on the inputs' device, one sequence at a time (the hard
    commit is per sequence), so a GPU evaluates the LLaDA-8B step shape in a second; draws cannot
    be split that way: pass the drawn ``action=`` there instead of ``sample=True``.
    """
    device = logits.device if on_device else torch.device("cpu")

    def f64(x):
        return x.to(device=device, dtype=torch.float64) if torch.is_tensor(x) else x

    def evaluate(logits, X, t, rho, **kwargs):
        return reference.xflow_step(
            f64(logits),
            f64(X),
            f64(t),
            embedding if on_device else f64(embedding),  # gathered rows are cast to float64 exactly
            f64(mask_embedding),
            copy.deepcopy(policy).to(device=device, dtype=torch.float64) if policy is not None else None,
            f64(rho),
            a_min=config.a_min,
            a_max=config.a_max,
            reedit_margin=config.reedit_margin,
            commit_threshold=config.commit_threshold,
            k=config.k,
            **kwargs,
        )

    if not on_device:
        return evaluate(logits, X, t, rho, **kwargs)
    if kwargs.get("sample"):
        raise ValueError("reference_step(on_device=True): pass the drawn action= rather than sample=True")
    parts = []
    for b in range(logits.shape[0]):
        one = {name: value[b : b + 1] if torch.is_tensor(value) else value for name, value in kwargs.items()}
        rho_b = rho[b : b + 1] if torch.is_tensor(rho) and rho.dim() == 1 else rho
        parts.append(evaluate(logits[b : b + 1], X[b : b + 1], t[b : b + 1], rho_b, **one))
    return {
        name: None if parts[0][name] is None else torch.cat([part[name] for part in parts]).cpu() for name in parts[0]
    }


def check_step(out: mdfast.XFlowStep, want: dict, X_before, embedding, rtol) -> None:
    assert_equal("tokens", out.tokens, want["tokens"])
    assert_equal("reedited", out.reedited, want["reedited"])
    assert_equal("committed", out.committed, want["committed"])
    assert_close("confidence", out.confidence, want["confidence"], rtol)
    assert_close("action", out.action, want["action"], rtol)
    assert_close("t", out.t, want["t"], rtol, scale=1.0)
    target = embedding[want["tokens"].to(embedding.device)].double().cpu()  # the rows only, not the table
    assert_close("X", out.X, want["X"], rtol, scale=X_before.double().cpu().abs() + target.abs())


def tiny_bert(seed: int = 0, *, vocab_size: int = 64, positions: int = 64, dropout: float = 0.0, device="cpu"):
    """A 2-layer, 32-wide transformers BertForMaskedLM built from a config (no hub), mask id 4 by
    convention in these tests; its weights spread wide (initializer_range 0.5) so that predictions
    depend on the context and a wrong selection order changes the tokens; no dropout unless asked."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=positions,
        initializer_range=0.5,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return transformers.BertForMaskedLM(config).to(device).eval()
