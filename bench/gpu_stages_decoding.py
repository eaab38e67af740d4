"""The GPU check's decoding stages: whole steps from CUDA graphs, and LLaDA-8B's shape end to end.

- graphs: whole decoding steps replayed from CUDA graphs equal the eager steps bit for bit, for every decoder
  that draws no random numbers (a tiny native LLaDA, a tiny BERT), and the eager fallback with one warning for
  a forward that synchronises (tests/test_gpu.py's helpers).
- e2e: LLaDA-8B shape end to end (bench/bench_e2e.py): the 32-layer forwards, then x-flow and low-confidence
  decoding (B = 1, 512 tokens, 128 steps) with as many layers as the time left allows, native body + graphs
  against the eager loop and the eager port; the graph-replayed step at B = 8 against B = 1.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # tests/test_gpu.py: the graph checks

import bench_e2e
import test_gpu
import torch
from gpu_stage import Stage, skip, write_results

import mdfast


def stage_graphs(args) -> int:
    """Graph-replayed decoding equals eager decoding, bitwise, for LLaDA and BERT; the capture fallback."""
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


def choose_layers(forward_ms: dict[str, float], steps: int, seconds: float, full: int) -> tuple[int, list[str]]:
    """The most layers (of ``full``, halving) whose decoding runs fit in ``seconds``; and the estimate's lines.

    From the forwards timed with all ``full`` layers (ms: "mdfast", "eager", "eager port"). Per decoder
    (x-flow, low-confidence) each loop runs twice (warm-up, timed) ``steps`` forwards; a forward with L layers
    costs (0.1 + 0.9 L / full) of the full one (the head does not shrink), plus 10 ms a step for the eager
    loops' per-token work and 2 s a call for mdfast's capture; then the B = 8 / B = 1 step runs (about 20
    mdfast forwards at B = 8).
    """
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


@dataclass
class EndToEnd:
    """The e2e stage's settings (production, or the toy ones of --tiny) and what it has measured so far.

    p: the body's shape (bench_e2e.PRESETS' fields, ``steps`` the decoding's one step count). big_batch: the B
    whose replayed step is compared with B = 1's, over short_steps steps. results: the stage's JSON.
    """

    device: torch.device
    dtype: torch.dtype
    backend: str
    p: dict
    big_batch: int
    short_steps: int
    repeat: int = 1
    results: dict = field(default_factory=dict)

    @classmethod
    def of(cls, tiny: bool) -> EndToEnd:
        """The settings of the GPU run, or of --tiny (a toy body on the CPU, the torch backend)."""
        if tiny:
            p = dict(hidden=64, layers=2, heads=4, intermediate=96, vocab=80, prompt=8, new=16, steps=(4,))
            return cls(torch.device("cpu"), torch.float32, "torch", p, big_batch=2, short_steps=4)
        p = dict(bench_e2e.PRESETS["llada8b"], steps=(128,))
        return cls(torch.device("cuda"), torch.bfloat16, "auto", p, big_batch=8, short_steps=8)

    def forwards(self, layers: int, batches) -> tuple:
        """The native body and the eager port with ``layers`` layers, and their forwards timed per B."""
        native, port = bench_e2e.llada_pair(dict(self.p, layers=layers), self.device, self.dtype)
        timed = {B: bench_e2e.time_forwards(native, port, B, self.p, self.device, repeat=3) for B in batches}
        for by_loop in timed.values():
            for f in by_loop.values():
                print(bench_e2e.format_forward(f), flush=True)
        self.results["forwards"][layers] = {B: {k: asdict(v) for k, v in f.items()} for B, f in timed.items()}
        return native, port, timed

    def decode(self, native, port, ids, timed_b1: dict, decoder: str, path: str | None) -> None:
        """One decoder's loops (mdfast, eager, eager port) on the prompt ``ids``; the rows printed and saved."""
        steps = self.p["steps"][0]
        runs = bench_e2e.decode(
            native, port, ids, self.p, steps, decoder, timed_b1, self.device, self.repeat, self.backend
        )
        for r in runs:
            print(bench_e2e.format_run(r), flush=True)
        self.results["runs"] += [asdict(r) for r in runs]
        write_results(path, "e2e", self.results)
        if self.device.type == "cuda":
            assert runs[0].graphed_blocks > 0, "mdfast replayed no block from a CUDA graph"

    def batch_scaling(self, native, layers: int) -> None:
        """The median x-flow step at B = big_batch against B = 1 (warmed up first)."""
        medians = {}
        for B in (1, self.big_batch):
            prompt = torch.randint(5, self.p["vocab"], (B, self.p["prompt"]), device=self.device)
            kwargs = dict(max_new_tokens=self.p["new"], steps=self.short_steps, decoder="xflow", backend=self.backend)
            mdfast.generate(native, prompt, **kwargs)  # warm-up
            out = mdfast.generate(native, prompt, **kwargs)
            medians[B] = 1e3 * statistics.median(out.step_times)
            graphed = out.graphed_blocks
            print(
                f"x-flow B = {B}: median step {medians[B]:.2f} ms ({self.short_steps} steps, graphed_blocks {graphed})"
            )
        big = self.big_batch
        self.results["step_ms"] = {"layers": layers, "B1": medians[1], "big_batch": big, "B_big": medians[big]}
        print(f"B = {big} step / B = 1 step: {medians[big] / medians[1]:.2f}x")

    def key(self, layers: int) -> str:
        """The stage's key figure: the layers used, and mdfast's x-flow against the eager loops."""
        xflow = [r for r in self.results["runs"] if r["decoder"] == "xflow" and r["loop"] == "mdfast"]
        key = f"{layers}/{self.p['layers']} layers"
        if xflow:
            r = xflow[0]
            key += f"; x-flow {r['vs_eager']:.2f}x eager loop, {r['vs_port'] or 0:.2f}x eager port, "
            key += f"replayed step {r['replayed_step_ms']:.1f} ms, = eager {100 * (r['equal_tokens'] or 0):.0f}%"
        return key


