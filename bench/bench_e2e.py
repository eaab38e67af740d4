"""End-to-end decoding speed: mdfast's loop against eager loops, in the same run.

    python bench/bench_e2e.py                                 # CPU: a small ModernBERT-style masked LM
    python bench/bench_e2e.py --preset llada8b                # GPU: LLaDA-8B shapes, random bf16 weights
    python bench/bench_e2e.py --preset llada8b --body llada   # the native LLaDA body against the eager port

Bodies (random weights, never zeros):
- modernbert (default): a ModernBERT-style bidirectional masked LM (transformers) under every loop,
  so the comparison is of the loops alone;
- llada: mdfast's native LLaDA body (``mdfast.LLaDAModel``: fused projections, RMSNorm, RoPE and
  SwiGLU through ``mdfast.ops``) and, on the same weight tensors, the eager unfused port of SPEC 5
  in ``tests/llada_eager.py`` (the way LLaDA's remote code computes it; loaded by its path).

Loops, per decoder (x-flow and low-confidence have eager loops; the other decoders run in mdfast only):
- mdfast: ``mdfast.generate`` on the body: one block, only the block's rows projected, one
  statistics pass per step, the selection on the device, on a GPU whole steps replayed from CUDA graphs;
- eager: the reference samplers' loop on the same body, written below: every row projected (the
  prompt's too), float64 softmax and ``torch.topk`` (LLaDA's generate.py), or
  ``mdfast.reference.xflow_step`` in float32 for x-flow; the same schedule;
- eager port (llada body): the same eager loop on the eager port.
Every loop runs under ``torch.no_grad()`` and is called once untimed (Triton compilation, graph
capture paths) before its timed calls.

Columns: tokens/s = B x new tokens / wall time of the call (the prompt is not counted); ms/step =
wall time of the call / forwards, for every loop alike; replayed step ms (mdfast) = median of the
per-step CUDA-event times ``out.step_times``; vs eager, vs port = wall-time ratios; outside model =
the share of the call outside the model's forwards (forwards x one forward timed alone: for mdfast
the body with only the response rows projected, replayed from a CUDA graph on a GPU; for the eager
loops the whole forward they run); graphed = ``out.graphed_blocks``; = eager = the share of
mdfast's response tokens equal to the eager loop's (on the mdfast row) and to the eager port's (on
the eager port row). A forward table
(warmed up, then medians) comes first. Writes the tables (and a plot when matplotlib is there) to
``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import mdfast
from mdfast import reference
from mdfast.benchmark import Timer
from mdfast.models.llada import LLaDAConfig

ROOT = Path(__file__).resolve().parent.parent

PRESETS = {
    # a small bidirectional masked LM, for the CPU
    "tiny": dict(
        hidden=256,
        layers=4,
        heads=4,
        intermediate=768,
        vocab=32000,
        batches=(1, 4),
        prompt=32,
        new=64,
        steps=(16, 32, 64),
    ),
    # LLaDA-8B shapes: 32 layers, 4096 wide, GLU MLP 12288, V = 126464, bidirectional
    "llada8b": dict(
        hidden=4096,
        layers=32,
        heads=32,
        intermediate=12288,
        vocab=126464,
        batches=(1, 8),
        prompt=128,
        new=512,
        steps=(128, 256, 512),
    ),
}
MASK = 4
DECODERS = "xflow,low_confidence,topk_margin,entropy,rcr,soft_mask,threshold"


def eager_port_module():
    """``tests/llada_eager.py`` (a test double, not installed), loaded by its path."""
    spec = importlib.util.spec_from_file_location("llada_eager", ROOT / "tests" / "llada_eager.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def modernbert(p: dict, device, dtype) -> torch.nn.Module:
    """A ModernBERT-style masked LM with the preset's widths and random weights (seeded), in eval mode."""
    from transformers import (  # measured import cost, 2 to 8 s: gpu_check's e2e stage (llada body) skips it
        ModernBertConfig,
        ModernBertForMaskedLM,
    )

    config = ModernBertConfig(
        vocab_size=p["vocab"],
        hidden_size=p["hidden"],
        num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"],
        intermediate_size=p["intermediate"],
        global_attn_every_n_layers=1,
        max_position_embeddings=4096,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
        mask_token_id=MASK,
    )
    torch.manual_seed(0)
    with torch.device(device):
        return ModernBertForMaskedLM(config).to(dtype).eval()


