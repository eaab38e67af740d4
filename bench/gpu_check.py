"""The stages of ``bench/gpu_check.sh``, one function each (the shell script only orchestrates).

    python bench/gpu_check.py --stage NAME [--tiny] [--budget SECONDS] [--results DIR]

  cuda_build  build the CUDA extension through the public API (``backend="cuda"`` on a tiny input)
  triton      the Triton kernels at production shapes against the float64 reference evaluated on
              the GPU, in chunks of rows (tests/checks.py): token_stats at 512 x 126464, 2048 x
              152064, few rows (the split path) and 8 x 2048 x 152064 (B*N*V > 2^31), strided and
              misaligned rows, ties, -inf and non-finite rows; xflow_step at the LLaDA-8B step
              shape (N 512, V 126464, E 4096, bf16 logits and embedding), B = 1 and 8, heuristic,
              random policy, sampled (its own draws handed to the reference); the body kernels
              (rms_norm with and without the residual, rope_ on the q heads of a fused qkv, swiglu
              on the halves of a fused gate/up) at LLaDA-8B widths
  graphs      whole decoding steps replayed from CUDA graphs equal the eager steps bit for bit,
              for every decoder that draws no random numbers (a tiny native LLaDA, a tiny BERT),
              and the eager fallback with one warning for a forward that synchronises
              (tests/test_gpu.py's helpers)
  cuda        the CUDA kernels, the same token_stats and xflow_step cases
  bench       the kernel benchmark (mdfast.benchmark): per op and shape the graph-replayed kernel
              time and the eager call latency, L2 flushed between calls, check_finite=False, the
              device copy of the same bytes timed the same way
  e2e         LLaDA-8B shape end to end (bench/bench_e2e.py): the 32-layer forwards, then x-flow and
              low-confidence decoding (B = 1, 512 tokens, 128 steps) with as many layers as the
              time left allows, native body + graphs against the eager loop and the eager port;
              the graph-replayed step at B = 8 against B = 1
  compile     torch.compile of the reference next to the Triton step (only if time is left)
  targets     the table of the targets of issues 3-5 from what the stages above measured

``--tiny`` runs every stage at toy shapes on the CPU (the Triton interpreter; the torch backend
stands in for CUDA; no graph is captured there, so the graph stage checks the comparisons only).
A stage prints what it does as it goes and ends with one line ``KEY: <its key figure>``; its exit
status is 0 (pass), 1 (fail) or 3 (skipped, the KEY line says why). Stages that measure write
``<results>/<stage>.json``, which ``targets`` reads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PASS, FAIL, SKIP = 0, 1, 3


class Stage:
    """What one stage ran: each case passes or fails on its own (the others still run)."""

    def __init__(self, name: str, budget: float) -> None:
        self.name = name
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.passed: list[str] = []
        self.failed: list[str] = []

    def left(self) -> float:
        """Seconds left before the stage's own deadline."""
        return self.deadline - time.monotonic()

    def case(self, name: str, fn: Callable[[], object]):
        """Run one check; PASS or FAIL (with the traceback's end) is printed with its duration."""
        start = time.monotonic()
        try:
            result = fn()
        except Exception as error:
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            print(f"FAIL {name} ({time.monotonic() - start:.1f} s): {type(error).__name__}: {error}", flush=True)
            print("".join(lines[-4:]).rstrip(), flush=True)
            self.failed.append(name)
            return None
        print(f"PASS {name} ({time.monotonic() - start:.1f} s)", flush=True)
        self.passed.append(name)
        return result

    def finish(self, key: str = "") -> int:
        total = len(self.passed) + len(self.failed)
        summary = f"{len(self.passed)}/{total} checks pass"
        if self.failed:
            summary += f"; failed: {', '.join(self.failed[:4])}{' ...' if len(self.failed) > 4 else ''}"
        print(f"KEY: {summary}{'; ' + key if key else ''}", flush=True)
        return FAIL if self.failed else PASS


def skip(reason: str) -> int:
    print(f"KEY: {reason}", flush=True)
    return SKIP


def write_results(directory: str | None, stage: str, data: dict) -> None:
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{stage}.json").write_text(json.dumps(data, indent=1))


