"""The GPU targets (bench/RESULTS.md, "GPU targets") with the figures the stages measured: the targets stage.

Pure data: the JSON the bench, e2e, cache and compile stages wrote under ``--results``. Areas: kernels (the
statistics and the x-flow step), loop (the decoding loop around the model), body (the native LLaDA body), cache
(SPEC 8's KV cache: tokens/s against no cache).
"""

from __future__ import annotations

from dataclasses import dataclass

from gpu_stage import PASS, read_results

STEP_B1 = "1x512x126464x4096"
STEP_B8 = "8x512x126464x4096"


@dataclass
class Target:
    """One target: its area, what it asks, the stage that measures it, the figure measured and the verdict."""

    area: str
    what: str
    stage: str
    figure: str = "not measured"
    met: str = "-"


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def statistics_targets(rows: dict, backend: str) -> list[Target]:
    """token_stats' share of the copy bandwidth on ``backend``, bf16 and fp32, at two shapes."""
    out = []
    for dtype, share in (("bfloat16", 0.60), ("float32", 0.75)):
        for shape, label in ((STEP_B1, "512 x 126464"), ("1x2048x152064x3584", "2048 x 152064")):
            t = Target("kernels", f"{backend} statistics {dtype} {label} >= {share:.0%} of copy bandwidth", "05 bench")
            r = rows.get(("token_stats", shape, dtype, "k=4", backend))
            if r and r["copy_fraction"] is not None:
                t.figure = f"{100 * r['copy_fraction']:.0f}% ({r['gb_per_s']:.0f} GB/s, {r['replayed_us']:.0f} us)"
                t.met = _verdict(r["copy_fraction"] >= share)
            out.append(t)
    return out


def step_targets(rows: dict, backend: str) -> list[Target]:
    """The x-flow step on ``backend``: B = 1 within 150 us, B = 8 within 8x B = 1, per policy variant."""
    out = []
    for variant in ("heuristic", "random"):
        t = Target("kernels", f"{backend} x-flow step B=1 N=512 E=4096 bf16 ({variant}) <= 150 us", "05 bench")
        one = rows.get(("xflow_step", STEP_B1, "bfloat16", variant, backend))
        if one and one["replayed_us"] is not None:
            t.figure = f"{one['replayed_us']:.0f} us replayed ({one['eager_us']:.0f} us eager call)"
            t.met = _verdict(one["replayed_us"] <= 150)
        out.append(t)
        t = Target("kernels", f"{backend} x-flow step B=8 <= 8x B=1 ({variant})", "05 bench")
        eight = rows.get(("xflow_step", STEP_B8, "bfloat16", variant, backend))
        if one and eight and one["replayed_us"] and eight["replayed_us"] is not None:
            ratio = eight["replayed_us"] / one["replayed_us"]
            t.figure = f"{ratio:.2f}x ({eight['replayed_us']:.0f} / {one['replayed_us']:.0f} us)"
            t.met = _verdict(ratio <= 8)
        out.append(t)
    return out


def cuda_against_triton(rows: dict) -> list[Target]:
    """CUDA within 2x of Triton: the statistics and the x-flow step at B = 1 and 8."""
    out = []
    for key, label in (
        (("token_stats", STEP_B1, "bfloat16", "k=4"), "statistics bf16 512 x 126464"),
        (("xflow_step", STEP_B1, "bfloat16", "heuristic"), "x-flow step B=1"),
        (("xflow_step", STEP_B8, "bfloat16", "heuristic"), "x-flow step B=8"),
    ):
        t = Target("kernels", f"CUDA within 2x of Triton: {label}", "05 bench")
        triton, cuda = rows.get((*key, "triton")), rows.get((*key, "cuda"))
        if triton and cuda and triton["replayed_us"] and cuda["replayed_us"] is not None:
            ratio = cuda["replayed_us"] / triton["replayed_us"]
            t.figure = f"cuda / triton {ratio:.2f}x"
            t.met = _verdict(ratio <= 2)
        out.append(t)
    return out


def compile_target(compiled: dict | None) -> Target:
    """The x-flow step at B = 1 against torch.compile of the reference (eager call latencies)."""
    t = Target("kernels", "x-flow step B=1 >= 8x torch.compile (eager call latencies)", "08 compile")
    comp_rows = (compiled or {}).get("rows", [])
    comp = [r for r in comp_rows if r["backend"] == "torch.compile(reference)" and r["variant"] == "heuristic"]
    ours = [
        r for r in comp_rows if r["backend"] == "triton" and r["variant"] == "heuristic" and r["op"] == "xflow_step"
    ]
    if comp and ours:
        ratio = comp[0]["eager_us"] / ours[0]["eager_us"]
        t.figure = f"{ratio:.1f}x ({comp[0]['eager_us']:.0f} / {ours[0]['eager_us']:.0f} us; {comp[0]['note']})"
        t.met = _verdict(ratio >= 8)
    return t


def loop_targets(e2e: dict) -> list[Target]:
    """The decoding loop: x-flow end to end against the eager loop, and its share outside the model."""
    md = {(r["decoder"], r["loop"]): r for r in e2e.get("runs", [])}.get(("xflow", "mdfast"))
    layers = f"{e2e.get('layers')}/{e2e.get('full_layers')} layers"
    t = Target("loop", "end-to-end x-flow >= 1.3x the eager loop", "06 e2e")
    if md and md["vs_eager"] is not None:
        t.figure, t.met = f"{md['vs_eager']:.2f}x ({layers})", _verdict(md["vs_eager"] >= 1.3)
    outside = Target("loop", "<= 3% of the x-flow step outside the model", "06 e2e")
    forward = _forward(e2e, e2e.get("layers"), "mdfast")
    if md and md["replayed_step_ms"] and forward is not None:
        share = max(0.0, 1 - forward / md["replayed_step_ms"])
        outside.figure = f"{100 * share:.1f}% (forward {forward:.2f} ms, replayed step {md['replayed_step_ms']:.2f} ms)"
        outside.met = _verdict(share <= 0.03)
    return [t, outside]


