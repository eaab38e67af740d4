"""The CPU tables of bench/RESULTS.md as pytest-benchmark cases, each beside its eager baseline in one group.

    python -m pytest bench/benchmarks --benchmark-autosave    # time, save the JSON under .benchmarks/
    python -m pytest bench/benchmarks --benchmark-compare     # time again, compare with the last saved run
    python -m pytest bench/benchmarks --benchmark-disable     # every case once: the correctness run (CI)

Every case also checks its output against its group's baseline (token ids equal, statistics within
float32 tolerance), so the disabled run is a real correctness run. Random inputs from fixed seeds,
never zeros; every timed call is warmed up first (pytest-benchmark's warm-up, or ``warmup_rounds``).
With timing on, the summary quotes each case's median against its group's baseline.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

import mdfast

BENCH = Path(__file__).resolve().parent.parent

# group -> role -> (median seconds, whether the role is the group's baseline), filled when timing is on
MEDIANS: dict[str, dict[str, tuple[float, bool]]] = {}


def pytest_configure(config):
    """Stop with one clear line where pytest-benchmark (the ``bench`` extra) is not installed."""
    # registered as "benchmark" by its entry point, under its module name with -p pytest_benchmark.plugin
    if not any(config.pluginmanager.hasplugin(name) for name in ("benchmark", "pytest_benchmark.plugin")):
        raise pytest.UsageError(
            "bench/benchmarks needs pytest-benchmark: pip install -e '.[bench]' (the test extra includes it)"
        )


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """Torch, its thread count and mdfast's version go into the saved JSON beside the CPU's name."""
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    machine_info["mdfast"] = mdfast.__version__


def load_script(name: str) -> ModuleType:
    """``bench/<name>.py`` (a script, not a package module), loaded by its path once per session."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench_e2e() -> ModuleType:
    """bench/bench_e2e.py: its presets, the LLaDA body pair and the eager loops."""
    return load_script("bench_e2e")


@pytest.fixture(scope="session")
def bench_cache() -> ModuleType:
    """bench/bench_cache.py: its random LLaDA body, shapes and prompts."""
    return load_script("bench_cache")


class Outputs:
    """Outputs by key, each computed once (untimed) where a case needs another case's result to compare with."""

    def __init__(self):
        self._store: dict = {}

    def get(self, key, compute: Callable[[], object]):
        """The stored output under ``key``, computed by ``compute()`` the first time."""
        if key not in self._store:
            self._store[key] = compute()
        return self._store[key]

    def put(self, key, value) -> None:
        self._store[key] = value


@pytest.fixture(scope="session")
def outputs() -> Outputs:
    return Outputs()


@pytest.fixture
def timed(benchmark):
    """``timed(fn, role, baseline=..., rounds=None)``: ``fn`` under the benchmark fixture, its result returned.

    - role: the case's name in its group ("torch", "cpu", "eager port", "mdfast", a cache mode).
    - baseline: whether the role is the group's eager baseline (the summary quotes the others against it).
    - rounds: None calibrates (pytest-benchmark's rounds, warm-up from the group's marker); a number runs
      ``benchmark.pedantic`` with that many rounds after one warm-up round (for calls of a second or so).
    """
    role_of = {}

    def run(fn: Callable[[], object], role: str, *, baseline: bool, rounds: int | None = None):
        role_of.update(role=role, baseline=baseline)
        benchmark.extra_info.update(role=role, baseline=baseline, torch_threads=torch.get_num_threads())
        if rounds is None:
            return benchmark(fn)
        return benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)

    yield run
    stats = getattr(benchmark, "stats", None)
    if role_of and benchmark.enabled and stats is not None:
        MEDIANS.setdefault(benchmark.group, {})[role_of["role"]] = (stats.stats.median, role_of["baseline"])


def pytest_terminal_summary(terminalreporter):
    """Each case's median against its group's baseline (only when timing is on)."""
    lines = []
    for group, roles in MEDIANS.items():
        base = [(role, median) for role, (median, baseline) in roles.items() if baseline]
        if len(base) != 1:
            continue
        base_role, base_median = base[0]
        for role, (median, baseline) in roles.items():
            if not baseline:
                lines.append(
                    f"{group}: {role} {1e3 * median:.3f} ms, {base_role} {1e3 * base_median:.3f} ms "
                    f"-> {base_median / median:.2f}x vs {base_role}"
                )
    if lines:
        terminalreporter.write_sep("-", "median against the group's baseline (>1: faster than the baseline)")
        for line in lines:
            terminalreporter.write_line(line)
