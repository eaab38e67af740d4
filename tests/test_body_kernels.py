"""The fused pieces of the LLaDA body (SPEC 5): every backend against the float64 reference."""

from __future__ import annotations

import pytest
import torch
from checks import assert_bitwise_equal, assert_close, interpreted, require_backend

import mdfast.ops as ops
from mdfast import reference

BACKENDS = ["torch", "triton"]


def dtypes_for(backend):
    """float32 everywhere; bfloat16 where it is real (not under the Triton interpreter)."""
    return [torch.float32] if interpreted(backend) else [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 7, 96), (3, 5, 4096)])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "residual"])
def test_rms_norm(backend, shape, fused):
    device = require_backend(backend)
    for dtype in dtypes_for(backend):
        x = torch.randn(shape, device=device).to(dtype)
        update = torch.randn(shape, device=device).to(dtype) if fused else None
        weight = (1 + 0.1 * torch.randn(shape[-1], device=device)).to(dtype)
        out = ops.rms_norm(x, weight, 1e-5, update=update, backend=backend)
        summed = x + update if fused else x
        if dtype == torch.float32:
            want = reference.rms_norm(summed.double().cpu(), weight.double().cpu(), 1e-5)
            normed = out[1] if fused else out
            assert_close("rms_norm", normed, want, 1e-5, scale=1.0)
        else:  # bf16: the same roundings as the eager evaluation, to one bf16 step
            want = reference.rms_norm(summed, weight, 1e-5)
            normed = out[1] if fused else out
            assert_close("rms_norm", normed, want.float(), 2**-7, scale=1.0)
        if fused:
            assert torch.equal(out[0], summed)
        again = ops.rms_norm(x, weight, 1e-5, update=update, backend=backend)
        assert_bitwise_equal("rms_norm", normed, again[1] if fused else again)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 3, 2, 8), (2, 37, 4, 64), (1, 64, 3, 128)])
def test_rope_in_place(backend, shape):
    device = require_backend(backend)
    for dtype in dtypes_for(backend):
        wide = torch.randn(shape[0], shape[1], shape[2] + 1, shape[3], device=device).to(dtype)
        x = wide[:, :, 1:]  # strided heads
        before, untouched = x.clone(), wide[:, :, 0].clone()
        out = ops.rope_(x, 500000.0, backend=backend)
        assert out is x
        if dtype == torch.float32:
            assert_close("rope", x, reference.rope(before.double().cpu(), 500000.0), 1e-5, scale=1.0)
        else:
            assert_close("rope", x, reference.rope(before, 500000.0).float(), 2**-7, scale=1.0)
        assert torch.equal(wide[:, :, 0], untouched), "only x's heads are rotated"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_row", [False, True], ids=["shared", "per_row"])
def test_rope_with_tables_is_rope_without(backend, per_row):
    """ops.rope_(x, theta, tables=reference.rope_tables(...)) gives the bits the call without tables gives.

    (L, 1, hd) tables of positions 0..L-1, or (B, L, 1, hd) ones; the Triton kernel ignores them.
    """
    device = require_backend(backend)
    dtypes = dtypes_for(backend) + ([torch.float64] if backend == "torch" else [])
    for dtype in dtypes:
        x = torch.randn(2, 9, 5, 16, device=device).to(dtype)[:, :, 1:]  # strided heads
        positions = torch.arange(9, device=device)
        tables = reference.rope_tables(
            positions.expand(2, 9) if per_row else positions, 16, 500000.0, reference.compute_dtype(x)
        )
        want = ops.rope_(x.clone(), 500000.0, backend=backend)
        got = ops.rope_(x, 500000.0, tables=tables, backend=backend)
        assert got is x
        assert_bitwise_equal(f"rope {dtype}", got, want)


def test_rope_reference_forms_agree():
    """reference.rope (u cos + roll(u, hd/2) sin_rot, into ``out``) is SPEC 5's u cos + rot(u) sin bit for bit."""
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(2, 7, 3, 8).to(dtype)
        compute = reference.compute_dtype(x)
        a = torch.arange(7, dtype=compute)[:, None] * reference.rope_inv_freq(8, 10000.0, dtype=compute)
        angles = torch.cat([a, a], dim=-1)[:, None]
        u = x.to(compute)
        spec = (u * torch.cos(angles) + torch.cat([-u[..., 4:], u[..., :4]], dim=-1) * torch.sin(angles)).to(dtype)
        assert_bitwise_equal(f"rope {dtype}", reference.rope(x, 10000.0), spec)
        into = x.clone()
        assert reference.rope(into, 10000.0, out=into) is into
        assert_bitwise_equal(f"rope out=x {dtype}", into, spec)


