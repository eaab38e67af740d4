"""x-flow's two trainings shown on real weights (issue 12, part 5): AntiBERTy and the antibody benchmark (SPEC 7).

Stages (``--stages``, comma-separated, run in this order), each writing under ``--out``:

- ``align`` (SPEC 6.1): x-pred alignment of AntiBERTy on TRAINING genes (the non-human species of
  ``mdfast.eval.split_genes``; no held-out human gene is ever trained on). Data: the model's own full-budget
  answers (``infilled_answers``: low_confidence, one token per step) on ``--task``. The SPEC 6.1 logs
  (mse_masked, mse_unmasked, ce_masked beside the frozen base's, identity_acc) on a fixed validation set of other
  training genes with fixed masks, and the decoding accuracy on the held-out subset (x-flow, default policy, and
  low_confidence at the training budget), before and after. Writes ``align/model`` (the aligned model and a
  tokenizer: ``mdfast eval antibody --model`` reads it), ``align/align.json``, ``align/align_log.jsonl`` (the
  trainer's log per step) and ``align/align.png``.
- ``grpo`` (SPEC 6.2): GRPO for a ``StepPolicy`` (fresh; a file; or ``--init-policy default``: fitted to SPEC 2's
  default policy on its own rollouts first, ``mdfast.train.policy_init``) at budget ``--budget`` (1/4) on
  training genes, task ``--task`` (suffix by default), reward = residue accuracy of the infilled span
  (``span_accuracy``, TRL's signature, the gene's residues as the dataset column "target") + lam * t_final (the
  trainer's); every
  ``--eval-steps`` steps the held-out subset is decoded by ``mdfast.eval.antibody`` (x-flow with the current
  policy, deterministic mean action, at the budget): the learning curve. ``--minutes`` bounds the run: it stops
  at the first evaluation after which the next chunk of ``--eval-steps`` steps would end past the budget. Writes
  ``grpo/`` (the trainer's ``metrics.jsonl``, ``checkpoint-<step>/``, ``policy.safetensors``),
  ``grpo/grpo.json`` and ``grpo/grpo.png``.
- ``evaluate``: the held-out genes (``--genes``, default all 317) for {default (heuristic), trained} policy x
  {base, aligned} model at ``--budgets``, beside low_confidence at the same budgets (budget 1 is the full,
  one-token-per-step budget), residues scored and standard errors over genes, per task (``--tasks``). Writes
  ``evaluate/evaluate.json``, ``evaluate/evaluate.jsonl`` (one record per line), ``evaluate/evaluate.md`` (the
  table) and ``evaluate/evaluate.png``.
- ``ship``: the trained policy as a named example (``mdfast.StepPolicy.example(name)``): ``<name>.safetensors``
  and the card ``<name>.json`` (training, command, date, measured accuracy) in ``--ship-dir``
  (default mdfast/data/policies of this checkout).

Run from a checkout with the ``eval`` and ``train`` extras (``pip install -e ".[test]"``); the commands of the
real runs and their run time are in bench/QUALITY.md ("Training on real weights").
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the hub: AntiBERTy's weights are in its package

import torch

import mdfast
from mdfast import StepPolicy
from mdfast.eval import (
    antiberty_path,
    antiberty_vocabulary,
    antibody,
    budget_steps,
    held_out_genes,
    load_antiberty,
    load_genes,
    mask_gene,
    parse_budget,
    pooled_fraction,
    split_genes,
    subset,
)
from mdfast.train.align import (
    AlignmentCollator,
    XPredAlignmentTrainer,
    alignment_training_arguments,
    infilled_answers,
    masked_cross_entropy,
    sample_alignment_mask,
    xpred_alignment_loss,
)
from mdfast.train.grpo import PolicyGRPOConfig, PolicyGRPOTrainer
from mdfast.train.policy_init import default_policy_start

STAGES = ("align", "grpo", "evaluate", "ship")
TASK_WORDS = {"span": "one interior span of 12-20 residues", "suffix": "the last 30 residues"}
ALIGN_LOGS = ("mse_masked", "mse_unmasked", "ce_masked", "base_ce_masked", "identity_acc")
CHECKOUT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# What the stages share
# ---------------------------------------------------------------------------------------------------------------


def training_genes() -> list:
    """The training side of SPEC 7's split (non-human species, no sequence shared with a human gene)."""
    return split_genes(load_genes()).train


