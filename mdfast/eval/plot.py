"""The infilling benchmarks' figures: metrics against budget, one line per decoder.

``plot_budget_curves`` draws; ``plot_antibody`` and ``plot_code`` pick the panels.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class Panel:
    """One panel: the record field ``key`` against the budget.

    error: a standard-error field drawn as +-1 bars, where given. title: formatted with the first record of the
    panel's row (``{genes}``, ...).
    """

    key: str
    title: str
    error: str | None = None


ANTIBODY_PANELS = (
    Panel("accuracy", "{task}: accuracy ({genes} genes, {residues} residues)", "accuracy_se"),
    Panel("nfe", "{task}: NFE per gene"),
    Panel("tokens_per_s", "{task}: masked residues per second"),
)
CODE_PANELS = (
    Panel("exact_match", "exact match of the span ({cases} cases)", "exact_match_se"),
    Panel("accuracy", "token accuracy ({tokens} span tokens)", "accuracy_se"),
    Panel("parses", "filled files that parse", "parses_se"),
    Panel("agreement", "agreement with the one-token-per-step decode", "agreement_se"),
    Panel("nfe", "NFE per case"),
    Panel("tokens_per_s", "span tokens per second"),
)


def plot_antibody(records: list[dict], path) -> None:
    """``mdfast.eval.antibody``'s records as a PNG: one row of three panels per task.

    The panels: accuracy (with +-1 standard error bars over genes), NFE and tokens/s, each against the budget on
    a log2 axis.
    """
    plot_budget_curves(
        records,
        path,
        ANTIBODY_PANELS,
        row_key="task",
        title=f"mdfast eval antibody: {records[0]['model']}" if records else "",
        xlabel="budget (steps / masked residues)",
    )


def plot_code(records: list[dict], path) -> None:
    """``mdfast.eval.code``'s records as a PNG: six panels in two rows.

    The panels: exact match, token accuracy, parse share and agreement (+-1 standard error over cases), NFE and
    tokens/s, each against the budget on a log2 axis.
    """
    plot_budget_curves(
        records,
        path,
        CODE_PANELS,
        title=f"mdfast eval code: {records[0]['model']}" if records else "",
        xlabel="budget (steps / span tokens)",
    )


def plot_budget_curves(
    records: list[dict], path, panels, *, row_key: str | None = None, title: str, xlabel: str, columns: int = 3
) -> None:
    """Metrics against budget, a line per decoder, written to ``path`` as a PNG.

    Per value of ``row_key`` in ``records`` (or once, for None), the ``panels`` in rows of ``columns``: each a
    line per decoder of the panel's field against the budget (log2 axis).
    """
    try:
        import matplotlib  # optional extra: eval
    except ImportError:
        raise ImportError("the plot needs matplotlib: pip install 'mdfast[eval]'") from None
    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt  # optional extra: eval; after matplotlib.use

    if not records:
        raise ValueError("records: expected at least one record")
    groups = list(dict.fromkeys(r[row_key] for r in records)) if row_key else [None]
    decoders = list(dict.fromkeys(r["decoder"] for r in records))
    budgets = sorted({Fraction(r["budget"]) for r in records})
    per_group = -(-len(panels) // columns)
    fig, axes = plt.subplots(
        len(groups) * per_group, columns, figsize=(5 * columns, 4.2 * len(groups) * per_group), squeeze=False
    )
    for g, group in enumerate(groups):
        mine = [r for r in records if row_key is None or r[row_key] == group]
        cells = [ax for row in axes[g * per_group : (g + 1) * per_group] for ax in row]
        for ax in cells[len(panels) :]:
            ax.set_visible(False)
        for decoder in decoders:
            rs = sorted((r for r in mine if r["decoder"] == decoder), key=_budget)
            if not rs:
                continue
            x = [float(_budget(r)) for r in rs]
            for ax, panel in zip(cells, panels):
                y = [r[panel.key] for r in rs]
                if panel.error is None:
                    ax.plot(x, y, marker="o", label=decoder)
                else:
                    errors = [r[panel.error] or 0.0 for r in rs]
                    ax.errorbar(x, y, yerr=errors, marker="o", capsize=3, label=decoder)
        for ax, panel in zip(cells, panels):
            ax.set_xscale("log", base=2)
            ax.set_xticks([float(b) for b in budgets], [str(b) for b in budgets])
            ax.set_xlabel(xlabel)
            ax.set_title(panel.title.format(**mine[0]))
            ax.grid(alpha=0.3)
        cells[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _budget(record: dict) -> Fraction:
    return Fraction(record["budget"])
