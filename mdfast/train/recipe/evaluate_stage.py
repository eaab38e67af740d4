"""The evaluate stage: {default, trained} policy x {base, aligned} model beside low_confidence, held-out genes.

Budget 1 is the full, one-token-per-step budget; residues are scored and standard errors taken over genes, per
task (``--tasks``). Writes OUT/evaluate/: ``evaluate.json``, ``evaluate.jsonl`` (one record a line),
``evaluate.md`` (the table) and ``evaluate.png``.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction
from pathlib import Path

from mdfast import StepPolicy
from mdfast.atomic import atomic_write_text
from mdfast.eval import antibody, held_out_genes, load_antiberty, parse_budget, pooled_fraction

from .common import (
    Progress,
    RecipeError,
    aligned_folder,
    finite,
    load_aligned,
    meta,
    plus_minus,
    pyplot,
    say,
    write_json,
    write_jsonl,
)


def evaluated_models(args, out: Path) -> dict:
    """The base model, and the aligned one where its folder exists (name -> model)."""
    models = {"base": load_antiberty()}
    path = aligned_folder(args, out)
    if (path / "config.json").is_file():
        models["aligned"] = load_aligned(path)
    else:
        say("evaluate", f"no aligned model in {path}: the base model only")
    return models


def evaluation_records(models: dict, trained: StepPolicy, args) -> tuple[list[dict], int]:
    """Every record of the stage: per task and model, x-flow default and low_confidence, then x-flow trained."""
    genes = held_out_genes(args.genes)
    budgets = sorted({parse_budget(b) for b in args.budgets.split(",")})
    common = {"genes": genes, "budgets": budgets, "seed": args.seed, "backend": args.backend}
    common.update(batch_size=args.batch_size, progress=True)
    tasks = args.tasks.split(",")
    # the first call of each pair also decodes the full-budget reference: about twice the work of the second
    progress = Progress("evaluate", 2 * len(tasks) * len(models), [2.0, 1.0] * len(tasks) * len(models))
    records = []
    for task in tasks:
        for model_name, model in models.items():
            say("evaluate", f"{task}, {model_name} model, {len(genes)} genes")
            for r in antibody(model, decoders=["xflow", "low_confidence"], task=task, **common):
                records.append({**r, "model": model_name, "policy": "default" if r["decoder"] == "xflow" else None})
            progress.step(f"{task}, {model_name} model, default policy and low_confidence")
            for r in antibody(model, decoders=["xflow"], task=task, policy=trained, reference=False, **common):
                records.append({**r, "model": model_name, "policy": "trained"})
            progress.step(f"{task}, {model_name} model, trained policy")
    return records, len(genes)


def run_evaluate(args, out: Path) -> None:
    """The evaluate stage (module docstring)."""
    stage = out / "evaluate"
    started = time.perf_counter()
    policy_file = Path(args.policy) if args.policy else out / "grpo" / "policy.safetensors"
    if not policy_file.is_file():
        raise RecipeError(f"no trained policy at {policy_file}: run --stages grpo, or pass --policy")
    stage.mkdir(parents=True, exist_ok=True)
    trained = StepPolicy.load(policy_file)
    models = evaluated_models(args, out)
    records, genes = evaluation_records(models, trained, args)
    comparisons = compare(records)
    aligned_path = aligned_folder(args, out)
    summary = {
        **meta(args),
        "stage": "evaluate",
        "policy_file": str(policy_file),
        "models": {name: ("AntiBERTy (antiberty 0.1.3)" if name == "base" else str(aligned_path)) for name in models},
        "genes": genes,
        "comparisons": comparisons,
        "seconds": time.perf_counter() - started,
        "records": records,
    }
    write_json(stage / "evaluate.json", summary)
    write_jsonl(stage / "evaluate.jsonl", records)
    table = format_evaluation(records, comparisons, summary)
    atomic_write_text(stage / "evaluate.md", table + "\n")
    plot_evaluation(records, stage / "evaluate.png")
    print(table)


def compare(records: list[dict]) -> list[dict]:
    """The trained policy at each budget minus the default policy there and low_confidence at the full budget.

    Per task and model, with the standard error of the paired difference over genes (``pooled_fraction`` of the
    per-gene differences of correct residues).
    """
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
                if other is not None:
                    out.append(paired_difference(r, other, label))
    return out


def paired_difference(r: dict, other: dict, label: str) -> dict:
    """Record ``r``'s accuracy minus ``other``'s, paired over genes, with its standard error and z."""
    counts = [g["masked"] for g in r["per_gene"]]
    hits = [a["correct"] - b["correct"] for a, b in zip(r["per_gene"], other["per_gene"])]
    difference, se = pooled_fraction(hits, counts)
    return {
        "task": r["task"],
        "model": r["model"],
        "budget": r["budget"],
        "against": label,
        "difference": difference,
        "se": finite(se),
        "z": finite(difference / se) if se and math.isfinite(se) and se > 0 else None,
    }


def format_evaluation(records: list[dict], comparisons: list[dict], summary: dict) -> str:
    """The records and the comparisons as two markdown tables, then the command and the date."""
    lines = [
        "| task | model | decoder | policy | budget | steps/gene | accuracy | agreement | residues |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"default": 0, "trained": 1, None: 2}
    for r in sorted(records, key=lambda r: (r["task"], r["model"], order[r["policy"]], Fraction(r["budget"]))):
        accuracy, agreement = plus_minus(r["accuracy"], r["accuracy_se"]), plus_minus(r["agreement"], r["agreement_se"])
        lines.append(
            f"| {r['task']} | {r['model']} | {r['decoder']} | {r['policy'] or '-'} | {r['budget']} | {r['steps']:.2f} "
            f"| {accuracy} | {agreement} | {r['residues']} |"
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
            f"| {plus_minus(c['difference'], c['se'], '+.4f')} | {z} |"
        )
    lines.append(f"\n{summary['genes']} held-out genes; {summary['command']}; {summary['date']}")
    return "\n".join(lines)


PLOTTED = (("xflow", "default"), ("xflow", "trained"), ("low_confidence", None))


def plot_panel(ax, rows: list[dict], title: str) -> None:
    """One task and model: accuracy (+-1 standard error) against budget for each line of PLOTTED.

    Each line is shifted a little sideways so that equal values stay visible; low_confidence at the full budget
    is also drawn as a dashed line.
    """
    for n, (decoder, policy) in enumerate(PLOTTED):
        line = sorted(
            (r for r in rows if (r["decoder"], r["policy"]) == (decoder, policy)), key=lambda r: Fraction(r["budget"])
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
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_evaluation(records: list[dict], path: Path) -> None:
    """One panel (``plot_panel``) per task (rows) and model (columns)."""
    plt = pyplot()
    tasks = sorted({r["task"] for r in records})
    models = sorted({r["model"] for r in records})
    fig, axes = plt.subplots(len(tasks), len(models), figsize=(6 * len(models), 4.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for ax, model in zip(row, models):
            rows = [r for r in records if (r["task"], r["model"]) == (task, model)]
            title = f"{task}, {model} model ({rows[0]['genes']} genes, {rows[0]['residues']} residues)"
            plot_panel(ax, rows, title)
    fig.suptitle("AntiBERTy, held-out human genes: the trained step policy beside the default and low_confidence")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
