"""Infilling cases of the code model: a masked span of 32-128 tokens inside a function body of a held-out file.

- ``code_infill_cases(tokenizer)``: a deterministic list of ``InfillCase``. Every function of every held-out file
  that parses and has at least ``seq_len`` tokens is a candidate; its span is whole lines of its body (after the
  docstring), drawn by a generator seeded from (seed, path, qualified name, line); the cases are a seeded sample
  of the candidates, in file order. The window is the ``seq_len`` tokens of the file centred on the span (inside
  the file: no padding, as in training). The tokens are the whole file's, encoded at once (the training
  encoding); the span starts and ends on token boundaries, so ``InfillCase.filled_source`` can put any decoded
  fill in its place.
- GRPO on the cases: ``training_record`` turns a case into a JSONL example of ``mdfast train grpo`` (written by
  ``mdfast data code-cases``); ``filled_file_parses`` and ``span_token_accuracy`` are its task rewards, with
  TRL's reward signature (the trainer adds lambda t_final).
"""

from __future__ import annotations

import ast
import hashlib
import random
from dataclasses import dataclass

import torch
from torch import Tensor

from . import data as code_data

__all__ = [
    "InfillCase",
    "code_infill_cases",
    "filled_file_parses",
    "parses",
    "span_token_accuracy",
    "training_record",
]


def parses(source: str) -> bool:
    """Whether ``ast.parse`` accepts ``source``."""
    try:
        ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


@dataclass(frozen=True, eq=False)
class InfillCase:
    """One infilling case: a window of a file's tokens with [MASK] over a span of a function body.

    - path: the held-out file (relative to the standard library); function: the qualified name of the function
      whose body holds the span.
    - input_ids (seq_len,) int64: the window, [MASK] over the span; span: (start, stop) positions of the span in
      input_ids; target_ids (stop - start,) int64: its true tokens.
    - source: the whole file; span_chars: (start, stop) characters of the span in source.
    """

    path: str
    function: str
    input_ids: Tensor
    span: tuple[int, int]
    target_ids: Tensor
    source: str
    span_chars: tuple[int, int]

    def filled_source(self, span_ids, tokenizer) -> str:
        """The file with the span's characters replaced by the decoded ``span_ids``.

        Special tokens decode as their text, so an unfilled [MASK] or a stray [EOS] shows.
        """
        ids = span_ids.tolist() if isinstance(span_ids, Tensor) else list(span_ids)
        start, stop = self.span_chars
        return self.source[:start] + tokenizer.decode(ids, skip_special_tokens=False) + self.source[stop:]

    def filled_parses(self, span_ids, tokenizer) -> bool:
        """Whether the filled file (``filled_source``) parses."""
        return parses(self.filled_source(span_ids, tokenizer))


def _functions(tree: ast.AST) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function, nested ones included, in source order."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    found.append((name, child))
                    visit(child, name + ".<locals>.")
                else:
                    visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def _body_lines(node: ast.FunctionDef | ast.AsyncFunctionDef, text_lines: list[str]) -> tuple[int, int] | None:
    """First and last line (1-based) of the body after a leading docstring, or None.

    None: nothing is left, or the body does not start a line of its own (``def f(): return 1``).
    """
    body = node.body
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        body = body[1:]
    if not body or text_lines[body[0].lineno - 1][: body[0].col_offset].strip():
        return None
    return body[0].lineno, max(stmt.end_lineno or stmt.lineno for stmt in body)


def _choose_span(
    lines: list[tuple[int, int] | None], first: int, last: int, span_tokens: tuple[int, int], rng: random.Random
) -> tuple[int, int] | None:
    """Token span [ta, tb) over whole lines first..last (0-based) with a length in span_tokens, or None.

    ``lines[i]`` is (first token, last token + 1) of line i's non-blank text, None for a blank line. Start lines
    are tried in a random order; for the first that admits a span, the end line is drawn among those that do.
    """
    low, high = span_tokens
    starts = [i for i in range(first, last + 1) if lines[i] is not None]
    rng.shuffle(starts)
    for a in starts:
        ends = []
        for b in range(a, last + 1):
            if lines[b] is None:
                continue
            n = lines[b][1] - lines[a][0]
            if n > high:
                break
            if n >= low:
                ends.append(b)
        if ends:
            return lines[a][0], lines[rng.choice(ends)][1]
    return None


