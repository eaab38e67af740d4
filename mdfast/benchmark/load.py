"""Timing under contention (``mdfast bench --load``): the same cases quiet and beside one busy process per core.

Per torch thread count, every case is timed twice in a row: on a quiet machine, then with one
Python process spinning on each core this process may run on (its affinity, so a benchmark pinned
with ``taskset`` loads its own cores only); the busy processes are killed before the next pass.
The table gives both medians, loaded over quiet, and the torch backend's loaded time over the
row's ("vs torch, loaded": above 1 the backend degrades less than the eager reference).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .cases import Case
from .table import measure
from .timing import Timer

__all__ = ["LOAD_HEADER", "LoadRow", "busy_processes", "cores", "format_load_row", "measure_under_load"]

BUSY_LOOP = "while True: pass"


def cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[list[subprocess.Popen]]:
    """``count`` Python processes spinning on the CPU (they inherit this one's affinity), killed on exit."""
    processes = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]
    try:
        time.sleep(1.0)  # every one of them started and spinning before the first timed call
        yield processes
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


@dataclass
class LoadRow:
    """One operation and backend at one thread count: the quiet and the loaded median, microseconds."""

    op: str
    shape: str
    dtype: str
    variant: str
    backend: str
    threads: int
    quiet_us: float
    loaded_us: float
    torch_loaded_us: float | None = None


def measure_under_load(
    cases: list[Case], timer: Timer, threads: list[int], *, busy: int | None = None, log: Callable[[str], None] = print
) -> list[LoadRow]:
    """Every case at each thread count, quiet then beside ``busy`` (default: ``cores()``) busy processes.

    The rows of each pass are printed through ``log`` as ``measure`` makes them; torch's thread
    count is restored after.
    """
    busy = cores() if busy is None else busy
    previous = torch.get_num_threads()
    rows: list[LoadRow] = []
    try:
        for count in threads:
            torch.set_num_threads(count)
            medians = {}
            for loaded in (False, True):
                log(f"# {count} thread(s), " + (f"loaded: {busy} busy processes" if loaded else "quiet"))
                with busy_processes(busy) if loaded else contextlib.nullcontext():
                    for row in measure(cases, timer, log=log):
                        key = (row.op, row.shape, row.dtype, row.variant, row.backend)
                        medians.setdefault(key, {})[loaded] = row.eager_us
            rows += _rows(medians, count)
    finally:
        torch.set_num_threads(previous)
    return rows


def _rows(medians: dict, threads: int) -> list[LoadRow]:
    rows = [LoadRow(*key, threads, times[False], times[True]) for key, times in medians.items() if len(times) == 2]
    torch_loaded = {(r.op, r.shape, r.dtype, r.variant): r.loaded_us for r in rows if r.backend == "torch"}
    for row in rows:
        row.torch_loaded_us = torch_loaded.get((row.op, row.shape, row.dtype, row.variant))
    return [r for r in rows if not r.op.startswith("copy")]


LOAD_HEADER = (
    "| op | shape | dtype | variant | backend | threads | quiet ms | loaded ms | loaded/quiet | vs torch, loaded |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


def format_load_row(r: LoadRow) -> str:
    """One markdown row of the quiet/loaded table."""
    vs_torch = "-" if r.torch_loaded_us is None else f"{r.torch_loaded_us / r.loaded_us:.2f}x"
    return (
        f"| {r.op} | {r.shape} | {r.dtype} | {r.variant} | {r.backend} | {r.threads} | {r.quiet_us / 1e3:.2f} "
        f"| {r.loaded_us / 1e3:.2f} | {r.loaded_us / r.quiet_us:.1f}x | {vs_torch} |"
    )
