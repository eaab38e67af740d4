"""The just-in-time build under concurrency and after a failure (mdfast/backends/native.py, mdfast info).

Processes that load one build at once take turns on a flock in its cache folder: one builds, the
others wait and import what it built, never a half-written library. A failed build leaves its log,
which a later process (``mdfast info``) reports.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mdfast.cli
from mdfast.backends import native
from mdfast.cli import info

# A child process whose build is a stub: once both children are about to take the lock (each touches
# a file in argv[2] just before), it writes the library in two halves, seconds apart, and "imports" it by reading
# it back; it prints what it did and what it read.
STUB_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mdfast.backends import native

    def build(spec, name, folder):
        deadline = time.monotonic() + 120
        while len(list(Path(sys.argv[2]).iterdir())) < int(sys.argv[3]) and time.monotonic() < deadline:
            time.sleep(0.05)
        library = folder / f"{name}.so"
        with open(library, "w") as f:
            f.write("first half;")
            f.flush()
            time.sleep(3)
            f.write("second half")
        print("built")
        return library.read_text()

    def import_library(name, library):
        print("imported")
        return library.read_text()

    def folder_lock(folder, lock=native._folder_lock):
        (Path(sys.argv[2]) / str(time.monotonic_ns())).touch()
        return lock(folder)

    native.csrc_dir = lambda: Path(sys.argv[1])
    native._build, native._import_library, native._folder_lock = build, import_library, folder_lock
    spec = native.ExtensionSpec(name="mdfast_stub", prebuilt="mdfast._no_stub", sources=("stub.cpp",), cflags=())
    print("read", native.load(spec))
    """
)

TINY_SOURCE = """#include <pybind11/pybind11.h>
int answer() { return 42; }
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", &answer); }
"""