def read_results(directory: str | None, stage: str) -> dict | None:
    path = Path(directory or ".") / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _torch():
    """torch and checks (tests/checks.py); tests/ and bench/ on the import path."""
    for folder in (str(ROOT / "tests"), str(ROOT / "bench")):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    import checks
    import torch

    return torch, checks


# ---------------------------------------------------------------------------------------------
# Shapes: production, and the toy ones of --tiny
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatsCase:
    label: str
    shape: tuple[int, int, int]  # (B, N, V)
    dtype: str
    k: int
    full_entropy: bool
    misaligned: bool = False  # rows of a wider buffer, one element in: row stride V + 5, odd offset
    planted: bool = False  # ties, -inf rows, then the non-finite rows' report


@dataclass(frozen=True)
class Shapes:
    stats: tuple[StatsCase, ...]
    step: tuple[int, int, int, int]  # (B max, N, V, E): B = 1 and B max are checked
    step_dtype: str
    body: tuple[int, int, int, int, tuple[int, ...]]  # (L, d, heads, F, batches)
    body_dtypes: tuple[str, ...]


PRODUCTION = Shapes(
    stats=(
        StatsCase(
            "512 x 126464 bf16, ties / -inf / non-finite rows", (1, 512, 126464), "bfloat16", 4, True, planted=True
        ),
        StatsCase("512 x 126464 fp32", (1, 512, 126464), "float32", 4, True),
        StatsCase("2048 x 152064 bf16, strided misaligned rows", (1, 2048, 152064), "bfloat16", 8, True, True),
        StatsCase("2048 x 152064 fp32, strided misaligned rows, k=2", (1, 2048, 152064), "float32", 2, False, True),
        StatsCase(
            "16 x 152064 bf16 (few rows: the split path), misaligned", (1, 16, 152064), "bfloat16", 4, True, True
        ),
        StatsCase("8 x 2048 x 152064 bf16 (B*N*V > 2^31)", (8, 2048, 152064), "bfloat16", 4, True),
    ),
    step=(8, 512, 126464, 4096),
    step_dtype="bfloat16",
    body=(640, 4096, 32, 12288, (1, 8)),
    body_dtypes=("float32", "bfloat16"),
)

# Under the Triton interpreter: few elements (about a second per launch), float32 body kernels
# (the interpreter has no real bfloat16 arithmetic), few rows take the split path there too.
TINY = Shapes(
    stats=(
        StatsCase("8 x 111 bf16, ties / -inf / non-finite rows", (1, 8, 111), "bfloat16", 4, True, planted=True),
        StatsCase("9 x 300 fp32, strided misaligned rows, k=8", (1, 9, 300), "float32", 8, True, True),
        StatsCase("2 x 3 x 517 bf16, batch", (2, 3, 517), "bfloat16", 2, False),
    ),
    step=(2, 7, 111, 16),
    step_dtype="bfloat16",
    body=(5, 64, 4, 96, (1,)),
    body_dtypes=("float32",),
)


