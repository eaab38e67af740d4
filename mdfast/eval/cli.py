"""``mdfast eval antibody``, ``mdfast eval code`` and ``mdfast eval humaneval``: the benchmarks from the shell.

``mdfast/cli.py`` dispatches ``mdfast eval ...`` here through ``add_arguments(parser)`` and ``run(args)``;
``python -m mdfast.eval ...`` runs the same parser (``main``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``eval`` command's sub-commands: ``antibody``, ``code`` and ``humaneval``."""
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="{antibody,code,humaneval}")
    benchmarks.required = True
    add_antibody_arguments(
        benchmarks.add_parser(
            "antibody",
            help="infill held-out antibody genes with AntiBERTy (SPEC 7): accuracy against budget per decoder",
            description="The real-weights antibody benchmark of SPEC 7: held-out human V genes from ANARCI's "
            "germline table, residues masked and decoded by mdfast.infill at each budget. Prints a table, writes "
            "antibody.json and antibody.png to --out.",
        )
    )
    add_code_arguments(
        benchmarks.add_parser(
            "code",
            help="the code model's budget curve: infill spans of held-out stdlib functions, every decoder and budget",
            description="The code model's budget curve (issue 13): a span of 32-128 tokens inside a held-out "
            "standard-library function, masked with the rest of the file as context, decoded by mdfast.infill at "
            "each budget with [MASK] suppressed. Exact match, token accuracy, the share of filled files that parse "
            "and agreement with the one-token-per-step decode. Prints a table, writes code.json and code.png to --out.",
        )
    )
    add_humaneval_arguments(
        benchmarks.add_parser(
            "humaneval",
            help="HumanEval pass@1 with completions from any decoder, each program run in a sandbox",
            description="HumanEval's 164 problems completed by mdfast.generate and checked one sandboxed "
            "subprocess each (time, memory and process limits, no network, scratch directory). Writes "
            "humaneval.json to --out.",
        )
    )


