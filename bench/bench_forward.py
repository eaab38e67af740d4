"""The native LLaDA body's full forward against the eager port, side by side on the same weights (CPU).

    taskset -c 1 env OMP_NUM_THREADS=1 python bench/bench_forward.py             # the ratio (about a minute)
    taskset -c 1 env OMP_NUM_THREADS=1 python bench/bench_forward.py --profile   # then the top ops by self CPU

Bodies: ``bench_e2e.llada_pair`` on ``bench_e2e.PRESETS[--preset]`` (default "tiny": d 256, 4 layers, MLP 768,
V 32000), float32 on the CPU: mdfast's native LLaDA body (``mdfast.LLaDAModel``) and the eager port of SPEC 5 in
``tests/llada_eager.py`` (standing in for LLaDA's remote code) on the very same weight tensors.

Timing: both models get the same ``inputs_embeds`` (B = ``--batch``, ``--length`` positions, no attention mask)
under ``torch.no_grad()``; ``--warmup`` untimed rounds, then ``--rounds`` rounds of one native call followed by
one port call (alternating, so load on the machine hits both alike), each timed by ``time.perf_counter`` (wall
time; ``--clock cpu``: ``time.thread_time``, the thread's CPU time, which leaves out the time other processes on
a shared core take, not their cache effects).
Printed: the median ms of each model and the median of the per-call ratios native / port (round i's native time
over round i's port time); below 1.00 the native forward is the faster. ``--profile`` then runs
``torch.profiler`` over ``--profile-rounds`` calls of each model and prints the top ops by self CPU time.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import bench_e2e
import torch
from torch.profiler import ProfilerActivity, profile

CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="bench/bench_forward.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=bench_e2e.PRESETS, default="tiny", help="the body's widths")
    parser.add_argument("--length", type=int, default=256, help="positions per row")
    parser.add_argument("--batch", type=int, default=1, help="rows")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds (one native, then one port call)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall time, or the thread's CPU time")
    parser.add_argument("--profile", action="store_true", help="then profile both models with torch.profiler")
    parser.add_argument("--profile-rounds", type=int, default=5, help="calls of each model under the profiler")
    parser.add_argument("--top", type=int, default=15, help="rows of each profile table")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    for name in ("length", "batch", "rounds", "profile_rounds", "top"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive int, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup: expected an int >= 0, got {args.warmup}")
    return args


def seconds(model: torch.nn.Module, embeds: torch.Tensor, clock=time.perf_counter) -> float:
    """Seconds on ``clock`` of one forward of ``model`` on ``embeds`` (its logits are read, so nothing is skipped)."""
    start = clock()
    model(inputs_embeds=embeds).logits.sum()
    return clock() - start


def alternate(
    native, port, embeds: torch.Tensor, rounds: int, warmup: int, clock=time.perf_counter
) -> tuple[list[float], list[float]]:
    """Per-call seconds of ``rounds`` rounds of one native call then one port call, after ``warmup`` rounds."""
    times: tuple[list[float], list[float]] = ([], [])
    with torch.no_grad():
        for i in range(warmup + rounds):
            pair = seconds(native, embeds, clock), seconds(port, embeds, clock)
            if i >= warmup:
                times[0].append(pair[0])
                times[1].append(pair[1])
    return times


def profile_table(model: torch.nn.Module, embeds: torch.Tensor, rounds: int, top: int) -> str:
    """torch.profiler's table of the top ``top`` ops by self CPU time over ``rounds`` forwards."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(rounds):
            model(inputs_embeds=embeds)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main(argv: list[str] | None = None) -> int:
    """Print the two medians and the median per-call ratio native / port (and the profiles with ``--profile``)."""
    args = parse_args(argv)
    device, dtype = torch.device("cpu"), torch.float32
    p = bench_e2e.PRESETS[args.preset]
    native, port = bench_e2e.llada_pair(p, device, dtype)
    generator = torch.Generator(device).manual_seed(1)
    embeds = torch.randn(args.batch, args.length, p["hidden"], generator=generator, device=device, dtype=dtype)
    native_s, port_s = alternate(native, port, embeds, args.rounds, args.warmup, CLOCKS[args.clock])
    ratios = [a / b for a, b in zip(native_s, port_s)]
    print(f"# torch {torch.__version__}, CPU, {torch.get_num_threads()} thread(s), {datetime.date.today()}")
    print(f"# command: python bench/bench_forward.py {' '.join(args.argv)}".rstrip())
    print(
        f"# preset {args.preset} (d {p['hidden']}, {p['layers']} layers, MLP {p['intermediate']}, V {p['vocab']}), "
        f"B = {args.batch}, {args.length} positions, {dtype}; {args.warmup} warm-ups, {args.rounds} rounds, "
        f"{args.clock} clock"
    )
    print(f"native median ms: {1e3 * statistics.median(native_s):.2f}")
    print(f"port median ms: {1e3 * statistics.median(port_s):.2f}")
    print(f"median per-call ratio native / port: {statistics.median(ratios):.3f}")
    if args.profile:
        for name, model in (("native", native), ("port", port)):
            print(f"\n## {name}: top {args.top} ops by self CPU time over {args.profile_rounds} forwards")
            print(profile_table(model, embeds, args.profile_rounds, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
