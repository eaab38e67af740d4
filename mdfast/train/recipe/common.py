"""What the stages of the antibody-policy recipe share: genes, tasks, the reward, files, metadata, progress."""

from __future__ import annotations

import datetime
import json
import math
import platform
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import torch
import transformers
from transformers import BertForMaskedLM

import mdfast
from mdfast.atomic import atomic_write, atomic_write_text
from mdfast.eval import antiberty_vocabulary, budget_steps, held_out_genes, load_genes, mask_gene, split_genes
from mdfast.train.grpo import PolicyGRPOConfig

STAGES = ("align", "grpo", "evaluate", "ship")
TASK_WORDS = {"span": "one interior span of 12-20 residues", "suffix": "the last 30 residues"}
ALIGN_LOGS = ("mse_masked", "mse_unmasked", "ce_masked", "base_ce_masked", "identity_acc")


class RecipeError(Exception):
    """A stage cannot run (a missing input, a run already there): the message says what to pass."""


def training_genes() -> list:
    """The training side of SPEC 7's split (non-human species, no sequence shared with a human gene)."""
    return split_genes(load_genes()).train


def eval_subset(args) -> list:
    """The fixed held-out subset of the align and grpo stages: ``--eval-genes`` human genes, evenly spaced."""
    return held_out_genes(args.eval_genes)


def task_templates(genes, task: str, seed: int) -> list:
    """SPEC 7's ``task`` on ``genes``: ``mask_gene`` for each ("span" or "suffix")."""
    vocab = antiberty_vocabulary()
    return [mask_gene(gene, task, vocab, seed) for gene in genes]


def span_accuracy(prompts, completions, completion_ids, target, **columns) -> list[float]:
    """The task reward (TRL's signature): the fraction of the infilled span's residues equal to the gene's.

    target: the dataset column, the gene's token ids at the masked positions, in position order.
    """
    return [
        sum(int(a) == int(b) for a, b in zip(ids, truth)) / len(truth) for ids, truth in zip(completion_ids, target)
    ]


def trainer_budget(budget: Fraction, counts) -> float:
    """The float ``PolicyGRPOConfig.budget`` whose step count equals the benchmark's for every masked count.

    The trainer takes round(budget x N) steps, the benchmark ``budget_steps`` = ceil(budget x N): for the span
    task at 1/4 they differ at N = 13, 17, 18. A budget b gives the benchmark's s steps at N when b N lies in
    [s - 1/2, s + 1/2); the middle of the intersection over every N present is taken, and checked through the
    trainer's own ``steps_for``.
    """
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
    """``value`` as indented JSON (no NaN), written atomically."""
    atomic_write_text(path, json.dumps(value, indent=1, allow_nan=False) + "\n")


def write_jsonl(path: Path, rows) -> None:
    """One JSON object a line, written atomically."""
    with atomic_write(path) as f:
        f.writelines(json.dumps(row, allow_nan=False) + "\n" for row in rows)


def read_json(path: Path, stage: str, needs: str) -> dict:
    """The JSON a previous stage wrote, or RecipeError naming the stage that writes it."""
    if not path.is_file():
        raise RecipeError(f"{stage} needs {path}: run the {needs} stage(s) first (--stages {needs},{stage})")
    return json.loads(path.read_text())


def finite(value):
    """JSON has no NaN: None instead."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def checkout_commit() -> str | None:
    """The short commit of the checkout mdfast runs from, or None (an installed copy, no git)."""
    root = Path(mdfast.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return None
    return done.stdout.strip() or None


def meta(args) -> dict:
    """What a result needs to be reproduced: the command, the date, the versions, the threads.

    The command is ``args.command`` (the CLI sets it: relative paths as given, absolute ones as placeholders).
    """
    return {
        "command": getattr(args, "command", None) or "mdfast train recipe antibody-policy",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "mdfast_commit": checkout_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "backend": args.backend,
        "seed": args.seed,
    }


def aligned_folder(args, out: Path) -> Path:
    """The aligned model folder: ``--aligned``, else OUT/align/model."""
    return Path(args.aligned) if args.aligned else out / "align" / "model"


def load_aligned(path: Path):
    """The aligned model folder the align stage wrote, as a BertForMaskedLM in eval mode (local files only)."""
    if not (path / "config.json").is_file():
        raise RecipeError(f"no aligned model in {path}: run --stages align first, or pass --aligned")
    return BertForMaskedLM.from_pretrained(str(path), local_files_only=True).eval()


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only)."""
    import matplotlib  # optional extra: eval

    matplotlib.use("Agg", force=False)
    from matplotlib import pyplot as plt  # optional extra: eval

    return plt


def say(stage: str, message: str) -> None:
    """One progress line on stderr: ``[stage] message``."""
    print(f"[{stage}] {message}", file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    """``seconds`` as 1h02m, 3m05s or 12s."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """Progress of a stage over ``total`` units of work, with the elapsed time and an estimate of the rest.

    stage: the name in brackets. total: the units (decodes, chunks of steps). weights: optional cost of each
    unit, in order (the estimate of the rest is then by weight, not by count).
    """

    def __init__(self, stage: str, total: int, weights: list[float] | None = None) -> None:
        self.stage = stage
        self.total = total
        self.weights = weights or [1.0] * total
        self.done = 0
        self.started = time.perf_counter()

    def step(self, what: str, n: int = 1) -> None:
        """``n`` more units are done (``what`` just finished): print done/total, elapsed and the ETA."""
        self.done = min(self.total, self.done + n)
        elapsed = time.perf_counter() - self.started
        finished = sum(self.weights[: self.done])
        remaining = elapsed * (sum(self.weights) - finished) / finished if finished else math.nan
        eta = clock(remaining) if math.isfinite(remaining) else "?"
        say(self.stage, f"{self.done}/{self.total} {what}: {clock(elapsed)} elapsed, about {eta} left")


def number(value) -> str:
    """A table cell: 4 significant digits, or - for None."""
    return "-" if value is None else f"{value:.4g}"


def plus_minus(value, se, spec: str = ".4f") -> str:
    """A table cell: value ± standard error (or the value alone, or -)."""
    if value is None:
        return "-"
    return f"{value:{spec}} ± {se:.4f}" if se is not None else f"{value:{spec}}"
