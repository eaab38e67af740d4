"""The code model's budget curve (SPEC 7): infill a span of a held-out function at budgets 1/8 .. 1.

The cases are ``mdfast.code_model.cases.code_infill_cases``: a span of 32-128 tokens (whole lines of a function
body) of a held-out standard-library file, masked, with the rest of the file around it as context in the model's
window. Every decoder fills the span with ``mdfast.infill`` at every budget, the [MASK] id suppressed, through
the grid the infilling benchmarks share (``budget_grid.py``).

Metrics per (decoder, budget), each with its standard error over cases (``metrics.pooled_fraction``):
- ``exact_match``: the share of cases whose whole span equals the file's;
- ``accuracy``: span tokens equal to the file's, pooled over cases;
- ``parses``: the share of cases whose filled file (``InfillCase.filled_source``) ``ast.parse`` accepts; a span
  still holding a [MASK] counts as not parsing, and ``masked_spans`` counts those spans apart (0 whenever [MASK]
  is suppressed, as here: a check);
- ``agreement``: span tokens equal to the same model's full-budget, one-token-per-step low_confidence decode;
- ``nfe`` and ``steps`` (means per case), ``seconds`` and ``tokens_per_s`` (span tokens per wall second of the
  ``infill`` calls).
A decoded special token ([PAD], [EOS]) counts as a wrong token and is written into the file as its text.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from fractions import Fraction
from pathlib import Path

import torch

from mdfast.code_model import data as code_data
from mdfast.code_model.cases import InfillCase, code_infill_cases
from mdfast.code_model.shipped import SHIPPED_MODEL_DIR
from mdfast.models.llada import load_llada

from .budget_grid import DEFAULT_BUDGETS, REFERENCE_DECODER, Decoded, InfillItem, check_grid, decode_grid
from .metrics import finite_or_none, pooled_fraction

__all__ = ["case_scores", "code", "summarize_cases"]


def code(
    model=None,
    *,
    decoders=None,
    budgets=DEFAULT_BUDGETS,
    cases=None,
    seed: int = 0,
    policy=None,
    backend: str = "auto",
    batch_size: int = 16,
    progress: bool = False,
    tokenizer=None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    done: dict | None = None,
    on_cell=None,
    cache: str | None = None,
    cache_refresh: int | None = None,
) -> list[dict]:
    """Run the code budget curve; one plain record (JSON-ready dict) per (decoder, budget).

    - model: None (the shipped code model, ``mdfast.code_model.shipped.SHIPPED_MODEL_DIR``), a LLaDA checkpoint
      folder (loaded in ``dtype`` onto ``device``, with its ``tokenizer.json``) or a model module, used where it
      is (with ``tokenizer``, default the shipped code tokenizer).
    - decoders: names of ``mdfast.decode.DECODERS`` (default: all). budgets: fractions of the span length.
    - cases: None (the default ``code_infill_cases``, 256), an int n (n cases) or a list of ``InfillCase``;
      windows of the model's ``max_sequence_length``, placed with ``seed``.
    - policy: the x-flow ``StepPolicy`` (None: the default heuristic). progress: a bar on stderr with an ETA.
    - done, on_cell: a resumed run's decoded cells, and a callback per new one (``budget_grid.decode_grid``).
    - cache, cache_refresh: SPEC 8's KV cache for every ``infill`` call, the reference decode's too ("dual" or
      "prefix", and k; None: no cache); the model must be a native LLaDA (a checkpoint folder is loaded as one).

    Record keys: decoder, budget ("1/4"), budget_value, model, seed, batch_size, cache, cache_refresh, cases, tokens
    (span tokens in all), exact_match, exact_match_se, accuracy, accuracy_se, parses, parses_se, masked_spans,
    agreement, agreement_se, nfe, steps, seconds, tokens_per_s, and per_case (path, function, span, correct, exact,
    parses, masked, agree, nfe per case).
    """
    decoders, budgets = check_grid(decoders, budgets, batch_size)
    model, tokenizer, model_name = _resolve_model(model, tokenizer, device, dtype)
    mask_id = tokenizer.mask_token_id
    cases = _resolve_cases(cases, model, tokenizer, seed)
    items = [InfillItem(tuple(c.input_ids.tolist()), tuple(range(*c.span))) for c in cases]
    results = decode_grid(
        model,
        items,
        decoders=decoders,
        budgets=budgets,
        pad_id=tokenizer.pad_token_id,
        mask_id=mask_id,
        batch_size=batch_size,
        backend=backend,
        policy=policy,
        suppress_tokens=[mask_id],
        progress=progress,
        description="mdfast eval code",
        done=done,
        on_cell=on_cell,
        cache=cache,
        cache_refresh=cache_refresh,
    )
    reference = results[REFERENCE_DECODER, Fraction(1)]
    parsed: dict[tuple[int, tuple[int, ...]], bool] = {}  # (case, fill) -> parses: decoders often agree
    common = {"model": model_name, "seed": seed, "batch_size": batch_size}
    common |= {"cache": cache, "cache_refresh": cache_refresh}
    records = []
    for d in decoders:
        for b in budgets:
            decoded = results[d, b]
            per_case = case_scores(cases, decoded, reference, tokenizer, parsed)
            fields = {**common, "decoder": d, "budget": str(b), "budget_value": float(b)}
            span_tokens = sum(c["span"] for c in per_case)
            records.append({**fields, **summarize_cases(per_case), **decoded.timing(span_tokens), "per_case": per_case})
    return records


def _resolve_cases(cases, model, tokenizer, seed: int) -> list[InfillCase]:
    if cases is None or isinstance(cases, int):
        if cases is not None and cases < 1:
            raise ValueError(f"cases: expected a positive number of cases, got {cases}")
        seq_len = getattr(model.config, "max_sequence_length", None)
        if seq_len is None:
            raise ValueError("model: its config has no max_sequence_length to size the windows; pass cases")
        options = {} if cases is None else {"n_cases": cases}
        with _quiet_parse():
            cases = code_infill_cases(tokenizer, seq_len=seq_len, seed=seed, **options)
    cases = list(cases)
    if not cases or not all(isinstance(c, InfillCase) for c in cases):
        raise ValueError("cases: expected at least one InfillCase (mdfast.code_model.cases)")
    return cases


def _resolve_model(model, tokenizer, device, dtype):
    if model is None:
        if not (SHIPPED_MODEL_DIR / "config.json").is_file():
            raise ValueError(f"model: no code model is shipped yet ({SHIPPED_MODEL_DIR}); pass a checkpoint folder")
        model = SHIPPED_MODEL_DIR
    if isinstance(model, (str, os.PathLike)):
        model_name = str(model)
        if not os.path.isfile(os.path.join(model_name, "config.json")):
            raise ValueError(
                f"model: {model_name!r} is not a checkpoint folder (no config.json; the hub is never reached)"
            )
        tokenizer = code_data.load_tokenizer(model_name) if tokenizer is None else tokenizer
        model = load_llada(model_name, dtype=dtype, device=device)
        if Path(model_name).resolve() == SHIPPED_MODEL_DIR:
            model_name = "the shipped code model (mdfast/data/code_model)"
    elif isinstance(model, torch.nn.Module):
        model_name = type(model).__name__
        tokenizer = code_data.load_tokenizer() if tokenizer is None else tokenizer
    else:
        raise TypeError(f"model: expected None, a checkpoint folder or a torch.nn.Module, got {type(model).__name__}")
    if tokenizer.mask_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("tokenizer: expected a mask token and a pad token (the code tokenizer has both)")
    return model, tokenizer, model_name


@contextlib.contextmanager
def _quiet_parse():
    """No warnings from ``ast.parse``: some standard-library files hold invalid escapes, which warn at each parse."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def case_scores(cases, decoded: Decoded, reference: Decoded, tokenizer, parsed: dict | None = None) -> list[dict]:
    """Per case: path, function, span, correct, exact, masked, parses, agree and nfe.

    span: its length. correct: tokens equal to the file's. masked: the span still holds a [MASK]. parses: the
    filled file parses and nothing is left masked. agree: tokens equal to the reference decode's.
    parsed: caches parse results by (case index, fill) across calls.
    """
    parsed = {} if parsed is None else parsed
    scores = []
    for i, (case, tokens, ref, nfe) in enumerate(zip(cases, decoded.tokens, reference.tokens, decoded.nfe)):
        target = case.target_ids.tolist()
        correct = sum(a == b for a, b in zip(tokens, target))
        masked = tokenizer.mask_token_id in tokens
        if not masked and (i, tokens) not in parsed:
            with _quiet_parse():
                parsed[i, tokens] = case.filled_parses(tokens, tokenizer)
        scores.append(
            {
                "path": case.path,
                "function": case.function,
                "span": len(target),
                "correct": correct,
                "exact": correct == len(target),
                "masked": masked,
                "parses": not masked and parsed[i, tokens],
                "agree": sum(a == b for a, b in zip(tokens, ref)),
                "nfe": nfe,
            }
        )
    return scores


def summarize_cases(per_case: list[dict]) -> dict:
    """The record's metrics from ``case_scores``' rows (module docstring), standard errors None for one case."""
    spans, ones = [c["span"] for c in per_case], [1] * len(per_case)
    summary = {"cases": len(per_case), "tokens": sum(spans)}
    for name, hits, counts in (
        ("exact_match", [int(c["exact"]) for c in per_case], ones),
        ("accuracy", [c["correct"] for c in per_case], spans),
        ("parses", [int(c["parses"]) for c in per_case], ones),
        ("agreement", [c["agree"] for c in per_case], spans),
    ):
        value, se = pooled_fraction(hits, counts)
        summary[name], summary[f"{name}_se"] = value, finite_or_none(se)
    summary["masked_spans"] = sum(c["masked"] for c in per_case)
    return summary