def llada_config(p: dict) -> dict:
    """The config.json fields (SPEC 5) of a LLaDA body with the preset's widths."""
    return dict(
        d_model=p["hidden"],
        n_layers=p["layers"],
        n_heads=p["heads"],
        n_kv_heads=p["heads"],
        mlp_hidden_size=p["intermediate"],
        vocab_size=p["vocab"],
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        include_bias=False,
        weight_tying=False,
        scale_logits=False,
        input_emb_norm=False,
        max_sequence_length=4096,
        mask_token_id=MASK,
        eos_token_id=2,
    )


def llada_pair(p: dict, device, dtype, seed: int = 0) -> tuple[mdfast.LLaDAModel, torch.nn.Module]:
    """The native LLaDA body with random weights, and the eager port on the very same tensors.

    Weights: matrices N(0, 1/fan_in), the head N(0, 16/d) so that predictions are peaked enough for confident
    tokens, norms 1. The port is built on the meta device, then given the native state dict's views (no copy).
    """
    fields = llada_config(p)
    native = mdfast.LLaDAModel(LLaDAConfig.from_dict(fields), device=device, dtype=dtype).eval()
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, weight in native.named_parameters():
            if weight.dim() == 1:
                weight.fill_(1.0)
            elif name.endswith("wte.weight"):
                weight.normal_(0.0, 1.0, generator=generator)
            else:
                gain = 4.0 if name == "model.transformer.ff_out.weight" else 1.0
                weight.normal_(0.0, gain / math.sqrt(weight.shape[1]), generator=generator)
    llada_eager = eager_port_module()
    with torch.device("meta"):
        port = llada_eager.EagerLLaDA(llada_eager.EagerLLaDAConfig(**fields))
    port.load_state_dict(native.state_dict(), assign=True)
    return native, port.eval()


def eager_low_confidence(model, ids, N, steps):
    """LLaDA generate.py's loop, temperature 0, one block: full logits, float64 softmax, topk selection.

    SPEC 3's linear schedule: N // steps tokens a step, one more in the first N % steps steps.
    """
    x = torch.cat([ids, torch.full((ids.shape[0], N), MASK, device=ids.device)], 1)
    P = ids.shape[1]
    base, extra = divmod(N, steps)
    counts = [base + (1 if s < extra else 0) for s in range(steps)]
    with torch.no_grad():
        for s in range(steps):
            logits = model(input_ids=x).logits
            p = torch.softmax(logits.double(), -1)
            x0 = torch.argmax(logits, -1)
            conf = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
            masked = x == MASK
            masked[:, :P] = False
            conf = torch.where(masked, conf, -torch.inf)
            chosen = torch.zeros_like(masked)
            chosen.scatter_(1, torch.topk(conf, counts[s], dim=-1).indices, True)
            x = torch.where(chosen & masked, x0, x)
    return x


def eager_xflow(model, ids, N, steps):
    """SPEC 2 the plain way: full logits, ``reference.xflow_step`` in float32, one block."""
    W_e = model.get_input_embeddings().weight
    m = W_e[MASK]
    B, P = ids.shape
    X = m.float().expand(B, N, -1).clone()
    t = torch.zeros(B, N, device=ids.device)
    tokens = None
    with torch.no_grad():
        for s in range(steps):
            embeds = torch.cat([model.get_input_embeddings()(ids), X.to(W_e.dtype)], 1)
            logits = model(inputs_embeds=embeds).logits[:, P:]
            out = reference.xflow_step(logits, X, t, W_e, m, None, s / max(steps - 1, 1))
            X, t, tokens = out["X"], out["t"], out["tokens"]
    return torch.cat([ids, tokens], 1)


EAGER_LOOPS = {"low_confidence": eager_low_confidence, "xflow": eager_xflow}


def response_forward(model, embeds: torch.Tensor, P: int):
    """One forward of ``model`` on ``embeds`` with only rows P.. projected (what mdfast's loop asks each step).

    A forward pre-hook on the output projection slices its input.
    """
    head = model.get_output_embeddings()

    def call():
        hook = head.register_forward_pre_hook(lambda module, args: (args[0][:, P:], *args[1:]))
        try:
            return model(inputs_embeds=embeds).logits
        finally:
            hook.remove()

    return call