def plant_ties(rows, torch) -> None:
    """Rows 0-5 of ``rows`` (N, V), as test_token_stats.py's ties test: all equal; half -inf; two
    equal finite entries (fewer than k); one finite entry; integer values (many exact ties); the
    maximum tied at the end of the row."""
    V, dtype, device = rows.shape[-1], rows.dtype, rows.device
    rows[0] = 1.0
    rows[1, torch.rand(V, device=device) < 0.5] = -math.inf
    rows[2] = -math.inf
    rows[2, V - 1] = rows[2, 3] = 2.0
    rows[3] = -math.inf
    rows[3, V // 2] = 0.0
    rows[4] = torch.randint(-3, 4, (V,), device=device).to(dtype)
    rows[5, -7:] = 50.0


def random_logits(case: StatsCase, device, torch):
    """Random logits (scale 3, drawn on the device one sequence at a time), as a view of a wider
    buffer one element in when ``misaligned``."""
    B, N, V = case.shape
    pad = 5 if case.misaligned else 0
    wide = torch.empty(B, N, V + pad, dtype=getattr(torch, case.dtype), device=device)
    for b in range(B):
        wide[b].copy_(torch.randn(N, V + pad, device=device) * 3)
    return wide[..., 1 : V + 1] if case.misaligned else wide


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def stage_cuda_build(args) -> int:
    torch, _ = _torch()
    if not torch.cuda.is_available():
        return skip("no CUDA device: the CUDA extension is built only on a GPU machine")
    import mdfast

    for name in ("TORCH_CUDA_ARCH_LIST", "MDFAST_BUILD_DIR"):
        print(f"{name}={os.environ.get(name)}")
    start = time.monotonic()
    try:
        mdfast.token_stats(torch.randn(1, 2, 64, device="cuda"), 2, backend="cuda")
    except Exception as error:  # the message holds the compiler's output
        print(f"{type(error).__name__}: {error}")
        print(f"KEY: the CUDA extension failed to build or load after {time.monotonic() - start:.0f} s")
        return FAIL
    print(f"KEY: built and loaded in {time.monotonic() - start:.0f} s")
    return PASS


def correctness(stage: Stage, backend: str, tiny: bool, body: bool) -> None:
    """The token_stats and xflow_step cases (and with ``body`` the body kernels) on ``backend``."""
    torch, checks = _torch()
    shapes, device = (TINY, "cpu") if tiny else (PRODUCTION, "cuda")
    with torch.no_grad():
        for case in shapes.stats:
            stage.case(f"token_stats {backend} {case.label}", lambda case=case: stats_case(case, backend, device))
            if device == "cuda":
                torch.cuda.empty_cache()
        B_max, N, V, E = shapes.step
        dtype = getattr(torch, shapes.step_dtype)
        state = checks.make_state(B_max, N, V, E, device=device, logits_dtype=dtype, emb_dtype=dtype)
        for B in (1, B_max):
            for kind in ("heuristic", "policy", "sampled"):
                label = f"xflow_step {backend} {B}x{N}x{V}x{E} {shapes.step_dtype} {kind}"
                stage.case(label, lambda B=B, kind=kind, state=state: step_case(state, B, kind, backend))
        del state
    if body:
        L, d, heads, F, batches = shapes.body
        for name in shapes.body_dtypes:
            for B in batches:
                label = f"{B}x{L}x{d} (heads {heads}, F {F}) {name}"
                stage.case(
                    f"body kernels {backend} {label}", lambda B=B, name=name: body_case(B, shapes.body, name, device)
                )


def stats_case(case: StatsCase, backend: str, device: str) -> None:
    torch, checks = _torch()
    import mdfast

    logits = random_logits(case, device, torch)
    if case.planted:
        plant_ties(logits[0], torch)
    stats = mdfast.token_stats(logits, case.k, case.full_entropy, backend=backend)
    checks.check_against_reference(stats, logits, case.k, case.full_entropy, on_device=True)
    if case.planted:  # non-finite rows: reported, and no other row changes
        logits[0, 6, 17] = math.nan
        logits[0, 7] = -math.inf
        try:
            mdfast.token_stats(logits, case.k, case.full_entropy, backend=backend)
        except ValueError as error:
            assert "2 row(s) are not a finite distribution" in str(error), str(error)
        else:
            raise AssertionError("non-finite rows were not reported")
        again = mdfast.token_stats(logits, case.k, case.full_entropy, backend=backend, check_finite=False)
        assert not bool(torch.isfinite(again.lse[0, 6:8]).any()), "the non-finite rows got a finite lse"
        others = torch.ones(logits.shape[:-1], dtype=torch.bool, device=logits.device)
        others[0, 6:8] = False
        for name in ("argmax", "topk_probs", "topk_ids", "lse", "margin", "entropy_topk", "entropy_full"):
            checks.assert_bitwise_equal(name, getattr(again, name)[others], getattr(stats, name)[others])


def step_case(state, B: int, kind: str, backend: str) -> None:
    torch, checks = _torch()
    import mdfast

    logits, X, t = (x[:B] for x in state[:3])  # the first B sequences (contiguous views)
    embedding, m = state[3:]
    policy = checks.random_policy().to(logits.device) if kind != "heuristic" else None
    rho = torch.rand(B, device=logits.device)
    X_before = X.clone()
    drawing = {"sample": True, "generator": torch.Generator(logits.device).manual_seed(7)} if kind == "sampled" else {}
    out = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, backend=backend, **drawing)
    given = {"action": out.action} if kind == "sampled" else {}
    want = checks.reference_step(logits, X, t, embedding, m, policy, rho, mdfast.FlowConfig(), on_device=True, **given)
    checks.check_step(out, want, X_before, embedding, checks.RTOL[logits.dtype])
    assert torch.equal(X, X_before), "inplace=False must leave X untouched"
    if kind == "sampled":
        assert out.log_prob is not None and bool(torch.isfinite(out.log_prob).all()), "log pi(y) not finite"
    else:
        second = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, backend=backend)
        for name in ("X", "t", "tokens", "confidence", "action", "committed"):
            checks.assert_bitwise_equal(name, getattr(second, name), getattr(out, name))


