"""Time ``token_stats`` and ``xflow_step`` per backend against the eager reference, side by side.

    python bench/bench_step.py                      # defaults for this machine (CPU or GPU)
    python bench/bench_step.py --shape 1,256,32000,1024 --dtype float32 --policy random
    mdfast bench                                    # the same, installed as a console command

Every row of the table comes from the same run: median wall time over ``--repeat`` calls after
``--warmup`` calls (CUDA events on the GPU), achieved bandwidth (bytes that must move: the logits
read once, plus for the step X read and written, t, and the gathered embedding rows) next to a
device-to-device copy of the logits measured in the same run, and the speedup over the eager
reference step (the ``torch`` backend: ``mdfast.reference`` in float32). On the GPU the reference
under ``torch.compile`` is timed as well, and each row reports the peak memory it allocated beyond
its inputs. Inputs are random, never zeros.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from dataclasses import dataclass

import torch

import mdfast
from mdfast import backends, reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CPU_SHAPES = [(1, 256, 32000, 1024), (1, 64, 126464, 4096)]
GPU_SHAPES = [(1, 512, 126464, 4096), (8, 512, 126464, 4096), (1, 2048, 152064, 3584), (1, 64, 157184, 2048)]


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    policy: str
    backend: str
    median_ms: float
    gb_per_s: float
    copy_fraction: float
    speedup: float | None
    peak_extra_mib: float | None


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(x) for x in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--shape: expected B,N,V,E, got {text!r}")
    return parts


def timer(device: torch.device, warmup: int, repeat: int):
    """Median seconds of ``fn()``: CUDA events on the GPU, perf_counter on the CPU."""

    def measure(fn) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                start_s = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start_s)
        return statistics.median(times)

    return measure


def peak_extra_mib(device: torch.device, fn) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def random_policy(device: torch.device) -> mdfast.StepPolicy:
    policy = mdfast.StepPolicy().to(device)
    with torch.no_grad():
        for p in policy.parameters():
            p.normal_(0, 0.5)
    return policy


def bench_shape(B, N, V, E, dtype, policy_kinds, device, backend_names, measure, compile_reference) -> list[Row]:
    """The copy, ``token_stats``, and ``xflow_step`` per policy kind, for every backend."""
    logits = (torch.randn(B, N, V, device=device) * 3).to(dtype)
    X = torch.randn(B, N, E, device=device)
    t = torch.rand(B, N, device=device)
    embedding = torch.randn(V, E, device=device).to(dtype)
    mask_embedding = torch.randn(E, device=device)
    rho = torch.full((B,), 0.5, device=device)
    shape, dtype_name = f"{B}x{N}x{V}x{E}", str(dtype).replace("torch.", "")

    logits_bytes = logits.numel() * logits.element_size()
    step_bytes = logits_bytes + B * N * (2 * E * 4 + 2 * 4 + E * embedding.element_size())
    copy_buffer = torch.empty_like(logits)
    copy_s = measure(lambda: copy_buffer.copy_(logits))
    copy_gb_s = 2 * logits_bytes / copy_s / 1e9  # read + write
    rows = [Row("copy (logits)", shape, dtype_name, "-", "torch", copy_s * 1e3, copy_gb_s, 1.0, None, None)]

    def time_all(op, policy_kind, nbytes, runs):
        eager = None
        for name, fn in runs:
            seconds = measure(fn)
            eager = seconds if name == "torch" else eager
            gb_s = nbytes / seconds / 1e9
            speedup = eager / seconds if eager is not None else None
            rows.append(
                Row(
                    op,
                    shape,
                    dtype_name,
                    policy_kind,
                    name,
                    seconds * 1e3,
                    gb_s,
                    gb_s / copy_gb_s,
                    speedup,
                    peak_extra_mib(device, fn),
                )
            )

    runs = [(name, lambda name=name: mdfast.token_stats(logits, 4, backend=name)) for name in backend_names]
    if compile_reference:
        compiled_stats = torch.compile(reference.token_stats, dynamic=False)
        runs.insert(1, ("torch.compile(reference)", lambda: compiled_stats(logits, 4)))
    time_all("token_stats", "-", logits_bytes, runs)

    for policy_kind in policy_kinds:
        policy = random_policy(device) if policy_kind == "random" else None
        runs = [
            (
                name,
                lambda name=name: mdfast.xflow_step(logits, X, t, embedding, mask_embedding, policy, rho, backend=name),
            )
            for name in backend_names
        ]
        if compile_reference:
            compiled_step = torch.compile(reference.xflow_step, dynamic=False)
            runs.insert(
                1,
                (
                    "torch.compile(reference)",
                    lambda: compiled_step(logits, X, t, embedding, mask_embedding, policy, rho),
                ),
            )
        time_all("xflow_step", policy_kind, step_bytes, runs)
    return rows


def format_table(rows: list[Row]) -> str:
    head = "| op | B x N x V x E | logits | policy | backend | median ms | GB/s | of copy | vs eager | peak extra MiB |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        peak = f"{r.peak_extra_mib:.1f}" if r.peak_extra_mib is not None else "-"
        lines.append(
            f"| {r.op} | {r.shape} | {r.dtype} | {r.policy} | {r.backend} | {r.median_ms:.3f} | {r.gb_per_s:.1f} "
            f"| {100 * r.copy_fraction:.0f}% | {speedup} | {peak} |"
        )
    return "\n".join(lines)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mdfast bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=parse_shape, action="append", help="B,N,V,E (repeatable); default: per device")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="logits and embedding dtype (default: bfloat16 on GPU, float32 on CPU)",
    )
    parser.add_argument("--policy", choices=["heuristic", "random", "both"], default="both")
    parser.add_argument(
        "--backends", default=None, help="comma-separated; default: torch plus every backend available for the device"
    )
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference (GPU)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    shapes = args.shape or (GPU_SHAPES if on_gpu else CPU_SHAPES)
    dtype = DTYPES[args.dtype or ("bfloat16" if on_gpu else "float32")]
    warmup = args.warmup if args.warmup is not None else (10 if on_gpu else 3)
    repeat = args.repeat if args.repeat is not None else (50 if on_gpu else 15)
    available = backends.available()
    if args.backends:
        names = args.backends.split(",")
    else:
        names = (
            ["torch"]
            + [n for n in ("triton", "cuda") if on_gpu and available[n] is None]
            + (["cpu"] if not on_gpu and available["cpu"] is None else [])
        )
    for name, reason in available.items():
        if reason is not None:
            print(f"# backend {name}: unavailable ({reason})", file=sys.stderr)
    policies = ["heuristic", "random"] if args.policy == "both" else [args.policy]
    measure = timer(device, warmup, repeat)

    print(
        f"# mdfast {mdfast.__version__}, torch {torch.__version__}, {describe_device(device)}, {datetime.date.today()}"
    )
    print(f"# command: mdfast bench {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(f"# medians of {repeat} calls after {warmup} warm-up calls")
    rows: list[Row] = []
    for B, N, V, E in shapes:
        rows += bench_shape(B, N, V, E, dtype, policies, device, names, measure, on_gpu and not args.no_compile)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
