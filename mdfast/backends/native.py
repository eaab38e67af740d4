"""Loading the compiled extensions in ``csrc/``: prebuilt at install time, or built just in time.

An extension is looked for as the module built by ``MDFAST_BUILD_EXT=1 pip install
--no-build-isolation -e .``; failing that, it is compiled with ninja through
``torch.utils.cpp_extension.load`` on first use and cached in ``MDFAST_BUILD_DIR`` (default: torch's
extension cache, ``~/.cache/torch_extensions``). Where that fails (no compiler, no ninja, no nvcc)
the reason is kept and reported by ``mdfast.backends.available()``; nothing is raised at import.

The top of this file holds only plain constants: ``setup.py`` reads them (through runpy) so that the
install-time and the just-in-time builds compile the same sources with the same flags.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExtensionSpec:
    name: str  # module name of the just-in-time build
    prebuilt: str  # module name of the install-time build
    sources: tuple[str, ...]  # relative to csrc/
    cflags: tuple[str, ...]
    ldflags: tuple[str, ...] = ()
    cuda_cflags: tuple[str, ...] = ()


# -march=native: the extension is compiled on the machine that runs it (either build above). The
# C++ standard is the one torch.utils.cpp_extension picks for its own headers.
CPU_EXTENSION = ExtensionSpec(
    name="mdfast_cpu",
    prebuilt="mdfast._cpu_ext",
    sources=("bindings.cpp", "cpu/token_stats.cpp", "cpu/xflow_step.cpp"),
    cflags=("-O3", "-march=native", "-fopenmp"),
    ldflags=("-fopenmp",),
)

CUDA_EXTENSION = ExtensionSpec(
    name="mdfast_cuda",
    prebuilt="mdfast._cuda_ext",
    sources=("bindings.cpp", "cuda/token_stats.cu", "cuda/xflow_step.cu"),
    cflags=("-O3", "-DMDFAST_CUDA"),
    cuda_cflags=("-O3", "-DMDFAST_CUDA", "--use_fast_math"),
)


def csrc_dir() -> Path:
    """``csrc/``: the repository folder for an editable install, ``mdfast/csrc`` otherwise."""
    import mdfast.csrc  # setup.py maps it onto csrc/

    return Path(mdfast.csrc.__file__).parent


class ExtensionUnavailable(RuntimeError):
    """The extension could not be imported or built; the message says why."""


_lock = threading.Lock()
_loaded: dict[str, object] = {}
_failed: dict[str, str] = {}


def load(spec: ExtensionSpec, verbose: bool = False):
    """The extension module for ``spec``; raises ``ExtensionUnavailable`` with the reason."""
    with _lock:
        if spec.name in _loaded:
            return _loaded[spec.name]
        if spec.name in _failed:
            raise ExtensionUnavailable(_failed[spec.name])
        try:
            module = _import_or_build(spec, verbose)
        except Exception as error:  # any failure of the toolchain becomes a reported reason
            _failed[spec.name] = f"{spec.name}: {type(error).__name__}: {error}".strip()
            raise ExtensionUnavailable(_failed[spec.name]) from error
        _loaded[spec.name] = module
        return module


def _import_or_build(spec: ExtensionSpec, verbose: bool):
    try:
        return importlib.import_module(spec.prebuilt)
    except ImportError:
        pass
    from torch.utils import cpp_extension

    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja)")
    if spec.cuda_cflags and cpp_extension.CUDA_HOME is None:
        raise RuntimeError("no CUDA toolkit found (set CUDA_HOME to a toolkit with nvcc)")
    root = csrc_dir()
    build_dir = build_directory(spec)
    os.makedirs(build_dir, exist_ok=True)
    return cpp_extension.load(
        name=spec.name,
        sources=[str(root / s) for s in spec.sources],
        extra_cflags=list(spec.cflags),
        extra_cuda_cflags=list(spec.cuda_cflags) or None,
        extra_ldflags=list(spec.ldflags),
        extra_include_paths=[str(root)],
        build_directory=build_dir,
        verbose=verbose,
    )


def build_directory(spec: ExtensionSpec) -> str:
    """The folder that caches the just-in-time build of ``spec``: ``$MDFAST_BUILD_DIR/<name>``, else
    torch's extension cache (``~/.cache/torch_extensions/<python>_<device>/<name>``)."""
    root = os.environ.get("MDFAST_BUILD_DIR")
    if root:
        return os.path.join(root, spec.name)
    from torch.utils import cpp_extension

    return cpp_extension._get_build_directory(spec.name, verbose=False)


def build_state(spec: ExtensionSpec) -> tuple[bool, str]:
    """Read-only (compiles nothing): whether ``load(spec)`` gets the extension without compiling it
    (loaded already, installed prebuilt, or built in the cache and newer than every file under
    ``csrc/``), and where from (the module name or the cache folder); ``mdfast info`` reports it."""
    if spec.name in _loaded:
        return True, "loaded"
    if importlib.util.find_spec(spec.prebuilt) is not None:
        return True, spec.prebuilt
    folder = Path(build_directory(spec))
    built = folder / f"{spec.name}.so"
    if not built.exists():
        return False, str(folder)
    sources = [f for f in csrc_dir().rglob("*") if f.suffix in (".h", ".cpp", ".cu", ".cuh")]
    return all(f.stat().st_mtime <= built.stat().st_mtime for f in sources), str(folder)
