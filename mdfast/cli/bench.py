"""``mdfast bench``: token_stats, xflow_step (and the body kernels) timed per backend, beside the eager reference."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile

import torch

from mdfast.atomic import atomic_write

from .errors import UsageError
from .model_args import DTYPE_CHOICES

DESCRIPTION = """Time token_stats and xflow_step (and with --body the LLaDA body kernels) per backend,
next to the eager reference (the torch backend) and a device-to-device copy, all in the same run.

On a GPU every row has two times: "replayed" is the kernels alone, calls captured in a CUDA
graph and replayed, the L2 cache flushed (a 256 MB write) before every call and the flushes
subtracted; "eager" is the latency of one call from an idle GPU, host work and launches included.
Calls pass check_finite=False. GB/s is the bytes an operation must move over its replayed time
(eager time on the CPU); "of copy" compares it with a copy of as many bytes timed the same way.
Inputs are random, never zeros. Every figure quoted goes to bench/RESULTS.md.

With --load (CPU) every case is timed per thread count (--threads) twice: quiet, then beside one
busy process per core this process may run on; a last table gives both medians and how much
slower each backend gets under load, next to the torch backend's loaded time.

examples:
  mdfast bench                                  defaults for this machine (CPU or GPU)
  mdfast bench --shape 1,256,32000,1024 --dtype float32 --policy random
  mdfast bench --body --compile                 add the body kernels and torch.compile baselines
  mdfast bench --device cpu --load --threads 1,2 --shape 1,256,32000,1024 --policy heuristic
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``bench`` verb's parser."""
    parser = subparsers.add_parser(
        "bench",
        help="time token_stats and xflow_step per backend against the eager reference",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda where there is one)")
    parser.add_argument("--shape", type=shape, action="append", help="B,N,V,E (repeatable); default: per device")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, help="logits and embedding (default: bfloat16 on a GPU)")
    parser.add_argument("--policy", choices=["heuristic", "random", "both"], default="both")
    parser.add_argument("--backends", help="comma-separated (default: torch and the device's kernel backends)")
    parser.add_argument("--body", action="store_true", help="also the LLaDA body kernels at LLaDA-8B widths")
    parser.add_argument("--compile", action="store_true", help="also torch.compile of the reference (slow)")
    parser.add_argument("--warmup", type=count(0), default=3, help="untimed calls first (default: %(default)s)")
    parser.add_argument(
        "--repeat", type=count(1), default=None, help="timed calls (default: 20 on a GPU, 10 on the CPU)"
    )
    parser.add_argument("--calls", type=count(1), default=10, help="calls per captured graph (GPU)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--load", action="store_true", help="CPU: time quiet and beside one busy process per core")
    parser.add_argument("--threads", type=thread_counts, help="with --load: torch thread counts (default: 1 and all)")
    parser.set_defaults(run=run)
    return parser


def shape(text: str) -> tuple[int, int, int, int]:
    """``--shape B,N,V,E``."""
    try:
        parts = tuple(int(x) for x in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected B,N,V,E (four positive ints), got {text!r}")
    return parts


def count(least: int):
    """The argparse type of an int >= ``least`` (``--repeat``, ``--warmup``, ``--calls``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(f"expected an int >= {least}, got {text!r}")
        return value

    parse.__name__ = f"int >= {least}"
    return parse


def check_json(path: str | None) -> None:
    """UsageError naming ``--json`` where its file cannot be written (checked before the run, not after it)."""
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--json: {path} is a folder; name a file to write")
    if not os.path.isdir(parent):
        raise UsageError(f"--json: no such folder: {parent} (for {path})")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as error:
        raise UsageError(f"--json: cannot write {path} ({error.strerror or error})") from None


def thread_counts(text: str) -> list[int]:
    """``--threads 1,2``."""
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive thread counts, got {text!r}")
    return counts


def run(args: argparse.Namespace) -> int:
    """Probe the backends, then time every case and print its row as it comes."""
    from mdfast import benchmark  # the tree imports every verb: implementations load when their verb runs
    from mdfast.cli import model_loading  # measured import cost: transformers, 1 s; loads when the verb runs

    device = model_loading.check_device(args.device)
    if args.load and device.type != "cpu":
        raise UsageError("--load: times the CPU (--device cpu)")
    check_json(args.json)
    on_gpu = device.type == "cuda"
    dtype = benchmark.DTYPES[args.dtype or ("bfloat16" if on_gpu else "float32")]
    names = args.backends.split(",") if args.backends else benchmark.default_backends(device)
    backends = []
    for name in names:
        reason = benchmark.probe_backend(name, device)
        if reason is None:
            backends.append(name)
        else:
            print(f"# backend {name}: unavailable ({reason})", file=sys.stderr)
    repeat = args.repeat if args.repeat is not None else 20 if on_gpu else 10
    timer = benchmark.Timer(device, warmup=args.warmup, repeat=repeat, calls=args.calls)
    policies = ("heuristic", "random") if args.policy == "both" else (args.policy,)
    compile_backend = "inductor" if args.compile else None

    print("\n".join(benchmark.header_lines(device, getattr(args, "command_line", "mdfast bench"), timer)))
    if args.load:
        return run_loaded(args, device, dtype, backends, policies, timer)
    print(benchmark.HEADER + "\n|" + "---|" * 12, flush=True)
    rows = []
    for B, N, V, E in args.shape or (benchmark.GPU_SHAPES if on_gpu else benchmark.CPU_SHAPES):
        cases = benchmark.step_cases(B, N, V, E, dtype, device, backends, policies)
        rows += benchmark.measure(cases, timer, compile_backend=compile_backend, log=print_now)
        del cases
    if args.body:
        for B in (1, 8):
            cases = benchmark.body_cases(B, 640, 4096, 32, 12288, dtype, device, backends)
            rows += benchmark.measure(cases, timer, log=print_now)
    if args.json:
        with atomic_write(args.json) as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
    return 0


def print_now(line: str) -> None:
    """Print one row at once (a long run shows its progress row by row)."""
    print(line, flush=True)


def run_loaded(args, device, dtype, backends, policies, timer) -> int:
    """``--load``: every shape's cases quiet and loaded per thread count, then the table of both medians."""
    from mdfast import benchmark  # the tree imports every verb: implementations load when their verb runs

    threads = args.threads or sorted({1, torch.get_num_threads()})
    print(f"# load: {benchmark.cores()} busy processes beside it; threads: {threads}")
    print(benchmark.HEADER + "\n|" + "---|" * 12, flush=True)
    rows = []
    for B, N, V, E in args.shape or benchmark.CPU_SHAPES:
        cases = benchmark.step_cases(B, N, V, E, dtype, device, backends, policies)
        rows += benchmark.measure_under_load(cases, timer, threads, log=print_now)
        del cases
    print("\n" + benchmark.LOAD_HEADER)
    print("\n".join(benchmark.format_load_row(r) for r in rows), flush=True)
    if args.json:
        with atomic_write(args.json) as f:
            json.dump([dataclasses.asdict(r) for r in rows], f, indent=1)
    return 0
