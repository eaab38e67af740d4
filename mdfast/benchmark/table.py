"""A benchmark's rows: every case measured (``measure``), and the markdown table they print as."""

from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass

import torch

import mdfast

from .cases import Case
from .timing import FLUSH_BYTES, CompileWatch, Timer, Timing, compiled_baseline, first_line

__all__ = ["COMPILED", "HEADER", "Row", "describe_device", "format_row", "format_table", "header_lines", "measure"]

COMPILED = "torch.compile(reference)"
# backends that time the reference eagerly only: it reads values back to the host (no graph capture)
EAGER_ONLY = ("torch", COMPILED)


@dataclass
class Row:
    """One line of the table: times in microseconds, GB/s, the fraction of the copy's and the speed-up on torch."""

    op: str
    shape: str
    dtype: str
    variant: str
    backend: str
    replayed_us: float | None
    eager_us: float
    gb_per_s: float
    copy_fraction: float | None
    vs_torch: float | None
    peak_extra_mib: float | None
    note: str = ""


def measure(cases: list[Case], timer: Timer, *, compile_backend: str | None = None, log=print) -> list[Row]:
    """Every case's copy and its runs, one row each, printed through ``log`` as they come.

    With ``compile_backend`` the compiled reference runs too; everything under ``torch.no_grad()``.
    """
    rows: list[Row] = []
    with torch.no_grad():
        copies: dict[int, float] = {}  # id of a copy -> its GB/s (cases of one input share it)
        for case in cases:
            if id(case.copy) not in copies:
                copy = timer.time(case.copy)
                rows.append(_row(case, "torch", copy, case.copy_bytes, None, None, op="copy (of the input)"))
                copies[id(case.copy)] = rows[-1].gb_per_s
                log(format_row(rows[-1]))
            copy_gb_s = copies[id(case.copy)]
            runs = dict(case.runs)
            notes = {}
            if compile_backend is not None and case.reference is not None:
                try:
                    runs[COMPILED], notes[COMPILED] = compiled_baseline(*case.reference, backend=compile_backend)
                except Exception as error:
                    log(f"# {case.op} {case.shape}: torch.compile failed: {first_line(error)}")
            torch_eager = None
            for backend, fn in runs.items():
                try:
                    with CompileWatch() as watch:
                        timing = timer.time(fn, graph=backend not in EAGER_ONLY)
                except Exception as error:
                    log(f"# {case.op} {case.shape} {case.variant} {backend}: FAILED {first_line(error)}")
                    continue
                note = "; ".join(n for n in (notes.get(backend, ""), timing.note) if n)
                if backend == COMPILED and watch.gave_up:
                    note += "; RAN EAGERLY while timed: dynamo hit its recompile limit"
                if backend == "torch":
                    torch_eager = timing.eager
                rows.append(_row(case, backend, timing, case.nbytes, copy_gb_s, torch_eager, note=note))
                log(format_row(rows[-1]))
    return rows


def _row(case: Case, backend: str, timing: Timing, nbytes: int, copy_gb_s, torch_eager, *, op=None, note=""):
    seconds = timing.replayed if timing.replayed is not None else timing.eager
    gb_s = nbytes / seconds / 1e9
    return Row(
        op=op or case.op,
        shape=case.shape,
        dtype=case.dtype,
        variant=case.variant if op is None else "-",
        backend=backend,
        replayed_us=None if timing.replayed is None else timing.replayed * 1e6,
        eager_us=timing.eager * 1e6,
        gb_per_s=gb_s,
        copy_fraction=None if copy_gb_s is None else gb_s / copy_gb_s,
        vs_torch=None if torch_eager is None else torch_eager / timing.eager,
        peak_extra_mib=timing.peak_extra_mib,
        note=note or timing.note,
    )


HEADER = (
    "| op | shape | dtype | variant | backend | replayed us | eager us | GB/s | of copy | vs torch | "
    "peak extra MiB | note |"
)


def format_row(r: Row) -> str:
    def number(value, fmt, unit=""):
        return "-" if value is None else format(value, fmt) + unit

    copy = None if r.copy_fraction is None else 100 * r.copy_fraction
    return (
        f"| {r.op} | {r.shape} | {r.dtype} | {r.variant} | {r.backend} | {number(r.replayed_us, '.1f')} "
        f"| {r.eager_us:.1f} | {r.gb_per_s:.1f} | {number(copy, '.0f', '%')} | {number(r.vs_torch, '.2f', 'x')} "
        f"| {number(r.peak_extra_mib, '.1f')} | {r.note} |"
    )


def format_table(rows: list[Row]) -> str:
    return "\n".join([HEADER, "|" + "---|" * 12, *(format_row(r) for r in rows)])


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def header_lines(device: torch.device, command: str, timer: Timer) -> list[str]:
    timing = f"medians of {timer.repeat} after {timer.warmup} warm-up calls"
    if timer.cuda:
        timing += f"; replayed: graphs of {timer.calls} calls, L2 flushed ({FLUSH_BYTES >> 20} MB write) before each"
    return [
        f"# mdfast {mdfast.__version__}, torch {torch.__version__}, {describe_device(device)}, {datetime.date.today()}",
        f"# command: {command}",
        f"# {timing}",
    ]
