"""Loading the compiled extensions in ``csrc/``: prebuilt at install time, or built just in time.

An extension is looked for as the module built by ``MDFAST_BUILD_EXT=1 pip install
--no-build-isolation -e .``; failing that, it is compiled with ninja through
``torch.utils.cpp_extension.load`` on first use, into a cache folder ``<root>/<name>_<hash>`` that
holds the module ``<name>_<hash>``: root is ``MDFAST_BUILD_DIR`` or torch's extension cache
(``~/.cache/torch_extensions``, ``TORCH_EXTENSIONS_DIR``), and the hash covers the sources and
headers, the flags, the Python version and the torch version. So two checkouts or environments never
build over each other, and a process that finds the built module imports it without compiling.
Processes that load the same build at once take turns: an exclusive ``fcntl.flock`` on
``mdfast.lock`` in the cache folder is held around the look for the module, its build and its
import, so none imports a library another is still writing (the later ones wait, then import it).

The build says so on stderr: one line when it starts (the extension, its cache folder, about how
long) and one when it ends (the seconds it took). Where it fails (no compiler, no ninja, no nvcc) the
reason is one line that names the full log (``build.log`` in the cache folder, removed by a later
successful build; ``build_failure`` and ``mdfast info`` report it); it is kept, reported
by ``mdfast.backends.available()``, and remembered in the environment variable
``MDFAST_BUILD_FAILED``, which child processes inherit: no process of the tree tries that build again.
Nothing is raised at import.

The top of this file holds only plain constants and the standard library (and torch, which the
install-time build needs anyway): ``setup.py`` runs it through runpy, before mdfast is installed, so
that the install-time and the just-in-time builds compile the same sources with the same flags.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; builds are not locked there
    fcntl = None


@dataclass(frozen=True)
class ExtensionSpec:
    name: str  # the just-in-time module's name, before its hash
    prebuilt: str  # module name of the install-time build
    sources: tuple[str, ...]  # relative to csrc/
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    cuda_cflags: tuple[str, ...] = ()


# torch's own libraries (libtorch_cpu, libc10)
TORCH_LIBRARY_DIR = Path(torch.__file__).parent / "lib"

# -march=native: the extension is compiled on the machine that runs it (either build above). The
# C++ standard is the one torch.utils.cpp_extension picks for its own headers. -fopenmp-simd, not
# -fopenmp: the `#pragma omp simd` loops vectorize as before, and no OpenMP runtime is linked; the
# kernels run on the calling thread and torch's inter-op pool (csrc/cpu/parallel.h). The rpath
# names torch's libraries, so `ldd` resolves the library as the process does.
CPU_EXTENSION = ExtensionSpec(
    name="mdfast_cpu",
    prebuilt="mdfast._cpu_ext",
    sources=("bindings.cpp", "cpu/token_stats.cpp", "cpu/xflow_step.cpp"),
    cflags=("-O3", "-march=native", "-fopenmp-simd"),
    ldflags=(f"-Wl,-rpath,{TORCH_LIBRARY_DIR}",),
)

CUDA_EXTENSION = ExtensionSpec(
    name="mdfast_cuda",
    prebuilt="mdfast._cuda_ext",
    sources=("bindings.cpp", "cuda/token_stats.cu", "cuda/xflow_step.cu"),
    cflags=("-O3", "-DMDFAST_CUDA"),
    cuda_cflags=("-O3", "-DMDFAST_CUDA", "--use_fast_math"),
)

# A failed just-in-time build, remembered for the process tree: a JSON object {module: reason}.
FAILED_BUILDS_VARIABLE = "MDFAST_BUILD_FAILED"

_LIBRARY_SUFFIX = ".pyd" if os.name == "nt" else ".so"  # what cpp_extension.load links
BUILD_LOG = "build.log"  # in the cache folder: the log of its last failed build
LOCK_FILE = "mdfast.lock"  # in the cache folder: flock-ed around a look, build and import


def csrc_dir() -> Path:
    """``csrc/``: the repository folder for an editable install, ``mdfast/csrc`` otherwise."""
    import mdfast.csrc  # not at the top: setup.py runs this file before mdfast.csrc is installed

    return Path(mdfast.csrc.__file__).parent


class ExtensionUnavailable(RuntimeError):
    """The extension could not be imported or built; the message (one line) says why."""


def module_name(spec: ExtensionSpec) -> str:
    """``<name>_<hash>``: the module name of ``spec``'s just-in-time build.

    The hash (10 hex digits) covers everything the build depends on: the sources, every header under
    csrc/, the flags, the Python version and the torch (and CUDA) version.
    """
    root = csrc_dir()
    files = sorted({*spec.sources, *(str(p.relative_to(root)) for p in root.rglob("*") if p.suffix in (".h", ".cuh"))})
    digest = hashlib.sha256()
    for part in (
        repr((spec.cflags, spec.ldflags, spec.cuda_cflags)),
        f"python {sys.version_info[0]}.{sys.version_info[1]}",
        f"torch {torch.__version__} cuda {torch.version.cuda}",
    ):
        digest.update(part.encode())
    for relative in files:
        digest.update(relative.encode())
        digest.update((root / relative).read_bytes())
    return f"{spec.name}_{digest.hexdigest()[:10]}"


def build_dir(spec: ExtensionSpec) -> Path:
    """The cache folder of ``spec``'s just-in-time build (see the module docstring)."""
    from torch.utils import cpp_extension  # measured import cost: 0.4 s after torch, only a build needs it

    root = os.environ.get("MDFAST_BUILD_DIR") or cpp_extension.get_default_build_root()
    return Path(root) / module_name(spec)


