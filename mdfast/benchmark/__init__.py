"""mdfast's operations timed per backend, next to the eager reference and a copy of as many bytes (``mdfast bench``).

- ``timing.py``: ``Timer`` (on a GPU the graph-replayed kernel time and the eager call latency, the L2
  flushed before every call), ``compiled_baseline`` (``torch.compile`` of the reference) and ``CompileWatch``.
- ``cases.py``: ``step_cases`` (token_stats, xflow_step) and ``body_cases`` (the LLaDA body kernels) on
  random inputs, never zeros, every call with ``check_finite=False``.
- ``table.py``: ``measure`` (every case's copy and runs under ``torch.no_grad()``, one ``Row`` each) and the
  markdown table: GB/s is the bytes an operation must move over its replayed time (eager on the CPU), "of
  copy" relates it to the copy, "vs torch" is the torch backend's eager time over the row's.
- ``load.py``: ``measure_under_load`` (``mdfast bench --load``: every case quiet and beside one busy process per
  core, per torch thread count) and its table.
"""

from .cases import (
    CPU_SHAPES,
    DTYPES,
    GPU_SHAPES,
    Case,
    body_cases,
    default_backends,
    probe_backend,
    random_policy,
    step_cases,
)
from .load import LOAD_HEADER, LoadRow, busy_processes, cores, format_load_row, measure_under_load
from .table import COMPILED, HEADER, Row, describe_device, format_row, format_table, header_lines, measure
from .timing import FLUSH_BYTES, CompileWatch, Timer, Timing, compiled_baseline

__all__ = [
    "COMPILED",
    "CPU_SHAPES",
    "DTYPES",
    "FLUSH_BYTES",
    "GPU_SHAPES",
    "HEADER",
    "LOAD_HEADER",
    "Case",
    "CompileWatch",
    "LoadRow",
    "Row",
    "Timer",
    "Timing",
    "body_cases",
    "busy_processes",
    "compiled_baseline",
    "cores",
    "default_backends",
    "describe_device",
    "format_load_row",
    "format_row",
    "format_table",
    "header_lines",
    "measure",
    "measure_under_load",
    "probe_backend",
    "random_policy",
    "step_cases",
]
