"""``mdfast bench``: mdfast's operations timed per backend, next to the eager reference and a copy.

Every row of a table comes from one run, on random inputs (never zeros), under ``torch.no_grad()``
for every contender alike, each call with ``check_finite=False`` (the check reads a flag back to
the host). On a GPU each backend gets two times, reported apart:

- replayed: the kernels alone. ``calls`` calls are captured in one CUDA graph, each preceded by a
  write of a 256 MB buffer (more than the L2 cache of an H100, 50 MB, or an H200, 60 MB), so every
  call reads its inputs from device memory; the replays are timed with CUDA events and a graph of
  the buffer writes alone is subtracted. Median over ``repeat`` replays, per call.
- eager: the latency of one call from an idle GPU (host work and launches included), the L2 cache
  flushed before it: CUDA events around the call, median over ``repeat`` calls.

The CPU has the eager time only (``time.perf_counter``). Bandwidth (GB/s) is the bytes an operation
must move over its replayed time (eager on the CPU), and "of copy" relates it to a device-to-device
copy of as many bytes timed the same way in the same run. "vs torch" is the eager time of the torch
backend (``mdfast.reference`` in float32) over the row's eager time. ``compiled_baseline`` adds
``torch.compile`` of the reference, saying in its row how many graphs it compiled, where the
graph broke and whether dynamo gave up (its recompile limit) and ran the reference eagerly.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import mdfast
from mdfast import ops, reference

__all__ = [
    "Case",
    "CompileWatch",
    "Row",
    "Timer",
    "body_cases",
    "compiled_baseline",
    "format_table",
    "main",
    "measure",
    "probe_backend",
    "step_cases",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_SHAPES = [(1, 256, 32000, 1024), (1, 64, 126464, 4096)]
GPU_SHAPES = [(1, 512, 126464, 4096), (8, 512, 126464, 4096), (1, 2048, 152064, 3584), (1, 64, 157184, 2048)]
FLUSH_BYTES = 256 * 2**20  # written between timed calls: larger than any L2 cache (H100 50 MB, H200 60 MB)
COMPILED = "torch.compile(reference)"
# backends that time the reference eagerly only: it reads values back to the host (no graph capture)
EAGER_ONLY = ("torch", COMPILED)

DESCRIPTION = """Time token_stats and xflow_step (and with --body the LLaDA body kernels) per backend,
next to the eager reference (the torch backend) and a device-to-device copy, all in the same run.

On a GPU every row has two times: "replayed" is the kernels alone, calls captured in a CUDA
graph and replayed, the L2 cache flushed (a 256 MB write) before every call and the flushes
subtracted; "eager" is the latency of one call from an idle GPU, host work and launches included.
Calls pass check_finite=False. GB/s is the bytes an operation must move over its replayed time
(eager time on the CPU); "of copy" compares it with a copy of as many bytes timed the same way.
Inputs are random, never zeros. Every figure quoted goes to bench/RESULTS.md.

examples:
  mdfast bench                                  defaults for this machine (CPU or GPU)
  mdfast bench --shape 1,256,32000,1024 --dtype float32 --policy random
  mdfast bench --body --compile                 add the body kernels and torch.compile baselines
"""


@dataclass
class Timing:
    """Seconds per call: ``replayed`` (None where not measured, with the reason in ``note``) and
    ``eager``; ``peak_extra_mib``: device memory one eager call allocated beyond what existed."""

    eager: float
    replayed: float | None = None
    peak_extra_mib: float | None = None
    note: str = ""


def _event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:200]


class Timer:
    """The two timings of the module docstring, on ``device``: ``warmup`` eager calls first (kernel
    compilation, allocator), then ``repeat`` timed calls or replays of a graph of ``calls`` calls."""

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
        """Median seconds per call of ``fn`` replayed from a CUDA graph, each call after an L2 flush,
        the flushes' own time subtracted; (None, why) where ``fn`` cannot be captured."""
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
            return None, f"not capturable ({_first_line(error)})"
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


@dataclass
class Case:
    """One operation at one shape: a call per backend, the bytes it must move, and the copy it is
    compared with (``copy`` moves ``copy_bytes``, read plus write). ``reference`` (a function and
    its arguments) is what ``torch.compile`` compiles for the compiled baseline, if anything."""

    op: str
    shape: str
    dtype: str
    variant: str
    nbytes: int
    copy: Callable[[], object]
    copy_bytes: int
    runs: dict[str, Callable[[], object]]
    reference: tuple[Callable, tuple] | None = None


@dataclass
class Row:
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