def build_state(spec: ExtensionSpec) -> tuple[bool, str]:
    """Whether ``load(spec)`` gets the extension without compiling it, and where from; compiles nothing.

    Ready: loaded already, installed prebuilt, or built in its cache folder (whose name carries the
    hash of the sources); where from: the module name or the cache folder. ``mdfast info`` reports it.
    """
    if spec.name in _loaded:
        return True, "loaded"
    if importlib.util.find_spec(spec.prebuilt) is not None:
        return True, spec.prebuilt
    folder = build_dir(spec)
    return (folder / f"{module_name(spec)}{_LIBRARY_SUFFIX}").is_file(), str(folder)


def build_failure(spec: ExtensionSpec) -> tuple[str, Path] | None:
    """(reason, log) of the last just-in-time build of ``spec`` where it failed and none succeeded since, else None.

    Read from ``build.log`` in the cache folder (its last line is the one-line reason): a new
    process, ``mdfast info`` among them, sees the failure of an earlier one.
    """
    if build_state(spec)[0]:
        return None
    log = build_dir(spec) / BUILD_LOG
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    return (lines[-1] if lines else "no reason recorded"), log


_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}


def load(spec: ExtensionSpec):
    """The extension module for ``spec``; raises ``ExtensionUnavailable`` with the reason."""
    with _lock:
        if spec.name in _loaded:
            return _loaded[spec.name]
        if spec.name in _failed:
            raise ExtensionUnavailable(_failed[spec.name])
        try:
            module = _import_or_build(spec)
        except Exception as error:  # any failure of the toolchain becomes a reported reason
            reason = str(error) if isinstance(error, ExtensionUnavailable) else f"{type(error).__name__}: {error}"
            _failed[spec.name] = " ".join(reason.split())  # one line
            raise ExtensionUnavailable(_failed[spec.name]) from error
        _loaded[spec.name] = module
        return module


