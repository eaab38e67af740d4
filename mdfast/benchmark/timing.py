"""The two timings of a benchmark call, and ``torch.compile`` of the reference as a baseline.

- replayed (GPU): the kernels alone. ``calls`` calls captured in one CUDA graph, each after a write of a
  256 MB buffer (more than an H100's 50 MB or an H200's 60 MB of L2), replayed and timed with CUDA
  events, a graph of the buffer writes alone subtracted; the median over ``repeat`` replays, per call.
- eager: one call from an idle GPU (host work and launches included), the L2 flushed before it, CUDA
  events around it; the median over ``repeat`` calls. The CPU has this time only (``time.perf_counter``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["FLUSH_BYTES", "CompileWatch", "Timer", "Timing", "compiled_baseline", "first_line"]

FLUSH_BYTES = 256 * 2**20  # written between timed calls: larger than any L2 cache (H100 50 MB, H200 60 MB)


@dataclass
class Timing:
    """Seconds per call of one contender.

    - eager, replayed: the two timings (replayed None where not measured, the reason in ``note``).
    - peak_extra_mib: device memory one eager call allocated beyond what existed.
    """

    eager: float
    replayed: float | None = None
    peak_extra_mib: float | None = None
    note: str = ""


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


class Timer:
    """The two timings of the module docstring, on ``device``.

    ``warmup`` eager calls first (kernel compilation, allocator), then ``repeat`` timed calls or
    replays of a graph of ``calls`` calls.
    """

    def __init__(self, device: torch.device, *, warmup: int = 3, repeat: int = 20, calls: int = 10, flush=True):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.warmup, self.repeat, self.calls = warmup, repeat, calls
        self._flush_buffer = (
            torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=self.device) if self.cuda and flush else None
        )

    def flush(self) -> None:
        """Evict the inputs of the next call from the L2 cache (no-op on the CPU)."""
        if self._flush_buffer is not None:
            self._flush_buffer.fill_(1)

    def time(self, fn: Callable[[], object], *, graph: bool = True) -> Timing:
        """Both timings of ``fn`` (the replayed one only on a GPU and with ``graph``)."""
        for _ in range(self.warmup):
            fn()
        timing = Timing(eager=self.eager(fn), peak_extra_mib=self.peak_extra_mib(fn))
        if self.cuda and graph:
            timing.replayed, timing.note = self.replayed(fn)
        return timing

    def eager(self, fn: Callable[[], object]) -> float:
        """Median seconds of one call: from an idle, flushed GPU (CUDA events), or perf_counter."""
        if not self.cuda:
            times = []
            for _ in range(self.repeat):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times)
        events = []
        for _ in range(self.repeat):
            self.flush()
            torch.cuda.synchronize(self.device)
            start, end = _event(), _event()
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(self.device)
        return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3

    def replayed(self, fn: Callable[[], object]) -> tuple[float | None, str]:
        """Median seconds per call of ``fn`` replayed from a CUDA graph, each call after an L2 flush.

        The flushes' own time is subtracted; (None, why) where ``fn`` cannot be captured.
        """
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            fn()  # warm-up on a side stream, as capture wants it
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        # the calls with their flushes, and (to subtract) the flushes alone
        kinds = (True, False) if self._flush_buffer is not None else (True,)
        graphs = []
        try:
            for with_calls in kinds:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(self.calls):
                        self.flush()
                        if with_calls:
                            fn()
                graphs.append(graph)
        except Exception as error:  # e.g. a host synchronisation inside fn
            torch.cuda.synchronize(self.device)
            return None, f"not capturable ({first_line(error)})"
        samples = [[] for _ in graphs]
        for _ in range(self.repeat):
            for graph, events in zip(graphs, samples):  # interleaved: drifts hit both alike
                start, end = _event(), _event()
                start.record()
                graph.replay()
                end.record()
                events.append((start, end))
        torch.cuda.synchronize(self.device)
        medians = [statistics.median(start.elapsed_time(end) for start, end in events) for events in samples]
        del graphs
        with_calls_ms, flushes_ms = medians[0], (medians[1] if len(medians) > 1 else 0.0)
        return max(with_calls_ms - flushes_ms, 0.0) / self.calls / 1e3, ""

    def peak_extra_mib(self, fn: Callable[[], object]) -> float | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        fn()
        torch.cuda.synchronize(self.device)
        return (torch.cuda.max_memory_allocated(self.device) - base) / 2**20


class CompileWatch(logging.Handler):
    """Collects dynamo's warnings while active (``with watch:``).

    "hit config.recompile_limit" means dynamo stopped compiling a function and runs it eagerly from then on.
    """

    LOGGERS = ("torch._dynamo", "torch._dynamo.convert_frame")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> CompileWatch:
        for name in self.LOGGERS:
            logging.getLogger(name).addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeHandler(self)

    @property
    def gave_up(self) -> bool:
        return any("hit config." in message for message in self.messages)


def _break_reason(reason) -> str:
    """One line for a dynamo graph-break reason: its message and the user code where it happened."""
    text = str(getattr(reason, "reason", reason)).strip().splitlines()
    where = ""
    stack = getattr(reason, "user_stack", None) or []
    if stack:
        frame = stack[-1]
        where = f" at {Path(frame.filename).name}:{frame.lineno} ({frame.line or frame.name})"
    return f"{text[0][:100] if text else '?'}{where}"


def compiled_baseline(fn: Callable, args: tuple, *, backend: str = "inductor") -> tuple[Callable[[], object], str]:
    """``torch.compile(fn)`` ready to call on ``args`` (compiled by a first call under no_grad), and what it is.

    The note says how many graphs, where the first graph break is (``torch._dynamo.explain``), and
    whether the first call already hit the recompile limit. Keep calling it inside a ``CompileWatch``
    to learn whether dynamo gave up later.
    """
    import torch._dynamo as dynamo  # measured import cost: seconds, and only the compiled baseline needs it

    notes = []
    dynamo.reset()
    try:
        explained = dynamo.explain(fn)(*args)
        notes.append(f"{explained.graph_count} graph(s), {explained.graph_break_count} graph break(s)")
        if explained.break_reasons:
            notes.append(f"first break: {_break_reason(explained.break_reasons[0])}")
    except Exception as error:  # explain is a private API: say so rather than fail the benchmark
        notes.append(f"graph breaks unknown ({first_line(error)})")
    dynamo.reset()
    compiled = torch.compile(fn, dynamic=False, backend=backend)
    with CompileWatch() as watch, torch.no_grad():
        compiled(*args)
    if watch.gave_up:
        notes.append("RAN EAGERLY: dynamo hit its recompile limit")
    return (lambda: compiled(*args)), "; ".join(notes)
