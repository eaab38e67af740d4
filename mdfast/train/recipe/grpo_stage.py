"""The grpo stage: SPEC 6.2's GRPO for a StepPolicy on training genes, the learning curve on held-out genes.

Writes OUT/grpo/: the trainer's ``metrics.jsonl``, ``checkpoint-<step>/`` and ``policy.safetensors``, and
``grpo.json`` (the summary) and ``grpo.png``.
"""

from __future__ import annotations

import json
import math
import time
from fractions import Fraction
from pathlib import Path

import torch

from mdfast import StepPolicy
from mdfast.eval import antiberty_vocabulary, antibody, load_antiberty, parse_budget, subset
from mdfast.train.grpo import PolicyGRPOConfig, PolicyGRPOTrainer
from mdfast.train.policy_init import default_policy_start

from .common import (
    RecipeError,
    aligned_folder,
    clock,
    eval_subset,
    load_aligned,
    meta,
    plus_minus,
    pyplot,
    say,
    span_accuracy,
    task_templates,
    trainer_budget,
    training_genes,
    write_json,
)


def grpo_model(args, out: Path):
    """The frozen model GRPO decodes (``--grpo-model``) and its name."""
    if args.grpo_model == "base":
        return load_antiberty(), "base"
    return load_aligned(aligned_folder(args, out)), "aligned"


def baselines(model, budget: Fraction, common: dict) -> dict:
    """The held-out accuracy of x-flow's default policy at the budget, and of low_confidence there and at 1."""
    found = {}
    for decoder, budgets in (("xflow", [budget]), ("low_confidence", sorted({budget, Fraction(1)}))):
        for r in antibody(model, decoders=[decoder], budgets=budgets, progress=True, **common):
            label = f"{decoder} {'default policy ' if decoder == 'xflow' else ''}at {r['budget']}"
            found[label] = {"accuracy": r["accuracy"], "accuracy_se": r["accuracy_se"], "nfe": r["nfe"]}
    return found


def grpo_config(args, stage: Path, budget: float) -> PolicyGRPOConfig:
    """The trainer's configuration from the command line (its own progress bar off: the stage reports)."""
    return PolicyGRPOConfig(
        output_dir=str(stage),
        num_generations=args.num_generations,
        per_device_train_batch_size=args.prompts_per_step,
        budget=budget,
        lam=args.lam,
        num_iterations=args.num_iterations,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        logging_steps=1,
        eval_steps=args.eval_steps,
        save_steps=args.eval_steps,
        seed=args.seed,
        backend=args.backend,
        disable_tqdm=True,
    )


def start_policy(args, model, genes, config, stage: Path) -> tuple[StepPolicy, list | None]:
    """The policy GRPO starts from (``--init-policy``) and, for "default", the fits of policy_init."""
    if args.init_policy == "default" and not args.resume:
        # SPEC 2's default policy as the start (policy_init.py): rollouts on training genes, then a fit
        fitted_on = subset(genes, min(32, len(genes)))
        prompts = [torch.tensor(m.input_ids) for m in task_templates(fitted_on, args.task, args.seed)]
        mask_id = antiberty_vocabulary().mask
        policy, fits = default_policy_start(model, prompts, config, hidden=args.policy_hidden, mask_token_id=mask_id)
        init_fits = [vars(f) for f in fits]
        policy.save(stage / "init_policy.safetensors")
        say("grpo", f"start fitted to the default policy: {init_fits}")
        return policy, init_fits
    if args.init_policy:
        return StepPolicy.load(args.init_policy), None
    torch.manual_seed(args.seed)
    return StepPolicy(args.policy_hidden), None