def _import_or_build(spec: ExtensionSpec):
    try:
        return importlib.import_module(spec.prebuilt)
    except ImportError:
        pass
    name = module_name(spec)
    folder = build_dir(spec)
    earlier = _remembered_failures().get(name)
    if earlier is not None:
        raise ExtensionUnavailable(f"{earlier} (not tried again in this process tree: {FAILED_BUILDS_VARIABLE})")
    with _folder_lock(folder):
        library = folder / f"{name}{_LIBRARY_SUFFIX}"
        if library.is_file():
            try:
                return _import_library(name, library)
            except ImportError:
                pass  # a broken leftover: build it again
        try:
            module = _build(spec, name, folder)
        except ExtensionUnavailable as error:
            _remember_failure(name, str(error))
            with contextlib.suppress(OSError), open(folder / BUILD_LOG, "a") as log:  # its last line: the reason
                log.write(f"{error}\n")
            raise
        (folder / BUILD_LOG).unlink(missing_ok=True)  # an earlier failure's log no longer applies
        return module


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """Holds an exclusive flock on ``folder/mdfast.lock`` (created with the folder); says so when it waits.

    Where the folder or its lock file cannot be created (a read-only cache), nothing is locked: a
    build there fails anyway, and importing a finished one needs no lock.
    """
    with contextlib.ExitStack() as stack:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = stack.enter_context(open(folder / LOCK_FILE, "a+")) if fcntl is not None else None
        except OSError:
            handle = None
        if handle is not None:
            if not _flock_within(handle, seconds=1.0):  # a quick import elsewhere passes silently
                print(f"mdfast: waiting for another process that builds or loads {folder.name}", file=sys.stderr)
                fcntl.flock(handle, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, handle, fcntl.LOCK_UN)
        yield


def _flock_within(handle, seconds: float) -> bool:
    """Tries to take an exclusive flock on ``handle`` for up to ``seconds`` (polling every 20 ms, asleep between)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _import_library(name: str, library: Path):
    found = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(found)
    found.loader.exec_module(module)
    return module


def _build(spec: ExtensionSpec, name: str, folder: Path):
    from torch.utils import cpp_extension  # measured import cost: 0.4 s after torch, only a build needs it

    if not cpp_extension.is_ninja_available():
        raise ExtensionUnavailable(f"{name}: ninja is not installed (pip install ninja)")
    if spec.cuda_cflags and cpp_extension.CUDA_HOME is None:
        raise ExtensionUnavailable(f"{name}: no CUDA toolkit found (set CUDA_HOME to a toolkit with nvcc)")
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is not None:  # we hold the folder's flock: a baton of torch's own here is a killed build's
        (folder / "lock").unlink(missing_ok=True)  # (cpp_extension.load would wait for it forever)
    kind = "CUDA" if spec.cuda_cflags else "C++"
    print(f"mdfast: compiling the {kind} extension {name} (first use: about a minute) in {folder}", file=sys.stderr)
    start = time.monotonic()
    root = csrc_dir()
    with _toolchain_messages() as messages:  # the toolchain's warnings go to the log, not the terminal
        try:
            module = cpp_extension.load(
                name=name,
                sources=[str(root / s) for s in spec.sources],
                extra_cflags=list(spec.cflags),
                extra_cuda_cflags=list(spec.cuda_cflags) or None,
                extra_ldflags=list(spec.ldflags),
                extra_include_paths=[str(root)],
                build_directory=str(folder),
            )
        except Exception as error:
            log = folder / BUILD_LOG
            log.write_text("\n".join([*messages, f"{type(error).__name__}: {error}"]) + "\n")
            seconds = time.monotonic() - start
            reason = f"{name}: the build failed after {seconds:.0f} s ({_cause(error)}); full log: {log}"
            print(f"mdfast: {reason}", file=sys.stderr)
            raise ExtensionUnavailable(reason) from None
    print(f"mdfast: compiled {name} in {time.monotonic() - start:.0f} s", file=sys.stderr)
    return module


@contextlib.contextmanager
def _toolchain_messages():
    """Collects the warnings and log records of torch.utils.cpp_extension as lines, instead of printing them.

    They are its compiler checks; a failed build writes them to its log.
    """
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    logger = logging.getLogger("torch.utils.cpp_extension")
    handler, propagate = Collect(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
            messages.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _cause(error: Exception) -> str:
    """The line of a build error that says what went wrong (the compiler's or ninja's), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for marker in ("error", "not found", "No such file", "cannot", "failed"):
        for line in lines:
            if marker in line.lower() and not line.startswith("Error building extension"):
                return line[:200]
    return (lines[0] if lines else type(error).__name__)[:200]


def _remembered_failures() -> dict[str, str]:
    try:
        failures = json.loads(os.environ.get(FAILED_BUILDS_VARIABLE) or "{}")
    except ValueError:
        return {}
    return failures if isinstance(failures, dict) else {}


def _remember_failure(name: str, reason: str) -> None:
    os.environ[FAILED_BUILDS_VARIABLE] = json.dumps({**_remembered_failures(), name: reason})
