"""The real-weights antibody benchmark (SPEC 7): infill masked residues of held-out human V genes with AntiBERTy.

SPEC 7: "Tasks: "suffix" masks the last 30 residues of a gene; "span" masks one interior span of 12-20 residues
at a seeded random place; the chain's end ([SEP]) is always given. Score: fraction of masked residues equal to
the gene's. Metrics, besides accuracy: agreement with the same model's full-budget, one-token-per-step
low_confidence decode of the same input (how far a budget moves a decoder from sequential decoding), and NFE."

Every input is ``[CLS] residues [SEP]`` with the masked residues replaced by [MASK], decoded by
``mdfast.infill`` through the grid the infilling benchmarks share (``budget_grid.py``: steps
``max(1, ceil(b * n_masked))`` at budget b, genes batched by step count and left-padded with [PAD], the reference
decode, warm-up and timing). Choices the SPEC leaves open, made here:
- suffix (30 masks) at budgets 1/8, 1/4, 1/2, 1 takes 4, 8, 15, 30 steps;
- the span: length ~ U{12..20}, then its first residue uniform over the places that leave at least one residue
  before it and one after it; drawn by ``random.Random`` seeded with "seed/chain/species/name", so a gene's span
  does not depend on which other genes are evaluated;
- accuracy and agreement pool residues over genes, with standard errors over genes (``metrics.py``; None for a
  single gene); NFE is the mean over genes of the forwards of the call that decoded the gene; tokens/s is
  masked residues over the wall seconds of the ``infill`` calls;
- a predicted special token ([CLS], [SEP], [PAD], [UNK], [MASK]) counts as wrong.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch
from transformers import BertForMaskedLM
from transformers.utils import logging as hf_logging

from mdfast.loading import load_model, load_tokenizer

from .budget_grid import (
    DEFAULT_BUDGETS,
    REFERENCE_DECODER,
    Decoded,
    check_grid,
    decode_grid,
)
from .genes import RESIDUES, Gene, held_out_genes
from .metrics import finite_or_none, pooled_fraction

TASKS = ("suffix", "span")
SUFFIX_LENGTH = 30
SPAN_LENGTHS = (12, 20)  # inclusive
ANTIBERTY_EXTRA_HEADS = ("bert.pooler.", "cls.chain.", "cls.species.", "cls.graft.")


@dataclass(frozen=True)
class Vocabulary:
    """The token ids the benchmark writes: special tokens and one id per residue letter."""

    pad: int
    cls: int
    sep: int
    mask: int
    residues: dict[str, int]

    @classmethod
    def from_tokens(cls, tokens: list[str]) -> Vocabulary:
        """From a vocabulary list (token i has id i) holding [PAD], [CLS], [SEP], [MASK] and the 20 residues."""
        ids = {token: i for i, token in enumerate(tokens)}
        needed = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", *RESIDUES]
        missing = [token for token in needed if token not in ids]
        if missing:
            raise ValueError(f"vocabulary: expected the tokens {needed}, missing {missing}")
        return cls(ids["[PAD]"], ids["[CLS]"], ids["[SEP]"], ids["[MASK]"], {r: ids[r] for r in RESIDUES})

    @classmethod
    def from_tokenizer(cls, tokenizer) -> Vocabulary:
        """From a Hugging Face tokenizer whose vocabulary holds the 20 one-letter residues."""
        vocab = tokenizer.get_vocab()
        residues = {r: vocab[r] for r in RESIDUES if r in vocab}
        special = {"pad": tokenizer.pad_token_id, "cls": tokenizer.cls_token_id, "sep": tokenizer.sep_token_id}
        special["mask"] = tokenizer.mask_token_id
        missing = [name for name, i in special.items() if i is None] + sorted(set(RESIDUES) - set(residues))
        if missing:
            raise ValueError(
                f"tokenizer: expected pad, cls, sep and mask tokens and the 20 residues, missing {missing}"
            )
        return cls(**special, residues=residues)

    def encode(self, sequence: str) -> list[int]:
        """[CLS] residues [SEP]."""
        return [self.cls, *(self.residues[r] for r in sequence), self.sep]


@dataclass(frozen=True)
class MaskedGene:
    """One benchmark input: a gene's ``input_ids`` with some residues masked, their positions and true ids.

    input_ids: [CLS] residues [SEP], the masked ones as [MASK]. positions: the masked token positions, ascending.
    target: the gene's token ids there.
    """

    gene: Gene
    input_ids: tuple[int, ...]
    positions: tuple[int, ...]
    target: tuple[int, ...]


def antiberty_path() -> Path:
    """The AntiBERTy checkpoint folder inside the installed ``antiberty`` package (SPEC 4)."""
    try:
        import antiberty  # optional extra: eval
    except ImportError as error:
        raise ImportError(
            f"the antibody benchmark's default model needs pip install antiberty==0.1.3 ({error})"
        ) from None
    return Path(os.path.dirname(antiberty.__file__)) / "trained_models" / "AntiBERTy_md_smooth"


def antiberty_vocabulary() -> Vocabulary:
    """AntiBERTy's 25 tokens, read from ``trained_models/vocab.txt`` beside the checkpoint (SPEC 7)."""
    return Vocabulary.from_tokens((antiberty_path().parent / "vocab.txt").read_text().split())


