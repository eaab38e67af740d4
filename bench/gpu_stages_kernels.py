"""The GPU check's kernel stages: the CUDA build, and the Triton and CUDA kernels against the float64 reference.

- cuda_build: build the CUDA extension through the public API (``backend="cuda"`` on a tiny input).
- triton: the Triton kernels at production shapes against the float64 reference evaluated on the GPU, in chunks
  of rows (tests/checks.py): token_stats at 512 x 126464, 2048 x 152064, few rows (the split path) and
  8 x 2048 x 152064 (B*N*V > 2^31), strided and misaligned rows, ties, -inf and non-finite rows; xflow_step at
  the LLaDA-8B step shape (N 512, V 126464, E 4096, bf16 logits and embedding), B = 1 and 8, heuristic, random
  policy, sampled (its own draws handed to the reference); xflow_step with B*N*V > 2^31 bf16 logits (2 x 1025 x
  2^20, 4.3 GB: 64-bit offsets; the last rows against the reference); the body kernels (rms_norm with and without the
  residual, rope_ on the q heads of a fused qkv, swiglu on the halves of a fused gate/up) at LLaDA-8B widths.
- cuda: the CUDA kernels, the same token_stats and xflow_step cases.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/checks.py: the float64 checks

import checks
import torch
from gpu_stage import FAIL, PASS, Stage, skip

import mdfast
from mdfast import ops, reference

# ---------------------------------------------------------------------------------------------
# Shapes: production, and the toy ones of --tiny
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsCase:
    """One token_stats case: its label, shape, dtype, k, and which awkward inputs it plants."""

    label: str
    shape: tuple[int, int, int]  # (B, N, V)
    dtype: str
    k: int
    full_entropy: bool
    misaligned: bool = False  # rows of a wider buffer, one element in: row stride V + 5, odd offset
    planted: bool = False  # ties, -inf rows, then the non-finite rows' report


@dataclass(frozen=True)
class Shapes:
    """The shapes of one run of the kernel stages (production, or the toy ones of --tiny)."""

    stats: tuple[StatsCase, ...]
    step: tuple[int, int, int, int]  # (B max, N, V, E): B = 1 and B max are checked
    step_dtype: str
    body: tuple[int, int, int, int, tuple[int, ...]]  # (L, d, heads, F, batches)
    body_dtypes: tuple[str, ...]


PRODUCTION = Shapes(
    stats=(
        StatsCase(
            "512 x 126464 bf16, ties / -inf / non-finite rows", (1, 512, 126464), "bfloat16", 4, True, planted=True
        ),
        StatsCase("512 x 126464 fp32", (1, 512, 126464), "float32", 4, True),
        StatsCase("2048 x 152064 bf16, strided misaligned rows", (1, 2048, 152064), "bfloat16", 8, True, True),
        StatsCase("2048 x 152064 fp32, strided misaligned rows, k=2", (1, 2048, 152064), "float32", 2, False, True),
        StatsCase(
            "16 x 152064 bf16 (few rows: the split path), misaligned", (1, 16, 152064), "bfloat16", 4, True, True
        ),
        StatsCase("8 x 2048 x 152064 bf16 (B*N*V > 2^31)", (8, 2048, 152064), "bfloat16", 4, True),
    ),
    step=(8, 512, 126464, 4096),
    step_dtype="bfloat16",
    body=(640, 4096, 32, 12288, (1, 8)),
    body_dtypes=("float32", "bfloat16"),
)

# Under the Triton interpreter: few elements (about a second per launch), float32 body kernels
# (the interpreter has no real bfloat16 arithmetic), few rows take the split path there too.
TINY = Shapes(
    stats=(
        StatsCase("8 x 111 bf16, ties / -inf / non-finite rows", (1, 8, 111), "bfloat16", 4, True, planted=True),
        StatsCase("9 x 300 fp32, strided misaligned rows, k=8", (1, 9, 300), "float32", 8, True, True),
        StatsCase("2 x 3 x 517 bf16, batch", (2, 3, 517), "bfloat16", 2, False),
    ),
    step=(2, 7, 111, 16),
    step_dtype="bfloat16",
    body=(5, 64, 4, 96, (1,)),
    body_dtypes=("float32",),
)


def plant_ties(rows, torch) -> None:
    """Plant ties and -inf in rows 0-5 of ``rows`` (N, V), as test_token_stats.py's ties test does.

    Rows: all equal; half -inf; two equal finite entries (fewer than k); one finite entry; integer values
    (many exact ties); the maximum tied at the end of the row. ``torch``: the torch module.
    """
    V, dtype, device = rows.shape[-1], rows.dtype, rows.device
    rows[0] = 1.0
    rows[1, torch.rand(V, device=device) < 0.5] = -math.inf
    rows[2] = -math.inf
    rows[2, V - 1] = rows[2, 3] = 2.0
    rows[3] = -math.inf
    rows[3, V // 2] = 0.0
    rows[4] = torch.randint(-3, 4, (V,), device=device).to(dtype)
    rows[5, -7:] = 50.0


def random_logits(case: StatsCase, device, torch):
    """Random logits for ``case`` (scale 3, drawn on the device one sequence at a time).

    A view of a wider buffer, one element in, when ``case.misaligned``. ``torch``: the torch module.
    """
    B, N, V = case.shape
    pad = 5 if case.misaligned else 0
    wide = torch.empty(B, N, V + pad, dtype=getattr(torch, case.dtype), device=device)
    for b in range(B):
        wide[b].copy_(torch.randn(N, V + pad, device=device) * 3)
    return wide[..., 1 : V + 1] if case.misaligned else wide


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def stage_cuda_build(args) -> int:
    """Build and load the CUDA extension (skipped without a CUDA device)."""
    if not torch.cuda.is_available():
        return skip("no CUDA device: the CUDA extension is built only on a GPU machine")

    for name in ("TORCH_CUDA_ARCH_LIST", "MDFAST_BUILD_DIR"):
        print(f"{name}={os.environ.get(name)}")
    start = time.monotonic()
    try:
        mdfast.token_stats(torch.randn(1, 2, 64, device="cuda"), 2, backend="cuda")
    except Exception as error:  # the message holds the compiler's output
        print(f"{type(error).__name__}: {error}")
        print(f"KEY: the CUDA extension failed to build or load after {time.monotonic() - start:.0f} s")
        return FAIL
    print(f"KEY: built and loaded in {time.monotonic() - start:.0f} s")
    return PASS


def correctness(stage: Stage, backend: str, tiny: bool, body: bool) -> None:
    """The token_stats and xflow_step cases (and with ``body`` the body kernels) on ``backend``."""
    shapes, device = (TINY, "cpu") if tiny else (PRODUCTION, "cuda")
    with torch.no_grad():
        for case in shapes.stats:
            stage.case(f"token_stats {backend} {case.label}", lambda case=case: stats_case(case, backend, device))
            if device == "cuda":
                torch.cuda.empty_cache()
        B_max, N, V, E = shapes.step
        dtype = getattr(torch, shapes.step_dtype)
        state = checks.make_state(B_max, N, V, E, device=device, logits_dtype=dtype, emb_dtype=dtype)
        for B in (1, B_max):
            for kind in ("heuristic", "policy", "sampled"):
                label = f"xflow_step {backend} {B}x{N}x{V}x{E} {shapes.step_dtype} {kind}"
                stage.case(label, lambda B=B, kind=kind, state=state: step_case(state, B, kind, backend))
        del state
        shape = (2, 9, 64, 8) if tiny else (2, 1025, 2**20, 16)
        label = "x".join(map(str, shape))
        stage.case(f"xflow_step {backend} {label} bf16 (64-bit offsets)", lambda: offsets_case(shape, backend, device))
        if device == "cuda":
            torch.cuda.empty_cache()
    if body:
        L, d, heads, F, batches = shapes.body
        for name in shapes.body_dtypes:
            for B in batches:
                label = f"{B}x{L}x{d} (heads {heads}, F {F}) {name}"
                stage.case(
                    f"body kernels {backend} {label}", lambda B=B, name=name: body_case(B, shapes.body, name, device)
                )


def offsets_case(shape: tuple[int, int, int, int], backend: str, device: str) -> None:
    """xflow_step on bf16 logits (B, N, V) with, at full size, B*N*V > 2^31: the last rows against the reference.

    Row N - 2 of each sequence is planted with c ~ 0.9 and t = 0.5, so the hard commit must land on it, past
    element 2^31 in the second sequence (tests/test_large_indexing.py does the same on the cpu backend).
    """
    B, N, V, E = shape
    generator = torch.Generator(device=device).manual_seed(0)
    logits = torch.randn(B, N, V, device=device, dtype=torch.bfloat16, generator=generator)
    planted = N - 2
    logits[:, planted, 12345 % V] = math.log(9 * V * math.exp(0.5))  # sum exp(z) ~ V e^(1/2): p ~ 0.9
    X = torch.randn(B, N, E, device=device, generator=generator)
    t = torch.rand(B, N, device=device, generator=generator)
    t[:, planted] = 0.5
    embedding = torch.randn(V, E, device=device, generator=generator).to(torch.bfloat16)
    mask = torch.randn(E, device=device, generator=generator)
    rho = torch.full((B,), 0.5, device=device)
    config = mdfast.FlowConfig()
    tail = slice(N - 3, N)
    want = checks.reference_step(
        logits[:, tail], X[:, tail], t[:, tail], embedding, mask, None, rho, config
    )  # before the in-place step
    X_before = X[:, tail].clone()
    out = mdfast.xflow_step(
        logits, X, t, embedding, mask, None, rho, config=config, backend=backend, check_finite=False
    )
    assert out.committed.tolist() == [planted] * B, f"the planted row is the commit, got {out.committed.tolist()}"
    checks.assert_equal("committed", out.committed - (N - 3), want["committed"])
    fields = ("X", "t", "tokens", "confidence", "action", "reedited", "lse")
    tail_out = dataclasses.replace(out, committed=want["committed"], **{f: getattr(out, f)[:, tail] for f in fields})
    checks.check_step(tail_out, want, X_before, embedding, checks.RTOL[torch.bfloat16])


def stats_case(case: StatsCase, backend: str, device: str) -> None:
    """token_stats on ``backend`` against the float64 reference; planted non-finite rows reported alone."""
    logits = random_logits(case, device, torch)
    if case.planted:
        plant_ties(logits[0], torch)
    stats = mdfast.token_stats(logits, case.k, case.full_entropy, backend=backend)
    checks.check_against_reference(stats, logits, case.k, case.full_entropy, on_device=True)
    if case.planted:  # non-finite rows: reported, and no other row changes
        logits[0, 6, 17] = math.nan
        logits[0, 7] = -math.inf
        try:
            mdfast.token_stats(logits, case.k, case.full_entropy, backend=backend)
        except ValueError as error:
            assert "2 row(s) are not a finite distribution" in str(error), str(error)
        else:
            raise AssertionError("non-finite rows were not reported")
        again = mdfast.token_stats(logits, case.k, case.full_entropy, backend=backend, check_finite=False)
        assert not bool(torch.isfinite(again.lse[0, 6:8]).any()), "the non-finite rows got a finite lse"
        others = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
        others[0, 6:8] = False
        for name in ("argmax", "topk_probs", "topk_ids", "lse", "margin", "entropy_topk", "entropy_full"):
            checks.assert_bitwise_equal(name, getattr(again, name)[others], getattr(stats, name)[others])


def step_case(state, B: int, kind: str, backend: str) -> None:
    """xflow_step on the first ``B`` sequences of ``state`` against the reference (``kind``: the policy)."""
    logits, X, t = (x[:B] for x in state[:3])  # the first B sequences (contiguous views)
    embedding, m = state[3:]
    policy = checks.random_policy().to(logits.device) if kind != "heuristic" else None
    rho = torch.rand(B, device=logits.device)
    X_before = X.clone()
    drawing = {"sample": True, "generator": torch.Generator(logits.device).manual_seed(7)} if kind == "sampled" else {}
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, backend=backend, **drawing)
    given = {"action": out.action} if kind == "sampled" else {}
    want = checks.reference_step(logits, X, t, embedding, m, policy, rho, mdfast.FlowConfig(), on_device=True, **given)
    checks.check_step(out, want, X_before, embedding, checks.RTOL[logits.dtype])
    assert torch.equal(X, X_before), "inplace=False must leave X untouched"
    if kind == "sampled":
        assert out.log_prob is not None and bool(torch.isfinite(out.log_prob).all()), "log pi(y) not finite"
    else:
        second = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, backend=backend)
        for name in ("X", "t", "tokens", "confidence", "action", "committed"):
            checks.assert_bitwise_equal(name, getattr(second, name), getattr(out, name))


def body_case(B: int, body: tuple, dtype_name: str, device: str) -> None:
    """The Triton body kernels against the reference, as tests/test_body_kernels.py checks them.

    float32 inputs against float64 (1e-5 of |want| + 1), bf16 inputs against the same roundings evaluated
    eagerly (one bf16 step, 2^-7); the residual sum exactly; nothing outside the views touched.
    """

    L, d, heads, F, _ = body
    dtype = getattr(torch, dtype_name)
    exact = dtype == torch.float32

    def want(fn, *xs):
        return fn(*(x.double() if exact else x for x in xs))

    rtol, tol_scale = (1e-5, 1.0) if exact else (2**-7, 1.0)
    x = torch.randn(B, L, d, device=device).to(dtype)
    update = torch.randn(B, L, d, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(d, device=device)).to(dtype)
    normed = ops.rms_norm(x, weight, 1e-5, backend="triton")
    checks.assert_close(
        "rms_norm", normed, want(lambda a, w: reference.rms_norm(a, w, 1e-5), x, weight), rtol, tol_scale
    )
    summed, normed = ops.rms_norm(x, weight, 1e-5, update=update, backend="triton")
    assert torch.equal(summed, x + update), "rms_norm: the residual sum differs from x + update"
    expected = want(lambda a, w: reference.rms_norm(a, w, 1e-5), x + update, weight)
    checks.assert_close("rms_norm + residual", normed, expected, rtol, tol_scale)

    qkv = torch.randn(B, L, 3 * d, device=device).to(dtype)
    before = qkv.clone()
    q = qkv[..., :d].unflatten(-1, (heads, d // heads))
    assert ops.rope_(q, 500000.0, backend="triton") is q
    expected = want(lambda a: reference.rope(a, 500000.0), before[..., :d].unflatten(-1, (heads, d // heads)))
    checks.assert_close("rope_", q, expected, rtol, tol_scale)
    assert torch.equal(qkv[..., d:], before[..., d:]), "rope_ touched k or v"

    gate_up = (torch.randn(B, L, 2 * F, device=device) * 3).to(dtype)
    gate, up = gate_up[..., :F], gate_up[..., F:]
    out = ops.swiglu(gate, up, backend="triton")
    checks.assert_close("swiglu", out, want(reference.swiglu, gate, up), rtol, 1e-6 if exact else 1e-3)


def stage_correct(args, backend: str) -> int:
    """The triton or cuda stage: every correctness case on ``backend`` (the torch backend for cuda under --tiny)."""
    stage = Stage(backend, args.budget)
    if args.tiny and backend == "cuda":
        print("tiny: the cuda backend needs a GPU; its cases run on the torch backend here")
        backend = "torch"
    elif not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    try:
        mdfast.token_stats(torch.randn(1, 2, 64, device="cpu" if args.tiny else "cuda"), 2, backend=backend)
    except Exception as error:
        return skip(f"backend {backend!r} unavailable: {str(error).splitlines()[0][:300]}")
    correctness(stage, backend, args.tiny, body=backend == "triton")
    return stage.finish()
