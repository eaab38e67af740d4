"""The code model's budget curve (mdfast/eval/code_benchmark.py, its command) and ``suppress_tokens`` in the loop.

``suppress_tokens``: for every decoder, the fast loop with some ids suppressed must give exactly the tokens of
test_infill's eager loop (written from SPEC 2, 3, 7) run on the same model with those logits set to -inf (the
output bias), in a batch whose rows hold different numbers of masks (so padding entries ride along, and the mask
id itself is among the suppressed ids); a suppressed id never appears among the decoded tokens.

The harness: on fake outputs made by hand, each metric (exact match, token accuracy, parse share, spans left
with a [MASK], agreement) is recomputed here; end to end, a tiny random LLaDA checkpoint saved in the test with
the shipped code tokenizer runs two decoders at two budgets through ``mdfast.eval.code`` and ``mdfast eval code``.
"""

from __future__ import annotations

import copy
import json
import keyword
import math
from fractions import Fraction

import pytest
import torch

import mdfast
import mdfast.cli

transformers = pytest.importorskip("transformers", reason="the tests build tiny models from transformers classes")

from checks import tiny_bert  # noqa: E402
from test_generate import MASK  # noqa: E402
from test_infill import DECODERS, PATTERNS, eager_infill, masked_rows  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# suppress_tokens (mdfast/decode/loop.py)
# ---------------------------------------------------------------------------------------------


def without_logits(model, ids: list[int]):
    """A copy of the tiny BERT whose logits at ``ids`` are -inf (its output bias set to -inf there)."""
    blocked = copy.deepcopy(model)
    with torch.no_grad():
        blocked.get_output_embeddings().bias[ids] = -math.inf
    return blocked


