"""``mdfast eval harness``: EleutherAI's lm-evaluation-harness evaluator on an mdfast model, offline tasks shipped.

The model is lm-eval's ``mdfast`` (``mdfast.harness``), configured by ``--model_args`` exactly as lm-eval's own
``--model_args`` (comma-separated key=value); the tasks are found among the shipped ones (``mdfast/harness/tasks``)
and the ``--include_path`` folders, and only where a name is in neither among lm-eval's own tasks (whose data
come from the Hugging Face hub, or its cache). Prints lm-eval's results table; ``--output_path`` writes the
results (with the decoding settings under "config") as JSON. Flags are spelled as lm-eval spells them
(``--model_args``) or in mdfast's style (``--model-args``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

from mdfast.cli.errors import CommandError, UsageError

__all__ = ["add_parser", "run"]

EXAMPLE = (
    "mdfast eval harness --model_args pretrained=mdfast/data/code_model,decoder=xflow,steps=16,block_length=16,"
    "gen_length=32,mc_samples=8 --tasks mdfast_code_choice,mdfast_code_infill --limit 16"
)


def add_parser(benchmarks) -> argparse.ArgumentParser:
    """``harness`` under ``mdfast eval``."""
    parser = benchmarks.add_parser(
        "harness",
        help="lm-evaluation-harness tasks with the mdfast model (pip install 'mdfast[harness]')",
        description="Run lm-eval's evaluator with the mdfast model. The shipped offline tasks: mdfast_humaneval "
        "(pass@1, each program run in mdfast's sandbox), mdfast_code_infill and mdfast_code_choice (the code "
        f"model's held-out files), or the group mdfast. Example: {EXAMPLE}",
    )
    parser.add_argument(
        "--model_args",
        "--model-args",
        dest="model_args",
        required=True,
        help="comma-separated key=value: pretrained=FOLDER (required), any DecodeOptions field (decoder, steps, "
        "block_length, cache, ...), gen_length, mc_samples, seed, batch_size, device, dtype, suppress_mask "
        "(mdfast.harness.settings lists them all)",
    )
    parser.add_argument("--tasks", required=True, help="comma-separated task or group names")
    parser.add_argument(
        "--include_path",
        "--include-path",
        dest="include_path",
        action="append",
        default=[],
        help="a further folder of task YAMLs (repeatable); the shipped tasks are always included",
    )
    parser.add_argument("--limit", type=limit_value, default=None, help="documents per task: n, or a fraction < 1")
    parser.add_argument("--num_fewshot", "--num-fewshot", dest="num_fewshot", type=int, default=None)
    parser.add_argument(
        "--output_path", "--output-path", dest="output_path", default=None, help="write the results as JSON here"
    )
    parser.add_argument(
        "--log_samples", "--log-samples", dest="log_samples", action="store_true", help="add every sample to the JSON"
    )
    parser.add_argument(
        "--bootstrap_iters",
        "--bootstrap-iters",
        dest="bootstrap_iters",
        type=int,
        default=1000,
        help="bootstrap resamples for the standard errors of metrics that are not means (default: %(default)s)",
    )
    parser.set_defaults(run=run)
    return parser


def limit_value(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count or a fraction, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive count or fraction, got {text!r}")
    return value if value < 1 else int(value)


def run(args: argparse.Namespace) -> int:
    """Check the flags, build the task manager, run ``lm_eval.simple_evaluate``, print and write the results."""
    if importlib.util.find_spec("lm_eval") is None:
        raise CommandError('mdfast eval harness needs lm-eval: pip install "mdfast[harness]"')
    for folder in args.include_path:
        if not Path(folder).is_dir():
            raise UsageError(f"--include_path: no such folder: {folder}")
    from lm_eval.utils import simple_parse_args_string  # optional extra: harness

    import mdfast.harness as harness  # optional extra: harness (lm-eval)

    model_args = simple_parse_args_string(args.model_args)
    try:
        settings = harness.parse_model_args(model_args)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--model_args: {error}") from None
    if not (Path(settings.pretrained) / "config.json").is_file():
        raise UsageError(f"--model_args: pretrained: {settings.pretrained} is not a model folder with a config.json")
    tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not tasks:
        raise UsageError("--tasks: expected comma-separated task names")
    results = _evaluate(args, model_args, tasks)
    _report(results, args)
    return 0


def _task_manager(args: argparse.Namespace, tasks: list[str], metadata: dict):
    """The shipped tasks and --include_path's; lm-eval's own as well only where a name is in neither."""
    from lm_eval.tasks import TaskManager  # optional extra: harness

    import mdfast.harness as harness  # optional extra: harness (lm-eval)

    paths = [str(harness.TASKS_DIR), *args.include_path]
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if set(tasks) <= set(manager.all_tasks):
        return manager
    manager = TaskManager(include_path=paths, include_defaults=True, metadata=metadata)
    unknown = sorted(set(tasks) - set(manager.all_tasks))
    if unknown:
        raise UsageError(
            f"--tasks: unknown {', '.join(unknown)} (shipped: mdfast, {', '.join(harness.TASK_NAMES)}; "
            "others come from --include_path or lm-eval's own tasks)"
        )
    return manager


def _evaluate(args: argparse.Namespace, model_args: dict, tasks: list[str]) -> dict:
    from lm_eval import simple_evaluate  # optional extra: harness

    manager = _task_manager(args, tasks, metadata=dict(model_args))
    return simple_evaluate(
        model="mdfast",
        model_args=model_args,
        tasks=tasks,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        task_manager=manager,
        bootstrap_iters=args.bootstrap_iters,
        log_samples=args.log_samples,
        confirm_run_unsafe_code=True,  # mdfast_humaneval runs each program in mdfast's sandbox (mdfast.eval.sandbox)
    )


def _report(results: dict, args: argparse.Namespace) -> None:
    """lm-eval's tables on stdout; the results as JSON in --output_path."""
    from lm_eval.utils import handle_non_serializable, make_table  # optional extra: harness

    print(make_table(results))
    if results.get("groups"):
        print(make_table(results, "groups"))
    if args.output_path is not None:
        path = Path(args.output_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False))
        print(f"# results written to {path}")
