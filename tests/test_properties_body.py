"""Property-based tests of the LLaDA body's ``rms_norm``, ``rope_`` and ``swiglu`` (SPEC 5) on every backend.

Hypothesis draws shapes (a width of 1, odd widths, widths beside the Triton kernels' power-of-two
blocks), the dtype (float32, bfloat16, float16), the layout (contiguous, or a slice of a wider
tensor: strided rows, heads or halves of a fused product) and special entries (huge or tiny values,
NaN, +-inf). Each case matches ``mdfast.reference``: in float64 within 1e-5 (|want| + scale) for
float32, and the eager evaluation in the inputs' own dtype to one bfloat16 step (2^-7) below it (the
bound tests/test_body_kernels.py uses), with the same NaN / inf entries. The body ops check shapes
and dtypes, not values: a non-finite entry propagates as in the reference (no error).
"""

from __future__ import annotations

import math

import pytest
import torch
from checks import assert_close
from hypothesis import given
from hypothesis import strategies as st

import mdfast.ops as ops
from mdfast import backends, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
BACKENDS = ["torch", "triton"]
WIDTHS = [1, 2, 3, 7, 8, 15, 16, 17, 63, 64, 65, 127, 128, 129, 1023, 1024, 1025]
KINDS = ["huge", "tiny", "nan", "+inf", "-inf"]


def device_of(name: str) -> str:
    """Skip (saying why) where the backend cannot run a property run; the device of its inputs."""
    if name == "triton" and not torch.cuda.is_available():
        pytest.skip(
            "backend 'triton' needs a CUDA device for property runs (the Triton interpreter is too slow for them; "
            "tests/test_body_kernels.py runs it at fixed shapes)"
        )
    reason = backends.get(name).unavailable_reason()
    if reason is not None:
        pytest.fail(f"backend {name!r} does not load here: {reason}")
    return "cuda" if name == "triton" else "cpu"


@st.composite
def tensors(draw, shape, *, huge: float):
    """A float32 tensor of ``shape`` (bulk values from a drawn seed) with a few special entries."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    x = torch.randn(shape, generator=g) * draw(st.sampled_from([0.1, 1.0, 3.0]))
    flat = x.view(-1)
    specials = draw(st.lists(st.tuples(st.integers(0, flat.numel() - 1), st.sampled_from(KINDS)), max_size=3))
    for index, kind in specials:
        flat[index] = {"huge": huge, "tiny": 1e-30, "nan": math.nan, "+inf": math.inf, "-inf": -math.inf}[kind]
    return x


def strided(x: torch.Tensor, sliced: bool) -> torch.Tensor:
    """``x`` itself, or a view of the same values inside a wider tensor (another row stride and an offset)."""
    if not sliced:
        return x
    wide = torch.zeros(*x.shape[:-1], x.shape[-1] + 5, dtype=x.dtype, device=x.device)
    wide[..., 2 : x.shape[-1] + 2] = x
    return wide[..., 2 : x.shape[-1] + 2]


def check(name: str, got: torch.Tensor, want64: torch.Tensor, want_eager: torch.Tensor, scale) -> None:
    """float32: the float64 reference within 1e-5; lower precision: the eager reference to 2^-7."""
    if got.dtype == torch.float32:
        assert_close(name, got, want64, 1e-5, scale)
    else:
        assert_close(name, got.float(), want_eager.float(), 2**-7, scale)


def lead_shapes():
    return st.lists(st.integers(1, 4), min_size=0, max_size=2)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data(), lead=lead_shapes(), d=st.sampled_from(WIDTHS), dtype=st.sampled_from(DTYPES))
def test_rms_norm_property(backend, data, lead, d, dtype):
    """RMSNorm(x; w), alone and fused with the residual add; |x| up to 1e15 (x^2 stays finite in float32,
    where SPEC 5 evaluates it: beyond ~1.8e19 float32 overflows by definition)."""
    device = device_of(backend)
    shape = (*lead, d)
    x = data.draw(tensors(shape, huge=1e15)).to(dtype)
    weight = (1 + 0.1 * torch.randn(d)).to(dtype)
    fused = data.draw(st.booleans())
    update = data.draw(tensors(shape, huge=1e15)).to(dtype) if fused else None
    summed = x if update is None else x + update
    sliced = data.draw(st.booleans())
    args = [strided(v.to(device), sliced) if v is not None else None for v in (x, weight, update)]
    out = ops.rms_norm(args[0], args[1], 1e-5, update=args[2], backend=backend)
    normed = out[1] if fused else out
    if fused:
        torch.testing.assert_close(out[0].cpu(), summed, rtol=0, atol=0, equal_nan=True)  # x + update in x's dtype
    want64 = reference.rms_norm(summed.double(), weight.double(), 1e-5)
    check("rms_norm", normed.cpu(), want64, reference.rms_norm(summed, weight, 1e-5), 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    data=st.data(),
    B=st.integers(1, 2),
    L=st.integers(1, 40),
    H=st.integers(1, 3),
    half=st.sampled_from([1, 2, 3, 4, 8, 32, 64]),
    dtype=st.sampled_from(DTYPES),
)
def test_rope_property(backend, data, B, L, H, half, dtype):
    """RoPE in place on x (B, L, H, hd), hd = 2 half, dense or as every other head of a wider tensor,
    with or without shared tables; the scale is the size of the two terms u cos and rot(u) sin."""
    device = device_of(backend)
    hd = 2 * half
    theta = data.draw(st.sampled_from([10000.0, 500000.0]))
    values = data.draw(tensors((B, L, H, hd), huge=1e30)).to(dtype)
    if data.draw(st.booleans()):  # strided heads: every other head of a tensor twice as wide
        wide = torch.zeros(B, L, 2 * H, hd, dtype=dtype, device=device)
        wide[:, :, ::2] = values.to(device)
        x = wide[:, :, ::2]
    else:
        x = values.to(device).clone()
    tables = None
    if data.draw(st.booleans()):
        table_dtype = reference.compute_dtype(x)
        tables = reference.rope_tables(torch.arange(L, device=device), hd, theta, table_dtype)
    out = ops.rope_(x, theta, tables=tables, backend=backend)
    assert out is x
    scale = values.double().abs() + values.double().roll(half, dims=-1).abs()
    want64 = reference.rope(values.double(), theta)
    check("rope", x.cpu(), want64, reference.rope(values, theta), scale)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data(), lead=lead_shapes(), F=st.sampled_from(WIDTHS), dtype=st.sampled_from(DTYPES))
def test_swiglu_property(backend, data, lead, F, dtype):
    """SiLU(gate) * up on dense tensors, the halves of one fused product, and slices of wider tensors."""
    device = device_of(backend)
    gate = data.draw(tensors((*lead, F), huge=1e15)).to(dtype)  # products stay finite in float32
    up = data.draw(tensors((*lead, F), huge=1e15)).to(dtype)
    layout = data.draw(st.sampled_from(["dense", "fused halves", "sliced"]))
    if layout == "fused halves":
        gu = torch.cat([gate, up], dim=-1).to(device)
        args = (gu[..., :F], gu[..., F:])
    else:
        args = tuple(strided(v.to(device), layout == "sliced") for v in (gate, up))
    out = ops.swiglu(*args, backend=backend)
    assert out.shape == gate.shape and out.is_contiguous()
    want64 = reference.swiglu(gate.double(), up.double())
    check("swiglu", out.cpu(), want64, reference.swiglu(gate, up), 1e-6)
