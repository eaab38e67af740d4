"""``mdfast train mdlm``: train the code model, a small LLaDA masked diffusion LM, on the Python standard library."""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import fields
from pathlib import Path

import torch

from mdfast.cli.errors import UsageError
from mdfast.code_model.options import TrainOptions

PROG = "mdfast train mdlm"
OUT_PLACEHOLDER = "OUT"  # an absolute --out in a recorded command: no machine's folders in a shipped record
FIELD_TYPES = {"int": int, "float": float, "str": str, "int | None": int}
STATE_FILE = "train_state.pt"  # mdfast.code_model.pretrain.STATE_FILE (a test checks that the two agree)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``mdlm`` under ``mdfast train``."""
    parser = subparsers.add_parser(
        "mdlm",
        help="a small LLaDA code model on the Python standard library (SPEC 7)",
        description="Train the code model (SPEC 7): a LLaDA masked diffusion LM on this Python's standard library, "
        "checkpointed into --out (model, tokenizer, training.json, log.jsonl, the state --resume continues from).",
    )
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run's flags, then one flag per ``TrainOptions`` field (fixed for the run)."""
    defaults = TrainOptions()
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--out", required=True, help="output folder (checkpoint, tokenizer, logs, state)")
    run_group.add_argument(
        "--minutes", type=float, default=None, help="time budget (sizes the schedule unless --steps)"
    )
    run_group.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where there is one)")
    run_group.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    run_group.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this step")
    run_group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile each block (nn.Module.compile); default: on CUDA only (no gain measured on the CPU)",
    )
    run_group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    run_group.add_argument("--save-minutes", type=float, default=10.0, help="checkpoint interval")
    run_group.add_argument("--save-dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    run_group.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    run_group.add_argument("--quiet", action="store_true", help="no progress line")
    options = parser.add_argument_group("training (fixed for the run; --resume reads them from the state)")
    for field in fields(TrainOptions):
        value = getattr(defaults, field.name)
        flag = f"--{field.name.replace('_', '-')}"
        options.add_argument(flag, type=FIELD_TYPES[field.type], default=value, help=f"default {value}")


def shown_value(value) -> str:
    """A value as a recorded command shows it: 150.0 as 150."""
    text = repr(value) if isinstance(value, float) else str(value)
    return shlex.quote(text.removesuffix(".0") if isinstance(value, float) else text)


def shown_command(args: argparse.Namespace) -> str:
    """The command as ``training.json`` records it: --out and every flag away from its default, in order.

    A relative --out appears as given (runs are made from the repository root), an absolute one as ``OUT``.
    """
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    words = [PROG]
    for action in parser._actions:
        value = getattr(args, action.dest, action.default)
        if not action.option_strings or action.dest == "help" or (value == action.default and action.dest != "out"):
            continue
        if action.dest == "out":
            absolute = Path(value).is_absolute() or value.startswith("~")
            words += ["--out", OUT_PLACEHOLDER if absolute else shlex.quote(value)]
        elif isinstance(action, argparse._StoreTrueAction):
            words.append(action.option_strings[0])
        elif isinstance(action, argparse.BooleanOptionalAction):
            words.append(action.option_strings[0 if value else 1])
        else:
            words += [action.option_strings[0], shown_value(value)]
    return " ".join(words)


def check_arguments(args: argparse.Namespace) -> TrainOptions:
    """The run's options, once every flag is checked; a new run's --out must hold no run, a resumed one's must."""
    for name in ("minutes", "save_minutes"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise UsageError(f"--{name.replace('_', '-')}: expected a positive number of minutes, got {value}")
    for name in ("stop_at", "threads", "log_every"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected at least 1, got {value}")
    try:
        options = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions)})
    except ValueError as error:
        names, _, what = str(error).partition(": ")
        raise UsageError(f"--{names.replace('_', '-')}: {what}") from None
    if args.minutes is None and args.steps is None and not args.resume:
        raise UsageError("--minutes: pass a time budget, or --steps for a schedule of fixed length")
    state = Path(args.out, STATE_FILE)
    if args.resume and not state.is_file():
        raise UsageError(f"--resume: {args.out} holds no run to continue (no {STATE_FILE})")
    if not args.resume and state.exists():
        raise UsageError(f"--out: {args.out} already holds a run; pass --resume to continue it, or another folder")
    return options


def run(args: argparse.Namespace) -> int:
    """Train the code model into --out (or continue the run there); prints the training record's summary."""
    started = time.perf_counter()
    options = check_arguments(args)
    command = shown_command(args)
    from mdfast.cli import model_loading  # measured import cost: transformers, 1 s; loads when the verb runs
    from mdfast.code_model import data as code_data  # measured import cost: tokenizers, transformers
    from mdfast.code_model import pretrain  # measured import cost: tokenizers, transformers

    device = str(model_loading.check_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    tokenizer = code_data.load_tokenizer(out / "tokenizer.json" if args.resume else code_data.TOKENIZER_FILE)
    out.mkdir(parents=True, exist_ok=True)
    streams = pretrain.token_streams(tokenizer, out / pretrain.TOKENS_FILE)
    record = pretrain.train(
        out,
        options,
        streams=streams,
        tokenizer=tokenizer,
        minutes=None if args.minutes is None else args.minutes - (time.perf_counter() - started) / 60.0,
        device=device,
        resume=args.resume,
        stop_at=args.stop_at,
        compile=device.startswith("cuda") if args.compile is None else args.compile,
        save_minutes=args.save_minutes,
        save_dtype=args.save_dtype,
        log_every=args.log_every,
        progress=not args.quiet,
        command=command,
    )
    print(json.dumps({key: record.get(key) for key in ("step", "tokens_seen", "elapsed_s", "heldout_eval")}, indent=2))
    return 0
