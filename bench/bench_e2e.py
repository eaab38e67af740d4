"""End-to-end decoding speed: mdfast's loop against eager reference loops, in the same run.

    python bench/bench_e2e.py                 # CPU: a small random BERT-style masked LM
    python bench/bench_e2e.py --preset llada8b   # GPU: LLaDA-8B shapes with random weights
    python bench/bench_e2e.py --preset llada8b --body llada   # the native LLaDA body (SPEC 5)

``--body modernbert`` (default): a ModernBERT-style bidirectional masked LM for both loops, so the
comparison is of the loops alone. ``--body llada``: an eager, unfused port of SPEC 5
(``bench/llada_eager.py``, the way LLaDA's remote code computes it) with random weights, patched
by ``mdfast.patch``, which drives mdfast's native fused body (``mdfast.models.llada``) on the
same weight tensors, whole steps replayed from CUDA graphs on a GPU; the eager loops run the
port's own forward. A forward table (native body against the port, B x (prompt + new) tokens)
comes first, and the x-flow rows report the median step time from ``step_times``.

Generated tokens per second = B x new tokens / wall time of the whole call (the prompt is not
counted). Per decoder:
- ``mdfast``: ``mdfast.generate`` (auto backend: only the block's rows are projected, one
  statistics pass per step, selection on the device);
- ``eager``: the reference samplers' way, written below: every row projected (prompt included),
  float64 softmax over the vocabulary, ``torch.topk`` selection (LLaDA's generate.py) or
  ``mdfast.reference.xflow_step`` for x-flow; the same schedule and the same model;
- ``eager+compile`` (GPU): the eager loop with its per-step sampling under ``torch.compile``.
"outside model" is the share of the call spent outside the transformer body and the vocabulary
projection of the response rows (one such forward, timed alone, times the number of forwards;
for the eager loops on the LLaDA port, one forward of the port). "step ms" is the median of
mdfast's per-step CUDA-event times (call time / steps for the eager loops). Writes the table (and
a plot when matplotlib is installed) to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time

import torch

import mdfast
from mdfast import reference
from mdfast.decode.schedule import transfer_counts

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
    # LLaDA-8B shapes: 32 layers, 4096 wide, GLU MLP 12288, V = 126464, bidirectional (ModernBERT body)
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


def random_model(p, device, dtype, body):
    if body == "llada":
        from mdfast.bench.llada_eager import EagerLLaDA, EagerLLaDAConfig

        config = EagerLLaDAConfig(
            d_model=p["hidden"],
            n_layers=p["layers"],
            n_heads=p["heads"],
            mlp_hidden_size=p["intermediate"],
            vocab_size=p["vocab"],
            mask_token_id=MASK,
            eos_token_id=2,
        )
        with torch.device(device):
            return EagerLLaDA(config).to(dtype).eval()
    from transformers import ModernBertConfig, ModernBertForMaskedLM

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
    with torch.device(device):
        model = ModernBertForMaskedLM(config).to(dtype).eval()
    return model


def eager_low_confidence(model, ids, N, steps, sample_step=None):
    """LLaDA generate.py, temperature 0, one block: full logits, float64 softmax, topk selection."""
    x = torch.cat([ids, torch.full((ids.shape[0], N), MASK, device=ids.device)], 1)
    P = ids.shape[1]
    counts = transfer_counts(N, steps)
    for s in range(steps):
        with torch.no_grad():
            logits = model(input_ids=x).logits
        x = (sample_step or _low_confidence_step)(logits, x, P, counts[s])
    return x


def _low_confidence_step(logits, x, P, count):
    p = torch.softmax(logits.double(), -1)
    x0 = torch.argmax(logits, -1)
    conf = torch.gather(p, -1, x0.unsqueeze(-1)).squeeze(-1)
    masked = x == MASK
    masked[:, :P] = False
    conf = torch.where(masked, conf, -torch.inf)
    chosen = torch.zeros_like(masked)
    chosen.scatter_(1, torch.topk(conf, count, dim=-1).indices, True)
    return torch.where(chosen & masked, x0, x)


def eager_xflow(model, ids, N, steps, sample_step=None):
    """SPEC 2 the plain way: full logits, ``reference.xflow_step`` in float32, one block."""
    W_e = model.get_input_embeddings().weight
    m = W_e[MASK]
    B, P = ids.shape
    X = m.float().expand(B, N, -1).clone()
    t = torch.zeros(B, N, device=ids.device)
    tokens = None
    for s in range(steps):
        with torch.no_grad():
            embeds = torch.cat([model.get_input_embeddings()(ids), X.to(W_e.dtype)], 1)
            logits = model(inputs_embeds=embeds).logits[:, P:]
            X, t, tokens = (sample_step or _xflow_step)(logits, X, t, W_e, m, s / max(steps - 1, 1))
    return torch.cat([ids, tokens], 1)


def _xflow_step(logits, X, t, W_e, m, rho):
    out = reference.xflow_step(logits, X, t, W_e, m, None, rho)
    return out["X"], out["t"], out["tokens"]


def wall(fn, device, repeat):
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default=None, help="default: llada8b on a GPU, tiny on the CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--body", choices=("modernbert", "llada"), default="modernbert")
    parser.add_argument("--decoders", default="xflow,low_confidence,topk_margin,entropy,rcr,soft_mask,threshold")
    parser.add_argument("--steps", default=None, help="comma-separated step counts (default: the preset's)")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default: the preset's)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=None, help="write the markdown table (and a .png plot) here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    p = PRESETS[args.preset or ("llada8b" if device.type == "cuda" else "tiny")]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    steps_list = [int(s) for s in args.steps.split(",")] if args.steps else p["steps"]
    batches = [int(b) for b in args.batches.split(",")] if args.batches else p["batches"]
    torch.manual_seed(0)
    model = random_model(p, device, dtype, args.body)
    mdfast.patch(model, mask_token_id=MASK)
    compiled = {}
    if device.type == "cuda" and not args.no_compile:
        compiled = {"low_confidence": torch.compile(_low_confidence_step), "xflow": torch.compile(_xflow_step)}

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    header = f"# mdfast {mdfast.__version__}, torch {torch.__version__}, {where}, {datetime.date.today()}"
    command = "python bench/bench_e2e.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        header,
        f"# command: {command.strip()}",
        f"# model: {args.body} body, {p['layers']} layers, {p['hidden']} wide, V={p['vocab']}, {dtype}; "
        f"prompt {p['prompt']}, {p['new']} new tokens; median of {args.repeat}",
        "",
    ]
    adapter = model.mdfast_adapter
    inputs = {B: torch.randint(5, p["vocab"], (B, p["prompt"]), device=device) for B in batches}
    model_s, eager_forward_s = {}, {}
    for B, ids in inputs.items():
        full = torch.cat([ids, torch.full((B, p["new"]), MASK, device=device)], 1)
        with torch.no_grad():  # the model's share of a step: body + projection of the N response rows
            model_s[B] = wall(
                lambda: adapter.logits(adapter.embed(full), None, slice(p["prompt"], p["prompt"] + p["new"])),
                device,
                args.repeat,
            )
            eager_forward_s[B] = (
                wall(lambda: model(input_ids=full), device, args.repeat) if args.body == "llada" else model_s[B]
            )
    if args.body == "llada":
        lines += ["| forward | B x tokens | native body ms | eager port ms | speed-up |", "|---|---|---|---|---|"]
        for B in batches:
            lines.append(
                f"| LLaDA | {B} x {p['prompt'] + p['new']} | {1e3 * model_s[B]:.2f} | {1e3 * eager_forward_s[B]:.2f} "
                f"| {eager_forward_s[B] / model_s[B]:.2f}x |"
            )
        lines.append("")
    lines += [
        "| decoder | B | steps | loop | tokens/s | s/call | step ms | vs eager | outside model |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    points = []
    for B, ids in inputs.items():
        for steps in steps_list:
            for name in args.decoders.split(","):
                runs = {
                    "mdfast": lambda: model.mdfast_generate(ids, max_new_tokens=p["new"], steps=steps, decoder=name)
                }
                if name == "low_confidence":
                    runs["eager"] = lambda: eager_low_confidence(model, ids, p["new"], steps)
                    if "low_confidence" in compiled:
                        runs["eager+compile"] = lambda: eager_low_confidence(
                            model, ids, p["new"], steps, compiled["low_confidence"]
                        )
                if name == "xflow":
                    runs["eager"] = lambda: eager_xflow(model, ids, p["new"], steps)
                    if "xflow" in compiled:
                        runs["eager+compile"] = lambda: eager_xflow(model, ids, p["new"], steps, compiled["xflow"])
                eager_s = None
                for loop, fn in sorted(runs.items(), key=lambda kv: kv[0] != "eager"):
                    result = fn()  # warm-up (and compilation)
                    mdfast_run = isinstance(result, mdfast.GenerateOutput)
                    nfe = result.nfe if mdfast_run else steps
                    seconds = wall(fn, device, args.repeat)
                    eager_s = seconds if loop == "eager" else eager_s
                    outside = max(0.0, 1 - nfe * (model_s[B] if mdfast_run else eager_forward_s[B]) / seconds)
                    tps = B * p["new"] / seconds
                    ratio = f"{eager_s / seconds:.2f}x" if eager_s else "-"
                    step_ms = (
                        f"{1e3 * statistics.median(result.step_times):.2f}"
                        if mdfast_run
                        else f"{1e3 * seconds / steps:.2f}"
                    )
                    lines.append(
                        f"| {name} | {B} | {steps} | {loop} | {tps:.1f} | {seconds:.3f} | {step_ms} | {ratio} "
                        f"| {100 * outside:.1f}% |"
                    )
                    points.append((name, loop, B, steps, tps))
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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
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
