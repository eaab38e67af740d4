"""Backend selection, that every backend this machine can build is actually built, and how the
native build behaves: what it says, where it caches, how it fails."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import mdfast
from mdfast import backends, ops
from mdfast.backends import native


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


# --------------------------------------------------------------------------------------------
# The just-in-time build (mdfast/backends/native.py), on a tiny extension with no torch headers
# --------------------------------------------------------------------------------------------

TINY_SOURCE = """#include <pybind11/pybind11.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""

LOAD_TINY = """
import sys
from pathlib import Path
from mdfast.backends import native
native.csrc_dir = lambda: Path(sys.argv[1])
spec = native.ExtensionSpec(name="mdfast_tiny", prebuilt="mdfast._no_tiny", sources=("tiny.cpp",), cflags=("-O0",))
try:
    print(native.load(spec).answer())
except native.ExtensionUnavailable as error:
    print("unavailable:", error)
"""


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """An extension spec over one pybind11 file, its sources and build cache under tmp_path."""
    if importlib.util.find_spec("ninja") is None and shutil.which("ninja") is None:
        pytest.skip("ninja is not installed")
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "tiny.cpp").write_text(TINY_SOURCE)
    monkeypatch.setattr(native, "csrc_dir", lambda: csrc)
    monkeypatch.setenv("MDFAST_BUILD_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(native.FAILED_BUILDS_VARIABLE, "")  # restored after the test
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_failed", {})
    return native.ExtensionSpec(name="mdfast_tiny", prebuilt="mdfast._no_tiny", sources=("tiny.cpp",), cflags=("-O0",))


def load_in_a_new_process(csrc: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD_TINY, str(csrc)], capture_output=True, text=True, env=dict(os.environ), timeout=300
    )


def test_the_build_says_what_where_and_how_long_and_is_cached(tiny, capfd):
    if shutil.which(os.environ.get("CXX", "c++")) is None:
        pytest.skip("no C++ compiler on this machine")
    module = native.load(tiny)
    assert module.answer() == 42
    folder = native.build_dir(tiny)
    assert module.__name__ == folder.name == native.module_name(tiny)
    assert folder.name.startswith("mdfast_tiny_") and len(folder.name) == len("mdfast_tiny_") + 10
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert "compiling the C++ extension" in err[0] and folder.name in err[0] and str(folder) in err[0]
    assert "about a minute" in err[0]
    assert err[1].startswith(f"mdfast: compiled {folder.name} in ") and err[1].endswith(" s")

    library = folder / f"{folder.name}.so"
    built = library.stat().st_mtime_ns
    again = load_in_a_new_process(native.csrc_dir())  # a new process: loads, compiles nothing
    assert again.stdout.strip() == "42", again.stderr
    assert "compiling" not in again.stderr
    assert library.stat().st_mtime_ns == built


def test_the_cache_is_keyed_by_sources_python_and_torch(tiny, monkeypatch):
    name = native.module_name(tiny)
    with monkeypatch.context() as patched:
        patched.setattr(torch, "__version__", "0.0.0-another-torch")
        other_torch = native.module_name(tiny)
    assert name != other_torch, "another torch builds elsewhere"
    (native.csrc_dir() / "tiny.cpp").write_text(TINY_SOURCE + "// edited\n")
    assert native.module_name(tiny) not in (name, other_torch), "edited sources build elsewhere"
    (native.csrc_dir() / "tiny.cpp").write_text(TINY_SOURCE)
    (native.csrc_dir() / "extra.h").write_text("#pragma once\n")
    assert native.module_name(tiny) != name, "a header is part of the key"


def test_a_failed_build_is_one_line_with_its_log_and_not_retried(tiny, monkeypatch, capfd):
    monkeypatch.setenv("CXX", "/nonexistent/c++")  # no compiler
    with pytest.raises(native.ExtensionUnavailable) as failure:
        native.load(tiny)
    reason = str(failure.value)
    assert "\n" not in reason and "the build failed" in reason and "/nonexistent/c++" in reason
    log = Path(reason.rsplit("full log: ", 1)[1])
    assert log.is_file() and log.parent == native.build_dir(tiny) and "/nonexistent/c++" in log.read_text()
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 2 and "compiling" in err[0] and reason in err[1], err
    assert native.module_name(tiny) in json.loads(os.environ[native.FAILED_BUILDS_VARIABLE])
    with pytest.raises(native.ExtensionUnavailable, match="the build failed"):
        native.load(tiny)  # the same process: the kept reason

    monkeypatch.delenv("CXX")  # a working toolchain now, but the process tree remembers the failure
    child = load_in_a_new_process(native.csrc_dir())
    assert child.stdout.startswith("unavailable:") and "not tried again" in child.stdout, child.stdout + child.stderr
    assert "compiling" not in child.stderr


def test_without_ninja_the_reason_is_one_line(tiny, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: False)
    with pytest.raises(native.ExtensionUnavailable, match=r"ninja is not installed \(pip install ninja\)$"):
        native.load(tiny)
