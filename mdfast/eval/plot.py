"""The antibody benchmark's figure: accuracy against budget, one line per decoder; NFE and tokens/s beside it."""

from __future__ import annotations

from fractions import Fraction


def plot_antibody(records: list[dict], path) -> None:
    """One row of three panels per task in ``records`` (``mdfast.eval.antibody``'s): accuracy (with +-1 standard
    error bars over genes), NFE and tokens/s, each against the budget on a log2 axis; written as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the plot needs matplotlib: pip install 'mdfast[eval]'") from None
    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt

    if not records:
        raise ValueError("records: expected at least one record")
    tasks = list(dict.fromkeys(r["task"] for r in records))
    decoders = list(dict.fromkeys(r["decoder"] for r in records))
    budgets = sorted({Fraction(r["budget"]) for r in records})
    fig, axes = plt.subplots(len(tasks), 3, figsize=(15, 4.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks):
        for decoder in decoders:
            rs = sorted((r for r in records if r["task"] == task and r["decoder"] == decoder), key=_budget)
            if not rs:
                continue
            x = [float(_budget(r)) for r in rs]
            errors = [r["accuracy_se"] or 0.0 for r in rs]
            row[0].errorbar(x, [r["accuracy"] for r in rs], yerr=errors, marker="o", capsize=3, label=decoder)
            row[1].plot(x, [r["nfe"] for r in rs], marker="o", label=decoder)
            row[2].plot(x, [r["tokens_per_s"] for r in rs], marker="o", label=decoder)
        sample = next(r for r in records if r["task"] == task)
        titles = (
            f"{task}: accuracy ({sample['genes']} genes, {sample['residues']} residues)",
            f"{task}: NFE per gene",
            f"{task}: masked residues per second",
        )
        for ax, title in zip(row, titles):
            ax.set_xscale("log", base=2)
            ax.set_xticks([float(b) for b in budgets], [str(b) for b in budgets])
            ax.set_xlabel("budget (steps / masked residues)")
            ax.set_title(title)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.suptitle(f"mdfast eval antibody: {records[0]['model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _budget(record: dict) -> Fraction:
    return Fraction(record["budget"])
