"""The align stage: SPEC 6.1's x-pred alignment of AntiBERTy on training genes, checked before and after.

Writes OUT/align/: ``model`` (the aligned model and a tokenizer: ``mdfast eval antibody --model`` reads it),
``align.json`` (the summary), ``align_log.jsonl`` (the trainer's log per step) and ``align.png``.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from pathlib import Path

import torch
from transformers import BertTokenizer

from mdfast.eval import antiberty_path, antiberty_vocabulary, antibody, load_antiberty, parse_budget, subset
from mdfast.train.align import (
    AlignmentCollator,
    XPredAlignmentTrainer,
    alignment_training_arguments,
    infilled_answers,
    masked_cross_entropy,
    sample_alignment_mask,
    xpred_alignment_loss,
)

from .common import (
    ALIGN_LOGS,
    eval_subset,
    finite,
    meta,
    number,
    plus_minus,
    pyplot,
    say,
    task_templates,
    training_genes,
    write_json,
    write_jsonl,
)


def alignment_logs(model, base, records, mask_id: int, pad_id: int, seed: int, batch_size: int = 16) -> dict:
    """The SPEC 6.1 logs of ``model`` on ``records``, masks drawn once from ``seed`` (the same before and after).

    mse_masked, mse_unmasked, ce_masked and identity_acc pooled over the positions of each set; base_ce_masked
    of the frozen ``base`` on the same batches; and the loss.
    """
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
        progress=True,
    )
    return {
        r["decoder"]: {k: r[k] for k in ("budget", "accuracy", "accuracy_se", "residues", "genes")} for r in records
    }


def alignment_data(args) -> tuple[list, list]:
    """The training genes answered as alignment data and the other training genes of the validation logs."""
    train = training_genes()
    validation = subset(train, args.align_val_genes)
    kept = set(validation)
    rest = [g for g in train if g not in kept]
    return subset(rest, min(args.align_genes, len(rest))), validation


def answered(model, genes, args) -> list[dict]:
    """The model's own full-budget answers (low_confidence, one token per step) on ``--task`` of ``genes``."""
    vocab = antiberty_vocabulary()
    prompts = [list(m.input_ids) for m in task_templates(genes, args.task, args.seed)]
    options = {"mask_token_id": vocab.mask, "pad_token_id": vocab.pad, "batch_size": args.batch_size}
    return infilled_answers(model, prompts, backend=args.backend, **options)


def align_trainer(model, records, args, stage: Path) -> XPredAlignmentTrainer:
    """The x-pred alignment trainer of SPEC 6.1 (full fine-tune, frozen base copy), with its progress bar."""
    vocab = antiberty_vocabulary()
    training_args = alignment_training_arguments(
        str(stage / "trainer"),
        max_steps=args.align_steps,
        learning_rate=args.align_lr,
        warmup_steps=min(10, args.align_steps // 10),
        per_device_train_batch_size=args.align_batch_size,
        seed=args.seed,
        use_cpu=True,
        disable_tqdm=False,
        logging_steps=1,
    )
    model.train()
    return XPredAlignmentTrainer(
        model,
        training_args,
        records,
        mask_token_id=vocab.mask,
        base_model=True,
        data_collator=AlignmentCollator(vocab.pad),
    )


def run_align(args, out: Path) -> None:
    """The align stage (module docstring)."""
    stage = out / "align"
    stage.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vocab = antiberty_vocabulary()
    model = load_antiberty()
    data_genes, validation = alignment_data(args)
    held_out = eval_subset(args)
    budget = parse_budget(args.budget)

    say("align", f"answering {len(data_genes)} + {len(validation)} training genes at full budget")
    tick = time.perf_counter()
    records, val_records = answered(model, data_genes, args), answered(model, validation, args)
    answer_seconds = time.perf_counter() - tick

    say("align", "SPEC 6.1 logs and decoding before")
    before = alignment_logs(model, model, val_records, vocab.mask, vocab.pad, args.seed)
    decoding_before = decoding_check(model, held_out, budget, args)

    trainer = align_trainer(model, records, args, stage)
    say("align", f"{args.align_steps} steps, batch {args.align_batch_size}, lr {args.align_lr}")
    tick = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - tick
    aligned = trainer.model.eval()

    say("align", "SPEC 6.1 logs and decoding after")
    after = alignment_logs(aligned, trainer.base_model, val_records, vocab.mask, vocab.pad, args.seed)
    decoding_after = decoding_check(aligned, held_out, budget, args)

    aligned.save_pretrained(str(stage / "model"))
    BertTokenizer(str(antiberty_path().parent / "vocab.txt"), do_lower_case=False).save_pretrained(str(stage / "model"))
    history = trainer.state.log_history
    write_jsonl(stage / "align_log.jsonl", [{k: finite(v) for k, v in entry.items()} for entry in history])
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
        "training": training_summary(trainer.args, args),
        "logs_before": before,
        "logs_after": after,
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
    steps = [entry for entry in history if "loss" in entry and "step" in entry]
    plot_alignment(steps, before, after, stage / "align.png", args.task)
    print(format_alignment(summary))


def training_summary(training_args, args) -> dict:
    """The alignment's hyperparameters as the summary records them."""
    return {
        "max_steps": args.align_steps,
        "learning_rate": args.align_lr,
        "batch_size": args.align_batch_size,
        "warmup_steps": training_args.warmup_steps,
        "schedule": training_args.lr_scheduler_type,
    }


def format_alignment(summary: dict) -> str:
    """The logs and the decoding check, before and after, as a markdown table."""
    lines = ["| log | before | after |", "|---|---|---|"]
    for name in ("loss", *ALIGN_LOGS):
        before, after = summary["logs_before"][name], summary["logs_after"][name]
        lines.append(f"| {name} | {number(before)} | {number(after)} |")
    for decoder in summary["decoding_before"]:
        b, a = summary["decoding_before"][decoder], summary["decoding_after"][decoder]
        lines.append(
            f"| accuracy, {decoder} at {b['budget']} ({b['genes']} held-out genes) "
            f"| {plus_minus(b['accuracy'], b['accuracy_se'])} | {plus_minus(a['accuracy'], a['accuracy_se'])} |"
        )
    return "\n".join(lines)


def plot_alignment(steps: list[dict], before: dict, after: dict, path: Path, task: str) -> None:
    """The training log per step, with the fixed validation set's values before and after as markers.

    Panels: loss and the MSEs; ce_masked beside base_ce_masked; identity_acc. Before is drawn at step 0,
    after at the last step.
    """
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