def eval_subset(args) -> list:
    """The fixed held-out subset of the align and grpo stages: ``--eval-genes`` human genes, evenly spaced."""
    return held_out_genes(args.eval_genes)


def task_templates(genes, task: str, seed: int) -> list:
    """SPEC 7's ``task`` on ``genes`` (``mask_gene``: "span", one seeded interior span of 12-20 residues each;
    "suffix", the last 30 residues)."""
    vocab = antiberty_vocabulary()
    return [mask_gene(gene, task, vocab, seed) for gene in genes]


def span_accuracy(prompts, completions, completion_ids, target, **columns) -> list[float]:
    """The task reward (TRL's signature): the fraction of the infilled span's residues equal to the gene's
    (``target``, the dataset column: the gene's token ids at the masked positions, in position order)."""
    return [
        sum(int(a) == int(b) for a, b in zip(ids, truth)) / len(truth) for ids, truth in zip(completion_ids, target)
    ]


def trainer_budget(budget: Fraction, counts) -> float:
    """The float ``PolicyGRPOConfig.budget`` whose step count equals the benchmark's for every masked count.

    The trainer takes round(budget x N) steps, the benchmark ``budget_steps`` = ceil(budget x N): for the span
    task at 1/4 they differ at N = 13, 17, 18. A budget b gives the benchmark's s steps at N when b N lies in
    [s - 1/2, s + 1/2); the middle of the intersection over every N present is taken, and checked through the
    trainer's own ``steps_for``."""
    low, high = 0.0, math.inf
    for n in set(counts):
        steps = budget_steps(budget, n)
        low, high = max(low, (steps - 0.5) / n), min(high, (steps + 0.5) / n)
    value = (low + high) / 2
    config = PolicyGRPOConfig(budget=value)
    wrong = [n for n in sorted(set(counts)) if config.steps_for(n) != budget_steps(budget, n)]
    if not low < high or wrong:
        raise ValueError(f"budget {budget}: no float budget gives the benchmark's step counts for N in {wrong}")
    return value


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n")


def write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)


