"""Edges a new user meets first: each gets a named error, or is handled exactly, never a different result.

- a right-padded batch (the tokenizer's default padding side) in ``mdfast.generate``;
- a causal LM given to ``mdfast.patch`` or to a CLI verb;
- a bad command line to ``mdfast eval`` (exit status 2, nothing run);
- ``mdfast bench``'s ``--repeat``, ``--device`` and ``--json`` checked before the run.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from checks import tiny_bert

import mdfast
from mdfast import benchmark, cli
from mdfast.cli import bench as bench_cli

transformers = pytest.importorskip("transformers", reason="the tests build tiny models from transformers classes")

MASK = 4
RIGHT_PADDING = re.compile(r'attention_mask: row 1 .*right padding.*padding_side = "left"')


def run(capsys, *argv):
    """(status, stdout, stderr) of ``mdfast argv...``."""
    capsys.readouterr()
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str, prog: str, pattern: str) -> None:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------
# Right padding in generate
# ---------------------------------------------------------------------------------------------


def test_generate_refuses_a_right_padded_batch():
    model = tiny_bert()
    ids = torch.tensor([[10, 11, 12, 13], [20, 21, 0, 0]])
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with pytest.raises(ValueError, match=RIGHT_PADDING):
        mdfast.generate(model, ids, right, max_new_tokens=2, steps=2, mask_token_id=MASK)
    middle = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])  # padding inside a prompt: also after a real token
    with pytest.raises(ValueError, match="attention_mask: row 1 has padding after its prompt"):
        mdfast.generate(model, ids, middle, max_new_tokens=2, steps=2, mask_token_id=MASK)


def test_generate_takes_left_padding_and_no_padding_exactly():
    """Left padding (and an all-ones mask) is accepted, and the padded row decodes as it does alone."""
    model = tiny_bert()
    ids = torch.tensor([[10, 11, 12, 13], [0, 0, 20, 21]])
    left = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    kwargs = {"max_new_tokens": 3, "steps": 3, "mask_token_id": MASK, "decoder": "low_confidence"}
    batch = mdfast.generate(model, ids, left, **kwargs).sequences
    solo = mdfast.generate(model, ids[1:, 2:], **kwargs).sequences
    assert torch.equal(batch[1, 2:], solo[0])
    full = mdfast.generate(model, ids[:1], torch.ones(1, 4, dtype=torch.long), **kwargs).sequences
    assert torch.equal(full, batch[:1])


def test_infill_decodes_a_right_padded_row_as_it_does_alone():
    """infill never decodes padding, and right padding keeps every real position where it is: exact, so allowed."""
    model = tiny_bert()
    ids = torch.tensor([[10, MASK, 12, MASK, 0, 0], [20, MASK, MASK, 23, 24, MASK]])
    right = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    kwargs = {"steps": 2, "mask_token_id": MASK, "decoder": "low_confidence"}
    batch = mdfast.infill(model, ids, right, **kwargs).sequences
    solo = mdfast.infill(model, ids[:1, :4], **kwargs).sequences
    assert torch.equal(batch[0, :4], solo[0]) and torch.equal(batch[0, 4:], ids[0, 4:])


# ---------------------------------------------------------------------------------------------
# Causal LMs
# ---------------------------------------------------------------------------------------------


def tiny_gpt2_config():
    return transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2)


def test_patch_refuses_a_causal_lm():
    model = transformers.GPT2LMHeadModel(tiny_gpt2_config()).eval()
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel is a causal .* mdfast decodes masked \(bidirectional\)"):
        mdfast.patch(model, mask_token_id=MASK)
    assert getattr(model, "mdfast_adapter", None) is None, "nothing installed"
    with pytest.raises(ValueError, match="GPT2LMHeadModel is a causal"):  # nor adapted for one call
        mdfast.generate(model, torch.tensor([[10, 11]]), max_new_tokens=2, steps=2, mask_token_id=MASK)


def test_the_cli_names_a_causal_lm_folder(tmp_path, capsys):
    """The folder would load as the bare GPT2Model ("no output projection"): the CLI says what is wrong instead."""
    tiny_gpt2_config().save_pretrained(tmp_path)
    argv = ["generate", "--model", tmp_path, "--prompt", "w1", "--device", "cpu", "--mask-token-id", MASK]
    status, _, err = run(capsys, *argv)
    assert status == 1
    one_line_error(err, "mdfast generate", r"GPT2LMHeadModel is a causal .* mdfast decodes masked \(bidirectional\)")


# ---------------------------------------------------------------------------------------------
# mdfast eval: usage errors exit 2 before anything runs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["code", "--device", "bogus"], r"--device: expected cpu, cuda or cuda:N, got 'bogus'"),
        (["humaneval", "--model", ".", "--timeout", "-1"], r"argument --timeout: expected a positive number"),
        (["humaneval", "--model", ".", "--memory-mb", "0"], r"argument --memory-mb: expected a positive int"),
        (["humaneval", "--model", "."], r"--model: \. holds no config\.json"),
        (["code", "--budgets", "2"], r"--budgets: expected fractions in \(0, 1\]"),
        (["code", "--cases", "0"], r"argument --cases: expected a positive int"),
    ],
)
def test_eval_usage_errors_exit_2_before_the_run(argv, pattern, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    status, _, err = run(capsys, "eval", *argv, "--preset", "quick", "--out", out)
    assert status == 2, err
    one_line_error(err, f"mdfast eval {argv[0]}", pattern)
    assert not out.exists(), "nothing ran, no run log written"


@pytest.mark.skipif(torch.cuda.is_available(), reason="names CUDA missing, which needs a machine without it")
def test_eval_names_missing_cuda(tmp_path, capsys):
    status, _, err = run(capsys, "eval", "code", "--device", "cuda", "--preset", "quick", "--out", tmp_path / "o")
    assert status == 2
    one_line_error(err, "mdfast eval code", r"--device cuda: CUDA is not available here")


# ---------------------------------------------------------------------------------------------
# mdfast bench: flags checked before the run
# ---------------------------------------------------------------------------------------------

SMALL = ["bench", "--device", "cpu", "--shape", "1,4,64,8", "--backends", "torch", "--policy", "heuristic"]


@pytest.fixture
def no_run(monkeypatch):
    """Reaching the timing loop ends the command with a named error: the checks must come first."""

    def measure(*args, **kwargs):
        raise cli.CommandError("the run started")

    monkeypatch.setattr(benchmark, "measure", measure)


@pytest.mark.parametrize(("value", "shown"), [("0", "'0'"), ("-1", "'-1'"), ("x", "'x'")])
def test_bench_repeat_is_a_positive_int(value, shown, capsys, no_run):
    status, _, err = run(capsys, *SMALL, "--repeat", value)
    assert status == 2
    one_line_error(err, "mdfast bench", rf"argument --repeat: expected an int >= 1, got {shown}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="names CUDA missing, which needs a machine without it")
def test_bench_names_missing_cuda(capsys, no_run):
    status, _, err = run(capsys, "bench", "--device", "cuda", "--repeat", "1")
    assert status == 2
    one_line_error(err, "mdfast bench", r"--device cuda: CUDA is not available here")


def test_bench_checks_the_json_path_first(tmp_path, capsys, no_run):
    missing = tmp_path / "no" / "rows.json"
    status, out, err = run(capsys, *SMALL, "--repeat", "1", "--json", missing)
    assert status == 2 and out == ""
    one_line_error(err, "mdfast bench", rf"--json: no such folder: {re.escape(str(missing.parent))}")
    status, _, err = run(capsys, *SMALL, "--repeat", "1", "--json", tmp_path)
    assert status == 2
    one_line_error(err, "mdfast bench", r"--json: .* is a folder")


def test_bench_repeat_1_runs_and_writes_its_json(tmp_path, capsys):
    rows = tmp_path / "rows.json"
    status, out, err = run(capsys, *SMALL, "--warmup", "0", "--repeat", "1", "--json", rows)
    assert status == 0, err
    assert out.count("| token_stats |") == 1
    assert rows.is_file() and rows.read_text().startswith("[")


def test_bench_count_type():
    parse = bench_cli.count(1)
    assert parse("3") == 3
    with pytest.raises(argparse.ArgumentTypeError, match="expected an int >= 1, got '0'"):
        parse("0")
