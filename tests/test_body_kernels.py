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