@dataclass
class Forward:
    """One forward, timed.

    replayed_ms: from a CUDA graph (None on the CPU or where it cannot be captured). eager_ms: called eagerly.
    """

    model: str
    B: int
    tokens: int
    rows: str
    replayed_ms: float | None
    eager_ms: float


def time_forwards(body, port, B: int, p: dict, device, repeat: int) -> dict[str, Forward]:
    """The forwards of each loop, timed: each warmed up first, medians of ``repeat``.

    mdfast: the body with only the response rows projected; eager and eager port: the whole forwards the eager
    loops run (the body's, the port's).
    """
    timer = Timer(device, warmup=1, repeat=repeat, calls=1, flush=False)
    L = p["prompt"] + p["new"]
    ids = torch.randint(5, p["vocab"], (B, L), device=device)
    with torch.no_grad():
        embeds = body.get_input_embeddings()(ids)
        timings = {"mdfast": ("body", "response", timer.time(response_forward(body, embeds, p["prompt"])))}
        timings["eager"] = ("body", "all", timer.time(lambda: body(input_ids=ids), graph=False))
        if port is not None:
            timings["eager port"] = ("eager port", "all", timer.time(lambda: port(input_ids=ids), graph=False))
    return {
        loop: Forward(name, B, L, rows, None if t.replayed is None else 1e3 * t.replayed, 1e3 * t.eager)
        for loop, (name, rows, t) in timings.items()
    }


@dataclass
class Run:
    decoder: str
    B: int
    steps: int
    loop: str
    forwards: int
    tokens_per_s: float
    s_per_call: float
    ms_per_step: float
    replayed_step_ms: float | None
    vs_eager: float | None
    vs_port: float | None
    outside_model: float
    graphed_blocks: int | None
    equal_tokens: float | None


def wall(fn, device, repeat: int):
    """Median wall seconds of ``fn()`` over ``repeat`` calls (synchronised) and its last result."""
    times, result = [], None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def decode(body, port, ids, p: dict, steps: int, decoder: str, forwards, device, repeat: int, backend="auto"):
    """The loops of one decoder at one step count (module docstring), one Run each.

    forwards: from ``time_forwards``, the model's share of each loop.
    """
    new, P = p["new"], ids.shape[1]
    runs = {
        "mdfast": lambda: mdfast.generate(
            body, ids, max_new_tokens=new, steps=steps, decoder=decoder, mask_token_id=MASK, backend=backend
        )
    }
    if decoder in EAGER_LOOPS:
        runs["eager"] = lambda: EAGER_LOOPS[decoder](body, ids, new, steps)
        if port is not None:
            runs["eager port"] = lambda: EAGER_LOOPS[decoder](port, ids, new, steps)
    measured = {}
    for loop, fn in runs.items():
        fn()  # warm-up: Triton compilation, graph capture paths, allocator
        measured[loop] = wall(fn, device, repeat)
    out: mdfast.GenerateOutput = measured["mdfast"][1]
    sequences = {loop: (result.sequences if loop == "mdfast" else result) for loop, (_, result) in measured.items()}
    rows = []
    for loop, (seconds, _) in measured.items():
        forward = forwards[loop]
        n = out.nfe if loop == "mdfast" else steps
        model_ms = forward.replayed_ms if loop == "mdfast" and forward.replayed_ms is not None else forward.eager_ms
        # mdfast's tokens against the eager loop's (on the mdfast row) and the eager port's (its row)
        against = {"mdfast": "eager", "eager port": "eager port"}.get(loop)
        equal = None
        if against in sequences:
            equal = float((sequences["mdfast"][:, P:] == sequences[against][:, P:]).float().mean())
        rows.append(
            Run(
                decoder=decoder,
                B=ids.shape[0],
                steps=steps,
                loop=loop,
                forwards=n,
                tokens_per_s=ids.shape[0] * new / seconds,
                s_per_call=seconds,
                ms_per_step=1e3 * seconds / n,
                replayed_step_ms=1e3 * statistics.median(out.step_times) if loop == "mdfast" else None,
                vs_eager=measured["eager"][0] / seconds if "eager" in measured else None,
                vs_port=measured["eager port"][0] / seconds if "eager port" in measured else None,
                outside_model=max(0.0, 1 - n * model_ms / 1e3 / seconds),
                graphed_blocks=out.graphed_blocks if loop == "mdfast" else None,
                equal_tokens=equal,
            )
        )
    return rows