def probe_backend(name: str, device: torch.device) -> str | None:
    """None where backend ``name`` runs on ``device`` (one tiny token_stats call through the public
    API, which builds a compiled backend on first use), else why not."""
    try:
        mdfast.token_stats(torch.randn(1, 2, 8, device=device), 2, backend=name, check_finite=False)
    except (RuntimeError, ValueError, TypeError) as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def default_backends(device: torch.device) -> list[str]:
    """The torch reference plus the kernel backends of the device: Triton and CUDA on a GPU, the
    C++ one on the CPU. Only those are probed, so a GPU machine never builds the CPU extension."""
    return ["torch", *(("triton", "cuda") if device.type == "cuda" else ("cpu",))]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _copy_of(x: torch.Tensor) -> tuple[Callable[[], object], int]:
    """A device-to-device copy of as many bytes as ``x`` holds (contiguous), and its bytes moved."""
    source = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
    target = torch.empty_like(source)
    return (lambda: target.copy_(source)), 2 * source.numel() * source.element_size()


def random_policy(device: torch.device, seed: int = 0) -> mdfast.StepPolicy:
    """A StepPolicy with weights spread enough to cover the kappa range (not its near-zero init)."""
    generator = torch.Generator().manual_seed(seed)
    policy = mdfast.StepPolicy()
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return policy.to(device)


def step_cases(B, N, V, E, dtype, device, backends, policies=("heuristic", "random")) -> list[Case]:
    """token_stats (k = 4) and xflow_step per policy kind at logits (B, N, V), X (B, N, E)."""
    logits = (torch.randn(B, N, V, device=device) * 3).to(dtype)
    X = torch.randn(B, N, E, device=device)
    t = torch.rand(B, N, device=device)
    embedding = torch.randn(V, E, device=device).to(dtype)
    mask_embedding = torch.randn(E, device=device)
    rho = torch.full((B,), 0.5, device=device)
    shape, name = f"{B}x{N}x{V}x{E}", _dtype_name(dtype)
    logits_bytes = logits.numel() * logits.element_size()
    copy, copy_bytes = _copy_of(logits)
    cases = [
        Case(
            "token_stats",
            shape,
            name,
            "k=4",
            logits_bytes,
            copy,
            copy_bytes,
            {b: (lambda b=b: mdfast.token_stats(logits, 4, backend=b, check_finite=False)) for b in backends},
            (reference.token_stats, (logits, 4)),
        )
    ]
    # the logits read once; X read and written, t read and written, the gathered embedding rows
    step_bytes = logits_bytes + B * N * (2 * E * 4 + 2 * 4 + E * embedding.element_size())
    for kind in policies:
        policy = random_policy(device) if kind == "random" else None
        runs = {
            b: (
                lambda b=b, policy=policy: mdfast.xflow_step(
                    logits, X, t, embedding, mask_embedding, policy, rho, backend=b, check_finite=False
                )
            )
            for b in backends
        }
        compile_args = (logits, X, t, embedding, mask_embedding, policy, rho)
        cases.append(
            Case(
                "xflow_step",
                shape,
                name,
                kind,
                step_bytes,
                copy,
                copy_bytes,
                runs,
                (reference.xflow_step, compile_args),
            )
        )
    return cases