def body_case(B: int, body: tuple, dtype_name: str, device: str) -> None:
    """The Triton body kernels against the reference: float32 inputs against float64 (1e-5 of
    |want| + 1), bf16 inputs against the same roundings evaluated eagerly (one bf16 step, 2^-7), as
    tests/test_body_kernels.py does; the residual sum exactly; nothing outside the views touched."""
    torch, checks = _torch()
    from mdfast import ops, reference

    L, d, heads, F, _ = body
    dtype = getattr(torch, dtype_name)
    exact = dtype == torch.float32

    def want(fn, *xs):
        return fn(*(x.double() if exact else x for x in xs))

    rtol, tol_scale = (1e-5, 1.0) if exact else (2**-7, 1.0)
    x = torch.randn(B, L, d, device=device).to(dtype)
    update = torch.randn(B, L, d, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(d, device=device)).to(dtype)
    normed = ops.rms_norm(x, weight, 1e-5, backend="triton")
    checks.assert_close(
        "rms_norm", normed, want(lambda a, w: reference.rms_norm(a, w, 1e-5), x, weight), rtol, tol_scale
    )
    summed, normed = ops.rms_norm(x, weight, 1e-5, update=update, backend="triton")
    assert torch.equal(summed, x + update), "rms_norm: the residual sum differs from x + update"
    expected = want(lambda a, w: reference.rms_norm(a, w, 1e-5), x + update, weight)
    checks.assert_close("rms_norm + residual", normed, expected, rtol, tol_scale)

    qkv = torch.randn(B, L, 3 * d, device=device).to(dtype)
    before = qkv.clone()
    q = qkv[..., :d].unflatten(-1, (heads, d // heads))
    assert ops.rope_(q, 500000.0, backend="triton") is q
    expected = want(lambda a: reference.rope(a, 500000.0), before[..., :d].unflatten(-1, (heads, d // heads)))
    checks.assert_close("rope_", q, expected, rtol, tol_scale)
    assert torch.equal(qkv[..., d:], before[..., d:]), "rope_ touched k or v"

    gate_up = (torch.randn(B, L, 2 * F, device=device) * 3).to(dtype)
    gate, up = gate_up[..., :F], gate_up[..., F:]
    out = ops.swiglu(gate, up, backend="triton")
    checks.assert_close("swiglu", out, want(reference.swiglu, gate, up), rtol, 1e-6 if exact else 1e-3)


def stage_correct(args, backend: str) -> int:
    torch, _ = _torch()
    stage = Stage(backend, args.budget)
    import mdfast

    if args.tiny and backend == "cuda":
        print("tiny: the cuda backend needs a GPU; its cases run on the torch backend here")
        backend = "torch"
    elif not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    try:
        mdfast.token_stats(torch.randn(1, 2, 64, device="cpu" if args.tiny else "cuda"), 2, backend=backend)
    except Exception as error:
        return skip(f"backend {backend!r} unavailable: {str(error).splitlines()[0][:300]}")
    correctness(stage, backend, args.tiny, body=backend == "triton")
    return stage.finish()


def stage_graphs(args) -> int:
    torch, _ = _torch()
    import test_gpu

    if not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    stage = Stage("graphs", args.budget)
    device, backend = ("cpu", "torch") if args.tiny else ("cuda", "auto")
    if args.tiny:
        print("tiny: on the CPU no step is captured (graphed_blocks 0): only the comparisons run")
    graphed = []
    for decoder in test_gpu.GRAPHABLE:
        # --tiny: left padding for two decoders only (the CPU is slow and captures nothing)
        for padded in (False, True) if not args.tiny or decoder in ("xflow", "low_confidence") else (False,):
            label = f"LLaDA {decoder} {'left-padded' if padded else 'no padding'}: graphed == eager, bitwise"
            out = stage.case(
                label, lambda d=decoder, p=padded: test_gpu.check_llada_replays_eager(device, d, p, backend)
            )
            if out is not None:
                print(f"  graphed_blocks {out.graphed_blocks}, nfe {out.nfe}")
                graphed.append(out.graphed_blocks)
    stage.case(
        "a synchronising forward falls back once, with one warning",
        lambda: test_gpu.check_capture_fallback(device, backend),
    )
    bert = []
    for decoder in ("xflow",) if args.tiny else ("xflow", "low_confidence"):
        out = stage.case(
            f"BERT {decoder}: graphed == eager", lambda d=decoder: test_gpu.check_transformers_model(device, d, backend)
        )
        if out is not None:
            print(f"  graphed_blocks {out.graphed_blocks} (0: its forward synchronises, decoded eagerly)")
            bert.append(out.graphed_blocks)
    return stage.finish(f"LLaDA graphed_blocks {sorted(set(graphed))}, BERT {bert}")


def stage_bench(args) -> int:
    torch, _ = _torch()
    from mdfast import benchmark

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


def choose_layers(forward_ms: dict[str, float], steps: int, seconds: float, full: int) -> tuple[int, list[str]]:
    """The most layers (of ``full``, halving) whose decoding runs fit in ``seconds``, from the
    forwards timed with all ``full`` layers (ms: "mdfast", "eager", "eager port"). Per decoder
    (x-flow, low-confidence) each loop runs twice (warm-up, timed) ``steps`` forwards; a forward
    with L layers costs (0.1 + 0.9 L / full) of the full one (the head does not shrink), plus
    10 ms a step for the eager loops' per-token work and 2 s a call for mdfast's capture; then
    the B = 8 / B = 1 step runs (about 20 mdfast forwards at B = 8). Returns the count and the
    estimate's lines."""
    lines, layers = [], full
    while True:
        scale = 0.1 + 0.9 * layers / full
        per_decoder = 2 * (steps * forward_ms["mdfast"] * scale / 1e3 + 2.0)
        for loop in ("eager", "eager port"):
            if loop in forward_ms:
                per_decoder += 2 * steps * (forward_ms[loop] * scale + 10.0) / 1e3
        b8 = 20 * forward_ms.get("mdfast B=8", 8 * forward_ms["mdfast"]) * scale / 1e3 + 10.0
        estimate = 2 * per_decoder + b8
        lines.append(f"{layers} layers: about {estimate:.0f} s of decoding runs (left: {seconds:.0f} s)")
        if estimate <= seconds or layers == 1:
            return layers, lines
        layers = max(1, layers // 2)


def stage_e2e(args) -> int:
    torch, _ = _torch()
    import bench_e2e

    import mdfast

    if not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    stage = Stage("e2e", args.budget)
    if args.tiny:
        device, dtype, backend, repeat = torch.device("cpu"), torch.float32, "torch", 1
        p = dict(hidden=64, layers=2, heads=4, intermediate=96, vocab=80, prompt=8, new=16, steps=(4,))
        big_batch, short_steps = 2, 4
    else:
        device, dtype, backend, repeat = torch.device("cuda"), torch.bfloat16, "auto", 1
        p = dict(bench_e2e.PRESETS["llada8b"], steps=(128,))
        big_batch, short_steps = 8, 8
    full, steps = p["layers"], p["steps"][0]
    results: dict = {"full_layers": full, "forwards": {}, "runs": []}
    print(f"LLaDA body: {full} layers, {p['hidden']} wide, V {p['vocab']}, {dtype}; prompt {p['prompt']}")
    print(*bench_e2e.FORWARD_HEADER, sep="\n")

    def forwards(layers: int, batches) -> dict:
        native, port = bench_e2e.llada_pair(dict(p, layers=layers), device, dtype)
        timed = {B: bench_e2e.time_forwards(native, port, B, p, device, repeat=3) for B in batches}
        for by_loop in timed.values():
            for f in by_loop.values():
                print(bench_e2e.format_forward(f), flush=True)
        return native, port, timed

    built = stage.case(
        f"forwards with all {full} layers, B = 1 and {big_batch}", lambda: forwards(full, (1, big_batch))
    )
    if built is None:
        return stage.finish()
    native, port, timed = built
    results["forwards"][full] = {B: {k: asdict(v) for k, v in f.items()} for B, f in timed.items()}
    write_results(args.results, "e2e", results)
    forward_ms = {loop: f.replayed_ms or f.eager_ms for loop, f in timed[1].items()}
    big = timed[big_batch]["mdfast"]
    forward_ms["mdfast B=8"] = big.replayed_ms or big.eager_ms
    layers, estimate = choose_layers(forward_ms, steps, stage.left() - 15, full)
    print("\n".join(["layer count from the time left:", *estimate, f"decoding with {layers} of {full} layers"]))
    results["layers"] = layers
    if layers != full:
        del native, port
        if device.type == "cuda":
            torch.cuda.empty_cache()
        built = stage.case(f"forwards with {layers} layers, B = 1", lambda: forwards(layers, (1,)))
        if built is None:
            return stage.finish()
        native, port, timed = built
        results["forwards"][layers] = {B: {k: asdict(v) for k, v in f.items()} for B, f in timed.items()}

    print(f"\ndecoding, {layers} layers, B = 1, {p['new']} tokens, {steps} steps, one block")
    print(*bench_e2e.RUN_HEADER, sep="\n")
    ids = torch.randint(5, p["vocab"], (1, p["prompt"]), device=device)
    for decoder in ("xflow", "low_confidence"):

        def run(decoder=decoder):
            runs = bench_e2e.decode(native, port, ids, p, steps, decoder, timed[1], device, repeat, backend)
            for r in runs:
                print(bench_e2e.format_run(r), flush=True)
            results["runs"] += [asdict(r) for r in runs]
            write_results(args.results, "e2e", results)
            if device.type == "cuda":
                assert runs[0].graphed_blocks > 0, "mdfast replayed no block from a CUDA graph"

        stage.case(f"{decoder}: mdfast against the eager loop and the eager port", run)

    def batch_scaling():
        medians = {}
        for B in (1, big_batch):
            prompt = torch.randint(5, p["vocab"], (B, p["prompt"]), device=device)
            kwargs = dict(max_new_tokens=p["new"], steps=short_steps, decoder="xflow", backend=backend)
            mdfast.generate(native, prompt, **kwargs)  # warm-up
            out = mdfast.generate(native, prompt, **kwargs)
            medians[B] = 1e3 * statistics.median(out.step_times)
            graphed = out.graphed_blocks
            print(f"x-flow B = {B}: median step {medians[B]:.2f} ms ({short_steps} steps, graphed_blocks {graphed})")
        results["step_ms"] = {"layers": layers, "B1": medians[1], "big_batch": big_batch, "B_big": medians[big_batch]}
        print(f"B = {big_batch} step / B = 1 step: {medians[big_batch] / medians[1]:.2f}x")

    stage.case(f"x-flow step at B = {big_batch} against B = 1", batch_scaling)
    write_results(args.results, "e2e", results)
    xflow = [r for r in results["runs"] if r["decoder"] == "xflow" and r["loop"] == "mdfast"]
    key = f"{layers}/{full} layers"
    if xflow:
        r = xflow[0]
        key += f"; x-flow {r['vs_eager']:.2f}x eager loop, {r['vs_port'] or 0:.2f}x eager port, "
        key += f"replayed step {r['replayed_step_ms']:.1f} ms, = eager {100 * (r['equal_tokens'] or 0):.0f}%"
    return stage.finish(key)


def stage_compile(args) -> int:
    torch, _ = _torch()
    from mdfast import benchmark

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
    # the x-flow step first (a target of issue 3), then the statistics, then the policy step (its
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


# ---------------------------------------------------------------------------------------------
# The targets of issues 3-5
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    issue: int
    what: str
    stage: str
    figure: str = "not measured"
    met: str = "-"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def targets(bench: dict | None, e2e: dict | None, compiled: dict | None) -> list[Target]:
    """Every target of issue 9's "Done when" with the figure the stages measured (pure data: the
    JSON the bench, e2e and compile stages wrote)."""
    rows = {(r["op"], r["shape"], r["dtype"], r["variant"], r["backend"]): r for r in (bench or {}).get("rows", [])}
    out = []
    for backend in ("triton", "cuda"):
        for dtype, share in (("bfloat16", 0.60), ("float32", 0.75)):
            for shape, label in (("1x512x126464x4096", "512 x 126464"), ("1x2048x152064x3584", "2048 x 152064")):
                t = Target(3, f"{backend} statistics {dtype} {label} >= {share:.0%} of copy bandwidth", "05 bench")
                r = rows.get(("token_stats", shape, dtype, "k=4", backend))
                if r and r["copy_fraction"] is not None:
                    t.figure = f"{100 * r['copy_fraction']:.0f}% ({r['gb_per_s']:.0f} GB/s, {r['replayed_us']:.0f} us)"
                    t.met = _verdict(r["copy_fraction"] >= share)
                out.append(t)
        for variant in ("heuristic", "random"):
            t = Target(3, f"{backend} x-flow step B=1 N=512 E=4096 bf16 ({variant}) <= 150 us", "05 bench")
            r = rows.get(("xflow_step", "1x512x126464x4096", "bfloat16", variant, backend))
            if r and r["replayed_us"] is not None:
                t.figure = f"{r['replayed_us']:.0f} us replayed ({r['eager_us']:.0f} us eager call)"
                t.met = _verdict(r["replayed_us"] <= 150)
            out.append(t)
            t = Target(3, f"{backend} x-flow step B=8 <= 8x B=1 ({variant})", "05 bench")
            one = rows.get(("xflow_step", "1x512x126464x4096", "bfloat16", variant, backend))
            eight = rows.get(("xflow_step", "8x512x126464x4096", "bfloat16", variant, backend))
            if one and eight and one["replayed_us"] and eight["replayed_us"] is not None:
                ratio = eight["replayed_us"] / one["replayed_us"]
                t.figure = f"{ratio:.2f}x ({eight['replayed_us']:.0f} / {one['replayed_us']:.0f} us)"
                t.met = _verdict(ratio <= 8)
            out.append(t)
    for key, label in (
        (("token_stats", "1x512x126464x4096", "bfloat16", "k=4"), "statistics bf16 512 x 126464"),
        (("xflow_step", "1x512x126464x4096", "bfloat16", "heuristic"), "x-flow step B=1"),
        (("xflow_step", "8x512x126464x4096", "bfloat16", "heuristic"), "x-flow step B=8"),
    ):
        t = Target(3, f"CUDA within 2x of Triton: {label}", "05 bench")
        triton, cuda = rows.get((*key, "triton")), rows.get((*key, "cuda"))
        if triton and cuda and triton["replayed_us"] and cuda["replayed_us"] is not None:
            ratio = cuda["replayed_us"] / triton["replayed_us"]
            t.figure = f"cuda / triton {ratio:.2f}x"
            t.met = _verdict(ratio <= 2)
        out.append(t)

    t = Target(3, "x-flow step B=1 >= 8x torch.compile (eager call latencies)", "07 compile")
    comp_rows = (compiled or {}).get("rows", [])
    comp = [r for r in comp_rows if r["backend"] == "torch.compile(reference)" and r["variant"] == "heuristic"]
    ours = [
        r for r in comp_rows if r["backend"] == "triton" and r["variant"] == "heuristic" and r["op"] == "xflow_step"
    ]
    if comp and ours:
        ratio = comp[0]["eager_us"] / ours[0]["eager_us"]
        t.figure = f"{ratio:.1f}x ({comp[0]['eager_us']:.0f} / {ours[0]['eager_us']:.0f} us; {comp[0]['note']})"
        t.met = _verdict(ratio >= 8)
    out.append(t)

    runs = {(r["decoder"], r["loop"]): r for r in (e2e or {}).get("runs", [])}
    md = runs.get(("xflow", "mdfast"))
    layers = f"{(e2e or {}).get('layers')}/{(e2e or {}).get('full_layers')} layers"
    t = Target(4, "end-to-end x-flow >= 1.3x the eager loop", "06 e2e")
    if md and md["vs_eager"] is not None:
        t.figure, t.met = f"{md['vs_eager']:.2f}x ({layers})", _verdict(md["vs_eager"] >= 1.3)
    out.append(t)
    t = Target(4, "<= 3% of the x-flow step outside the model", "06 e2e")
    forward = _forward(e2e, (e2e or {}).get("layers"), "mdfast")
    if md and md["replayed_step_ms"] and forward is not None:
        share = max(0.0, 1 - forward / md["replayed_step_ms"])
        t.figure = f"{100 * share:.1f}% (forward {forward:.2f} ms, replayed step {md['replayed_step_ms']:.2f} ms)"
        t.met = _verdict(share <= 0.03)
    out.append(t)
    t = Target(5, "native 8B forward (B=1, 640 tokens, 32 layers) <= 19 ms", "06 e2e")
    forward32 = _forward(e2e, (e2e or {}).get("full_layers"), "mdfast")
    if forward32 is not None:
        t.figure, t.met = f"{forward32:.2f} ms (response rows projected, replayed)", _verdict(forward32 <= 19)
    out.append(t)
    t = Target(5, "graph-replayed x-flow step <= 20 ms (32 layers)", "06 e2e")
    if md and md["replayed_step_ms"]:
        full, used = (e2e or {}).get("full_layers"), (e2e or {}).get("layers")
        t.figure = f"{md['replayed_step_ms']:.2f} ms ({layers})"
        t.met = _verdict(md["replayed_step_ms"] <= 20) if used == full else "(fewer layers)"
    out.append(t)
    t = Target(5, "x-flow step >= 1.5x the eager port", "06 e2e")
    if md and md["vs_port"] is not None:
        t.figure, t.met = f"{md['vs_port']:.2f}x ({layers})", _verdict(md["vs_port"] >= 1.5)
    out.append(t)
    t = Target(5, "graph-replayed step B=8 <= 8.5x B=1", "06 e2e")
    steps = (e2e or {}).get("step_ms")
    if steps and steps.get("big_batch") == 8:
        ratio = steps["B_big"] / steps["B1"]
        t.figure = f"{ratio:.2f}x ({steps['B_big']:.1f} / {steps['B1']:.1f} ms, {steps['layers']} layers)"
        t.met = _verdict(ratio <= 8.5)
    out.append(t)
    return out


def _forward(e2e: dict | None, layers, loop: str) -> float | None:
    forward = ((e2e or {}).get("forwards", {}).get(str(layers)) or {}).get("1", {}).get(loop)
    if forward is None:
        return None
    return forward["replayed_ms"] if forward["replayed_ms"] is not None else forward["eager_ms"]


def format_targets(items: list[Target]) -> str:
    lines = ["| issue | target | measured | met | stage |", "|---|---|---|---|---|"]
    lines += [f"| {t.issue} | {t.what} | {t.figure} | {t.met} | {t.stage} |" for t in items]
    return "\n".join(lines)


def stage_targets(args) -> int:
    found = {name: read_results(args.results, name) for name in ("bench", "e2e", "compile")}
    items = targets(found["bench"], found["e2e"], found["compile"])
    if args.tiny:
        print("(--tiny: toy shapes on the CPU; no figure below measures what its target names)")
        for t in items:
            t.met = "-"
    print(format_targets(items))
    measured = [name for name, data in found.items() if data is not None]
    print(f"KEY: from the {', '.join(measured) or 'no'} stage results")
    return PASS


STAGES = {
    "cuda_build": stage_cuda_build,
    "triton": lambda args: stage_correct(args, "triton"),
    "graphs": stage_graphs,
    "cuda": lambda args: stage_correct(args, "cuda"),
    "bench": stage_bench,
    "e2e": stage_e2e,
    "compile": stage_compile,
    "targets": stage_targets,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--tiny", action="store_true", help="toy shapes on the CPU")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds this stage may take")
    parser.add_argument("--results", default=None, help="folder for the stages' JSON results")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cpu_build = Path(os.environ.get("MDFAST_BUILD_DIR") or ".") / "mdfast_cpu"
    built_before = cpu_build.exists()
    status = STAGES[args.stage](args)
    if not args.tiny and not built_before and cpu_build.exists():
        print(f"WARNING: stage {args.stage} built the CPU extension on this GPU machine (time lost for nothing)")
    return status


if __name__ == "__main__":
    sys.exit(main())
