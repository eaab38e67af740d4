"""``mdfast train recipe``: training recipes on real weights; ``antibody-policy`` is the one there is."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
from pathlib import Path

from mdfast.cli.errors import CommandError, UsageError

# mdfast.train.recipe.common.STAGES, in their order (a test checks that the two agree)
STAGES = ("align", "grpo", "evaluate", "ship")
# options naming a file or folder: an absolute path is recorded as this placeholder in the command of a result
PATH_OPTIONS = {"out": "OUT", "aligned": "ALIGNED", "policy": "POLICY", "init_policy": "INIT_POLICY"}
PATH_OPTIONS["ship_dir"] = "SHIP_DIR"
PROG = "mdfast train recipe antibody-policy"

DESCRIPTION = """x-flow's two trainings on real weights: AntiBERTy and the antibody benchmark (SPEC 7).

Stages (--stages, comma-separated, run in this order), each writing under --out:
  align     SPEC 6.1's x-pred alignment of AntiBERTy on training genes (the non-human species; no held-out
            human gene is trained on), on the model's own full-budget answers; the SPEC 6.1 logs and the
            held-out decoding accuracy before and after. Writes align/model, align.json, align_log.jsonl,
            align.png.
  grpo      SPEC 6.2's GRPO for a StepPolicy (fresh, a file, or --init-policy default) at --budget on
            training genes; reward = the infilled span's residue accuracy + lam * t_final; every --eval-steps
            steps the held-out subset is decoded (the learning curve); --minutes bounds the run. Writes
            grpo/ (metrics.jsonl, checkpoint-<step>/, policy.safetensors), grpo.json, grpo.png.
  evaluate  the held-out genes for {default, trained} policy x {base, aligned} model at --budgets beside
            low_confidence, per task (--tasks). Writes evaluate.json, evaluate.jsonl, evaluate.md,
            evaluate.png.
  ship      the trained policy as a named example (mdfast.StepPolicy.example(name)): <name>.safetensors and
            its card <name>.json in --ship-dir.