def finite(value):
    """JSON has no NaN: None instead."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def meta(args) -> dict:
    """What a result needs to be reproduced: the command, the date, the versions, the threads."""
    import transformers

    try:
        commit = subprocess.run(
            ["git", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mdfast_commit": commit,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "backend": args.backend,
        "seed": args.seed,
    }


def load_aligned(path: Path):
    """The aligned model folder the align stage wrote, as a BertForMaskedLM in eval mode (local files only)."""
    from transformers import BertForMaskedLM

    if not (path / "config.json").is_file():
        raise SystemExit(f"antibody_policy: no aligned model in {path}: run --stages align first, or pass --aligned")
    return BertForMaskedLM.from_pretrained(str(path), local_files_only=True).eval()


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    return plt


# ---------------------------------------------------------------------------------------------------------------
# align: SPEC 6.1 on the training genes
# ---------------------------------------------------------------------------------------------------------------


def alignment_logs(model, base, records, mask_id: int, pad_id: int, seed: int, batch_size: int = 16) -> dict:
    """The SPEC 6.1 logs of ``model`` on ``records`` with masks drawn once from ``seed`` (the same masks before and
    after training): mse_masked, mse_unmasked, ce_masked and identity_acc pooled over the positions of each set,
    base_ce_masked of the frozen ``base`` on the same batches; and the loss."""
    collate = AlignmentCollator(pad_id)
    generator = torch.Generator().manual_seed(seed)
    frozen = base.get_input_embeddings().weight.detach()
    sums: dict[str, float] = dict.fromkeys(("loss", *ALIGN_LOGS), 0.0)
    counts: dict[str, int] = dict.fromkeys(sums, 0)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(records), batch_size):
            batch = collate(records[start : start + batch_size])
            masked = sample_alignment_mask(batch["answer_mask"], generator)
            loss, logs = xpred_alignment_loss(
                model, batch, frozen_embedding=frozen, mask_token_id=mask_id, masked=masked
            )
            logs["base_ce_masked"] = masked_cross_entropy(base, batch, masked, mask_id)
            n_masked = int(masked.sum())
            n_unmasked = int(batch["answer_mask"].sum()) - n_masked
            weights = {"mse_masked": n_masked, "ce_masked": n_masked, "base_ce_masked": n_masked}
            weights.update({"mse_unmasked": n_unmasked, "identity_acc": n_unmasked, "loss": n_masked + n_unmasked})
            logs["loss"] = loss
            for name, weight in weights.items():
                if weight:
                    sums[name] += float(logs[name]) * weight
                    counts[name] += weight
    model.train(was_training)
    return {name: sums[name] / counts[name] if counts[name] else None for name in sums}


def decoding_check(model, genes, budget: Fraction, args) -> dict:
    """Accuracy on the held-out subset: x-flow (default policy) and low_confidence at ``budget``."""
    records = antibody(
        model,
        decoders=["xflow", "low_confidence"],
        budgets=[budget],
        task=args.task,
        genes=genes,
        seed=args.seed,
        backend=args.backend,
        batch_size=args.batch_size,
        reference=False,
    )
    return {
        r["decoder"]: {k: r[k] for k in ("budget", "accuracy", "accuracy_se", "residues", "genes")} for r in records
    }


def run_align(args, out: Path) -> None:
    from transformers import BertTokenizer

    stage = out / "align"
    stage.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vocab = antiberty_vocabulary()
    model = load_antiberty()
    train = training_genes()
    validation = subset(train, args.align_val_genes)
    kept = set(validation)
    rest = [g for g in train if g not in kept]
    data_genes = subset(rest, min(args.align_genes, len(rest)))
    held_out = eval_subset(args)
    budget = parse_budget(args.budget)
    answer = {
        "mask_token_id": vocab.mask,
        "batch_size": args.batch_size,
        "pad_token_id": vocab.pad,
        "backend": args.backend,
    }

    print(f"[align] answering {len(data_genes)} + {len(validation)} training genes at full budget", file=sys.stderr)
    tick = time.perf_counter()
    records = infilled_answers(
        model, [list(m.input_ids) for m in task_templates(data_genes, args.task, args.seed)], **answer
    )
    val_records = infilled_answers(
        model, [list(m.input_ids) for m in task_templates(validation, args.task, args.seed)], **answer
    )
    answer_seconds = time.perf_counter() - tick

    print("[align] SPEC 6.1 logs and decoding before", file=sys.stderr)
    logs_before = alignment_logs(model, model, val_records, vocab.mask, vocab.pad, args.seed)
    decoding_before = decoding_check(model, held_out, budget, args)

    training_args = alignment_training_arguments(
        str(stage / "trainer"),
        max_steps=args.align_steps,
        learning_rate=args.align_lr,
        warmup_steps=min(10, args.align_steps // 10),
        per_device_train_batch_size=args.align_batch_size,
        seed=args.seed,
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
    )
    model.train()
    trainer = XPredAlignmentTrainer(
        model,
        training_args,
        records,
        mask_token_id=vocab.mask,
        base_model=True,
        data_collator=AlignmentCollator(vocab.pad),
    )
    print(f"[align] {args.align_steps} steps, batch {args.align_batch_size}, lr {args.align_lr}", file=sys.stderr)
    tick = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - tick
    aligned = trainer.model.eval()

    print("[align] SPEC 6.1 logs and decoding after", file=sys.stderr)
    logs_after = alignment_logs(aligned, trainer.base_model, val_records, vocab.mask, vocab.pad, args.seed)
    decoding_after = decoding_check(aligned, held_out, budget, args)

    aligned.save_pretrained(str(stage / "model"))
    BertTokenizer(str(antiberty_path().parent / "vocab.txt"), do_lower_case=False).save_pretrained(str(stage / "model"))
    steps = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    write_jsonl(stage / "align_log.jsonl", [{k: finite(v) for k, v in e.items()} for e in trainer.state.log_history])
    summary = {
        **meta(args),
        "stage": "align",
        "model": "AntiBERTy (antiberty 0.1.3), full fine-tune",
        "task": args.task,
        "data": {
            "training_genes": len(data_genes),
            "validation_genes": len(validation),
            "species": sorted({g.species for g in data_genes}),
            "residues_answered": sum(sum(r["answer_mask"]) for r in records),
            "answers": "the base model's own infill of each span, low_confidence, one token per step",
        },
        "held_out_genes": len(held_out),
        "budget": str(budget),
        "training": {
            "max_steps": args.align_steps,
            "learning_rate": args.align_lr,
            "batch_size": args.align_batch_size,
            "warmup_steps": training_args.warmup_steps,
            "schedule": training_args.lr_scheduler_type,
        },
        "logs_before": logs_before,
        "logs_after": logs_after,
        "decoding_before": decoding_before,
        "decoding_after": decoding_after,
        "seconds": {
            "answering": answer_seconds,
            "training": train_seconds,
            "per_step": train_seconds / max(1, args.align_steps),
            "stage": time.perf_counter() - started,
        },
    }
    write_json(stage / "align.json", summary)
    plot_alignment(steps, logs_before, logs_after, stage / "align.png", args.task)
    print(format_alignment(summary))


def format_alignment(summary: dict) -> str:
    lines = ["| log | before | after |", "|---|---|---|"]
    for name in ("loss", *ALIGN_LOGS):
        before, after = summary["logs_before"][name], summary["logs_after"][name]
        lines.append(f"| {name} | {_num(before)} | {_num(after)} |")
    for decoder in summary["decoding_before"]:
        b, a = summary["decoding_before"][decoder], summary["decoding_after"][decoder]
        lines.append(
            f"| accuracy, {decoder} at {b['budget']} ({b['genes']} held-out genes) "
            f"| {_pm(b['accuracy'], b['accuracy_se'])} | {_pm(a['accuracy'], a['accuracy_se'])} |"
        )
    return "\n".join(lines)


def plot_alignment(steps: list[dict], before: dict, after: dict, path: Path, task: str) -> None:
    """The training log per step (loss, the MSEs, ce_masked beside base_ce_masked, identity_acc), with the fixed
    validation set's values before (step 0) and after (last step) as markers."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    x = [e["step"] for e in steps]
    last = x[-1] if x else 1
    panels = (("loss", "mse_masked", "mse_unmasked"), ("ce_masked", "base_ce_masked"), ("identity_acc",))
    for ax, names in zip(axes, panels):
        for name in names:
            values = [e.get(name) for e in steps]
            (line,) = ax.plot(x, [math.nan if v is None else v for v in values], label=f"{name} (train batch)")
            ax.plot(
                [0, last],
                [before[name] or math.nan, after[name] or math.nan],
                "o--",
                color=line.get_color(),
                alpha=0.6,
                label=f"{name} (validation, before/after)",
            )
        ax.set_xlabel("alignment step")
        if names[0] == "loss":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"x-pred alignment of AntiBERTy (SPEC 6.1), {task} task, training genes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# grpo: SPEC 6.2 on the training genes, the learning curve on held-out genes
