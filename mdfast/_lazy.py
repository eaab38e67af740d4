"""Lazy public names: a package's names imported from their submodule on first use, as ``from trl import X``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable


def lazy_exports(
    package: str,
    exports: dict[str, str],
    submodules: tuple[str, ...],
    *,
    needs: dict[str, tuple[str, ...]] | None = None,
    extra: str | None = None,
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``.

    - exports: public name -> the submodule that defines it.
    - submodules: the submodules that are attributes of the package too.
    - needs, extra: name -> the modules it needs beyond the core dependencies; where one is missing, using the
      name raises an ImportError naming ``pip install "mdfast[<extra>]"``.
    """
    namespace = sys.modules[package].__dict__
    needs = needs or {}

    def __getattr__(name: str):
        module_name = exports.get(name, name if name in submodules else None)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        missing = [module for module in needs.get(name, ()) if importlib.util.find_spec(module) is None]
        if missing:
            raise ImportError(f'{package}.{name} needs {", ".join(missing)}: pip install "mdfast[{extra}]"')
        module = importlib.import_module(f"{package}.{module_name}")
        value = module if name == module_name else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports, *submodules})

    return __getattr__, __dir__