def run(args: argparse.Namespace) -> int:
    """Run the sub-command ``add_arguments`` parsed."""
    return {"antibody": run_antibody, "code": run_code, "humaneval": run_humaneval}[args.benchmark](args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdfast eval", description="Decoding quality benchmarks.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_grid_arguments(parser: argparse.ArgumentParser, *, model_help: str, batch_size: int) -> None:
    """What the infilling benchmarks (antibody, code) share: the model, decoders, budgets, policy, device."""
    from mdfast.decode import DECODERS

    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument(
        "--decoders",
        type=_names(sorted(DECODERS)),
        default=list(DECODERS),
        help=f"comma-separated, among {','.join(DECODERS)} (default: all)",
    )
    parser.add_argument(
        "--budgets", type=_budgets, default="1/8,1/4,1/2,1", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--policy", default=None, help="a StepPolicy file for xflow (default: the heuristic)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_antibody_arguments(parser: argparse.ArgumentParser) -> None:
    add_grid_arguments(parser, model_help="a local masked-LM folder (default: AntiBERTy, packaged)", batch_size=32)
    parser.add_argument("--task", choices=["suffix", "span", "both"], default="both", help="(default: %(default)s)")
    parser.add_argument("--genes", type=int, default=None, help="n held-out genes, evenly spaced (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="places the spans (default: %(default)s)")
    parser.add_argument("--out", default="eval-antibody", help="folder for antibody.json, antibody.png")


def run_antibody(args: argparse.Namespace) -> int:
    import mdfast
    from mdfast.eval.antibody_benchmark import antibody
    from mdfast.eval.plot import plot_antibody

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = mdfast.StepPolicy.load(args.policy, args.device) if args.policy else None
    tasks = ["suffix", "span"] if args.task == "both" else [args.task]
    records = []
    for task in tasks:
        records += antibody(
            args.model,
            decoders=args.decoders,
            budgets=args.budgets,
            task=task,
            genes=args.genes,
            seed=args.seed,
            policy=policy,
            backend=args.backend,
            batch_size=args.batch_size,
            progress=not args.no_progress,
            device=args.device,
        )
    print(format_antibody_table(records))
    _write_grid(args, out, "antibody", records, plot_antibody)
    return 0


def format_antibody_table(records: list[dict]) -> str:
    """A Markdown table: task, decoder, budget, steps, accuracy +- se, agreement +- se, NFE, tokens/s."""
    lines = [
        "| task | decoder | budget | steps/gene | accuracy | agreement | NFE/gene | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['task']} | {r['decoder']} | {r['budget']} | {r['steps']:.2f} "
            f"| {_pm(r['accuracy'], r['accuracy_se'])} | {_pm(r['agreement'], r['agreement_se'])} "
            f"| {r['nfe']:.2f} | {r['tokens_per_s']:.1f} |"
        )
    seen = {}
    for r in records:
        seen.setdefault(r["task"], (r["genes"], r["residues"]))
    scored = "; ".join(f"{task}: {g} genes, {n} residues scored" for task, (g, n) in seen.items())
    return "\n".join(lines) + f"\n\n{records[0]['model']}; {scored}"


def add_code_arguments(parser: argparse.ArgumentParser) -> None:
    add_grid_arguments(parser, model_help="a LLaDA checkpoint folder (default: the shipped code model)", batch_size=16)
    parser.add_argument("--cases", type=int, default=None, help="n held-out cases (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="draws the cases and their spans (default: %(default)s)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="(default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out", default="eval-code", help="folder for code.json, code.png")


def run_code(args: argparse.Namespace) -> int:
    import torch

    import mdfast
    from mdfast.eval.code_benchmark import code
    from mdfast.eval.plot import plot_code

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy = mdfast.StepPolicy.load(args.policy, args.device) if args.policy else None
    records = code(
        args.model,
        decoders=args.decoders,
        budgets=args.budgets,
        cases=args.cases,
        seed=args.seed,
        policy=policy,
        backend=args.backend,
        batch_size=args.batch_size,
        progress=not args.no_progress,
        device=args.device,
        dtype=getattr(torch, args.dtype),
    )
    print(format_code_table(records))
    _write_grid(args, out, "code", records, plot_code)
    return 0


def format_code_table(records: list[dict]) -> str:
    """A Markdown table: decoder, budget, steps, exact match, token accuracy, parses (each +- se), spans left
    with a [MASK], agreement +- se, NFE, tokens/s."""
    lines = [
        "| decoder | budget | steps/case | exact match | token accuracy | parses | [MASK] left | agreement "
        "| NFE/case | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['decoder']} | {r['budget']} | {r['steps']:.2f} | {_pm(r['exact_match'], r['exact_match_se'])} "
            f"| {_pm(r['accuracy'], r['accuracy_se'])} | {_pm(r['parses'], r['parses_se'])} | {r['masked_spans']} "
            f"| {_pm(r['agreement'], r['agreement_se'])} | {r['nfe']:.2f} | {r['tokens_per_s']:.1f} |"
        )
    r = records[0]
    return "\n".join(lines) + f"\n\n{r['model']}; {r['cases']} cases, {r['tokens']} span tokens scored"


def add_humaneval_arguments(parser: argparse.ArgumentParser) -> None:
    from mdfast.decode import DECODERS

    parser.add_argument("--model", required=True, help="a local model folder (the hub is never reached)")
    parser.add_argument("--decoder", choices=sorted(DECODERS), default="xflow")
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--problems", type=int, default=None, help="the first n problems (default: all 164)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the chat template (instruct models)")
    parser.add_argument("--policy", default=None, help="a StepPolicy file for xflow")
    parser.add_argument("--mask-token-id", type=int, default=None)
    parser.add_argument("--trust-remote-code", action="store_true", help="needed by LLaDA and Dream checkpoints")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--timeout", type=float, default=10.0, help="wall seconds per program (default: %(default)s)")
    parser.add_argument("--memory-mb", type=int, default=1024, help="address space per program (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="programs run at once (default: CPU count)")
    parser.add_argument("--out", default="eval-humaneval", help="folder for humaneval.json")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_humaneval(args: argparse.Namespace) -> int:
    import torch

    import mdfast
    from mdfast.eval.humaneval_benchmark import humaneval, summarize_humaneval
    from mdfast.eval.sandbox import Limits

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    limits = Limits(seconds=args.timeout, memory_bytes=args.memory_mb << 20)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from mdfast.loading import load_model, load_tokenizer

    if not Path(args.model).is_dir():
        raise SystemExit(f"mdfast eval: --model {args.model!r} is not a folder (the hub is never reached)")
    model = load_model(args.model, device=device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    policy = mdfast.StepPolicy.load(args.policy, device) if args.policy else None
    records = humaneval(
        model,
        tokenizer,
        decoder=args.decoder,
        steps=args.steps,
        gen_length=args.gen_length,
        block_length=args.block_length,
        problems=args.problems,
        batch_size=args.batch_size,
        chat=args.chat,
        policy=policy,
        mask_token_id=args.mask_token_id,
        backend=args.backend,
        limits=limits,
        workers=args.workers,
        progress=not args.no_progress,
    )
    summary = summarize_humaneval(records)
    meta = _meta(args, {"device": device, "torch": torch.__version__})
    (out / "humaneval.json").write_text(json.dumps({**meta, "summary": summary, "records": records}, indent=1) + "\n")
    s = summary
    print(
        f"{args.model}: {s['decoder']}, {s['steps']} steps, gen length {s['gen_length']}, block {s['block_length']}: "
        f"pass@1 {_pm(s['pass@1'], s['pass@1_se'])} ({s['passed']}/{s['problems']}), NFE {s['nfe']:.1f}, "
        f"{s['tokens_per_s']:.1f} tokens/s"
    )
    print(f"# wrote {out / 'humaneval.json'}", file=sys.stderr)
    return 0


def _write_grid(args: argparse.Namespace, out, name: str, records: list[dict], plot) -> None:
    """A grid command's outputs: ``<name>.json`` (the run's metadata and the records) and ``<name>.png``."""
    import torch

    meta = _meta(args, {"device": args.device, "torch": torch.__version__, "torch_threads": torch.get_num_threads()})
    (out / f"{name}.json").write_text(json.dumps({**meta, "records": records}, indent=1) + "\n")
    plot(records, out / f"{name}.png")
    print(f"# wrote {out / (name + '.json')} and {out / (name + '.png')}", file=sys.stderr)


def _meta(args: argparse.Namespace, extra: dict) -> dict:
    """The command that reproduces this run (every option spelled out), the date (UTC) and ``extra``."""
    words = ["mdfast", "eval", args.benchmark]
    for key, value in vars(args).items():
        if key == "benchmark" or value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append(",".join(map(str, value)) if isinstance(value, list) else str(value))
    return {
        "command": shlex.join(words),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _pm(value: float, se: float | None) -> str:
    return f"{value:.3f} ± {se:.3f}" if se is not None else f"{value:.3f}"


def _names(allowed: list[str]):
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"expected comma-separated names among {','.join(allowed)}, got {text!r}")
        return names

    return parse


def _budgets(text: str) -> list:
    from mdfast.eval.budget_grid import parse_budget

    try:
        return [parse_budget(b.strip()) for b in text.split(",") if b.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
