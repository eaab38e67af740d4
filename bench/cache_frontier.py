"""The KV cache's speed and quality frontier on the code model: every cache setting against exact decoding.

    OMP_NUM_THREADS=1 python bench/cache_frontier.py --out cache_frontier.md          # the full run (minutes)
    python bench/cache_frontier.py --quick --out cache_frontier_quick.md             # 2 cases, seconds

The shipped code model (float32, CPU, one torch thread) infills the held-out cases of ``mdfast eval code``
(``mdfast.code_model.cases.code_infill_cases``, seed 0), one case per call (B = 1), the [MASK] id suppressed,
blocks of ``--block`` tokens, steps = ``--budget`` x the span's length. For each decoder (low_confidence,
threshold, factor, xflow) every setting decodes every case:
- none (exact decoding), the reference of the agreement column;
- SPEC 8's dual and prefix caches with the default refresh (each block's first step), refresh every k-th step
  (``cache_refresh``), and dInfer's vicinity refresh (``cache_vicinity`` w: the w positions on each side of the
  block recomputed at every cached step), alone and with a refresh period.

Columns: agreement (span tokens equal to the same decoder's no-cache tokens, pooled), exact match (whole span
equals the file's), parses (the filled file parses), token accuracy (pooled), tokens/s (span tokens over the
wall seconds of the ``infill`` calls, summed over cases) and the speed-up over none. Timing is interleaved:
case by case, every setting runs once in turn after one untimed warm-up call per setting, so load on the
machine hits every setting alike. The frontier: settings that no other setting beats on both tokens/s and
agreement; the preset: the fastest setting whose agreement is >= 0.9 for every decoder.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

import mdfast
from mdfast.code_model import data as code_data
from mdfast.code_model.cases import code_infill_cases
from mdfast.code_model.shipped import SHIPPED_MODEL_DIR

DECODERS = ("low_confidence", "threshold", "factor", "xflow")

# name -> the cache keywords of mdfast.infill
SETTINGS: dict[str, dict] = {
    "none": {},
    "dual": {"cache": "dual"},
    "dual, refresh 4": {"cache": "dual", "cache_refresh": 4},
    "dual, refresh 2": {"cache": "dual", "cache_refresh": 2},
    "dual, vicinity 4": {"cache": "dual", "cache_vicinity": 4},
    "dual, vicinity 16": {"cache": "dual", "cache_vicinity": 16},
    "dual, vicinity 4, refresh 4": {"cache": "dual", "cache_vicinity": 4, "cache_refresh": 4},
    "prefix": {"cache": "prefix"},
    "prefix, refresh 4": {"cache": "prefix", "cache_refresh": 4},
}


@dataclass
class Cell:
    """One (setting, decoder): its fills per case and seconds per call."""

    fills: list[list[int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def _parses(source: str) -> bool:
    with warnings.catch_warnings():  # old files raise SyntaxWarnings on their escapes
        warnings.simplefilter("ignore")
        try:
            ast.parse(source)
        except (SyntaxError, ValueError):
            return False
    return True


def run(cases, model, mask_id: int, block: int, budget: float, settings: dict[str, dict]) -> dict:
    """Decode every case with every (setting, decoder), interleaved per case; {(setting, decoder): Cell}."""
    cells = {(s, d): Cell() for s in settings for d in DECODERS}
    for i, case in enumerate(cases):
        ids = case.input_ids[None]
        span = case.span[1] - case.span[0]
        common = {"steps": max(1, round(budget * span)), "block_length": block, "suppress_tokens": [mask_id]}
        common["steps"] = max(common["steps"], -(-span // block))  # a block needs one step
        for (name, decoder), cell in cells.items():
            options = {**common, "decoder": decoder, **settings[name]}
            if i == 0:  # the untimed warm-up call of the setting
                mdfast.infill(model, ids, **options)
            start = time.perf_counter()
            out = mdfast.infill(model, ids, **options)
            cell.seconds.append(time.perf_counter() - start)
            cell.fills.append(out.sequences[0, case.span[0] : case.span[1]].tolist())
        print(f"[cache_frontier] case {i + 1}/{len(cases)}", file=sys.stderr, flush=True)
    return cells


def score(cases, cells: dict, tokenizer) -> list[dict]:
    """One row per (setting, decoder): agreement with none, exact, parses, token accuracy, tokens/s, speed-up."""
    tokens = sum(c.span[1] - c.span[0] for c in cases)
    rows = []
    for (name, decoder), cell in cells.items():
        reference = cells["none", decoder].fills
        targets = [c.target_ids.tolist() for c in cases]
        agree = sum(a == b for fill, ref in zip(cell.fills, reference) for a, b in zip(fill, ref))
        correct = sum(a == b for fill, t in zip(cell.fills, targets) for a, b in zip(fill, t))
        exact = sum(fill == t for fill, t in zip(cell.fills, targets))
        parses = sum(_parses(c.filled_source(fill, tokenizer)) for c, fill in zip(cases, cell.fills))
        speed = tokens / sum(cell.seconds)
        base = tokens / sum(cells["none", decoder].seconds)
        rows.append(
            {
                "setting": name,
                "decoder": decoder,
                "agreement": agree / tokens,
                "exact": exact / len(cases),
                "parses": parses / len(cases),
                "accuracy": correct / tokens,
                "tokens_per_s": speed,
                "speedup": speed / base,
            }
        )
    return rows


def frontier(rows: list[dict]) -> tuple[list[str], str | None]:
    """The settings on the frontier of (worst agreement over decoders, mean speed-up), and the preset.

    A setting is on the frontier when no other setting has both a higher mean speed-up and a higher worst-case
    agreement; the preset is the fastest setting whose agreement is >= 0.9 for every decoder.
    """
    by_setting: dict[str, list[dict]] = {}
    for row in rows:
        by_setting.setdefault(row["setting"], []).append(row)
    summary = {
        s: (min(r["agreement"] for r in rs), sum(r["speedup"] for r in rs) / len(rs)) for s, rs in by_setting.items()
    }
    front = [
        s
        for s, (agree, speed) in summary.items()
        if not any(a > agree and v > speed for t, (a, v) in summary.items() if t != s)
    ]
    front.sort(key=lambda s: summary[s][1])
    allowed = [s for s, (agree, _) in summary.items() if agree >= 0.9 and s != "none"]
    preset = max(allowed, key=lambda s: summary[s][1], default=None)
    return front, preset


def report(rows: list[dict], front: list[str], preset: str | None, args, n_cases: int) -> str:
    """The markdown: how it was run, the table, the frontier and the preset."""
    command = "python bench/cache_frontier.py " + shlex.join(sys.argv[1:])
    lines = [
        f"- date: {datetime.date.today()}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
        f"{platform.processor() or platform.machine()}",
        f"- command: `OMP_NUM_THREADS={torch.get_num_threads()} {command}`",
        f"- {n_cases} cases, B = 1, block {args.block}, steps = {args.budget} x span",
        "",
        "| setting | decoder | agreement with none | exact | parses | token accuracy | tokens/s | vs none |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['setting']} | {r['decoder']} | {r['agreement']:.3f} | {r['exact']:.3f} | {r['parses']:.3f} | "
            f"{r['accuracy']:.3f} | {r['tokens_per_s']:.1f} | {r['speedup']:.2f}x |"
        )
    lines += ["", f"Frontier (slowest first): {', '.join(front)}.", f"Preset (agreement >= 0.9 everywhere): {preset}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--block", type=int, default=16)
    parser.add_argument("--budget", type=float, default=0.5, help="steps per span token")
    parser.add_argument("--settings", default=None, help="comma-separated names of SETTINGS (default: all)")
    parser.add_argument("--quick", action="store_true", help="2 cases and 3 settings: a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    args = parser.parse_args()
    names = list(SETTINGS) if args.settings is None else args.settings.split(",")
    if args.quick:
        args.cases, names = 2, ["none", "dual", "dual, vicinity 4"]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown or "none" not in names:
        parser.error(f"--settings: expected names of {list(SETTINGS)}, 'none' included; got {names}")
    model = mdfast.load_llada(SHIPPED_MODEL_DIR)
    tokenizer = code_data.load_tokenizer()
    cases = code_infill_cases(tokenizer, seq_len=model.config.max_sequence_length, seed=0, n_cases=args.cases)
    with torch.no_grad():
        cells = run(cases, model, tokenizer.mask_token_id, args.block, args.budget, {n: SETTINGS[n] for n in names})
    rows = score(cases, cells, tokenizer)
    front, preset = frontier(rows)
    text = report(rows, front, preset, args, len(cases))
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
