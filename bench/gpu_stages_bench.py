"""The GPU check's timing stages: the kernel benchmark, and torch.compile of the reference beside it.

- bench: the kernel benchmark (mdfast.benchmark): per op and shape the graph-replayed kernel time and the eager
  call latency, L2 flushed between calls, check_finite=False, the device copy of the same bytes timed the same
  way.
- compile: torch.compile of the reference next to the Triton step (only if time is left).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
from gpu_stage import Stage, skip, write_results

from mdfast import benchmark


def stage_bench(args) -> int:
    """The kernel benchmark: graph-replayed and eager times per op, shape and backend, beside a device copy."""
    if not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    stage = Stage("bench", args.budget)
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        timer = benchmark.Timer(device, warmup=1, repeat=2)
        backends = ["torch", "triton"]
        plans = [("step", (1, 7, 111, 16), "float32", ("heuristic",))]
    else:
        timer = benchmark.Timer(device, warmup=3, repeat=20, calls=10)
        backends = ["triton", "torch"]
        reason = benchmark.probe_backend("cuda", device)
        if reason is None:
            backends.insert(1, "cuda")
        print(f"backends: {backends}" + (f" (cuda unavailable: {reason})" if reason else ""))
        plans = [
            ("step", (1, 512, 126464, 4096), "bfloat16", ("heuristic", "random")),
            ("step", (8, 512, 126464, 4096), "bfloat16", ("heuristic", "random")),
            ("step", (1, 2048, 152064, 3584), "bfloat16", ()),
            ("step", (1, 512, 126464, 4096), "float32", ()),
            ("step", (1, 2048, 152064, 3584), "float32", ()),
            ("body", (1, 640, 4096, 32, 12288), "bfloat16", ()),
            ("body", (8, 640, 4096, 32, 12288), "bfloat16", ()),
        ]
    print("\n".join(benchmark.header_lines(device, "bash bench/gpu_check.sh (stage bench)", timer)))
    print(benchmark.HEADER + "\n|" + "---|" * 12, flush=True)
    rows = []

    def run(kind, shape, dtype_name, policies):
        dtype = getattr(torch, dtype_name)
        if kind == "step":
            cases = benchmark.step_cases(*shape, dtype, device, backends, policies)
        else:
            cases = benchmark.body_cases(*shape, dtype, device, backends)
        got = benchmark.measure(cases, timer, log=lambda line: print(line, flush=True))
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
        assert got, "no row measured"
        rows.extend(got)
        write_results(
            args.results, "bench", {"device": benchmark.describe_device(device), "rows": [asdict(r) for r in rows]}
        )

    for kind, shape, dtype_name, policies in plans:
        stage.case(
            f"{kind} {'x'.join(map(str, shape))} {dtype_name}", lambda p=(kind, shape, dtype_name, policies): run(*p)
        )
    print("\n" + benchmark.format_table(rows))
    return stage.finish(key_figures(rows))


def key_figures(rows: list) -> str:
    """The headline of the bench stage: the x-flow step at B = 1 and the statistics' share of copy."""
    get = {(r.op, r.shape, r.dtype, r.variant, r.backend): r for r in rows}
    parts = []
    for backend in ("triton", "cuda"):
        step = get.get(("xflow_step", "1x512x126464x4096", "bfloat16", "heuristic", backend))
        stats = get.get(("token_stats", "1x512x126464x4096", "bfloat16", "k=4", backend))
        if step is not None and step.replayed_us is not None:
            parts.append(f"{backend} x-flow B=1 {step.replayed_us:.0f} us replayed / {step.eager_us:.0f} us eager")
        if stats is not None and stats.copy_fraction is not None:
            parts.append(f"{backend} stats bf16 {100 * stats.copy_fraction:.0f}% of copy")
    return "; ".join(parts)


def stage_compile(args) -> int:
    """torch.compile of the reference beside the Triton step (the statistics and the policy step if time is left)."""
    if not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    stage = Stage("compile", args.budget)
    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        timer, backends, compiler = benchmark.Timer(device, warmup=1, repeat=2), ["torch"], "eager"
        shape, dtype = (1, 7, 111, 16), torch.float32
        print("tiny: torch.compile with backend='eager' (dynamo only, no inductor)")
    else:
        timer, backends, compiler = (
            benchmark.Timer(device, warmup=2, repeat=10, calls=10),
            ["triton", "torch"],
            "inductor",
        )
        shape, dtype = (1, 512, 126464, 4096), torch.bfloat16
    print("\n".join(benchmark.header_lines(device, "bash bench/gpu_check.sh (stage compile)", timer)))
    print(benchmark.HEADER + "\n|" + "---|" * 12, flush=True)
    rows = []
    # the x-flow step first (a kernel target), then the statistics, then the policy step (its
    # Kummer series breaks the graph at every term: dynamo recompiles up to its limit, then gives up)
    plan = (("xflow_step", ("heuristic",)), ("token_stats", ()), ("xflow_step", ("random",)))
    for op, policies in plan[:1] if args.tiny else plan:
        if stage.left() < 75:
            print(f"SKIP {op} {policies}: {stage.left():.0f} s left, a compilation takes up to a minute")
            continue
        cases = [c for c in benchmark.step_cases(*shape, dtype, device, backends, policies) if c.op == op]
        label = f"{op} {'/'.join(policies) or 'k=4'} torch.compile({compiler})"
        got = stage.case(label, lambda cases=cases: benchmark.measure(cases, timer, compile_backend=compiler))
        rows += got or []
        del cases
        write_results(args.results, "compile", {"rows": [asdict(r) for r in rows]})
    print("\n" + benchmark.format_table(rows))
    compiled = [r for r in rows if r.backend == benchmark.COMPILED and r.op == "xflow_step"]
    ours = [r for r in rows if r.backend == "triton" and r.op == "xflow_step" and r.variant == "heuristic"]
    key = ""
    if compiled and ours:
        key = f"x-flow B=1: triton {compiled[0].eager_us / ours[0].eager_us:.1f}x torch.compile (eager latencies)"
        key += f"; {compiled[0].note}"
    return stage.finish(key)