@pytest.mark.parametrize("block_length", [None, 3], ids=["one_block", "blocks_of_3"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_suppressed_tokens_equal_the_eager_loop_without_those_logits(decoder, block_length):
    """Rows with 4, 5 and 6 masks; suppressed: the mask id and the two ids the plain run decodes most often, so
    the suppressed run must differ from the plain one."""
    model = tiny_bert(3)
    ids = masked_rows(3, 14, PATTERNS)
    decoded = ids == MASK
    plain = mdfast.infill(model, ids, steps=5, decoder=decoder, block_length=block_length, mask_token_id=MASK)
    frequent = torch.bincount(plain.sequences[decoded], minlength=64).argsort(descending=True, stable=True)[:2]
    suppress = [MASK, *frequent.tolist()]
    out = mdfast.infill(
        model, ids, steps=5, decoder=decoder, block_length=block_length, mask_token_id=MASK, suppress_tokens=suppress
    )
    want, _ = eager_infill(without_logits(model, suppress), ids, None, 5, decoder, block_length)
    assert torch.equal(out.sequences, want), f"{decoder}: fast {out.sequences.tolist()} != eager {want.tolist()}"
    assert not torch.isin(out.sequences[decoded], torch.tensor(suppress)).any(), "a suppressed id was decoded"
    assert not torch.equal(out.sequences, plain.sequences), "suppressing the most frequent ids changes the output"
    assert torch.equal(out.sequences[~decoded], ids[~decoded]), "given tokens are kept"


def test_generate_suppresses_too():
    model = mdfast.patch(tiny_bert(5), mask_token_id=MASK)
    prompt = torch.randint(5, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    plain = model.mdfast_generate(prompt, max_new_tokens=8, steps=4, decoder="low_confidence")
    top = int(torch.bincount(plain.sequences[:, 6:].reshape(-1), minlength=64).argmax())
    out = model.mdfast_generate(prompt, max_new_tokens=8, steps=4, decoder="low_confidence", suppress_tokens=[top])
    assert not (out.sequences[:, 6:] == top).any() and torch.equal(out.sequences[:, :6], prompt)


def check_suppressed_replay(device: str):
    """The tiny native LLaDA of test_gpu.py, left-padded prompts, 2 blocks of 4 steps, the mask id and two more
    ids suppressed: graphed steps (on a GPU: at least one block replayed from a graph) give exactly the eager
    steps' tokens and states, none of them suppressed."""
    from test_gpu import generate_graphed_and_eager, tiny_native_llada

    model = tiny_native_llada(device)
    ids = torch.randint(0, 78, (3, 9), device=device, generator=torch.Generator(device).manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :2] = mask[2, :4] = 0
    suppress = [79, 3, 40]
    for decoder in ("xflow", "low_confidence", "soft_mask"):
        graphed, _ = generate_graphed_and_eager(
            model, ids, mask, max_new_tokens=16, steps=8, decoder=decoder, block_length=8, suppress_tokens=suppress
        )
        assert not torch.isin(graphed.sequences[:, 9:], torch.tensor(suppress, device=device)).any()
        if torch.device(device).type == "cuda":
            assert graphed.graphed_blocks > 0, "no block was replayed from a CUDA graph"


def test_suppressed_steps_compare_on_the_cpu():
    check_suppressed_replay("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_suppressed_steps_replay_from_cuda_graphs():
    check_suppressed_replay("cuda")


@pytest.mark.parametrize(
    "suppress, error, message",
    [
        ("[MASK]", TypeError, "suppress_tokens: expected a list of token ids"),
        ([4, 2.0], TypeError, "suppress_tokens: expected a list of token ids"),
        ([4, 64], ValueError, r"suppress_tokens: expected ids in \[0, 64\)"),
        ([-1], ValueError, r"suppress_tokens: expected ids in \[0, 64\)"),
        (list(range(64)), ValueError, "suppress_tokens: every one of the 64 ids"),
    ],
)
def test_bad_suppress_tokens_are_named_before_any_forward(suppress, error, message):
    model = tiny_bert()
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    with pytest.raises(error, match=message):
        mdfast.infill(model, masked_rows(1, 10, [[(2, 8)]]), steps=4, mask_token_id=MASK, suppress_tokens=suppress)
    assert not forwards, "the error comes before any forward"


# ---------------------------------------------------------------------------------------------
# the code benchmark (mdfast/eval/code_benchmark.py)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from mdfast.code_model import data as code_data

    return code_data.load_tokenizer()


@pytest.fixture(scope="module")
def cases(tokenizer):
    """Four cases of the first held-out files: two of different span lengths that share their step count at
    budget 1/8 (so one call decodes spans of two lengths), and two more."""
    from mdfast.code_model import data as code_data
    from mdfast.code_model.cases import code_infill_cases

    held = code_data.split_files(code_data.source_files())[1]
    files = {path: held[path] for path in sorted(held)[:4]}
    pool = code_infill_cases(tokenizer, n_cases=24, files=files)
    length = [c.span[1] - c.span[0] for c in pool]
    a, b = next(
        (i, j) for i in range(len(pool)) for j in range(i) if length[i] != length[j] and grid_steps(length, i, j)
    )
    others = [k for k in range(len(pool)) if k not in (a, b)][:2]
    return [pool[k] for k in sorted([a, b, *others])]


def grid_steps(length, i, j) -> bool:
    from mdfast.eval.budget_grid import budget_steps

    return budget_steps(Fraction(1, 8), length[i]) == budget_steps(Fraction(1, 8), length[j])


def tiny_code_model(tokenizer):
    """A random 1-layer LLaDA over the code tokenizer with a 256-token window, its weights spread wide (std 0.5)
    so that predictions depend on the context and decoders differ."""
    from mdfast.code_model import pretrain as mdlm

    options = mdlm.TrainOptions(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)
    model = mdfast.LLaDAModel(mdlm.code_model_config(options, len(tokenizer)))
    mdlm.init_weights(model, 0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(25.0)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    """The tiny model saved as a code-model folder (save_llada + the shipped tokenizer), as training writes it."""
    from mdfast.code_model import data as code_data

    folder = tmp_path_factory.mktemp("tiny_code_model")
    model = tiny_code_model(tokenizer)
    mdfast.save_llada(model, folder)
    code_data.save_tokenizer(tokenizer, folder, model.config.max_sequence_length)
    return folder


def solo_fill(model, case, steps, decoder):
    """The case decoded alone by mdfast.infill, [MASK] suppressed: its span's tokens."""
    start, stop = case.span
    out = mdfast.infill(model, case.input_ids[None], steps=steps, decoder=decoder, suppress_tokens=[2])
    return out.sequences[0, start:stop]


def test_code_curve_end_to_end(checkpoint, cases, tokenizer, monkeypatch):
    """Two decoders at two budgets on the saved checkpoint: each case's scores are those of its solo decode at
    its own step count; a call decodes spans of different lengths together; the metrics follow from the
    per-case rows; the reference cell agrees with itself; nothing is left masked."""
    from mdfast.eval.budget_grid import budget_steps
    from mdfast.eval.code_benchmark import code
    from mdfast.models.llada import load_llada

    calls = []
    real_infill = mdfast.infill

    def recording_infill(model, input_ids, attention_mask=None, **kwargs):
        calls.append(((input_ids == 2).sum(1).tolist(), kwargs["steps"], kwargs["decoder"], kwargs["suppress_tokens"]))
        return real_infill(model, input_ids, attention_mask, **kwargs)

    monkeypatch.setattr(mdfast, "infill", recording_infill)
    records = code(checkpoint, decoders=["xflow", "low_confidence"], budgets=["1", "1/8"], cases=cases)
    monkeypatch.undo()

    assert [(r["decoder"], r["budget"]) for r in records] == [
        (d, b) for d in ("xflow", "low_confidence") for b in ("1/8", "1")
    ]
    assert all(suppress == [2] for *_, suppress in calls)
    assert any(len(set(counts)) > 1 for counts, *_ in calls), "spans of different lengths share a call"
    model = load_llada(checkpoint, dtype=torch.float32)
    reference = [solo_fill(model, c, c.span[1] - c.span[0], "low_confidence") for c in cases]
    for r in records:
        budget = Fraction(r["budget"])
        assert r["cases"] == len(cases) and r["tokens"] == sum(c.target_ids.numel() for c in cases)
        for case, row, ref in zip(cases, r["per_case"], reference):
            n = case.target_ids.numel()
            steps = budget_steps(budget, n)
            fill = solo_fill(model, case, steps, r["decoder"])
            assert row["correct"] == int((fill == case.target_ids).sum()) and row["agree"] == int((fill == ref).sum())
            assert row["parses"] == case.filled_parses(fill, tokenizer) and not row["masked"]
            assert row["exact"] == bool((fill == case.target_ids).all()) and row["span"] == n
            assert row["nfe"] == steps and (row["path"], row["function"]) == (case.path, case.function)
        rows = r["per_case"]
        assert r["accuracy"] == pytest.approx(sum(c["correct"] for c in rows) / r["tokens"])
        assert r["agreement"] == pytest.approx(sum(c["agree"] for c in rows) / r["tokens"])
        assert r["parses"] == pytest.approx(sum(c["parses"] for c in rows) / len(rows)) and r["masked_spans"] == 0
        assert r["steps"] == pytest.approx(sum(budget_steps(budget, c["span"]) for c in rows) / len(rows))
        assert r["tokens_per_s"] > 0 and r["model"] == str(checkpoint)
        json.dumps(r, allow_nan=False)
    cell = next(r for r in records if (r["decoder"], r["budget"]) == ("low_confidence", "1"))
    assert cell["agreement"] == 1.0
    assert len({r["agreement"] for r in records}) > 2, "the decoders and budgets give different fills"


def fake_decoded(fills, nfe):
    from mdfast.eval.budget_grid import Decoded

    return Decoded([tuple(int(t) for t in f) for f in fills], list(nfe), list(nfe), 2.0)


def test_metrics_on_hand_made_fills(cases, tokenizer):
    """Case 0 filled exactly; case 1 with one token that is in no target, everywhere (does not parse); case 2
    exact but its last token left as [MASK]; case 3 with one identifier renamed (still parses). The reference
    differs from the truth in case 0's first token."""
    from mdfast.eval.code_benchmark import case_scores, summarize_cases

    targets = [c.target_ids.clone() for c in cases]
    n = [t.numel() for t in targets]
    stranger = next(i for i in range(5, 4096) if all(i not in t for t in targets) and ")" in tokenizer.decode([i]))
    x = tokenizer.encode(" x")
    assert len(x) == 1
    words = [tokenizer.decode([t]) for t in targets[3].tolist()]
    j = next(
        k
        for k, w in enumerate(words)
        if w.startswith(" ") and w.strip().isidentifier() and not keyword.iskeyword(w.strip()) and w != " x"
    )
    renamed = targets[3].clone()
    renamed[j] = x[0]  # an identifier renamed " x"
    last_masked = targets[2].clone()
    last_masked[-1] = 2
    fills = [targets[0], torch.full_like(targets[1], stranger), last_masked, renamed]
    reference = [targets[0].clone(), *targets[1:]]
    reference[0][0] = stranger
    rows = case_scores(cases, fake_decoded(fills, [4, 5, 6, 7]), fake_decoded(reference, [1] * 4), tokenizer)
    assert [r["correct"] for r in rows] == [n[0], 0, n[2] - 1, n[3] - 1]
    assert [r["exact"] for r in rows] == [True, False, False, False]
    assert [r["masked"] for r in rows] == [False, False, True, False]
    assert [r["parses"] for r in rows] == [True, False, False, True]
    assert [r["agree"] for r in rows] == [n[0] - 1, 0, n[2] - 1, n[3] - 1]
    assert [r["nfe"] for r in rows] == [4, 5, 6, 7] and [r["span"] for r in rows] == n
    summary = summarize_cases(rows)
    total = sum(n)
    assert summary["cases"] == 4 and summary["tokens"] == total and summary["masked_spans"] == 1
    assert summary["exact_match"] == 0.25 and summary["exact_match_se"] == pytest.approx(math.sqrt(0.25 * 0.75 / 3))
    assert summary["parses"] == 0.5 and summary["parses_se"] == pytest.approx(math.sqrt(0.25 / 3))
    accuracy = (n[0] + n[2] - 1 + n[3] - 1) / total
    assert summary["accuracy"] == pytest.approx(accuracy)
    hits = [n[0], 0, n[2] - 1, n[3] - 1]
    spread = sum((h - accuracy * m) ** 2 for h, m in zip(hits, n))
    assert summary["accuracy_se"] == pytest.approx(math.sqrt(spread / 12) / (total / 4))
    assert summary["agreement"] == pytest.approx((n[0] - 1 + n[2] - 1 + n[3] - 1) / total)
    one = summarize_cases(rows[:1])
    assert one["exact_match"] == 1.0 and one["exact_match_se"] is None and one["accuracy_se"] is None


def test_bad_arguments_are_named(cases, tokenizer, tmp_path):
    from mdfast.eval.code_benchmark import code

    model = tiny_code_model(tokenizer)
    for kwargs, match in [
        ({"decoders": ["nope"]}, "decoders"),
        ({"budgets": ["3/2"]}, "budgets"),
        ({"batch_size": 0}, "batch_size"),
        ({"cases": 0}, "cases"),
        ({"cases": []}, "cases"),
    ]:
        with pytest.raises(ValueError, match=match):
            code(model, **({"cases": cases} | kwargs))
    with pytest.raises(TypeError, match="model"):
        code(3.5, cases=cases)
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        code(tmp_path / "nothing", cases=cases)


def eval_code(checkpoint, out, *extra) -> int:
    """``mdfast eval code`` on the tiny checkpoint: threshold and low_confidence at budgets 1/8 and 1/4, 3 cases."""
    argv = ["eval", "code", "--model", str(checkpoint), "--decoders", "threshold,low_confidence"]
    argv += ["--budgets", "1/8,1/4", "--cases", "3", "--seed", "1", "--threads", "1", "--out", str(out)]
    return mdfast.cli.main([*argv, "--no-progress", *extra])


def test_command_writes_table_json_and_plot(checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the eval extra's matplotlib is not installed")
    assert eval_code(checkpoint, tmp_path) == 0
    table = capsys.readouterr().out
    assert table.count("| threshold |") == 2 and table.count("| low_confidence |") == 2
    saved = json.loads((tmp_path / "code.json").read_text())
    assert saved["command"].startswith("mdfast eval code --model ") and "--cases 3 --seed 1" in saved["command"]
    assert len(saved["records"]) == 4 and all(r["cases"] == 3 and r["seed"] == 1 for r in saved["records"])
    assert f"3 cases, {saved['records'][0]['tokens']} span tokens scored" in table
    assert (tmp_path / "code.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# resumable runs (mdfast/eval/run_log.py, commands.py) and the command line (mdfast/cli/eval.py)
# ---------------------------------------------------------------------------------------------

TIMING = ("seconds", "tokens_per_s")


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


class CountingInfill:
    """``mdfast.infill`` that counts its calls and raises KeyboardInterrupt at call number ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls, self.stop_at = [], stop_at

    def __call__(self, *args, **kwargs):
        if len(self.calls) + 1 == self.stop_at:
            raise KeyboardInterrupt
        self.calls.append(kwargs["decoder"])
        return mdfast.decode.infill(*args, **kwargs)


def test_an_interrupted_run_keeps_its_cells_and_the_rerun_decodes_only_the_rest(
    checkpoint, tmp_path, monkeypatch, capsys
):
    """Stopped after the first cell (the reference decode), the log holds that cell; the rerun decodes the other
    three cells only (all its calls minus the first cell's batches) and writes the records of a run never
    stopped (timing aside)."""
    pytest.importorskip("matplotlib", reason="the eval extra's matplotlib is not installed")
    whole = CountingInfill()
    monkeypatch.setattr(mdfast, "infill", whole)
    assert eval_code(checkpoint, tmp_path / "whole") == 0
    # the grid's order: low_confidence at budget 1 (the reference, after a warm-up call) first, then threshold
    first_cell = whole.calls.index("threshold")
    stopped = CountingInfill(stop_at=first_cell + 1)
    monkeypatch.setattr(mdfast, "infill", stopped)
    assert eval_code(checkpoint, tmp_path / "resumed") == 130
    lines = (tmp_path / "resumed" / "code.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "settings" in json.loads(lines[0])
    assert (json.loads(lines[1])["decoder"], json.loads(lines[1])["budget"]) == ("low_confidence", "1")
    assert not (tmp_path / "resumed" / "code.json").exists()

    rerun = CountingInfill()
    monkeypatch.setattr(mdfast, "infill", rerun)
    assert eval_code(checkpoint, tmp_path / "resumed") == 0
    assert len(rerun.calls) == len(whole.calls) - (first_cell - 1), "the reference cell is not decoded again"
    cells = [json.loads(line) for line in (tmp_path / "resumed" / "code.jsonl").read_text().splitlines()[1:]]
    assert [(c["decoder"], c["budget"]) for c in cells] == [
        ("low_confidence", "1"),
        ("threshold", "1/8"),
        ("threshold", "1/4"),
        ("low_confidence", "1/8"),
        ("low_confidence", "1/4"),
    ]
    resumed = json.loads((tmp_path / "resumed" / "code.json").read_text())["records"]
    assert without_timing(resumed) == without_timing(
        json.loads((tmp_path / "whole" / "code.json").read_text())["records"]
    )

    again = CountingInfill()
    monkeypatch.setattr(mdfast, "infill", again)
    assert eval_code(checkpoint, tmp_path / "resumed") == 0 and again.calls == [], "a finished run decodes nothing"
    capsys.readouterr()


def test_other_settings_in_the_out_folder_are_refused_unless_restarted(checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the eval extra's matplotlib is not installed")
    from mdfast.eval.run_log import RunLog

    settings = {"model": str(checkpoint), "decoders": ["threshold", "low_confidence"], "budgets": ["1/8", "1/4"]}
    RunLog(tmp_path / "code.jsonl", {**settings, "seed": 2})
    assert eval_code(checkpoint, tmp_path) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdfast eval code: error: --out: ") and "holds a run with other settings" in err
    assert "seed: 2 there, 1 here" in err and "--restart" in err
    assert eval_code(checkpoint, tmp_path, "--restart") == 0
    assert json.loads((tmp_path / "code.jsonl").read_text().splitlines()[0])["settings"]["seed"] == 1


CACHE_FIELDS = ("cache", "cache_refresh")


def test_a_cache_refreshed_every_step_gives_the_records_of_no_cache(checkpoint, tmp_path, capsys):
    """``--cache dual --cache-refresh 1`` refreshes at every step (exact, SPEC 8): the records of a run without a
    cache, timing and the cache fields aside. The settings line, the command and the records carry the cache; a
    resumed run with other cache settings is refused, and --cache-refresh without --cache is named."""
    pytest.importorskip("matplotlib", reason="the eval extra's matplotlib is not installed")
    assert eval_code(checkpoint, tmp_path / "none") == 0
    assert eval_code(checkpoint, tmp_path / "dual", "--cache", "dual", "--cache-refresh", "1") == 0
    plain = json.loads((tmp_path / "none" / "code.json").read_text())
    cached = json.loads((tmp_path / "dual" / "code.json").read_text())
    assert "--cache dual --cache-refresh 1" in cached["command"] and "--cache" not in plain["command"]
    assert all((r["cache"], r["cache_refresh"]) == ("dual", 1) for r in cached["records"])
    assert all((r["cache"], r["cache_refresh"]) == (None, None) for r in plain["records"])

    def scores(records):
        return [{k: v for k, v in r.items() if k not in CACHE_FIELDS} for r in without_timing(records)]

    assert scores(cached["records"]) == scores(plain["records"])
    settings = json.loads((tmp_path / "dual" / "code.jsonl").read_text().splitlines()[0])["settings"]
    assert (settings["cache"], settings["cache_refresh"]) == ("dual", 1)
    capsys.readouterr()

    assert eval_code(checkpoint, tmp_path / "dual", "--cache", "dual") == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings" in err and "cache_refresh: 1 there, null here" in err
    assert eval_code(checkpoint, tmp_path / "other", "--cache-refresh", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("mdfast eval code: error: --cache-refresh: ") and "cache is None" in err
    assert not (tmp_path / "other").exists(), "named before the run log is written"


def test_the_run_log_drops_a_line_cut_short_and_names_a_broken_one(tmp_path):
    from mdfast.eval.run_log import RunLog, SettingsMismatch

    path = tmp_path / "run.jsonl"
    log = RunLog(path, {"a": 1, "b": [1, 2]})
    log.append({"cell": 1})
    log.append({"cell": 2})
    path.write_text(path.read_text() + '{"cell": 3, "tok')  # killed while writing
    resumed = RunLog(path, {"a": 1, "b": [1, 2]})
    assert resumed.entries == [{"cell": 1}, {"cell": 2}]
    assert path.read_text().endswith('{"cell": 2}\n'), "the cut line is gone before anything is appended"
    with pytest.raises(SettingsMismatch, match=r"b: \[1, 2\] there, \[1, 3\] here"):
        RunLog(path, {"a": 1, "b": [1, 3]})
    assert RunLog(path, {"a": 2}, restart=True).entries == []
    path.write_text('{"settings": {}}\nnot json\n{"cell": 1}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        RunLog(path, {})


def test_presets_fill_what_the_command_line_leaves_out():
    import argparse

    from mdfast.cli import eval as eval_cli
    from mdfast.cli.errors import ArgumentParser

    parser = ArgumentParser(prog="mdfast")
    eval_cli.add_parser(parser.add_subparsers(dest="verb"))
    quick = parser.parse_args(["eval", "code", "--preset", "quick", "--cases", "5"])
    settings = eval_cli.settings_of(quick, "code")
    assert settings["cases"] == 5 and settings["decoders"] == ["xflow", "low_confidence"]
    assert settings["budgets"] == ["1/4", "1"] and list(settings) == list(eval_cli.SETTINGS["code"])
    full = eval_cli.settings_of(parser.parse_args(["eval", "antibody", "--genes", "all"]), "antibody")
    assert full["decoders"] == "all" and full["genes"] == "all" and full["budgets"] == ["1/8", "1/4", "1/2", "1"]
    assert isinstance(quick, argparse.Namespace) and quick.run is eval_cli.run
    for benchmark in ("antibody", "code", "humaneval"):
        args = parser.parse_args(["eval", benchmark, "--model", ".", "--preset", "quick"])
        assert all(
            value is not None
            for key, value in eval_cli.settings_of(args, benchmark).items()
            if key in eval_cli.PRESETS[benchmark]["quick"]
        )
