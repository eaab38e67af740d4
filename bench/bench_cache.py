"""KV cache speed on the CPU: tokens/s of no cache, prefix and dual, and ms per forward against S/L.

    OMP_NUM_THREADS=1 python bench/bench_cache.py --out bench/cache_cpu.md   # the full run (minutes)
    python bench/bench_cache.py --quick --out cache_quick.md                  # toy shapes, seconds

Two bodies, both mdfast's native LLaDA body in float32 on the CPU with one torch thread:
- the shipped code model (``mdfast.load_llada(SHIPPED_MODEL_DIR)``), prompts from the held-out files of
  the standard library (``mdfast.code_model.data.heldout_paths``) in its tokenizer;
- a random native LLaDA (d_model 1024, 8 layers, vocab 32000; weights N(0, 0.02^2), norms 1), random ids.

Each generate call: prompt P tokens + N new, block 32, steps 64 (``--quick``: smaller), decoders
low_confidence and x-flow, cache None, "prefix" and "dual" (refresh at each block's first step only).
B = 4 rows are left-padded prompts of P/2 .. P tokens. Timing: the wall clock of each whole
``mdfast.generate`` call (``time.perf_counter``; the prompt is not counted in tokens/s = B x N / seconds),
one untimed call per setting first, then ``--repeats`` rounds in which every setting of a table runs
once in turn (interleaved, so load on the machine hits them alike); the table gives medians.

The forward table times the forwards the loop runs (through the same adapter, the head on the block's
rows only) at the first response block: the full forward over L = P + N positions without a cache,
the refresh (the full forward that also writes K, V), and the cached forward over S ("dual": the block's
n positions; "prefix": every position from the block's first on, N). FLOP ratio = S/L (the body's linear
layers; the head's rows are the same n in every forward); overhead = (cached ms / full ms) / (S/L).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import mdfast
from mdfast.code_model import data as code_data
from mdfast.code_model.shipped import SHIPPED_MODEL_DIR
from mdfast.models import adapt, release
from mdfast.models.llada_config import LLaDAConfig

MODES = (None, "prefix", "dual")
DECODERS = ("low_confidence", "xflow")


@dataclass(frozen=True)
class Shape:
    """The lengths of one run: prompt P, new tokens N, block n, steps, batch of the padded table."""

    prompt: int = 192
    new: int = 64
    block: int = 32
    steps: int = 64
    batch: int = 4

    @property
    def length(self) -> int:
        return self.prompt + self.new


FULL = Shape()
QUICK = Shape(prompt=24, new=16, block=8, steps=16, batch=2)

RANDOM_BODY = {"d_model": 1024, "n_layers": 8, "n_heads": 16, "vocab_size": 32000}
QUICK_RANDOM_BODY = {"d_model": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 512}


@dataclass
class Row:
    """One table row: a model, batch, decoder and mode with its timed seconds per call."""

    model: str
    batch: int
    decoder: str
    mode: str | None
    tokens: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.median


# ---------------------------------------------------------------------------------------------
# Models and prompts
# ---------------------------------------------------------------------------------------------


def random_llada(body: dict, length: int, seed: int = 0) -> mdfast.LLaDAModel:
    """A native LLaDA of ``body``'s sizes, float32, weights N(0, 0.02^2) and norm weights 1 (never zeros)."""
    d = body["d_model"]
    vocab = body["vocab_size"]
    config = LLaDAConfig.from_dict(
        {
            **body,
            "n_kv_heads": body["n_heads"],
            "mlp_hidden_size": -(-8 * d // 3 // 64) * 64,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "include_bias": False,
            "weight_tying": False,
            "scale_logits": False,
            "input_emb_norm": False,
            "max_sequence_length": length,
            "mask_token_id": vocab - 1,
            "eos_token_id": vocab - 2,
        }
    )
    model = mdfast.LLaDAModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    return model


def code_token_rows(count: int, length: int) -> list[list[int]]:
    """``count`` runs of ``length`` token ids, each from a different held-out standard library file (in order)."""
    tokenizer = code_data.load_tokenizer()
    root = code_data.stdlib_root()
    rows = []
    for path in code_data.heldout_paths():
        file = root / path
        if not file.is_file():
            continue
        ids = tokenizer(file.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            rows.append(ids[:length])
        if len(rows) == count:
            return rows
    raise RuntimeError(f"fewer than {count} held-out files of {length} tokens under {root}")


def left_padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths left-padded with ``pad`` to the longest: ids (B, P) and the attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, width - len(r) :] = torch.tensor(r)
        mask[b, width - len(r) :] = 1
    return ids, mask


def padded_lengths(shape: Shape) -> list[int]:
    """Prompt lengths of the padded batch: P, then evenly down to P/2 (192, 160, 128, 96 for P = 192, B = 4)."""
    if shape.batch == 1:
        return [shape.prompt]
    low = shape.prompt // 2
    return [shape.prompt - (shape.prompt - low) * b // (shape.batch - 1) for b in range(shape.batch)]


def prompts(kind: str, shape: Shape, vocab: int, seed: int = 0) -> dict[int, tuple[torch.Tensor, torch.Tensor | None]]:
    """Batch size -> (ids, attention mask): B = 1 one prompt of P tokens; B = ``shape.batch`` left-padded ones."""
    lengths = padded_lengths(shape)
    if kind == "code":
        full = code_token_rows(len(lengths), shape.prompt)
        rows = [r[:n] for r, n in zip(full, lengths)]
        pad = code_data.PAD_ID
    else:
        generator = torch.Generator().manual_seed(seed)
        rows = [torch.randint(0, vocab - 2, (n,), generator=generator).tolist() for n in lengths]
        pad = 0
    ids, mask = left_padded(rows, pad)
    return {1: (ids[:1], None), shape.batch: (ids, mask)}


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def generate_seconds(model, ids, mask, shape: Shape, decoder: str, mode: str | None) -> float:
    """Wall-clock seconds of one ``mdfast.generate`` call."""
    kwargs = {} if mode is None else {"cache": mode}
    start = time.perf_counter()
    with torch.no_grad():
        mdfast.generate(
            model,
            ids,
            mask,
            max_new_tokens=shape.new,
            steps=shape.steps,
            block_length=shape.block,
            decoder=decoder,
            **kwargs,
        )
    return time.perf_counter() - start


def time_generate(name: str, model, batches: dict, shape: Shape, repeats: int, settings: list) -> list[Row]:
    """Rows for ``settings`` [(batch, decoder, mode)]: a warm-up call each, then ``repeats`` interleaved rounds."""
    rows = [Row(name, b, dec, mode, b * shape.new) for b, dec, mode in settings]
    for row in rows:
        generate_seconds(model, *batches[row.batch], shape, row.decoder, row.mode)
    for r in range(repeats):
        for row in rows:
            row.seconds.append(generate_seconds(model, *batches[row.batch], shape, row.decoder, row.mode))
        print(f"[bench_cache] {name}: round {r + 1}/{repeats}", file=sys.stderr, flush=True)
    return rows


def forward_ms(model, ids, mask, shape: Shape, repeats: int) -> list[tuple[str, int, float]]:
    """(forward, S, median ms) for the loop's forwards at the first response block, interleaved, after a warm-up."""
    B, P, L, n = ids.shape[0], shape.prompt, shape.length, shape.block
    full_ids = torch.cat([ids, ids.new_full((B, shape.new), model.config.mask_token_id)], dim=1)
    full_mask = None if mask is None else torch.cat([mask, mask.new_ones(B, shape.new)], dim=1)
    block = torch.arange(P, P + n).expand(B, n)
    prefix = torch.arange(P, L).expand(B, L - P)
    adapter = adapt(model)
    try:
        embed = adapter.model.get_input_embeddings()
        with torch.no_grad():
            x = embed(full_ids)
            cache = model.allocate_cache(B, L)
            calls = {
                ("full, no cache", L): lambda: adapter.logits(x, full_mask, block),
                ("refresh (full + K, V)", L): lambda: adapter.logits(x, full_mask, block, cache=cache),
                ("cached, dual", n): lambda: _cached(adapter, cache, block, x, full_mask, n),
                ("cached, prefix", L - P): lambda: _cached(adapter, cache, prefix, x, full_mask, n),
            }
            times: dict = {key: [] for key in calls}
            for _ in range(repeats + 1):  # the first round warms up
                for key, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - start)
    finally:
        release(adapter)
    return [(label, S, 1000 * statistics.median(t[1:])) for (label, S), t in times.items()]


def _cached(adapter, cache, S, x, mask, n: int):
    """One cached forward over S's inputs, the logits of S's first n rows."""
    xs = x.gather(1, S.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    rows = torch.arange(n).expand(S.shape[0], n)
    return adapter.cached_logits(cache, S, xs, mask, rows)


# ---------------------------------------------------------------------------------------------
# Targets and the table
# ---------------------------------------------------------------------------------------------

# (model, batch: 1 or "B", mode) -> the least speed-up over no cache at the same model, batch and decoder
TARGETS = {("code", 1, "dual"): 3.0, ("code", 1, "prefix"): 2.5, ("code", "B", "dual"): 3.0, ("random", 1, "dual"): 4.0}


def speedups(rows: list[Row]) -> list[tuple[Row, float, float | None]]:
    """(row, tokens/s over no cache of its model, batch and decoder, the target or None) for every row."""
    base = {(r.model, r.batch, r.decoder): r for r in rows if r.mode is None}
    out = []
    for r in rows:
        ratio = r.tokens_per_s / base[(r.model, r.batch, r.decoder)].tokens_per_s
        target = TARGETS.get((r.model, 1 if r.batch == 1 else "B", r.mode))
        out.append((r, ratio, target))
    return out


def format_report(args, shape: Shape, rows: list[Row], forwards: dict, bodies: dict) -> str:
    """The markdown report: setup, the generate table with targets, the forward table."""
    lines = [
        "# KV cache speed (CPU)",
        "",
        f"- device: CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} torch thread(s)",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- torch {torch.__version__}, python {platform.python_version()}",
        f"- command: `{' '.join(shlex.quote(a) for a in ['python', 'bench/bench_cache.py', *args.argv])}`",
        f"- shape: prompt {shape.prompt} + {shape.new} new, block {shape.block}, steps {shape.steps}, "
        f"B = 1 and B = {shape.batch} (left-padded prompts of {', '.join(map(str, padded_lengths(shape)))} tokens)",
        f"- timing: wall clock of each whole generate call, median of {args.repeats} interleaved rounds "
        f"(random body: {args.random_repeats}) after one warm-up call per setting",
    ]
    lines += [f"- {name}: {text}" for name, text in bodies.items()]
    lines += [
        "",
        "## Tokens/s",
        "",
        "| model | B | decoder | cache | median s/call | tokens/s | vs no cache | target | met |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r, ratio, target in speedups(rows):
        met = "" if target is None else ("yes" if ratio >= target else "no")
        lines.append(
            f"| {r.model} | {r.batch} | {r.decoder} | {r.mode or 'none'} | {r.median:.3f} | "
            f"{r.tokens_per_s:.1f} | {ratio:.2f}x | {'' if target is None else f'>= {target:g}x'} | {met} |"
        )
    lines += ["", "## Ms per forward (the first response block; head on the block's rows)", ""]
    lines += ["| model | B | forward | S | ms | vs full | FLOP ratio S/L | overhead (vs full / S/L) |"]
    lines.append("|---|---|---|---|---|---|---|---|")
    for (name, B), entries in forwards.items():
        full = entries[0][2]
        for label, S, ms in entries:
            rel = ms / full
            flop = S / shape.length
            lines.append(f"| {name} | {B} | {label} | {S} | {ms:.2f} | {rel:.3f} | {flop:.3f} | {rel / flop:.2f}x |")
    return "\n".join(lines) + "\n"


def targets_met(rows: list[Row]) -> bool:
    """Whether every row with a target meets it."""
    return all(target is None or ratio >= target for _, ratio, target in speedups(rows))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="bench/bench_cache.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="toy shapes and a tiny random body: seconds")
    parser.add_argument("--out", default=None, help="write the markdown table to this file")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds for the code model")
    parser.add_argument("--random-repeats", type=int, default=3, help="timed rounds for the random body")
    parser.add_argument("--forward-repeats", type=int, default=10, help="timed rounds of the forward table")
    parser.add_argument("--decoders", default=",".join(DECODERS), help="comma-separated decoders")
    parser.add_argument(
        "--random-modes", default="none,dual", help="cache modes of the random body (none, prefix, dual)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.repeats, args.random_repeats, args.forward_repeats = 1, 1, 2
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the report (and write it to ``--out``); 0 when every target is met, else 1."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    shape = QUICK if args.quick else FULL
    decoders = args.decoders.split(",")
    code = mdfast.load_llada(SHIPPED_MODEL_DIR, dtype=torch.float32).eval()
    body = QUICK_RANDOM_BODY if args.quick else RANDOM_BODY
    random_model = random_llada(body, shape.length)
    code_batches = prompts("code", shape, code.config.vocab_size)
    random_batches = prompts("random", shape, body["vocab_size"])
    settings = [(b, d, m) for b in (1, shape.batch) for d in decoders for m in MODES if b == 1 or m != "prefix"]
    rows = time_generate("code", code, code_batches, shape, args.repeats, settings)
    random_modes = [None if m == "none" else m for m in args.random_modes.split(",")]
    settings = [(1, d, m) for d in decoders for m in random_modes]
    rows += time_generate("random", random_model, random_batches, shape, args.random_repeats, settings)
    forwards = {
        ("code", 1): forward_ms(code, *code_batches[1], shape, args.forward_repeats),
        ("code", shape.batch): forward_ms(code, *code_batches[shape.batch], shape, args.forward_repeats),
        ("random", 1): forward_ms(random_model, *random_batches[1], shape, args.forward_repeats),
    }
    c, rc = code.config, random_model.config
    bodies = {
        "code": f"the shipped code model (d_model {c.d_model}, {c.n_layers} layers, vocab {c.vocab_size}), "
        "prompts from held-out standard library files",
        "random": f"random native LLaDA (d_model {rc.d_model}, {rc.n_layers} layers, vocab {rc.vocab_size}, "
        f"MLP {rc.mlp_hidden_size}), random ids",
    }
    report = format_report(args, shape, rows, forwards, bodies)
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0 if targets_met(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
