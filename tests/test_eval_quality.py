"""Decoding quality on real weights, in CI (SPEC 7): AntiBERTy infills held-out human antibody genes on CPU.

A fixed held-out subset (four human V genes, heavy, kappa and lambda, named below), the "span" task (one interior
span of 12-20 residues masked; the chain's end given), x-flow (default policy) and low_confidence at budgets 1/4
and 1. The floors are the values measured on 2026-11-28 (2-core CPU, torch 2.13, transformers 5.24, ANARCI
2026.2.13.2) minus a margin of 0.05 (3.5 of the 70 masked residues), room for a few argmax flips from another BLAS
or torch, not for a decoder that lost its way. Measured (accuracy, agreement with the full-budget one-token-per-step
low_confidence decode): xflow 1/4 (0.986, 1.0), xflow 1 (0.986, 1.0), low_confidence 1/4 (0.986, 1.0),
low_confidence 1 (0.986, 1.0).

AntiBERTy has all but memorised germline genes, so accuracy is near 1 at every budget: this test guards decoders on
real weights; it cannot show a budget effect (SPEC 7).
"""

from __future__ import annotations

import pytest
import torch

import mdfast

pytest.importorskip("antiberty", reason="antiberty==0.1.3 cannot be installed here (pip install 'mdfast[eval]')")
pytest.importorskip("anarci", reason="anarci cannot be installed here (pip install 'mdfast[eval]')")

from mdfast.eval import antibody_benchmark as bench
from mdfast.eval import budget_grid as grid
from mdfast.eval.genes import held_out_genes

GENE_NAMES = ("IGHV1-18*01", "IGHV3-49*02", "IGKV1D-8*01", "IGLV2-14*03")
TASK = "span"
MARGIN = 0.05
MEASURED = {  # (decoder, budget): (accuracy, agreement)
    ("xflow", "1/4"): (69 / 70, 1.0),
    ("xflow", "1"): (69 / 70, 1.0),
    ("low_confidence", "1/4"): (69 / 70, 1.0),
    ("low_confidence", "1"): (69 / 70, 1.0),
}


@pytest.fixture(scope="module")
def antiberty():
    return bench.load_antiberty()


@pytest.fixture(scope="module")
def genes():
    chosen = [g for g in held_out_genes() if g.name in GENE_NAMES]
    assert [g.name for g in chosen] == list(GENE_NAMES), "ANARCI's germline table changed: re-measure the floors"
    return chosen


@pytest.fixture(scope="module")
def records(antiberty, genes):
    return bench.antibody(antiberty, decoders=["xflow", "low_confidence"], budgets=["1/4", "1"], task=TASK, genes=genes)


@pytest.mark.slow
def test_accuracy_and_agreement_floors(records):
    assert {(r["decoder"], r["budget"]) for r in records} == set(MEASURED)
    for r in records:
        accuracy, agreement = MEASURED[r["decoder"], r["budget"]]
        where = f"{r['decoder']} at budget {r['budget']}"
        assert r["residues"] == 70 and r["genes"] == 4
        assert r["accuracy"] >= accuracy - MARGIN, f"{where}: accuracy {r['accuracy']:.3f}, floor {accuracy - MARGIN}"
        assert r["agreement"] >= agreement - MARGIN, (
            f"{where}: agreement {r['agreement']:.3f}, floor {agreement - MARGIN}"
        )
        steps = [grid.budget_steps(grid.parse_budget(r["budget"]), g["masked"]) for g in r["per_gene"]]
        assert r["nfe"] == r["steps"] == sum(steps) / len(steps)


@pytest.mark.slow
def test_xflow_state_is_finite_and_its_tokens_committed(antiberty, genes, records):
    """One x-flow decode of the same inputs at budget 1/4 with its history: X and t finite at every step, t in
    [0, 1], a hard commit (t = 1) at every step unless every t >= 0.99 already (SPEC 2.7), every masked position
    filled with a residue, every given position kept, and the tokens those the benchmark scored."""
    vocab = bench.antiberty_vocabulary()
    masked = [bench.mask_gene(g, TASK, vocab) for g in genes]
    steps = {grid.budget_steps(grid.parse_budget("1/4"), len(m.positions)) for m in masked}
    assert len(steps) == 1  # one call, as the benchmark batches them
    length = max(len(m.input_ids) for m in masked)
    input_ids = torch.full((len(masked), length), vocab.pad)
    attention_mask = torch.zeros_like(input_ids)
    for row, m in enumerate(masked):
        input_ids[row, length - len(m.input_ids) :] = torch.tensor(m.input_ids)
        attention_mask[row, length - len(m.input_ids) :] = 1
    out = mdfast.infill(
        antiberty, input_ids, attention_mask, steps=steps.pop(), decoder="xflow", return_history=True, mask_token_id=4
    )
    scored = next(r for r in records if (r["decoder"], r["budget"]) == ("xflow", "1/4"))
    residues = set(vocab.residues.values())
    for row, m in enumerate(masked):
        n, offset = len(m.positions), length - len(m.input_ids)
        for state in out.history:
            X, t = state["X"][row, :n], state["t"][row, :n]
            assert torch.isfinite(X).all() and torch.isfinite(t).all()
            assert ((t >= 0) & (t <= 1)).all()
            assert (t == 1).any() or (t >= 0.99).all()
        decoded = out.sequences[row, offset:].tolist()
        assert out.history[-1]["tokens"][row, :n].tolist() == [decoded[p] for p in m.positions]
        assert all(decoded[p] in residues for p in m.positions)
        assert [d for p, d in enumerate(decoded) if p not in m.positions] == [
            i for p, i in enumerate(m.input_ids) if p not in m.positions
        ]
        correct = sum(decoded[p] == target for p, target in zip(m.positions, m.target))
        assert correct == scored["per_gene"][row]["correct"]