def _line_tokens(source: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int] | None]:
    """Per line of ``source``: the token range of its non-blank text, None for a blank line.

    The range: (index of the token holding its first non-blank character, index after the token holding its last).
    """
    token_at = {}
    for index, (start, stop) in enumerate(offsets):
        for char in range(start, stop):
            token_at.setdefault(char, index)
    result, pos = [], 0
    for line in source.split("\n"):
        stripped = line.strip()
        if stripped:
            first = pos + len(line) - len(line.lstrip())
            last = pos + len(line.rstrip()) - 1
            result.append((token_at[first], token_at[last] + 1))
        else:
            result.append(None)
        pos += len(line) + 1
    return result


def code_infill_cases(
    tokenizer,
    *,
    n_cases: int = 256,
    seq_len: int = 256,
    span_tokens: tuple[int, int] = (32, 128),
    seed: int = 0,
    files: dict[str, str] | None = None,
) -> list[InfillCase]:
    """The infilling cases (module docstring): at most ``n_cases`` (all candidates if fewer).

    - tokenizer: the code tokenizer (``data.load_tokenizer``, or ``AutoTokenizer`` on a model folder).
    - seq_len: the window; span_tokens: (min, max) tokens of the masked span inside a function body.
    - files: path -> source (default: the held-out split of the running interpreter's standard library).
    """
    low, high = span_tokens
    if not 1 <= low <= high <= seq_len:
        raise ValueError(f"span_tokens: expected 1 <= min <= max <= seq_len {seq_len}, got {span_tokens}")
    if files is None:
        files = code_data.split_files(code_data.source_files())[1]
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError("tokenizer: has no mask token")
    candidates = []
    for path in sorted(files):
        source = files[path]
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        encoded = tokenizer(source, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if len(ids) < seq_len:
            continue
        lines, text_lines = _line_tokens(source, offsets), source.split("\n")
        for name, node in _functions(tree):
            body = _body_lines(node, text_lines)
            if body is None:
                continue
            key = hashlib.sha256(f"{seed}:{path}:{name}:{node.lineno}".encode()).digest()
            span = _choose_span(lines, body[0] - 1, body[1] - 1, span_tokens, random.Random(key))
            if span is not None:
                candidates.append((path, name, span, ids, offsets))
    chosen = sorted(random.Random(seed).sample(range(len(candidates)), min(n_cases, len(candidates))))
    cases = []
    for index in chosen:
        path, name, (ta, tb), ids, offsets = candidates[index]
        n = tb - ta
        w0 = min(max(ta - (seq_len - n) // 2, 0), len(ids) - seq_len)
        window = torch.tensor(ids[w0 : w0 + seq_len], dtype=torch.long)
        span = (ta - w0, tb - w0)
        target = window[span[0] : span[1]].clone()
        window[span[0] : span[1]] = mask_id
        span_chars = (offsets[ta][0], offsets[tb - 1][1])
        cases.append(InfillCase(path, name, window, span, target, files[path], span_chars))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# GRPO on the cases: the training examples and the two task rewards (TRL's reward signature)
# ---------------------------------------------------------------------------------------------------------------


def training_record(case: InfillCase) -> dict:
    """The case as a JSONL example of ``mdfast train grpo`` (and ``mdfast train align``).

    "input_ids": the window, [MASK] over the span; reward columns "target" (the span's true ids), "source" (the
    whole file) and "span_chars" (the span's characters in it); "path" and "function": where it comes from.
    """
    return {
        "input_ids": case.input_ids.tolist(),
        "target": case.target_ids.tolist(),
        "source": case.source,
        "span_chars": list(case.span_chars),
        "path": case.path,
        "function": case.function,
    }


def filled_file_parses(prompts, completions, completion_ids, source, span_chars, **columns) -> list[float]:
    """Task reward: 1.0 when ``source`` with its ``span_chars`` replaced by the completion's text parses, else 0.0.

    ``completions`` must be text: the trainer decodes them with its processing_class (special tokens skipped;
    ``mdfast eval code`` writes them into the file instead).
    """
    rewards = []
    for text, file, (start, stop) in zip(completions, source, span_chars):
        if not isinstance(text, str):
            raise TypeError("completions: expected decoded text; give the trainer the tokenizer (processing_class)")
        rewards.append(float(parses(file[:start] + text + file[stop:])))
    return rewards


def span_token_accuracy(prompts, completions, completion_ids, target, **columns) -> list[float]:
    """Task reward: the share of the span's tokens (``completion_ids``, in position order) equal to ``target``."""
    rewards = []
    for ids, truth in zip(completion_ids, target):
        if len(ids) != len(truth):
            raise ValueError(f"target: {len(truth)} span tokens for a completion of {len(ids)}")
        rewards.append(sum(int(a) == int(b) for a, b in zip(ids, truth)) / len(truth))
    return rewards