def load_antiberty(device: str | torch.device = "cpu") -> torch.nn.Module:
    """AntiBERTy as a ``BertForMaskedLM`` in eval mode, from the package's files (the hub is never reached).

    The checkpoint's extra heads (``cls.chain``, ``cls.species``, ``cls.graft``, the pooler) are not part of a
    masked LM: transformers' report of them as unexpected keys is silenced, and any other unexpected or missing
    key raises ValueError.
    """
    path = antiberty_path()
    with _quiet_transformers():
        model, info = BertForMaskedLM.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
    unexpected = sorted(k for k in info["unexpected_keys"] if not k.startswith(ANTIBERTY_EXTRA_HEADS))
    if info["missing_keys"] or unexpected or info.get("mismatched_keys"):
        raise ValueError(
            f"{path}: expected AntiBERTy's masked-LM weights plus {ANTIBERTY_EXTRA_HEADS}, got missing "
            f"{sorted(info['missing_keys'])}, unexpected {unexpected}, mismatched {info.get('mismatched_keys')}"
        )
    return model.to(device).eval()


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logging at error level and its progress bars off, restored afterwards."""
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def mask_gene(gene: Gene, task: str, vocab: Vocabulary, seed: int = 0) -> MaskedGene:
    """The input of ``task`` ("suffix" or "span", module docstring) for one gene."""
    n = len(gene.sequence)
    if task == "suffix":
        if n <= SUFFIX_LENGTH:
            raise ValueError(f"gene {gene.name}: {n} residues, the suffix task needs more than {SUFFIX_LENGTH}")
        start, length = n - SUFFIX_LENGTH, SUFFIX_LENGTH
    elif task == "span":
        if n < SPAN_LENGTHS[1] + 2:
            raise ValueError(f"gene {gene.name}: {n} residues, the span task needs at least {SPAN_LENGTHS[1] + 2}")
        rng = random.Random(f"{seed}/{gene.chain}/{gene.species}/{gene.name}")
        length = rng.randint(*SPAN_LENGTHS)
        start = rng.randint(1, n - length - 1)
    else:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    ids = vocab.encode(gene.sequence)
    positions = tuple(range(1 + start, 1 + start + length))  # token 0 is [CLS]
    target = tuple(ids[p] for p in positions)
    for p in positions:
        ids[p] = vocab.mask
    return MaskedGene(gene, tuple(ids), positions, target)


def antibody(
    model=None,
    *,
    decoders=None,
    budgets=DEFAULT_BUDGETS,
    task: str = "suffix",
    genes=None,
    seed: int = 0,
    policy=None,
    backend: str = "auto",
    batch_size: int = 32,
    progress: bool = False,
    tokenizer=None,
    device: str | torch.device = "cpu",
    reference: bool = True,
    done: dict | None = None,
    on_cell=None,
    cache: str | None = None,
    cache_refresh: int | None = None,
) -> list[dict]:
    """Run the antibody benchmark; one plain record (JSON-ready dict) per (decoder, budget).

    model: None (AntiBERTy from the ``antiberty`` package), a local model folder (loaded with its tokenizer,
    never from the hub; both loaded onto ``device``) or a masked-LM module, used where it is (with
    ``tokenizer``: a tokenizer or ``Vocabulary``; without, AntiBERTy's vocabulary).
    decoders: names of ``mdfast.decode.DECODERS`` (default: all of them). budgets: fractions of the masked
    count (``parse_budget``). task: "suffix" or "span". genes: None (every held-out gene), an int n (n evenly
    spaced held-out genes) or a list of ``Gene``. policy: the x-flow ``StepPolicy`` (None: the default
    heuristic); other decoders take none. progress: a bar on stderr with an ETA. reference: False skips the
    full-budget low_confidence decode that agreement is measured against (agreement, agreement_se and each
    gene's agree are then None): a training loop's evaluation every N steps needs the accuracy only.
    done, on_cell: a resumed run's decoded cells, and a callback per new one (``budget_grid.decode_grid``).
    cache, cache_refresh: SPEC 8's KV cache for every call (None: none); only a native LLaDA body keeps one, so
    AntiBERTy (a BERT) refuses any cache (``mdfast.infill``'s ValueError naming ``cache``).

    Record keys: task, decoder, budget ("1/4"), budget_value, model, seed, batch_size, cache, cache_refresh, genes,
    residues, accuracy, accuracy_se, agreement, agreement_se, nfe (mean per gene), steps (mean per gene), seconds,
    tokens_per_s, and per_gene (name, species, chain, masked, correct, agree, nfe per gene).
    """
    decoders, budgets = check_grid(decoders, budgets, batch_size)
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}")
    model, vocab, model_name = _resolve_model(model, tokenizer, device)
    if genes is None or isinstance(genes, int):
        genes = held_out_genes(genes)
    masked = [mask_gene(gene, task, vocab, seed) for gene in genes]
    if not masked:
        raise ValueError("genes: expected at least one gene")

    results = decode_grid(
        model,
        masked,
        decoders=decoders,
        budgets=budgets,
        pad_id=vocab.pad,
        mask_id=vocab.mask,
        batch_size=batch_size,
        backend=backend,
        policy=policy,
        progress=progress,
        description=f"mdfast eval antibody ({task})",
        reference=reference,
        done=done,
        on_cell=on_cell,
        cache=cache,
        cache_refresh=cache_refresh,
    )
    ref = results[REFERENCE_DECODER, Fraction(1)] if reference else None
    common = {"task": task, "model": model_name, "seed": seed, "batch_size": batch_size}
    common |= {"cache": cache, "cache_refresh": cache_refresh}
    return [
        _record(masked, results[d, b], ref, {**common, "decoder": d, "budget": str(b), "budget_value": float(b)})
        for d in decoders
        for b in budgets
    ]


def _resolve_model(model, tokenizer, device) -> tuple[torch.nn.Module, Vocabulary, str]:
    if model is None:
        return load_antiberty(device), antiberty_vocabulary(), "AntiBERTy (antiberty 0.1.3)"
    if isinstance(model, (str, os.PathLike)):
        with _quiet_transformers():
            module = load_model(model, device=device, dtype=torch.float32)
            if tokenizer is None:
                tokenizer = load_tokenizer(model)
        model_name, model = str(model), module
    elif isinstance(model, torch.nn.Module):
        model_name = type(model).__name__
    else:
        raise TypeError(f"model: expected None, a model folder or a torch.nn.Module, got {type(model).__name__}")
    if tokenizer is None:
        vocab = antiberty_vocabulary()
    elif isinstance(tokenizer, Vocabulary):
        vocab = tokenizer
    else:
        vocab = Vocabulary.from_tokenizer(tokenizer)
    return model, vocab, model_name


def _record(masked: list[MaskedGene], decoded: Decoded, reference: Decoded | None, fields: dict) -> dict:
    per_gene = []
    references = reference.tokens if reference is not None else [None] * len(masked)
    for m, tokens, ref, nfe in zip(masked, decoded.tokens, references, decoded.nfe):
        per_gene.append(
            {
                "name": m.gene.name,
                "species": m.gene.species,
                "chain": m.gene.chain,
                "masked": len(m.positions),
                "correct": sum(a == b for a, b in zip(tokens, m.target)),
                "agree": None if ref is None else sum(a == b for a, b in zip(tokens, ref)),
                "nfe": nfe,
            }
        )
    counts = [g["masked"] for g in per_gene]
    accuracy, accuracy_se = pooled_fraction([g["correct"] for g in per_gene], counts)
    agreement, agreement_se = math.nan, math.nan
    if reference is not None:
        agreement, agreement_se = pooled_fraction([g["agree"] for g in per_gene], counts)
    residues = sum(counts)
    return {
        **fields,
        "genes": len(per_gene),
        "residues": residues,
        "accuracy": accuracy,
        "accuracy_se": finite_or_none(accuracy_se),
        "agreement": finite_or_none(agreement),
        "agreement_se": finite_or_none(agreement_se),
        **decoded.timing(residues),
        "per_gene": per_gene,
    }