FORWARD_HEADER = ["| forward | B x tokens | rows projected | replayed ms | eager ms |", "|---|---|---|---|---|"]
RUN_HEADER = [
    "| decoder | B | steps | loop | forwards | tokens/s | s/call | ms/step | replayed step ms | vs eager | vs port "
    "| outside model | graphed | = eager |",
    "|" + "---|" * 14,
]


def _number(value, fmt: str, unit: str = "") -> str:
    return "-" if value is None else format(value, fmt) + unit


def format_forward(f: Forward) -> str:
    return f"| {f.model} | {f.B} x {f.tokens} | {f.rows} | {_number(f.replayed_ms, '.2f')} | {f.eager_ms:.2f} |"


def format_run(r: Run) -> str:
    return (
        f"| {r.decoder} | {r.B} | {r.steps} | {r.loop} | {r.forwards} | {r.tokens_per_s:.1f} | {r.s_per_call:.3f} "
        f"| {r.ms_per_step:.2f} | {_number(r.replayed_step_ms, '.2f')} | {_number(r.vs_eager, '.2f', 'x')} "
        f"| {_number(r.vs_port, '.2f', 'x')} | {100 * r.outside_model:.1f}% | {_number(r.graphed_blocks, 'd')} "
        f"| {_number(None if r.equal_tokens is None else 100 * r.equal_tokens, '.1f', '%')} |"
    )


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="bench/bench_e2e.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=PRESETS, default=None, help="default: llada8b on a GPU, tiny on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--body", choices=("modernbert", "llada"), default="modernbert")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's layer count")
    parser.add_argument("--decoders", default=DECODERS)
    parser.add_argument("--steps", default=None, help="comma-separated step counts (default: the preset's)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default: the preset's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", default="auto", help="mdfast's backend (default: auto)")
    parser.add_argument("--out", default=None, help="write the markdown tables (and a .png plot) here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    p = dict(PRESETS[args.preset or ("llada8b" if device.type == "cuda" else "tiny")])
    if args.layers:
        p["layers"] = args.layers
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    steps_list = [int(s) for s in args.steps.split(",")] if args.steps else p["steps"]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else p["batches"]
    if args.body == "llada":
        body, port = llada_pair(p, device, dtype)
    else:
        body, port = modernbert(p, device, dtype), None

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        f"# mdfast {mdfast.__version__}, torch {torch.__version__}, {where}, {datetime.date.today()}",
        f"# command: python bench/bench_e2e.py {' '.join(argv)}".rstrip(),
        f"# model: {args.body} body, {p['layers']} layers, {p['hidden']} wide, V={p['vocab']}, {dtype}; "
        f"prompt {p['prompt']}, {p['new']} new tokens, one block; median of {args.repeat} after a warm-up call",
        "",
        *FORWARD_HEADER,
    ]
    torch.manual_seed(1)
    forwards = {}
    for B in batches:
        forwards[B] = time_forwards(body, port, B, p, device, args.repeat)
        lines += [format_forward(f) for f in forwards[B].values()]
        print(*lines[-len(forwards[B]) :], sep="\n", flush=True)
    lines += ["", *RUN_HEADER]
    points = []
    for B in batches:
        ids = torch.randint(5, p["vocab"], (B, p["prompt"]), device=device)
        for steps in steps_list:
            for name in args.decoders.split(","):
                for run in decode(body, port, ids, p, steps, name, forwards[B], device, args.repeat, args.backend):
                    lines.append(format_run(run))
                    points.append((name, run.loop, B, steps, run.tokens_per_s))
                    print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        _plot(points, args.out.rsplit(".", 1)[0] + ".png")
    return 0


def _plot(points, path) -> None:
    try:
        import matplotlib  # optional: the plot only

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # optional: the plot only
    except ImportError:
        print("# matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in sorted({(n, loop, B) for n, loop, B, _, _ in points}):
        xs = [(s, t) for n, loop, B, s, t in points if (n, loop, B) == key]
        ax.plot([s for s, _ in xs], [t for _, t in xs], marker="o", label=f"{key[0]} {key[1]} B={key[2]}")
    ax.set_xlabel("steps")
    ax.set_ylabel("generated tokens / s")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