def test_rope_bad_tables_are_named():
    x = torch.randn(1, 4, 2, 8)
    cos, sin_rot = reference.rope_tables(torch.arange(4), 8, 10000.0)
    with pytest.raises(TypeError, match=r"tables: expected a pair \(cos, sin_rot\)"):
        ops.rope_(x, 10000.0, tables=cos)
    with pytest.raises(TypeError, match=r"tables: sin_rot must be torch\.float32"):
        ops.rope_(x, 10000.0, tables=(cos, sin_rot.double()))
    with pytest.raises(ValueError, match=r"tables: cos must have shape \(L, 1, hd\) = \(4, 1, 8\)"):
        ops.rope_(x, 10000.0, tables=(cos[:3], sin_rot[:3]))
    with pytest.raises(ValueError, match="tables: cos must be on"):
        ops.rope_(x, 10000.0, tables=(cos.to("meta"), sin_rot))


def test_rope_computes_inv_freq_once():
    """The Triton RoPE keeps inv_freq per (hd, theta, device): a forward (and a captured graph) runs
    the kernel alone, not ~256 tiny kernels recomputing it."""
    device = require_backend("triton")
    import mdfast.backends.triton as triton_backend

    x = torch.randn(1, 4, 2, 16, device=device)
    ops.rope_(x, 12345.0, backend="triton")
    key = (16, 12345.0, x.device)
    first = triton_backend._inv_freq[key]
    ops.rope_(torch.randn(2, 3, 1, 16, device=device), 12345.0, backend="triton")
    assert triton_backend._inv_freq[key] is first
    assert torch.equal(first, reference.rope_inv_freq(16, 12345.0, x.device))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 5), (2, 9, 333), (1, 4, 3000)])
def test_swiglu(backend, shape):
    device = require_backend(backend)
    for dtype in dtypes_for(backend):
        gate = (torch.randn(shape, device=device) * 3).to(dtype)
        up = torch.randn(shape, device=device).to(dtype)
        out = ops.swiglu(gate, up, backend=backend)
        if dtype == torch.float32:
            assert_close("swiglu", out, reference.swiglu(gate.double().cpu(), up.double().cpu()), 1e-5, scale=1e-6)
        else:
            assert_close("swiglu", out, reference.swiglu(gate, up).float(), 2**-7, scale=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1, 5), (2, 9, 333), (1, 4, 3000)])
def test_swiglu_strided(backend, shape, monkeypatch):
    """gate and up as the two halves of one fused product (gu[..., :F], gu[..., F:]), and up as a
    slice of a wider buffer (another row stride and offset): the Triton kernel reads them in
    place, no copy; a last dimension that is not dense is copied first. All against the reference."""
    device = require_backend(backend)
    *lead, F = shape
    if backend == "triton":  # the kernel must receive the views themselves
        import mdfast.backends.triton as kernel_module

        seen, kernel = [], kernel_module.swiglu
        monkeypatch.setattr(
            kernel_module, "swiglu", lambda gate, up: seen.append((gate.data_ptr(), up.data_ptr())) or kernel(gate, up)
        )
    for dtype in dtypes_for(backend):
        gu = (torch.randn(*lead, 2 * F, device=device) * 3).to(dtype)
        wide = torch.randn(*lead, F + 7, device=device).to(dtype)
        cases = [gu.chunk(2, dim=-1), (gu[..., :F], wide[..., 3 : F + 3]), (gu[..., ::2], gu[..., 1::2])]
        for gate, up in cases:
            out = ops.swiglu(gate, up, backend=backend)
            assert out.shape == gate.shape and out.is_contiguous()
            if dtype == torch.float32:
                assert_close("swiglu", out, reference.swiglu(gate.double().cpu(), up.double().cpu()), 1e-5, scale=1e-6)
            else:
                assert_close("swiglu", out, reference.swiglu(gate, up).float(), 2**-7, scale=1e-3)
        if backend == "triton":
            element = gu.element_size()
            assert seen[-3:-1] == [
                (gu.data_ptr(), gu.data_ptr() + F * element),
                (gu.data_ptr(), wide.data_ptr() + 3 * element),
            ]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\)"):
        ops.rms_norm(torch.randn(2, 8), torch.ones(7), 1e-5)
    with pytest.raises(ValueError, match="even hd"):
        ops.rope_(torch.randn(1, 2, 3, 5), 10000.0)
    with pytest.raises(ValueError, match="body kernels run on"):
        ops.swiglu(torch.randn(3), torch.randn(3), backend="cpu")
    with pytest.raises(TypeError, match="up: expected dtype"):
        ops.swiglu(torch.randn(3), torch.randn(3, dtype=torch.float64))


def test_gradients_take_the_reference():
    """The Triton body kernels have no backward: "auto" takes the differentiable reference when a
    gradient is wanted, and an explicit "triton" refuses rather than cut the graph."""
    device = require_backend("triton")
    gate, up = torch.randn(3, 8, device=device, requires_grad=True), torch.randn(3, 8, device=device)
    ops.swiglu(gate, up).sum().backward()
    assert gate.grad is not None and torch.isfinite(gate.grad).all()
    with pytest.raises(ValueError, match="no backward"):
        ops.swiglu(gate, up, backend="triton")
    with torch.no_grad():
        ops.swiglu(gate, up, backend="triton")  # no gradient wanted: the kernel runs