def train_in_chunks(trainer, config, args, stage: Path, deadline: float) -> tuple[list, str]:
    """Train in chunks of ``--eval-steps`` steps until ``--max-steps`` or the ``--minutes`` budget.

    Each chunk ends with an evaluation and a checkpoint; the schedule is constant (SPEC 6.2's default), so a
    chunked run is the same run as one call of max_steps. deadline: ``time.monotonic()`` of the --minutes
    budget's end. Returns (steps, seconds) per chunk and why it stopped.
    """
    chunk_seconds, stop, started = [], "max_steps", time.monotonic()
    first = trainer.global_step
    while True:
        config.max_steps = min(args.max_steps, (trainer.global_step // args.eval_steps + 1) * args.eval_steps)
        before, tick = trainer.global_step, time.perf_counter()
        trainer.train()
        chunk_seconds.append((trainer.global_step - before, time.perf_counter() - tick))
        elapsed, done = time.monotonic() - started, trainer.global_step - first
        left = elapsed / max(1, done) * (args.max_steps - trainer.global_step)
        left = min(left, max(0.0, deadline - time.monotonic()))
        say(
            "grpo",
            f"step {trainer.global_step}/{args.max_steps}: {latest_eval(stage)}; {clock(elapsed)} elapsed, "
            f"at most {clock(left)} left",
        )
        if trainer.global_step >= args.max_steps:
            break
        if time.monotonic() + chunk_seconds[-1][1] > deadline:
            stop = "minutes"
            break
    config.max_steps = args.max_steps
    return chunk_seconds, stop


def run_grpo(args, out: Path) -> None:
    """The grpo stage (module docstring)."""
    stage = out / "grpo"
    if (stage / "metrics.jsonl").is_file() and not args.resume:
        raise RecipeError(f"{stage} holds a GRPO run: --resume continues it, or choose another --out")
    stage.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else math.inf
    model, model_name = grpo_model(args, out)
    budget = parse_budget(args.budget)
    train = training_genes()
    genes = train if args.grpo_genes is None else subset(train, args.grpo_genes)
    templates = task_templates(genes, args.task, args.seed)
    dataset = [{"input_ids": list(m.input_ids), "target": list(m.target), "gene": m.gene.name} for m in templates]
    held_out = eval_subset(args)
    float_budget = trainer_budget(budget, [len(m.positions) for m in templates])
    common = {"task": args.task, "genes": held_out, "seed": args.seed, "backend": args.backend}
    common.update(batch_size=args.batch_size, reference=False)

    say("grpo", f"baselines on {len(held_out)} held-out genes ({model_name} model)")
    found_baselines = baselines(model, budget, common)
    eval_seconds = []

    def evaluate(policy: StepPolicy) -> dict[str, float]:
        """The learning curve's point: x-flow with the policy's mean action at the budget, held-out subset."""
        tick = time.perf_counter()
        (r,) = antibody(model, decoders=["xflow"], budgets=[budget], policy=policy, **common)
        eval_seconds.append(time.perf_counter() - tick)
        return {"accuracy": r["accuracy"], "accuracy_se": r["accuracy_se"] or 0.0, "nfe": r["nfe"]}

    config = grpo_config(args, stage, float_budget)
    policy, init_fits = start_policy(args, model, genes, config, stage)
    mask_id = antiberty_vocabulary().mask
    trainer = PolicyGRPOTrainer(policy, model, span_accuracy, dataset, config, evaluate, mask_token_id=mask_id)
    if args.resume:
        trainer.load_checkpoint(trainer.latest_checkpoint())
    chunk_seconds, stop = train_in_chunks(trainer, config, args, stage, deadline)
    evals_in_chunks = len(eval_seconds)
    metrics = final_metrics(stage, trainer.global_step, lambda: evaluate(policy))
    curve = [m for m in metrics if "eval/accuracy" in m]
    train_steps = sum(n for n, _ in chunk_seconds)
    train_time = sum(s for _, s in chunk_seconds) - sum(eval_seconds[:evals_in_chunks])  # minus their evaluations
    summary = {
        **meta(args),
        "stage": "grpo",
        "model": f"AntiBERTy (antiberty 0.1.3), {model_name}",
        "grpo_model": model_name,
        "task": args.task,
        "budget": str(budget),
        "trainer_budget": float_budget,
        "reward": "span residue accuracy + lam * t_final (SPEC 6.2, per token)",
        "data": {"training_genes": len(genes), "species": sorted({g.species for g in genes})},
        "held_out_genes": len(held_out),
        "held_out_residues": sum(len(m.positions) for m in task_templates(held_out, args.task, args.seed)),
        "config": {k: v for k, v in vars(config).items() if k not in ("output_dir",)},
        "policy_hidden": policy.hidden,
        "init_policy": args.init_policy,
        "init_fits": init_fits,
        "steps_done": trainer.global_step,
        "stopped_by": stop,
        "baselines": found_baselines,
        "curve": [{"step": m["step"], **{k[5:]: m[k] for k in m if k.startswith("eval/")}} for m in curve],
        "final": {"step": curve[-1]["step"], **{k[5:]: v for k, v in curve[-1].items() if k.startswith("eval/")}},
        "seconds": {
            "per_step": train_time / max(1, train_steps),
            "per_eval": sum(eval_seconds) / max(1, len(eval_seconds)),
            "stage": time.perf_counter() - started,
        },
        "policy_file": str(stage / "policy.safetensors"),
    }
    write_json(stage / "grpo.json", summary)
    plot_grpo(metrics, found_baselines, stage / "grpo.png", summary)
    print(format_grpo(summary))


def final_metrics(stage: Path, step: int, evaluate) -> list[dict]:
    """The trainer's metrics, with the final policy's evaluation appended where the last chunk had none.

    The last chunk ends off the eval_steps grid when max_steps is not a multiple: its point is written in the
    trainer's format.
    """
    metrics = read_metrics(stage / "metrics.jsonl")
    if not any(m.get("step") == step and "eval/accuracy" in m for m in metrics):
        point = {"step": step, **{f"eval/{k}": v for k, v in evaluate().items()}}
        with open(stage / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
        metrics.append(point)
    return metrics


def latest_eval(stage: Path) -> str:
    """The last evaluation's held-out accuracy, as a phrase."""
    evals = [m for m in read_metrics(stage / "metrics.jsonl") if "eval/accuracy" in m]
    return f"held-out accuracy {evals[-1]['eval/accuracy']:.4f}" if evals else "no evaluation yet"


def read_metrics(path: Path) -> list[dict]:
    """The trainer's metrics.jsonl as a list (empty if there is none yet)."""
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_grpo(summary: dict) -> str:
    """The baselines and the learning curve as a markdown table, then the run's time."""
    lines = ["| policy | held-out accuracy at " + summary["budget"] + " |", "|---|---|"]
    for label, b in summary["baselines"].items():
        lines.append(f"| {label} | {plus_minus(b['accuracy'], b['accuracy_se'])} |")
    for point in summary["curve"]:
        lines.append(f"| trained, step {point['step']} | {plus_minus(point['accuracy'], point['accuracy_se'])} |")
    s = summary["seconds"]
    lines.append(
        f"\n{summary['steps_done']} steps ({summary['stopped_by']}), {s['per_step']:.1f} s per step, "
        f"{s['per_eval']:.1f} s per evaluation"
    )
    return "\n".join(lines)


def plot_grpo(metrics: list[dict], baselines: dict, path: Path, summary: dict) -> None:
    """The learning curve with the baselines as lines, the training reward, and the policy's mean step.

    The curve is the held-out accuracy of the mean-action policy, +-1 standard error; the policy panel shows
    mu, t_final and the clip ratio.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    curve = [m for m in metrics if "eval/accuracy" in m]
    x = [m["step"] for m in curve]
    y = [m["eval/accuracy"] for m in curve]
    se = [m.get("eval/accuracy_se", 0.0) for m in curve]
    axes[0].plot(x, y, marker="o", color="C0", label="x-flow, trained policy (mean action)")
    axes[0].fill_between(x, [a - b for a, b in zip(y, se)], [a + b for a, b in zip(y, se)], color="C0", alpha=0.2)
    for n, (label, b) in enumerate(baselines.items(), start=1):
        axes[0].axhline(b["accuracy"], color=f"C{n}", linestyle=("--", ":", "-.")[n % 3], label=label)
    axes[0].set_title(f"held-out accuracy at {summary['budget']} ({summary['held_out_genes']} genes)")
    train = [m for m in metrics if "reward" in m]
    steps = [m["step"] for m in train]
    axes[1].plot(steps, [m["reward"] for m in train], label="task reward (span accuracy)")
    axes[1].plot(steps, [m.get("reward_std", math.nan) for m in train], label="reward_std (within groups)")
    axes[1].plot(steps, [m.get("frac_reward_zero_std", math.nan) for m in train], label="frac_reward_zero_std")
    axes[1].set_title("training rollouts (sampled actions)")
    axes[2].plot(steps, [m.get("completions/t_final_mean", math.nan) for m in train], label="t_final mean")
    axes[2].plot(steps, [m.get("policy/mu_mean", math.nan) for m in train], label="mu mean (Beta)")
    axes[2].plot(steps, [m.get("clip_ratio/region_mean", math.nan) for m in train], label="clip ratio")
    axes[2].set_title("policy")
    for ax in axes:
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"GRPO for the step policy (SPEC 6.2) on AntiBERTy ({summary['grpo_model']}), {summary['task']} task, "
        f"G = {summary['config']['num_generations']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