Needs the eval and train extras (pip install "mdfast[eval,train]"); the commands of the real runs and their
run times are in bench/QUALITY.md ("Training on real weights")."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``recipe`` under ``mdfast train``, with one sub-command per recipe."""
    parser = subparsers.add_parser(
        "recipe",
        help="training recipes on real weights (antibody-policy)",
        description="Training recipes on real weights: each runs its stages and writes its results under --out.",
    )
    recipes = parser.add_subparsers(dest="recipe", metavar="{antibody-policy}", required=True)
    policy = recipes.add_parser(
        "antibody-policy",
        help="align, GRPO, evaluate and ship an x-flow step policy for AntiBERTy",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_antibody_policy_arguments(policy)
    policy.set_defaults(run=run)
    return parser


def add_antibody_policy_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``antibody-policy``: common ones, then one group per stage."""
    parser.add_argument("--stages", default="align,grpo,evaluate", help=f"comma-separated among {','.join(STAGES)}")
    parser.add_argument("--out", required=True, help="the run's folder: align/, grpo/, evaluate/")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="span places, masks, policy init, GRPO draws")
    parser.add_argument("--backend", default="auto", help="mdfast backend of the decoding steps")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per infill call (antibody, answering)")
    parser.add_argument("--budget", default="1/4", help="the training budget: GRPO's, and align's decoding check")
    parser.add_argument(
        "--task",
        choices=["suffix", "span"],
        default="suffix",
        help="SPEC 7 task the align and grpo stages train and check on (default suffix: the task with a budget "
        "effect; the span task is saturated, bench/QUALITY.md)",
    )
    parser.add_argument("--eval-genes", type=int, default=32, help="held-out subset of align's check and GRPO's curve")
    parser.add_argument("--aligned", default=None, help="an aligned model folder (default: OUT/align/model)")
    add_align_arguments(parser.add_argument_group("align"))
    add_grpo_arguments(parser.add_argument_group("grpo"))
    e = parser.add_argument_group("evaluate")
    e.add_argument("--policy", default=None, help="the trained policy (default: OUT/grpo/policy.safetensors)")
    e.add_argument("--genes", type=int, default=None, help="held-out genes, evenly spaced (default: all 317)")
    e.add_argument("--budgets", default="1/8,1/4,1/2,1")
    e.add_argument("--tasks", default="span", help="span, suffix or span,suffix")
    s = parser.add_argument_group("ship")
    s.add_argument("--ship-name", default=None, help="default: antiberty-<task of the grpo stage>")
    s.add_argument("--ship-dir", default=None, help="default: mdfast/data/policies of the installed package")


def add_align_arguments(a) -> None:
    """The align stage's options."""
    a.add_argument("--align-genes", type=int, default=256, help="training genes answered as alignment data")
    a.add_argument("--align-val-genes", type=int, default=64, help="other training genes: the SPEC 6.1 logs")
    a.add_argument("--align-steps", type=int, default=100, help="SPEC 6.1's 100 (the paper's full fine-tune)")
    a.add_argument("--align-lr", type=float, default=1e-5)
    a.add_argument("--align-batch-size", type=int, default=4)


def add_grpo_arguments(g) -> None:
    """The grpo stage's options."""
    g.add_argument("--grpo-model", choices=["base", "aligned"], default="base", help="the frozen model GRPO decodes")
    g.add_argument("--grpo-genes", type=int, default=None, help="training genes (default: all, evenly spaced)")
    g.add_argument("--num-generations", type=int, default=8, help="G (SPEC 6.2: 8)")
    g.add_argument("--prompts-per-step", type=int, default=8, help="genes per GRPO step (the paper's 8)")
    g.add_argument("--max-steps", type=int, default=6000)
    g.add_argument("--minutes", type=float, default=None, help="time budget of the run (stops at an evaluation)")
    g.add_argument("--eval-steps", type=int, default=10, help="evaluate and checkpoint every N steps")
    g.add_argument("--learning-rate", type=float, default=3e-4)
    g.add_argument("--lam", type=float, default=0.2, help="lambda of R = R_task + lambda t_final")
    g.add_argument("--num-iterations", type=int, default=2, help="policy epochs per rollout batch")
    g.add_argument("--policy-hidden", type=int, default=64)
    g.add_argument(
        "--init-policy",
        default=None,
        help="a StepPolicy file to start from, or 'default': a fresh policy fitted to SPEC 2's default policy "
        "(mdfast.train.policy_init) (default: fresh, seeded)",
    )
    g.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in OUT/grpo")


def check_stages(text: str) -> list[str]:
    """The stage names of ``--stages``, or UsageError."""
    stages = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UsageError(f"--stages: expected names among {','.join(STAGES)}, got {text!r}")
    return stages


def check_numbers(args: argparse.Namespace) -> None:
    """The counts that must be positive, as UsageError naming the flag."""
    for name in ("threads", "batch_size", "eval_genes", "align_steps", "align_batch_size", "num_generations"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(args, name)}")
    for name in ("prompts_per_step", "max_steps", "eval_steps", "genes", "grpo_genes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected at least 1, got {value}")


def shown_value(dest: str, value) -> str:
    """One option's value as a recorded command shows it: an absolute path (or ~) as its placeholder."""
    text = str(value)
    if dest in PATH_OPTIONS and text != "default" and (Path(text).is_absolute() or text.startswith("~")):
        return PATH_OPTIONS[dest]
    return shlex.quote(text)


def shown_command(args: argparse.Namespace) -> str:
    """The command as results record it: --stages, --out and every option away from its default, in order.

    Relative paths appear as given (the run is made from the repository root); absolute ones as placeholders
    (``--out OUT``), so that no machine's folders end up in a shipped card.
    """
    parser = argparse.ArgumentParser(prog=PROG)
    add_antibody_policy_arguments(parser)
    words = [PROG]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if action.dest not in ("stages", "out") and value == action.default:
            continue
        if isinstance(action, argparse._StoreTrueAction):
            words += [action.option_strings[0]] if value else []
        else:
            words += [action.option_strings[0], shown_value(action.dest, value)]
    return " ".join(words)


def run(args: argparse.Namespace) -> int:
    """Check the command line, then run the chosen stages of the recipe."""
    stages = check_stages(args.stages)
    check_numbers(args)
    if "ship" in stages and args.ship_name is not None and not args.ship_name.strip():
        raise UsageError("--ship-name: expected a name, got an empty one")
    missing = [name for name in ("antiberty", "anarci", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f"the antibody-policy recipe needs {', '.join(missing)}: pip install 'mdfast[eval,train]'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub: AntiBERTy's weights are in its package
    args.command = shown_command(args)
    # the tree imports every verb: implementations load when their verb runs
    from mdfast.train.recipe import antibody_policy, common  # torch, transformers: loaded when the verb runs

    try:
        return antibody_policy.run_recipe(args, stages)
    except common.RecipeError as error:
        raise CommandError(str(error)) from None