def body_cases(B, L, d, heads, F, dtype, device, backends) -> list[Case]:
    """The LLaDA body kernels at batch B, L tokens, width d, ``heads`` heads, MLP width F: RMSNorm
    alone and fused with the residual add, RoPE in place on the q heads of a fused qkv product
    (strided), SwiGLU on the two halves of a fused gate/up product (strided). Backends: "triton",
    "torch" (the body kernels have no other)."""
    backends = [b for b in backends if b in ("triton", "torch")]
    name = _dtype_name(dtype)
    x = torch.randn(B, L, d, device=device).to(dtype)
    update = torch.randn(B, L, d, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(d, device=device)).to(dtype)
    x_bytes = x.numel() * x.element_size()
    copy_x, copy_x_bytes = _copy_of(x)
    qkv = torch.randn(B, L, 3 * d, device=device).to(dtype)
    q = qkv[..., :d].unflatten(-1, (heads, d // heads))
    gate_up = torch.randn(B, L, 2 * F, device=device).to(dtype)
    gate, up = gate_up[..., :F], gate_up[..., F:]
    copy_gate, copy_gate_bytes = _copy_of(gate)
    return [
        Case(
            "rms_norm",
            f"{B}x{L}x{d}",
            name,
            "plain",
            2 * x_bytes,
            copy_x,
            copy_x_bytes,
            {b: (lambda b=b: ops.rms_norm(x, weight, 1e-5, backend=b)) for b in backends},
        ),
        Case(
            "rms_norm",
            f"{B}x{L}x{d}",
            name,
            "+ residual",
            4 * x_bytes,  # x and update read, sum and norm written
            copy_x,
            copy_x_bytes,
            {b: (lambda b=b: ops.rms_norm(x, weight, 1e-5, update=update, backend=b)) for b in backends},
        ),
        Case(
            "rope_",
            f"{B}x{L}x{heads}x{d // heads}",
            name,
            "q of fused qkv",
            2 * x_bytes,  # the q heads read and written in place
            copy_x,
            copy_x_bytes,
            {b: (lambda b=b: ops.rope_(q, 500000.0, backend=b)) for b in backends},
        ),
        Case(
            "swiglu",
            f"{B}x{L}x{F}",
            name,
            "halves of gate/up",
            3 * gate.numel() * gate.element_size(),
            copy_gate,
            copy_gate_bytes,
            {b: (lambda b=b: ops.swiglu(gate, up, backend=b)) for b in backends},
        ),
    ]


class CompileWatch(logging.Handler):
    """Collects dynamo's warnings while active (``with watch:``): "hit config.recompile_limit" means
    dynamo stopped compiling a function and runs it eagerly from then on."""

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
    """``torch.compile(fn)`` ready to call on ``args`` (compiled by a first call under no_grad) and
    what it is: how many graphs, where the first graph break is (``torch._dynamo.explain``), and
    whether the first call already hit the recompile limit. Keep calling it inside a ``CompileWatch``
    to learn whether dynamo gave up later."""
    import torch._dynamo as dynamo

    notes = []
    dynamo.reset()
    try:
        explained = dynamo.explain(fn)(*args)
        notes.append(f"{explained.graph_count} graph(s), {explained.graph_break_count} graph break(s)")
        if explained.break_reasons:
            notes.append(f"first break: {_break_reason(explained.break_reasons[0])}")
    except Exception as error:  # explain is a private API: say so rather than fail the benchmark
        notes.append(f"graph breaks unknown ({_first_line(error)})")
    dynamo.reset()
    compiled = torch.compile(fn, dynamic=False, backend=backend)
    with CompileWatch() as watch, torch.no_grad():
        compiled(*args)
    if watch.gave_up:
        notes.append("RAN EAGERLY: dynamo hit its recompile limit")
    return (lambda: compiled(*args)), "; ".join(notes)


def measure(cases: list[Case], timer: Timer, *, compile_backend: str | None = None, log=print) -> list[Row]:
    """Every case's copy and its runs (plus the compiled reference with ``compile_backend``), one
    row each, printed through ``log`` as they come; everything under ``torch.no_grad()``."""
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
                    log(f"# {case.op} {case.shape}: torch.compile failed: {_first_line(error)}")
            torch_eager = None
            for backend, fn in runs.items():
                try:
                    with CompileWatch() as watch:
                        timing = timer.time(fn, graph=backend not in EAGER_ONLY)
                except Exception as error:
                    log(f"# {case.op} {case.shape} {case.variant} {backend}: FAILED {_first_line(error)}")
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


def _shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(x) for x in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--shape: expected B,N,V,E, got {text!r}")
    return parts


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="mdfast bench", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=_shape, action="append", help="B,N,V,E (repeatable); default: per device")
    parser.add_argument("--dtype", choices=DTYPES, help="logits and embedding dtype (default: bfloat16 on a GPU)")
    parser.add_argument("--policy", choices=["heuristic", "random", "both"], default="both")
    parser.add_argument("--backends", help="comma-separated (default: torch and the device's kernel backends)")
    parser.add_argument("--body", action="store_true", help="also the LLaDA body kernels at LLaDA-8B widths")
    parser.add_argument("--compile", action="store_true", help="also torch.compile of the reference (slow)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=None, help="timed calls (default: 20 on a GPU, 10 on the CPU)")
    parser.add_argument("--calls", type=int, default=10, help="calls per captured graph (GPU)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = DTYPES[args.dtype or ("bfloat16" if on_gpu else "float32")]
    names = args.backends.split(",") if args.backends else default_backends(device)
    backends = []
    for name in names:
        reason = probe_backend(name, device)
        if reason is None:
            backends.append(name)
        else:
            print(f"# backend {name}: unavailable ({reason})", file=sys.stderr)
    timer = Timer(device, warmup=args.warmup, repeat=args.repeat or (20 if on_gpu else 10), calls=args.calls)
    policies = ("heuristic", "random") if args.policy == "both" else (args.policy,)
    compile_backend = "inductor" if args.compile else None

    print("\n".join(header_lines(device, " ".join(["mdfast bench", *argv]), timer)))
    print(HEADER + "\n|" + "---|" * 12, flush=True)
    rows = []
    for B, N, V, E in args.shape or (GPU_SHAPES if on_gpu else CPU_SHAPES):
        cases = step_cases(B, N, V, E, dtype, device, backends, policies)
        rows += measure(cases, timer, compile_backend=compile_backend, log=lambda line: print(line, flush=True))
        del cases
    if args.body:
        for B in (1, 8):
            cases = body_cases(B, 640, 4096, 32, 12288, dtype, device, backends)
            rows += measure(cases, timer, log=lambda line: print(line, flush=True))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