def body_targets(e2e: dict) -> list[Target]:
    """The native body: the 8B forward, the replayed step, against the eager port, and B = 8 against B = 1."""
    md = {(r["decoder"], r["loop"]): r for r in e2e.get("runs", [])}.get(("xflow", "mdfast"))
    full, used = e2e.get("full_layers"), e2e.get("layers")
    layers = f"{used}/{full} layers"
    out = [Target("body", "native 8B forward (B=1, 640 tokens, 32 layers) <= 19 ms", "06 e2e")]
    forward32 = _forward(e2e, full, "mdfast")
    if forward32 is not None:
        out[-1].figure = f"{forward32:.2f} ms (response rows projected, replayed)"
        out[-1].met = _verdict(forward32 <= 19)
    out.append(Target("body", "graph-replayed x-flow step <= 20 ms (32 layers)", "06 e2e"))
    if md and md["replayed_step_ms"]:
        out[-1].figure = f"{md['replayed_step_ms']:.2f} ms ({layers})"
        out[-1].met = _verdict(md["replayed_step_ms"] <= 20) if used == full else "(fewer layers)"
    out.append(Target("body", "x-flow step >= 1.5x the eager port", "06 e2e"))
    if md and md["vs_port"] is not None:
        out[-1].figure, out[-1].met = f"{md['vs_port']:.2f}x ({layers})", _verdict(md["vs_port"] >= 1.5)
    out.append(Target("body", "graph-replayed step B=8 <= 8.5x B=1", "06 e2e"))
    steps = e2e.get("step_ms")
    if steps and steps.get("big_batch") == 8:
        ratio = steps["B_big"] / steps["B1"]
        out[-1].figure = f"{ratio:.2f}x ({steps['B_big']:.1f} / {steps['B1']:.1f} ms, {steps['layers']} layers)"
        out[-1].met = _verdict(ratio <= 8.5)
    return out


def cache_targets(cache: dict) -> list[Target]:
    """The KV cache at LLaDA-8B widths (B = 1, P 512 + 256, block 32, 256 steps): dual >= 3x, prefix >= 2x none.

    Whole generate calls' tokens/s against no cache's, per decoder; the layers timed are stated (fewer than 32
    understate the speed-up: the head, the same in every mode, weighs more).
    """
    runs = {(r["decoder"], r["cache"]): r for r in cache.get("runs", [])}
    layers = f"{cache.get('layers')}/{cache.get('full_layers')} layers"
    out = []
    for decoder, label in (("xflow", "x-flow"), ("low_confidence", "low-confidence")):
        for mode, least in (("dual", 3.0), ("prefix", 2.0)):
            what = f"{label} {mode} cache >= {least:g}x no-cache tokens/s (8B widths, P 512 + 256)"
            t = Target("cache", what, "07 cache")
            row, base = runs.get((decoder, mode)), runs.get((decoder, "none"))
            if row and base:
                ratio = row["tokens_per_s"] / base["tokens_per_s"]
                t.figure = f"{ratio:.2f}x ({row['tokens_per_s']:.0f} / {base['tokens_per_s']:.0f} tokens/s, {layers})"
                t.met = _verdict(ratio >= least)
            out.append(t)
    return out


def targets(bench: dict | None, e2e: dict | None, compiled: dict | None, cache: dict | None = None) -> list[Target]:
    """Every GPU target with the figure the stages measured (the JSON of the bench, e2e, compile, cache stages)."""
    rows = {(r["op"], r["shape"], r["dtype"], r["variant"], r["backend"]): r for r in (bench or {}).get("rows", [])}
    out = []
    for backend in ("triton", "cuda"):
        out += statistics_targets(rows, backend) + step_targets(rows, backend)
    out += [*cuda_against_triton(rows), compile_target(compiled)]
    return out + loop_targets(e2e or {}) + body_targets(e2e or {}) + cache_targets(cache or {})


def _forward(e2e: dict, layers, loop: str) -> float | None:
    forward = (e2e.get("forwards", {}).get(str(layers)) or {}).get("1", {}).get(loop)
    if forward is None:
        return None
    return forward["replayed_ms"] if forward["replayed_ms"] is not None else forward["eager_ms"]


def format_targets(items: list[Target]) -> str:
    """The targets as a markdown table."""
    lines = ["| area | target | measured | met | stage |", "|---|---|---|---|---|"]
    lines += [f"| {t.area} | {t.what} | {t.figure} | {t.met} | {t.stage} |" for t in items]
    return "\n".join(lines)


def stage_targets(args) -> int:
    """Print the targets table from the stages' results (under --tiny without verdicts)."""
    found = {name: read_results(args.results, name) for name in ("bench", "e2e", "compile", "cache")}
    items = targets(found["bench"], found["e2e"], found["compile"], found["cache"])
    if args.tiny:
        print("(--tiny: toy shapes on the CPU; no figure below measures what its target names)")
        for t in items:
            t.met = "-"
    print(format_targets(items))
    measured = [name for name, data in found.items() if data is not None]
    print(f"KEY: from the {', '.join(measured) or 'no'} stage results")
    return PASS