def stage_e2e(args) -> int:
    """LLaDA-8B's shape end to end (module docstring), with as many layers as the time left allows."""
    if not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    stage = Stage("e2e", args.budget)
    run = EndToEnd.of(args.tiny)
    p, full = run.p, run.p["layers"]
    run.results = {"full_layers": full, "forwards": {}, "runs": []}
    print(f"LLaDA body: {full} layers, {p['hidden']} wide, V {p['vocab']}, {run.dtype}; prompt {p['prompt']}")
    print(*bench_e2e.FORWARD_HEADER, sep="\n")
    built = stage.case(
        f"forwards with all {full} layers, B = 1 and {run.big_batch}", lambda: run.forwards(full, (1, run.big_batch))
    )
    if built is None:
        return stage.finish()
    native, port, timed = built
    write_results(args.results, "e2e", run.results)
    forward_ms = {loop: f.replayed_ms or f.eager_ms for loop, f in timed[1].items()}
    big = timed[run.big_batch]["mdfast"]
    forward_ms["mdfast B=8"] = big.replayed_ms or big.eager_ms
    layers, estimate = choose_layers(forward_ms, p["steps"][0], stage.left() - 15, full)
    print("\n".join(["layer count from the time left:", *estimate, f"decoding with {layers} of {full} layers"]))
    run.results["layers"] = layers
    if layers != full:
        del native, port
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        built = stage.case(f"forwards with {layers} layers, B = 1", lambda: run.forwards(layers, (1,)))
        if built is None:
            return stage.finish()
        native, port, timed = built

    print(f"\ndecoding, {layers} layers, B = 1, {p['new']} tokens, {p['steps'][0]} steps, one block")
    print(*bench_e2e.RUN_HEADER, sep="\n")
    ids = torch.randint(5, p["vocab"], (1, p["prompt"]), device=run.device)
    for decoder in ("xflow", "low_confidence"):
        stage.case(
            f"{decoder}: mdfast against the eager loop and the eager port",
            lambda decoder=decoder: run.decode(native, port, ids, timed[1], decoder, args.results),
        )
    stage.case(f"x-flow step at B = {run.big_batch} against B = 1", lambda: run.batch_scaling(native, layers))
    write_results(args.results, "e2e", run.results)
    return stage.finish(run.key(layers))
