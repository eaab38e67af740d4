"""The antibody benchmark's harness (mdfast/eval/genes.py, antibody_benchmark.py, metrics.py, plot.py, its command).

``mdfast.infill`` is replaced by a fake here (its real decoding is tested in test_infill.py, and on the real
weights in test_eval_quality.py): the fake fills each row from the row's own gene by a rule that depends on the
decoder and the step count, so every number the harness reports can be recomputed from that rule.
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch

import mdfast
import mdfast.cli
from mdfast.eval import antibody_benchmark as bench
from mdfast.eval import budget_grid as grid
from mdfast.eval.genes import Gene, genes_from_table, split_genes, subset
from mdfast.eval.metrics import pooled_fraction

VOCAB = bench.Vocabulary.from_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"ACDEFGHIKLMNPQRSTVWY"])
SEQUENCES = [
    "QVQLVQSGAEVKKPGASVKVSCKASGYTFTSYGISWVRQAPGQGLEWMGWISAYNGNTNYAQKLQGRVTMTTDTSTSTAYMELRSLRSDDTAVYYCAR",
    "EVQLVESGGGLVQPGGSLRLSCAASGFTFSSYAMSWVRQAPGKGLEWVSAISGSGGSTYYADSVKGRFTISRDNSKNTLYLQMNSLRAEDTAVYYCAK",
    "DIQMTQSPSSLSASVGDRVTITCRASQSISSYLNWYQQKPGKAPKLLIYAASSLQSGVPSRFSGSGSGTDFTLTISSLQPEDFATYYCQQSYSTP",
    "QSALTQPASVSGSPGQSITISCTGTSSDVGGYNYVSWYQQHPGKAPKLMIYEVSNRPSGVSNRFSGSKSGNTASLTISGLQAEDEADYYCSSYTSSS",
    "EIVLTQSPGTLSLSPGERATLSCRASQSVSSSYLAWYQQKPGQAPRLLIYGASSRATGIPDRFSGSGSGTDFTLTISRLEPEDFAVYYCQQYGSSP",
    "QVQLQESGPGLVKPSETLSLTCTVSGGSISSYYWSWIRQPPGKGLEWIGYIYYSGSTNYNPSLKSRVTISVDTSKNQFSLKLSSVTAADTAVYYCAR",
    "DIVMTQSPLSLPVTPGEPASISCRSSQSLLHSNGYNYLDWYLQKPGQSPQLLIYLGSNRASGVPDRFSGSGSGTDFTLKISRVEAEDVGVYYCMQALQTP",
]
GENES = [Gene(f"IGXV{i}*01", "human", "HKL"[i % 3], s) for i, s in enumerate(SEQUENCES)]


def fake_token(masked: bench.MaskedGene, decoder: str, steps: int, j: int) -> int:
    """What the fake infill writes at a gene's j-th masked position: the reference decode (low_confidence, one
    token per step) is right except at every 4th residue; other runs are right at j where (j + steps +
    len(decoder)) % 3 == 0, and write "W" elsewhere."""
    truth = masked.target[j]
    if decoder == grid.REFERENCE_DECODER and steps == len(masked.positions):
        return VOCAB.residues["W"] if j % 4 == 1 else truth
    return truth if (j + steps + len(decoder)) % 3 == 0 else VOCAB.residues["W"]


class FakeInfill:
    """Stands in for ``mdfast.infill``: checks its inputs, records the calls, fills rows by ``fake_token``."""

    def __init__(self, masked_genes):
        self.by_input = {m.input_ids: m for m in masked_genes}
        self.calls = []

    def __call__(self, model, input_ids, attention_mask=None, *, steps, decoder="xflow", mask_token_id=None, **kw):
        assert input_ids.dtype == torch.long and attention_mask.shape == input_ids.shape
        assert mask_token_id == VOCAB.mask and kw["backend"] == "auto"
        assert ("policy" in kw) == (decoder == "xflow" and kw.get("policy") is not None)
        out = input_ids.clone()
        rows = []
        for row in range(input_ids.shape[0]):
            keep = attention_mask[row].bool()
            assert not keep[: int((~keep).sum())].any(), "padding goes on the left"
            assert (input_ids[row][~keep] == VOCAB.pad).all()
            masked = self.by_input[tuple(input_ids[row][keep].tolist())]
            offset = int((~keep).sum())
            for j, p in enumerate(masked.positions):
                assert input_ids[row, offset + p] == VOCAB.mask
                out[row, offset + p] = fake_token(masked, decoder, steps, j)
            rows.append(masked)
        self.calls.append((decoder, steps, rows))
        return SimpleNamespace(sequences=out, nfe=steps)


def expected(masked_genes, decoder, budget):
    """(accuracy, agreement, per-gene steps) recomputed from ``fake_token``."""
    correct = agree = total = 0
    steps = []
    for m in masked_genes:
        n = len(m.positions)
        s = max(1, math.ceil(budget * n))
        steps.append(s)
        for j in range(n):
            token = fake_token(m, decoder, s, j)
            correct += token == m.target[j]
            agree += token == fake_token(m, grid.REFERENCE_DECODER, n, j)
            total += 1
    return correct / total, agree / total, steps


def run_fake(monkeypatch, task, decoders, budgets, batch_size=3, genes=GENES, policy=None, reference=True):
    masked = [bench.mask_gene(g, task, VOCAB, seed=0) for g in genes]
    fake = FakeInfill(masked)
    monkeypatch.setattr(mdfast, "infill", fake, raising=False)
    model = torch.nn.Linear(1, 1)  # only its device is read: the fake never calls it
    records = bench.antibody(
        model,
        tokenizer=VOCAB,
        decoders=decoders,
        budgets=budgets,
        task=task,
        genes=genes,
        batch_size=batch_size,
        policy=policy,
        reference=reference,
    )
    return records, fake, masked


# -- genes and split -----------------------------------------------------------------------------------------


def test_genes_from_table_drops_gaps_and_refuses_unknown_residues():
    table = {"H": {"mouse": {"b": "QV-Q", "a": "EV--Q"}}, "K": {"human": {"k": "DI-Q"}}, "A": {"human": {"x": "AA"}}}
    genes = genes_from_table(table)
    assert [(g.chain, g.species, g.name, g.sequence) for g in genes] == [
        ("H", "mouse", "a", "EVQ"),
        ("H", "mouse", "b", "QVQ"),
        ("K", "human", "k", "DIQ"),
    ]
    with pytest.raises(ValueError, match="X"):
        genes_from_table({"H": {"human": {"bad": "QVX"}}})


def test_split_holds_out_human_and_never_shares_a_sequence():
    genes = [
        Gene("h1", "human", "H", "AAAA"),
        Gene("h2", "human", "H", "AAAA"),  # same sequence as h1: scored once
        Gene("h3", "human", "K", "CCCC"),
        Gene("m1", "mouse", "H", "AAAA"),  # a human sequence: not trained on
        Gene("m2", "mouse", "H", "DDDD"),
        Gene("r1", "rat", "L", "DDDD"),  # duplicate within train
    ]
    split = split_genes(genes)
    assert [g.name for g in split.held_out] == ["h1", "h3"]
    assert [g.name for g in split.train] == ["m2"]


def test_subset_is_evenly_spaced_and_checked():
    genes = [Gene(str(i), "human", "H", "A") for i in range(10)]
    assert [g.name for g in subset(genes, 4)] == ["0", "2", "5", "7"]
    assert subset(genes, 10) == genes
    for bad in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match="genes"):
            subset(genes, bad)


def test_real_germline_split():
    pytest.importorskip("anarci", reason="the eval extra's anarci is not installed (pip install 'mdfast[eval]')")
    from mdfast.eval.genes import load_genes

    split = split_genes(load_genes())
    held, train = split.held_out, split.train
    assert {g.species for g in held} == {"human"} and "human" not in {g.species for g in train}
    assert {g.chain for g in held} == {"H", "K", "L"}
    assert not {g.sequence for g in held} & {g.sequence for g in train}
    assert len({g.sequence for g in held}) == len(held) > 250 and len(train) > 1000
    assert all(set(g.sequence) <= set(bench.RESIDUES) and len(g.sequence) > 80 for g in held + train)


# -- tasks and budgets ---------------------------------------------------------------------------------------


def test_suffix_masks_the_last_30_residues_and_keeps_the_end():
    m = bench.mask_gene(GENES[0], "suffix", VOCAB)
    n = len(GENES[0].sequence)
    assert m.input_ids[0] == VOCAB.cls and m.input_ids[-1] == VOCAB.sep and len(m.input_ids) == n + 2
    assert m.positions == tuple(range(n + 1 - 30, n + 1))
    assert all(m.input_ids[p] == VOCAB.mask for p in m.positions)
    assert sum(i == VOCAB.mask for i in m.input_ids) == 30
    assert m.target == tuple(VOCAB.residues[r] for r in GENES[0].sequence[-30:])


def test_span_is_interior_seeded_and_independent_of_the_subset():
    starts = set()
    for gene in GENES:
        m = bench.mask_gene(gene, "span", VOCAB, seed=5)
        n, first, last = len(gene.sequence), m.positions[0], m.positions[-1]
        assert 12 <= len(m.positions) <= 20 and m.positions == tuple(range(first, last + 1))
        assert first >= 2 and last <= n - 1  # at least one residue each side, [CLS] and [SEP] kept
        assert m.input_ids[0] == VOCAB.cls and m.input_ids[-1] == VOCAB.sep
        assert m.target == tuple(VOCAB.residues[r] for r in gene.sequence[first - 1 : last])
        assert bench.mask_gene(gene, "span", VOCAB, seed=5) == m
        starts.add(first)
    assert len(starts) > 1
    assert any(bench.mask_gene(g, "span", VOCAB, 6) != bench.mask_gene(g, "span", VOCAB, 5) for g in GENES)
    with pytest.raises(ValueError, match="task"):
        bench.mask_gene(GENES[0], "prefix", VOCAB)
    with pytest.raises(ValueError, match="suffix task"):
        bench.mask_gene(Gene("short", "human", "H", "A" * 30), "suffix", VOCAB)


def test_budget_rounding():
    assert [grid.budget_steps(b, 30) for b in grid.DEFAULT_BUDGETS] == [4, 8, 15, 30]
    assert [grid.budget_steps(b, 13) for b in grid.DEFAULT_BUDGETS] == [2, 4, 7, 13]
    assert grid.budget_steps(Fraction(1, 8), 5) == 1 and grid.budget_steps(Fraction(1, 100), 1) == 1
    assert grid.parse_budget("1/4") == grid.parse_budget(0.25) == grid.parse_budget(Fraction(1, 4))
    assert grid.parse_budget(0.1) == Fraction(1, 10)  # from its decimal text, not its binary value
    for bad in ("0", "3/2", "x", -0.5, None):
        with pytest.raises(ValueError, match="budgets"):
            grid.parse_budget(bad)


def test_pooled_fraction_by_hand():
    assert pooled_fraction([1, 0, 1, 1], [1, 1, 1, 1]) == pytest.approx((0.75, 0.25))
    # A = 5/10; residuals 3 - 0.5*4 = 1, 2 - 0.5*6 = -1; SE = sqrt(2 / 2) / 5
    assert pooled_fraction([3, 2], [4, 6]) == pytest.approx((0.5, 0.2))
    value, se = pooled_fraction([2], [3])
    assert value == pytest.approx(2 / 3) and math.isnan(se)
    with pytest.raises(ValueError):
        pooled_fraction([1], [0])


# -- the benchmark run, with the fake infill -----------------------------------------------------------------


@pytest.mark.parametrize("task", ["suffix", "span"])
def test_records_match_the_fake_decodes(monkeypatch, task):
    decoders, budgets = ["xflow", "low_confidence", "rcr"], ["1/8", "1/4", "1/2", "1"]
    records, fake, masked = run_fake(monkeypatch, task, decoders, budgets)
    assert [(r["decoder"], r["budget"]) for r in records] == [(d, b) for d in decoders for b in budgets]
    for r in records:
        budget = Fraction(r["budget"])
        accuracy, agreement, steps = expected(masked, r["decoder"], budget)
        assert r["task"] == task and r["genes"] == len(GENES) and r["budget_value"] == float(budget)
        assert r["residues"] == sum(len(m.positions) for m in masked)
        assert r["accuracy"] == pytest.approx(accuracy) and r["agreement"] == pytest.approx(agreement)
        assert r["steps"] == pytest.approx(sum(steps) / len(steps)) == pytest.approx(r["nfe"])
        assert [g["nfe"] for g in r["per_gene"]] == steps
        assert [g["name"] for g in r["per_gene"]] == [g.name for g in GENES]
        assert r["accuracy_se"] >= 0 and r["tokens_per_s"] > 0 and r["seconds"] > 0
        json.dumps(r, allow_nan=False)
    reference = next(r for r in records if (r["decoder"], r["budget"]) == ("low_confidence", "1"))
    assert reference["agreement"] == 1.0 and reference["agreement_se"] == 0.0
    # each decoder's first call is its warm-up (one gene, one step); then every call's rows share one step
    # count, the budget's for each of them, and each (decoder, budget) decodes every gene once; the reference
    # decode is low_confidence at budget 1, not run a second time
    for decoder in decoders:
        calls = [(steps, rows) for d, steps, rows in fake.calls if d == decoder]
        assert calls[0][0] == 1 and len(calls[0][1]) == 1
        for steps, rows in calls[1:]:
            assert any(all(grid.budget_steps(Fraction(b), len(m.positions)) == steps for m in rows) for b in budgets)
        assert sum(len(rows) for _, rows in calls[1:]) == len(budgets) * len(GENES)


def test_batch_size_does_not_change_the_records(monkeypatch):
    one, _, _ = run_fake(monkeypatch, "span", ["xflow", "low_confidence"], ["1/4", "1"], batch_size=1)
    many, fake, _ = run_fake(monkeypatch, "span", ["xflow", "low_confidence"], ["1/4", "1"], batch_size=64)
    drop = ("seconds", "tokens_per_s", "batch_size")
    assert [{k: v for k, v in r.items() if k not in drop} for r in one] == [
        {k: v for k, v in r.items() if k not in drop} for r in many
    ]
    assert max(len(rows) for _, _, rows in fake.calls) > 1


def test_policy_goes_to_xflow_only_and_one_gene_has_no_error_bar(monkeypatch):
    policy = mdfast.StepPolicy(hidden=8)
    records, fake, _ = run_fake(monkeypatch, "suffix", ["xflow", "topk_margin"], ["1"], genes=GENES[:1], policy=policy)
    assert {c[0] for c in fake.calls} == {"xflow", "topk_margin", "low_confidence"}
    assert all(r["accuracy_se"] is None and r["agreement_se"] is None for r in records)


def test_without_the_reference_decode_only_accuracy_is_scored(monkeypatch):
    with_reference, _, _ = run_fake(monkeypatch, "span", ["xflow", "low_confidence"], ["1/4", "1"])
    records, fake, masked = run_fake(monkeypatch, "span", ["xflow"], ["1/4"], reference=False)
    assert {(d, steps) for d, steps, _ in fake.calls} <= {("xflow", 1), *(("xflow", s) for s in range(3, 6))}
    (r,) = records
    assert r["accuracy"] == pytest.approx(expected(masked, "xflow", Fraction(1, 4))[0]) == with_reference[0]["accuracy"]
    assert r["agreement"] is None and r["agreement_se"] is None and all(g["agree"] is None for g in r["per_gene"])
    json.dumps(r, allow_nan=False)
    # asked for, low_confidence at budget 1 is decoded as any other run
    records, fake, _ = run_fake(monkeypatch, "span", ["low_confidence"], ["1"], reference=False)
    assert records[0]["accuracy"] == pytest.approx(expected(masked, "low_confidence", Fraction(1))[0])
    assert records[0]["agreement"] is None


def test_bad_arguments_are_named(monkeypatch):
    model = torch.nn.Linear(1, 1)
    for kwargs, match in [
        ({"decoders": ["nope"]}, "decoders"),
        ({"budgets": ["2"]}, "budgets"),
        ({"budgets": []}, "budgets"),
        ({"task": "prefix"}, "task"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            bench.antibody(model, tokenizer=VOCAB, genes=GENES, **kwargs)
    with pytest.raises(TypeError, match="model"):
        bench.antibody(3.5, tokenizer=VOCAB, genes=GENES)


def test_plot_writes_a_png(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib", reason="the eval extra's matplotlib is not installed")
    from mdfast.eval.plot import plot_antibody

    suffix, _, _ = run_fake(monkeypatch, "suffix", ["xflow", "low_confidence"], ["1/4", "1"])
    span, _, _ = run_fake(monkeypatch, "span", ["xflow", "low_confidence"], ["1/4", "1"])
    plot_antibody(suffix + span, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- AntiBERTy and the command -------------------------------------------------------------------------------


def test_antiberty_loads_quietly(capfd):
    pytest.importorskip("antiberty", reason="antiberty==0.1.3 is not installed (pip install 'mdfast[eval]')")
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    model = bench.load_antiberty()
    printed = capfd.readouterr()
    assert "UNEXPECTED" not in printed.out + printed.err and "Loading weights" not in printed.err
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before
    assert not model.training and model.get_input_embeddings().num_embeddings == 25
    vocab = bench.antiberty_vocabulary()
    assert (vocab.pad, vocab.cls, vocab.sep, vocab.mask) == (0, 2, 3, 4) and vocab.residues["A"] == 5


def test_command_writes_table_json_and_plot(monkeypatch, tmp_path, capsys):
    pytest.importorskip("anarci", reason="the eval extra's anarci is not installed (pip install 'mdfast[eval]')")
    pytest.importorskip("antiberty", reason="antiberty==0.1.3 is not installed (pip install 'mdfast[eval]')")
    from mdfast.eval.genes import held_out_genes

    genes = held_out_genes(4)
    masked = [bench.mask_gene(g, t, VOCAB, seed=3) for g in genes for t in bench.TASKS]
    monkeypatch.setattr(mdfast, "infill", FakeInfill(masked), raising=False)
    argv = ["antibody", "--genes", "4", "--decoders", "xflow,low_confidence", "--budgets", "1/4,1", "--seed", "3"]
    assert mdfast.cli.main(["eval", *argv, "--out", str(tmp_path), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert table.count("| suffix |") == 4 and table.count("| span |") == 4
    assert "suffix: 4 genes, 120 residues scored" in table
    saved = json.loads((tmp_path / "antibody.json").read_text())
    assert saved["command"].startswith("mdfast eval antibody --decoders xflow,low_confidence --budgets 1/4,1")
    assert "--genes 4" in saved["command"] and "--seed 3" in saved["command"]
    assert len(saved["records"]) == 8 and {r["task"] for r in saved["records"]} == {"suffix", "span"}
    suffix_xflow = next(r for r in saved["records"] if r["task"] == "suffix" and r["decoder"] == "xflow")
    accuracy, agreement, _ = expected([m for m in masked if len(m.positions) == 30], "xflow", Fraction(1, 4))
    assert suffix_xflow["accuracy"] == pytest.approx(accuracy) and suffix_xflow["agreement"] == pytest.approx(agreement)
    assert (tmp_path / "antibody.png").read_bytes()[:4] == b"\x89PNG"


def test_a_cache_is_refused_before_anything_loads(monkeypatch, tmp_path, capsys):
    """AntiBERTy is a BERT, and only the native LLaDA body keeps SPEC 8's KV cache: --cache is a named usage error
    before the model loads or the run log is written; the library call names ``cache`` too."""
    from mdfast.eval import commands

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model")

    monkeypatch.setattr(bench, "load_antiberty", no_loading)
    out = tmp_path / "out"
    for flags in (["--cache", "dual"], ["--cache", "prefix", "--cache-refresh", "2"]):
        assert mdfast.cli.main(["eval", "antibody", *flags, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("mdfast eval antibody: error: --cache: ") and "AntiBERTy is a BERT" in err
    assert not out.exists()
    with pytest.raises(ValueError, match=r"^cache: 'dual' asks for SPEC 8's KV cache"):
        commands.check_antibody_cache("dual")
    commands.check_antibody_cache(None)
