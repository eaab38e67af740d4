"""``mdfast info``: versions, and for each backend whether it runs here and why not (builds nothing by default)."""

from __future__ import annotations

import argparse
import platform

import torch

import mdfast
from mdfast import backends
from mdfast.backends import native

DESCRIPTION = """Print mdfast's, Python's and torch's versions, and for each backend whether it runs here, or why
not. A native extension that is not compiled yet is reported as such, with its cache folder, and not
compiled, unless --build asks for it; one whose last build failed is reported with the reason and its log."""

# torch and the backends are imported by ``import mdfast``, which every ``mdfast.cli`` import runs first.


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``info`` verb's parser."""
    parser = subparsers.add_parser(
        "info", help="which backends run here and why not where they do not (builds nothing)", description=DESCRIPTION
    )
    parser.add_argument(
        "--build", action="store_true", help="compile every native extension this machine can run, now (minutes each)"
    )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the versions and one line per backend."""
    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    print(f"mdfast {mdfast.__version__}, Python {platform.python_version()}, torch {torch.__version__} ({cuda})")
    if args.build:  # loads, and so compiles, every extension that can run here
        lines = {name: availability(reason) for name, reason in backends.available().items()}
    else:
        lines = {name: backend_status(name) for name in backends.NAMES}
    for name, line in lines.items():
        print(f"  {name:7s} {line}")
    return 0


def availability(reason: str | None) -> str:
    """ "available", or "unavailable: <reason>"."""
    return "available" if reason is None else f"unavailable: {reason}"


def backend_status(name: str) -> str:
    """One line on backend ``name``; compiles nothing (``native.build_state``)."""
    backend = backends.get(name)
    extension = {"cpu": native.CPU_EXTENSION, "cuda": native.CUDA_EXTENSION}.get(name)
    if extension is not None:
        if backend.device_type == "cuda" and not torch.cuda.is_available():
            return "unavailable: no CUDA device"
        ready, where = native.build_state(extension)
        failure = None if ready else native.build_failure(extension)
        if failure is not None:
            reason, log = failure
            where_log = "" if str(log) in reason else f"; log: {log}"
            return f"the last build failed: {reason}{where_log}; tried again on first use or with `mdfast info --build`"
        if not ready:
            return f"not compiled yet: compiles on first use (minutes) or with `mdfast info --build`; cached in {where}"
    return availability(backend.unavailable_reason())
