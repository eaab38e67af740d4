"""Backend selection, and that every backend this machine can build is actually built."""

from __future__ import annotations

import importlib.util
import shutil
import warnings

import pytest
import torch

import mdfast
from mdfast import backends, ops


def test_cpu_extension_builds_where_a_toolchain_exists():
    """Where g++ and ninja exist the C++ backend must load: a broken build fails here instead of
    silently skipping every CPU-backend test."""
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler on this machine")
    assert backends.get("cpu").unavailable_reason() is None


def test_triton_backend_loads_where_triton_is_installed():
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    assert backends.get("triton").unavailable_reason() is None


def test_auto_picks_the_compiled_backend_on_cpu():
    if backends.get("cpu").unavailable_reason() is not None:
        pytest.skip("the C++ backend is unavailable here")
    assert ops.resolve_backend("auto", torch.device("cpu"), torch.float32) == "cpu"
    assert ops.resolve_backend("auto", torch.device("cpu"), torch.float64) == "torch"
    assert ops.resolve_backend("torch", torch.device("cpu"), torch.float32) == "torch"
    with pytest.raises(ValueError, match="runs on cuda tensors"):
        ops.resolve_backend("cuda", torch.device("cpu"), torch.float32)


def test_available_lists_every_backend_with_a_reason():
    listed = backends.available()
    assert set(listed) == set(backends.NAMES)
    assert listed["torch"] is None
    for reason in listed.values():
        assert reason is None or (isinstance(reason, str) and reason)


def test_unavailable_backend_explains_itself():
    broken = backends.KernelBackend("broken", "cpu", lambda: (_ for _ in ()).throw(RuntimeError("no compiler")))
    assert broken.unavailable_reason() == "no compiler"
    with pytest.raises(RuntimeError, match="backend 'broken' is unavailable: no compiler"):
        broken.token_stats(torch.randn(1, 1, 10), 4, False)


def test_auto_falls_back_to_torch_with_one_warning(monkeypatch):
    broken = backends.KernelBackend("cpu", "cpu", lambda: (_ for _ in ()).throw(RuntimeError("no compiler")))
    monkeypatch.setitem(backends._BACKENDS, "cpu", broken)
    monkeypatch.setattr(ops, "_warned", set())
    with pytest.warns(RuntimeWarning, match=r"using the eager torch backend on cpu \(cpu: no compiler\)"):
        stats = mdfast.token_stats(torch.randn(3, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mdfast.token_stats(torch.randn(3, 50))  # warned once only
    assert stats.argmax.shape == (3,)
    with pytest.raises(RuntimeError, match="backend 'cpu' is unavailable: no compiler"):
        mdfast.token_stats(torch.randn(3, 50), backend="cpu")