# ---------------------------------------------------------------------------------------------------------------


def grpo_model(args, out: Path):
    if args.grpo_model == "base":
        return load_antiberty(), "base"
    return load_aligned(Path(args.aligned) if args.aligned else out / "align" / "model"), "aligned"


def run_grpo(args, out: Path) -> None:
    stage = out / "grpo"
    if (stage / "metrics.jsonl").is_file() and not args.resume:
        raise SystemExit(f"antibody_policy: {stage} holds a GRPO run: --resume continues it, or choose another --out")
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

    print(f"[grpo] baselines on {len(held_out)} held-out genes ({model_name} model)", file=sys.stderr)
    baselines = {}
    for decoder, budgets in (("xflow", [budget]), ("low_confidence", sorted({budget, Fraction(1)}))):
        for r in antibody(model, decoders=[decoder], budgets=budgets, **common):
            label = f"{decoder} {'default policy ' if decoder == 'xflow' else ''}at {r['budget']}"
            baselines[label] = {"accuracy": r["accuracy"], "accuracy_se": r["accuracy_se"], "nfe": r["nfe"]}

    eval_seconds = []

    def evaluate(policy: StepPolicy) -> dict[str, float]:
        """The learning curve's point: x-flow with the policy's mean action at the budget, held-out subset."""
        tick = time.perf_counter()
        (r,) = antibody(model, decoders=["xflow"], budgets=[budget], policy=policy, **common)
        eval_seconds.append(time.perf_counter() - tick)
        return {"accuracy": r["accuracy"], "accuracy_se": r["accuracy_se"] or 0.0, "nfe": r["nfe"]}

    config = PolicyGRPOConfig(
        output_dir=str(stage),
        num_generations=args.num_generations,
        per_device_train_batch_size=args.prompts_per_step,
        budget=float_budget,
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
    init_fits = None
    if args.init_policy == "default" and not args.resume:
        # SPEC 2's default policy as the start (policy_init.py): rollouts on training genes, then a fit
        prompts = [torch.tensor(m.input_ids) for m in task_templates(subset(genes, 32), args.task, args.seed)]
        mask_id = antiberty_vocabulary().mask
        policy, fits = default_policy_start(model, prompts, config, hidden=args.policy_hidden, mask_token_id=mask_id)
        init_fits = [vars(f) for f in fits]
        policy.save(stage / "init_policy.safetensors")
        print(f"[grpo] start fitted to the default policy: {init_fits}", file=sys.stderr)
    elif args.init_policy:
        policy = StepPolicy.load(args.init_policy)
    else:
        torch.manual_seed(args.seed)
        policy = StepPolicy(args.policy_hidden)
    trainer = PolicyGRPOTrainer(
        policy, model, span_accuracy, dataset, config, evaluate, mask_token_id=antiberty_vocabulary().mask
    )
    if args.resume:
        trainer.load_checkpoint(trainer.latest_checkpoint())
    # The run goes in chunks of eval_steps (each ends with an evaluation and a checkpoint); the schedule is
    # constant (SPEC 6.2's default), so a chunked run is the same run as one call of max_steps.
    chunk_seconds = []
    stop = "max_steps"
    while True:
        config.max_steps = min(args.max_steps, (trainer.global_step // args.eval_steps + 1) * args.eval_steps)
        before = trainer.global_step
        tick = time.perf_counter()
        trainer.train()
        chunk_seconds.append((trainer.global_step - before, time.perf_counter() - tick))
        print(f"[grpo] step {trainer.global_step}: {latest_eval(stage)}", file=sys.stderr)
        if trainer.global_step >= args.max_steps:
            break
        if time.monotonic() + chunk_seconds[-1][1] > deadline:
            stop = "minutes"
            break
    config.max_steps = args.max_steps
    evals_in_chunks = len(eval_seconds)
    metrics = read_metrics(stage / "metrics.jsonl")
    if not any(m.get("step") == trainer.global_step and "eval/accuracy" in m for m in metrics):
        # the last chunk ended off the eval_steps grid (max_steps): the final policy's point, in the trainer's format
        point = {"step": trainer.global_step, **{f"eval/{k}": v for k, v in evaluate(policy).items()}}
        with open(stage / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(point) + "\n")
        metrics.append(point)
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
        "baselines": baselines,
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
    plot_grpo(metrics, baselines, stage / "grpo.png", summary)
    print(format_grpo(summary))


def latest_eval(stage: Path) -> str:
    evals = [m for m in read_metrics(stage / "metrics.jsonl") if "eval/accuracy" in m]
    return f"held-out accuracy {evals[-1]['eval/accuracy']:.4f}" if evals else "no evaluation yet"


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def format_grpo(summary: dict) -> str:
    lines = ["| policy | held-out accuracy at " + summary["budget"] + " |", "|---|---|"]
    for label, b in summary["baselines"].items():
        lines.append(f"| {label} | {_pm(b['accuracy'], b['accuracy_se'])} |")
    for point in summary["curve"]:
        lines.append(f"| trained, step {point['step']} | {_pm(point['accuracy'], point['accuracy_se'])} |")
    s = summary["seconds"]
    lines.append(
        f"\n{summary['steps_done']} steps ({summary['stopped_by']}), {s['per_step']:.1f} s per step, "
        f"{s['per_eval']:.1f} s per evaluation"
    )
    return "\n".join(lines)


def plot_grpo(metrics: list[dict], baselines: dict, path: Path, summary: dict) -> None:
    """The learning curve (held-out accuracy of the mean-action policy, +-1 standard error, with the baselines as
    lines), the training reward, and the policy's mean step (mu, t_final)."""
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


# ---------------------------------------------------------------------------------------------------------------
# evaluate: {default, trained} x {base, aligned} beside low_confidence, held-out genes
# ---------------------------------------------------------------------------------------------------------------


def run_evaluate(args, out: Path) -> None:
    stage = out / "evaluate"
    stage.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    policy_file = Path(args.policy) if args.policy else out / "grpo" / "policy.safetensors"
    if not policy_file.is_file():
        raise SystemExit(f"antibody_policy: no trained policy at {policy_file}: run --stages grpo, or pass --policy")
    trained = StepPolicy.load(policy_file)
    models = {"base": load_antiberty()}
    aligned_path = Path(args.aligned) if args.aligned else out / "align" / "model"
    if (aligned_path / "config.json").is_file():
        models["aligned"] = load_aligned(aligned_path)
    else:
        print(f"[evaluate] no aligned model in {aligned_path}: the base model only", file=sys.stderr)
    genes = held_out_genes(args.genes)
    budgets = sorted({parse_budget(b) for b in args.budgets.split(",")})
    common = {"genes": genes, "budgets": budgets, "seed": args.seed, "backend": args.backend}
    common["batch_size"] = args.batch_size
    records = []
    for task in args.tasks.split(","):
        for model_name, model in models.items():
            print(f"[evaluate] {task}, {model_name} model, {len(genes)} genes", file=sys.stderr)
            for r in antibody(model, decoders=["xflow", "low_confidence"], task=task, **common):
                records.append({**r, "model": model_name, "policy": "default" if r["decoder"] == "xflow" else None})
            for r in antibody(model, decoders=["xflow"], task=task, policy=trained, reference=False, **common):
                records.append({**r, "model": model_name, "policy": "trained"})
    comparisons = compare(records)
    summary = {
        **meta(args),
        "stage": "evaluate",
        "policy_file": str(policy_file),
        "models": {name: ("AntiBERTy (antiberty 0.1.3)" if name == "base" else str(aligned_path)) for name in models},
        "genes": len(genes),
        "comparisons": comparisons,
        "seconds": time.perf_counter() - started,
        "records": records,
    }
    write_json(stage / "evaluate.json", summary)
    write_jsonl(stage / "evaluate.jsonl", records)
    table = format_evaluation(records, comparisons, summary)
    (stage / "evaluate.md").write_text(table + "\n")
    plot_evaluation(records, stage / "evaluate.png")
    print(table)


def compare(records: list[dict]) -> list[dict]:
    """The issue's goal, per task and model: the trained policy at each budget minus (a) the default policy at the
    same budget and (b) low_confidence at the full budget, with the standard error of the paired difference over
    genes (``pooled_fraction`` of the per-gene differences of correct residues)."""
    out = []
    keys = {(r["task"], r["model"]) for r in records}
    for task, model in sorted(keys):
        rows = {
            (r["decoder"], r["policy"], r["budget"]): r for r in records if (r["task"], r["model"]) == (task, model)
        }
        full = rows.get(("low_confidence", None, "1"))
        for (decoder, policy, budget), r in sorted(rows.items(), key=lambda kv: Fraction(kv[0][2])):
            if (decoder, policy) != ("xflow", "trained"):
                continue
            for label, other in (
                ("default policy, same budget", rows.get(("xflow", "default", budget))),
                ("low_confidence, full budget", full),
            ):
                if other is None:
                    continue
                counts = [g["masked"] for g in r["per_gene"]]
                hits = [a["correct"] - b["correct"] for a, b in zip(r["per_gene"], other["per_gene"])]
                difference, se = pooled_fraction(hits, counts)
                out.append(
                    {
                        "task": task,
                        "model": model,
                        "budget": budget,
                        "against": label,
                        "difference": difference,
                        "se": finite(se),
                        "z": finite(difference / se) if se and math.isfinite(se) and se > 0 else None,
                    }
                )
    return out


def format_evaluation(records: list[dict], comparisons: list[dict], summary: dict) -> str:
    lines = [
        "| task | model | decoder | policy | budget | steps/gene | accuracy | agreement | residues |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"default": 0, "trained": 1, None: 2}
    for r in sorted(records, key=lambda r: (r["task"], r["model"], order[r["policy"]], Fraction(r["budget"]))):
        lines.append(
            f"| {r['task']} | {r['model']} | {r['decoder']} | {r['policy'] or '-'} | {r['budget']} | {r['steps']:.2f} "
            f"| {_pm(r['accuracy'], r['accuracy_se'])} | {_pm(r['agreement'], r['agreement_se'])} | {r['residues']} |"
        )
    lines += [
        "",
        "| task | model | trained at | against | difference (paired over genes) | z |",
        "|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        z = f"{c['z']:.1f}" if c["z"] is not None else "-"
        lines.append(
            f"| {c['task']} | {c['model']} | {c['budget']} | {c['against']} "
            f"| {_pm(c['difference'], c['se'], '+.4f')} | {z} |"
        )
    lines.append(f"\n{summary['genes']} held-out genes; {summary['command']}; {summary['date']}")
    return "\n".join(lines)


def plot_evaluation(records: list[dict], path: Path) -> None:
    """One panel per task (rows) and model (columns): accuracy (+-1 standard error) against budget for x-flow
    default, x-flow trained and low_confidence (each line shifted a little sideways so that equal values stay
    visible); low_confidence at the full budget as a dashed line."""
    plt = pyplot()
    tasks = sorted({r["task"] for r in records})
    models = sorted({r["model"] for r in records})
    fig, axes = plt.subplots(len(tasks), len(models), figsize=(6 * len(models), 4.2 * len(tasks)), squeeze=False)
    lines = (("xflow", "default"), ("xflow", "trained"), ("low_confidence", None))
    for row, task in zip(axes, tasks):
        for ax, model in zip(row, models):
            rows = [r for r in records if (r["task"], r["model"]) == (task, model)]
            for n, (decoder, policy) in enumerate(lines):
                line = sorted(
                    (r for r in rows if (r["decoder"], r["policy"]) == (decoder, policy)),
                    key=lambda r: Fraction(r["budget"]),
                )
                if not line:
                    continue
                x = [float(Fraction(r["budget"])) * 2 ** (0.04 * (n - 1)) for r in line]
                ax.errorbar(
                    x,
                    [r["accuracy"] for r in line],
                    yerr=[r["accuracy_se"] or 0.0 for r in line],
                    marker="o",
                    capsize=3,
                    color=f"C{n}",
                    label=f"{decoder}{' ' + policy + ' policy' if policy else ''}",
                )
                if decoder == "low_confidence" and line[-1]["budget"] == "1":
                    ax.axhline(line[-1]["accuracy"], linestyle="--", color="gray", label="low_confidence, full budget")
            budgets = sorted({Fraction(r["budget"]) for r in rows})
            ax.set_xscale("log", base=2)
            ax.set_xticks([float(b) for b in budgets], [str(b) for b in budgets])
            ax.set_xlabel("budget (steps / masked residues)")
            ax.set_title(f"{task}, {model} model ({rows[0]['genes']} genes, {rows[0]['residues']} residues)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("AntiBERTy, held-out human genes: the trained step policy beside the default and low_confidence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# ship: the trained policy as a named example
# ---------------------------------------------------------------------------------------------------------------


def run_ship(args, out: Path) -> None:
    grpo_file, evaluate_file = out / "grpo" / "grpo.json", out / "evaluate" / "evaluate.json"
    for path in (grpo_file, evaluate_file):
        if not path.is_file():
            raise SystemExit(f"antibody_policy: ship needs {path}: run the grpo and evaluate stages first")
    grpo, evaluation = json.loads(grpo_file.read_text()), json.loads(evaluate_file.read_text())
    policy = StepPolicy.load(evaluation["policy_file"])
    folder = Path(args.ship_dir) if args.ship_dir else CHECKOUT / "mdfast" / "data" / "policies"
    folder.mkdir(parents=True, exist_ok=True)
    name = args.ship_name or f"antiberty-{grpo['task']}"
    policy.save(folder / f"{name}.safetensors")
    accuracy = {}
    for r in evaluation["records"]:
        label = f"{r['decoder']}" + (f" {r['policy']} policy" if r["policy"] else "")
        accuracy.setdefault(f"{r['task']}, {r['model']} model", {}).setdefault(label, {})[r["budget"]] = [
            round(r["accuracy"], 4),
            None if r["accuracy_se"] is None else round(r["accuracy_se"], 4),
        ]
    card = {
        "name": name,
        "description": "x-flow step policy (SPEC 2.4) trained with GRPO (SPEC 6.2) on AntiBERTy infilling "
        f"{TASK_WORDS[grpo['task']]} of non-human antibody V genes (SPEC 7's training side)",
        "model": grpo["model"],
        "task": grpo["task"],
        "budget": grpo["budget"],
        "usage": f'mdfast.StepPolicy.example("{name}") (x-flow on AntiBERTy, {grpo["grpo_model"]} model)',
        "policy": policy.constants(),
        "training": {
            "genes": grpo["data"]["training_genes"],
            "species": grpo["data"]["species"],
            "steps": grpo["steps_done"],
            "config": {k: v for k, v in grpo["config"].items() if k not in ("backend", "disable_tqdm")},
            "reward": grpo["reward"],
            "seconds_per_step": grpo["seconds"]["per_step"],
            "threads": grpo["torch_threads"],
        },
        "command": grpo["command"],
        "date": grpo["date"],
        "mdfast_commit": grpo["mdfast_commit"],
        "evaluation": {"command": evaluation["command"], "date": evaluation["date"], "genes": evaluation["genes"]},
        "accuracy_format": "held-out human genes: {budget: [accuracy, standard error over genes]}",
        "accuracy": accuracy,
        "comparisons": evaluation["comparisons"],
    }
    write_json(folder / f"{name}.json", card)
    size = (folder / f"{name}.safetensors").stat().st_size
    print(f"[ship] {folder / name}.safetensors ({size} bytes) and .json", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------


def _num(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _pm(value, se, spec: str = ".4f") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}} ± {se:.4f}" if se is not None else f"{value:{spec}}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stages", default="align,grpo,evaluate", help=f"comma-separated among {','.join(STAGES)}")
    p.add_argument("--out", required=True, help="the run's folder: align/, grpo/, evaluate/")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="span places, masks, policy init, GRPO draws")
    p.add_argument("--backend", default="auto", help="mdfast backend of the decoding steps")
    p.add_argument("--batch-size", type=int, default=32, help="rows per infill call (antibody, answering)")
    p.add_argument("--budget", default="1/4", help="the training budget: GRPO's, and align's decoding check")
    p.add_argument(
        "--task",
        choices=["suffix", "span"],
        default="suffix",
        help="SPEC 7 task the align and grpo stages train and check on (default suffix: the task with a budget "
        "effect; the span task is saturated, bench/QUALITY.md)",
    )
    p.add_argument("--eval-genes", type=int, default=32, help="held-out subset of align's check and GRPO's curve")
    p.add_argument("--aligned", default=None, help="an aligned model folder (default: OUT/align/model)")
    a = p.add_argument_group("align")
    a.add_argument("--align-genes", type=int, default=256, help="training genes answered as alignment data")
    a.add_argument("--align-val-genes", type=int, default=64, help="other training genes: the SPEC 6.1 logs")
    a.add_argument("--align-steps", type=int, default=100, help="SPEC 6.1's 100 (the paper's full fine-tune)")
    a.add_argument("--align-lr", type=float, default=1e-5)
    a.add_argument("--align-batch-size", type=int, default=4)
    g = p.add_argument_group("grpo")
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
    e = p.add_argument_group("evaluate")
    e.add_argument("--policy", default=None, help="the trained policy (default: OUT/grpo/policy.safetensors)")
    e.add_argument("--genes", type=int, default=None, help="held-out genes, evenly spaced (default: all 317)")
    e.add_argument("--budgets", default="1/8,1/4,1/2,1")
    e.add_argument("--tasks", default="span", help="span, suffix or span,suffix")
    s = p.add_argument_group("ship")
    s.add_argument("--ship-name", default=None, help="default: antiberty-<task of the grpo stage>")
    s.add_argument("--ship-dir", default=None, help="default: mdfast/data/policies of this checkout")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise SystemExit(f"antibody_policy: --stages: expected names among {','.join(STAGES)}, got {args.stages!r}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"[antibody_policy] mdfast {mdfast.__version__}, {torch.get_num_threads()} thread(s), out {out}",
        file=sys.stderr,
    )
    runners = {"align": run_align, "grpo": run_grpo, "evaluate": run_evaluate, "ship": run_ship}
    for stage in STAGES:
        if stage in stages:
            tick = time.perf_counter()
            runners[stage](args, out)
            print(f"[antibody_policy] {stage} done in {time.perf_counter() - tick:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