TINY_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mdfast.backends import native
    native.csrc_dir = lambda: Path(sys.argv[1])
    spec = native.ExtensionSpec(name="mdfast_tiny", prebuilt="mdfast._no_tiny", sources=("tiny.cpp",), cflags=("-O0",))
    module = native.load(spec)
    print(module.answer(), module.__file__)
    """
)

REAL_CHILD = textwrap.dedent(
    """
    from mdfast.backends import native
    module = native.load(native.CPU_EXTENSION)
    print(module.__file__)
    """
)


def start_children(script: str, argv: list[str], cache: Path, count: int = 2) -> list[subprocess.Popen]:
    env = {**os.environ, "MDFAST_BUILD_DIR": str(cache), native.FAILED_BUILDS_VARIABLE: ""}
    return [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(count)
    ]


def finish(children: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    results = []
    for child in children:
        out, err = child.communicate(timeout=timeout)
        assert child.returncode == 0, err
        results.append((out, err))
    return results


@pytest.fixture
def sources(tmp_path):
    """A csrc folder for a stub or tiny extension."""
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    (csrc / "stub.cpp").write_text("// never compiled\n")
    (csrc / "tiny.cpp").write_text(TINY_SOURCE)
    return csrc


@pytest.mark.skipif(native.fcntl is None, reason="no fcntl.flock on this platform: builds are not locked")
def test_two_processes_loading_at_once_one_builds_the_other_waits_for_the_whole_library(sources, tmp_path):
    (tmp_path / "ready").mkdir()
    argv = [str(sources), str(tmp_path / "ready"), "2"]
    results = finish(start_children(STUB_CHILD, argv, tmp_path / "cache"), timeout=300)
    outs = [out.split("\n") for out, _ in results]
    assert sorted(out[0] for out in outs) == ["built", "imported"], outs
    assert all(out[1] == "read first half;second half" for out in outs), "nobody reads a half-written library"
    (waited,) = [err for (out, err) in results if out.startswith("imported")]
    assert "mdfast: waiting for another process that builds or loads mdfast_stub_" in waited


def test_the_lock_file_sits_in_the_cache_folder_whose_name_is_the_key(sources, tmp_path):
    (tmp_path / "ready").mkdir()
    argv = [str(sources), str(tmp_path / "ready"), "1"]
    finish(start_children(STUB_CHILD, argv, tmp_path / "cache", count=1), timeout=300)
    (folder,) = (tmp_path / "cache").iterdir()
    assert folder.name.startswith("mdfast_stub_") and len(folder.name) == len("mdfast_stub_") + 10
    assert (folder / native.LOCK_FILE).is_file() and (folder / f"{folder.name}.so").is_file()


def test_two_processes_building_a_real_extension_at_once_load_the_same_library(sources, tmp_path):
    if shutil.which(os.environ.get("CXX", "c++")) is None or importlib.util.find_spec("ninja") is None:
        pytest.skip("needs a C++ compiler and ninja")
    results = finish(start_children(TINY_CHILD, [str(sources)], tmp_path / "cache"), timeout=600)
    answers = [out.split() for out, _ in results]
    assert [a[0] for a in answers] == ["42", "42"] and answers[0][1] == answers[1][1], answers
    assert sum("compiling" in err for _, err in results) == 1, [err for _, err in results]


@pytest.mark.slow
def test_two_processes_building_the_cpu_extension_at_once_load_the_same_library(tmp_path):
    """The real extension (minutes): both processes get the library that one of them built."""
    if shutil.which(os.environ.get("CXX", "c++")) is None or importlib.util.find_spec("ninja") is None:
        pytest.skip("needs a C++ compiler and ninja")
    if importlib.util.find_spec(native.CPU_EXTENSION.prebuilt) is not None:
        pytest.skip("the CPU extension was compiled at install time (MDFAST_BUILD_EXT=1)")
    results = finish(start_children(REAL_CHILD, [], tmp_path / "cache"), timeout=1800)
    files = [out.strip() for out, _ in results]
    assert files[0] == files[1] and Path(files[0]).is_file(), files
    assert sum("compiling" in err for _, err in results) == 1, [err for _, err in results]


# ---------------------------------------------------------------------------------------------
# A failed build, as a later `mdfast info` reports it
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def new_cache(monkeypatch, tmp_path):
    """An empty build cache and a process that has loaded nothing; the failure memory is restored after."""
    if importlib.util.find_spec(native.CPU_EXTENSION.prebuilt) is not None:
        pytest.skip("the CPU extension was compiled at install time (MDFAST_BUILD_EXT=1)")
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "is_ninja_available", lambda: True)
    monkeypatch.setenv("MDFAST_BUILD_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(native.FAILED_BUILDS_VARIABLE, "")
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_failed", {})
    return cpp_extension


def test_info_reports_a_failed_build_and_its_log(new_cache, monkeypatch, capsys):
    def failing_load(**kwargs):
        raise RuntimeError("Error building extension: stub.cpp:1: error: the stub compiler failed")

    monkeypatch.setattr(new_cache, "load", failing_load)
    assert info.backend_status("cpu").startswith("not compiled yet")
    with pytest.raises(native.ExtensionUnavailable, match="the build failed"):
        native.load(native.CPU_EXTENSION)
    capsys.readouterr()

    monkeypatch.setattr(native, "_failed", {})  # what a new process knows: only the cache folder
    monkeypatch.setenv(native.FAILED_BUILDS_VARIABLE, "")
    log = native.build_dir(native.CPU_EXTENSION) / native.BUILD_LOG
    reason, where = native.build_failure(native.CPU_EXTENSION)
    assert where == log and "the stub compiler failed" in reason and "\n" not in reason
    assert mdfast.cli.main(["info"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["cpu"]]
    assert "the last build failed" in line and "the stub compiler failed" in line and str(log) in line
    assert "not compiled yet" not in line
    assert "the stub compiler failed" in log.read_text()


def test_a_build_that_fails_before_compiling_leaves_its_reason_too(new_cache, monkeypatch):
    monkeypatch.setattr(new_cache, "is_ninja_available", lambda: False)
    with pytest.raises(native.ExtensionUnavailable, match="ninja is not installed"):
        native.load(native.CPU_EXTENSION)
    reason, log = native.build_failure(native.CPU_EXTENSION)
    assert "ninja is not installed" in reason and log.is_file()
    assert "ninja is not installed" in info.backend_status("cpu")


def test_a_later_successful_build_clears_the_failure(new_cache, monkeypatch):
    monkeypatch.setattr(new_cache, "is_ninja_available", lambda: False)
    with pytest.raises(native.ExtensionUnavailable):
        native.load(native.CPU_EXTENSION)
    assert native.build_failure(native.CPU_EXTENSION) is not None

    def stub_load(name, build_directory, **kwargs):
        (Path(build_directory) / f"{name}.so").write_bytes(b"")
        return "the module"

    monkeypatch.setattr(new_cache, "is_ninja_available", lambda: True)
    monkeypatch.setattr(new_cache, "load", stub_load)
    monkeypatch.setattr(native, "_failed", {})
    monkeypatch.setenv(native.FAILED_BUILDS_VARIABLE, "")
    assert native.load(native.CPU_EXTENSION) == "the module"
    assert native.build_failure(native.CPU_EXTENSION) is None
    assert not (native.build_dir(native.CPU_EXTENSION) / native.BUILD_LOG).exists()
