"""``mdfast generate`` and ``mdfast infill``, called in-process: ``main([...])`` and its output.

Models are tiny random BERTs saved to a temporary folder with a tokenizer built offline (a vocab
file, or the ``tokenizers`` library), or a tiny LLaDA; nothing reaches the hub. The checks that can
run before the weights load must run before them (``load_model`` is replaced by a stand-in that
says it was reached: the ``no_weights`` fixture).
"""

from __future__ import annotations

import os
import re

import pytest
import tokenizers
import torch
import transformers
from checks import tiny_bert
from test_cli import VOCAB, WORDS, assert_error, model_dir, no_weights, run, save

import mdfast
import mdfast.loading
from mdfast.cli import infill as infill_verb
from mdfast.code_model import data as code_data
from mdfast.code_model import pretrain as mdlm
from mdfast.loading import load_config, load_model, load_tokenizer

__all__ = ["model_dir", "no_weights"]  # fixtures used here, defined in test_cli


def generate(folder, *options):
    base = ["generate", "--model", folder, "--prompt", "w1 w2 w3", "--device", "cpu", "--backend", "torch"]
    return [*base, "--decoder", "low_confidence", "--steps", "4", "--max-new-tokens", "4", *options]


def infill(folder, text, *options):
    base = ["infill", "--model", folder, "--text", text, "--device", "cpu", "--backend", "torch"]
    return [*base, "--decoder", "low_confidence", *options]


# ---------------------------------------------------------------------------------------------
# mdfast generate
# ---------------------------------------------------------------------------------------------


def test_generate_decodes_a_local_model(model_dir, capsys):
    status, out, err = run(capsys, *generate(model_dir))
    assert status == 0
    words = out.split()
    assert 1 <= len(words) <= 4 and all(word in VOCAB for word in words)
    assert "4 forwards" in err and "tokens/s" in err


BAD_COMMAND_LINES = [
    (["--steps", "0"], r"--steps: expected a positive int, got 0"),
    (["--steps", "8"], r"--steps: expected at most max_new_tokens = 4 steps \(one token each\), got 8"),
    (["--max-new-tokens", "0"], r"--max-new-tokens: expected a positive int, got 0"),
    (["--block-length", "3"], r"--block-length: expected a positive divisor of max_new_tokens=4, got 3"),
    (
        ["--max-new-tokens", "8", "--steps", "3", "--block-length", "4"],
        r"--steps: 3 steps do not split evenly over 2 blocks of 4 tokens",
    ),
    (["--temperature", "-1"], r"--temperature: expected a number >= 0, got -1"),
    (["--decoder", "xflow", "--temperature", "0.5"], r"--temperature: the x-flow decoder has no temperature"),
    (["--device", "gpu"], r"--device: expected cpu, cuda or cuda:N, got 'gpu'"),
    (["--backend", "gpu"], r"argument --backend: invalid choice: 'gpu'"),
    (["--backend", "cuda"], r"--backend cuda cannot run with --device cpu"),
    (["--decoder", "xflow", "--policy", "/nowhere/p.safetensors"], r"--policy: no such file: /nowhere/p.safetensors"),
    (["--decoder", "nonsense"], r"argument --decoder: invalid choice: 'nonsense'"),
    (["--mask-token-id", "64"], r"--mask-token-id: 64 is outside the model's 64 embeddings"),
    (["--mask-token-id", "-1"], r"--mask-token-id: expected a token id >= 0, got -1"),
    (["--decoder", "factor", "--factor", "0"], r"--factor: expected a number > 0, got 0.0$"),
    (["--decoder", "factor", "--factor", "-1"], r"--factor: expected a number > 0, got -1.0$"),
    (["--factor", "0.5"], r"--factor: only the factor decoder reads factor, not decoder 'low_confidence'$"),
    (["--factor", "big"], r"argument --factor: invalid float value: 'big'"),
]


@pytest.mark.parametrize(("options", "message"), BAD_COMMAND_LINES, ids=[" ".join(o) for o, _ in BAD_COMMAND_LINES])
def test_generate_names_a_bad_command_line_before_loading(options, message, model_dir, no_weights, capsys):
    status, out, err = run(capsys, *generate(model_dir, *options))
    assert status == 2 and out == ""
    assert_error(err, "mdfast generate", message)


def test_generate_checks_the_budget_before_reading_the_folder(no_weights, capsys):
    status, _, err = run(capsys, *generate("/nonexistent", "--steps", "0"))
    assert status == 2
    assert_error(err, "mdfast generate", "--steps: expected a positive int, got 0")


def test_generate_names_a_missing_or_foreign_model_folder(tmp_path, no_weights, capsys):
    status, _, err = run(capsys, *generate("/nonexistent"))
    assert status == 2
    assert_error(err, "mdfast generate", r"--model: no such folder: /nonexistent$")
    status, _, err = run(capsys, *generate("GSAI-ML/LLaDA-8B-Instruct"))
    assert status == 2
    assert_error(err, "mdfast generate", "no such folder: GSAI-ML/LLaDA-8B-Instruct .*never reaches the hub")
    status, _, err = run(capsys, *generate(tmp_path))
    assert status == 2
    assert_error(err, "mdfast generate", f"--model: {tmp_path} holds no config.json")


def test_generate_names_a_model_with_its_own_code(tmp_path, no_weights, capsys):
    (tmp_path / "config.json").write_text(
        '{"model_type": "Dream", "vocab_size": 64, "auto_map": {"AutoConfig": "configuration_dream.DreamConfig"}}'
    )
    status, _, err = run(capsys, *generate(tmp_path))
    assert status == 2
    assert_error(err, "mdfast generate", f"--model {tmp_path}: the model comes with its own code; pass --trust-remote")


def test_generate_refuses_cuda_without_cuda(model_dir, no_weights, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    options = [arg if arg != "cpu" else "cuda" for arg in generate(model_dir)]
    status, _, err = run(capsys, *options)
    assert status == 2
    assert_error(err, "mdfast generate", r"--device cuda: CUDA is not available here \(.*\); use --device cpu")


def test_generate_checks_the_policy_file(model_dir, tmp_path, no_weights, capsys):
    garbage = tmp_path / "policy.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    status, _, err = run(capsys, *generate(model_dir, "--decoder", "xflow", "--policy", garbage))
    assert status == 2
    assert_error(err, "mdfast generate", f"--policy {garbage}: not a StepPolicy file")
    policy = tmp_path / "good.safetensors"
    mdfast.StepPolicy(hidden=8).save(policy)
    status, _, err = run(capsys, *generate(model_dir, "--policy", policy))
    assert status == 2
    assert_error(err, "mdfast generate", "--policy: only the xflow decoder reads a step policy, not low_confidence")
    status, _, err = run(capsys, *generate(model_dir, "--decoder", "xflow", "--policy", policy))
    assert status == 1
    assert_error(err, "mdfast generate", "the weights were loaded"), "a good policy passes the checks"


def test_generate_decodes_with_a_policy(model_dir, tmp_path, capsys):
    policy = tmp_path / "policy.safetensors"
    mdfast.StepPolicy(hidden=8).save(policy)
    status, _, err = run(capsys, *generate(model_dir, "--decoder", "xflow", "--policy", policy))
    assert status == 0 and "4 forwards" in err


def test_generate_names_a_tokenizer_without_vocabulary(tmp_path, no_weights, capsys):
    """transformers builds a tokenizer of the 5 special tokens for a folder without tokenizer files."""
    folder = save(tmp_path / "bare")
    status, out, err = run(capsys, *generate(folder))
    assert status == 1 and out == ""
    assert_error(
        err, "mdfast generate", "holds only its 5 special tokens, no vocabulary, for a model with 64 embeddings"
    )
    assert "save_pretrained" in err


def test_generate_names_the_antiberty_folder_without_tokenizer(no_weights, capsys):
    """The folder shipped in antiberty==0.1.3 has weights and config but no tokenizer files."""
    antiberty = pytest.importorskip("antiberty", reason="antiberty==0.1.3 is not installed")
    folder = os.path.join(os.path.dirname(antiberty.__file__), "trained_models", "AntiBERTy_md_smooth")
    status, _, err = run(capsys, *generate(folder))
    assert status == 1
    assert_error(
        err, "mdfast generate", "holds only its 5 special tokens, no vocabulary, for a model with 25 embeddings"
    )


def test_generate_names_a_tokenizer_larger_than_the_model(tmp_path, no_weights, capsys):
    folder = save(tmp_path / "larger", [*VOCAB, "w59", "w60"])
    status, _, err = run(capsys, *generate(folder))
    assert status == 1
    assert_error(err, "mdfast generate", "has 66 tokens but the model only 64 embeddings: ids 64..65")


def test_generate_names_a_missing_mask_token(tmp_path, no_weights, capsys):
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    folder = save(tmp_path / "nomask", model=tiny_bert(vocab_size=63))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(folder)
    status, _, err = run(capsys, *generate(folder))
    assert status == 1
    assert_error(
        err, "mdfast generate", "neither the tokenizer nor the config .* names a mask token; pass --mask-token-id"
    )
    status, _, err = run(capsys, *generate(folder, "--mask-token-id", "3"))
    assert status == 1
    assert_error(err, "mdfast generate", "the weights were loaded"), "--mask-token-id passes the checks"


def test_generate_names_a_prompt_of_unknown_words(model_dir, no_weights, capsys):
    options = generate(model_dir)
    options[options.index("w1 w2 w3")] = "never seen"
    status, _, err = run(capsys, *options)
    assert status == 1
    assert_error(err, "mdfast generate", "every word of --prompt encodes to the unknown token '\\[UNK\\]'")


def test_a_runtime_failure_is_one_line_and_debug_shows_the_traceback(model_dir, capsys, monkeypatch):
    def load_model(*args, **kwargs):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")

    monkeypatch.setattr(mdfast.loading, "load_model", load_model)
    status, _, err = run(capsys, *generate(model_dir))
    assert status == 1
    assert_error(err, "mdfast generate", r"RuntimeError: CUDA out of memory\. Tried to allocate 2 GiB \(--debug")
    for argv in (["--debug", *generate(model_dir)], [*generate(model_dir), "--debug"]):
        status, _, err = run(capsys, *argv)
        assert status == 1 and err.startswith("Traceback (most recent call last)") and "in load_model" in err
        assert (
            err.splitlines()[-1] == "mdfast generate: error: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
        )
    monkeypatch.setenv("MDFAST_DEBUG", "1")
    status, _, err = run(capsys, *generate("/nonexistent"))
    assert status == 2 and "Traceback" in err and err.splitlines()[-1].endswith("no such folder: /nonexistent")


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    """A tiny LLaDA checkpoint folder (config.json model_type "llada") with the code model's tokenizer."""
    folder = tmp_path_factory.mktemp("llada")
    tokenizer = code_data.load_tokenizer()
    options = mdlm.TrainOptions(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)
    mdfast.save_llada(mdfast.LLaDAModel(mdlm.code_model_config(options, len(tokenizer))), folder)
    code_data.save_tokenizer(tokenizer, folder, 256)
    return folder


def test_generate_runs_a_llada_checkpoint_natively(llada_dir, capsys):
    """A LLaDA folder decodes on mdfast's native body: no remote code, no --trust-remote-code."""
    assert isinstance(load_model(llada_dir), mdfast.LLaDAModel) and load_config(llada_dir).model_type == "llada"
    status, _, err = run(capsys, *generate(llada_dir, "--decoder", "xflow", "--backend", "auto"))
    assert status == 0, err
    assert "4 forwards" in err


LLADA_WARNINGS = ("model of type llada", "model of type `llada`", "not supported")


def test_a_llada_folder_loads_without_transformers_warnings(llada_dir, capfd):
    """transformers does not know model_type "llada"; no load path may let it read config.json and warn."""
    capfd.readouterr()
    assert load_config(llada_dir).model_type == "llada"
    assert load_tokenizer(llada_dir).mask_token is not None
    load_model(llada_dir)
    out, err = capfd.readouterr()
    assert not any(warning in out + err for warning in LLADA_WARNINGS), err


@pytest.mark.slow
def test_generate_with_the_shipped_code_model_prints_no_transformers_warning(capfd):
    folder = os.path.join(os.path.dirname(mdfast.__file__), "data", "code_model")
    capfd.readouterr()
    status = mdfast.cli.main(["generate", "--model", folder, "--prompt", "def f(x):", "--device", "cpu"])
    out, err = capfd.readouterr()
    assert status == 0, err
    assert not any(warning in out + err for warning in LLADA_WARNINGS), err


# ---------------------------------------------------------------------------------------------
# mdfast infill
# ---------------------------------------------------------------------------------------------


def test_infill_fills_the_shorthand_masks_and_keeps_the_rest(model_dir, capsys):
    status, out, err = run(capsys, *infill(model_dir, "w1 <mask:3> w2"))
    assert status == 0, err
    words = out.split()
    assert len(words) <= 5 and words[0] == "w1" and words[-1] == "w2" and all(w in VOCAB for w in words)
    assert "3 forwards" in err, "one step per masked position by default"


def test_infill_reads_the_mask_token_in_the_text(model_dir, capsys):
    status, out, err = run(capsys, *infill(model_dir, "[MASK] w7 [MASK]", "--steps", "1"))
    assert status == 0, err
    assert "w7" in out.split() and len(out.split()) <= 3
    assert "1 forwards" in err


def test_infill_fills_a_llada_checkpoint(llada_dir, capsys):
    status, out, err = run(capsys, *infill(llada_dir, r"def f(x):\n    return <mask:4>", "--decoder", "xflow"))
    assert status == 0, err
    assert out.startswith("def f(x):\n    return") and "4 forwards" in err


INFILL_BAD_COMMAND_LINES = [
    (["--text", "w1 w2"], r"--text: no position to fill; write <mask:N> or the mask token '\[MASK\]' there"),
    (["--text", "w1 <mask:0>"], r"--text: <mask:0> fills no position"),
    (["--steps", "4"], r"--steps: expected at most 2 steps \(the most masked positions of any sequence\), got 4"),
    (["--steps", "0"], r"--steps: expected a positive int, got 0"),
    (
        ["--block-length", "1", "--steps", "1"],
        r"--steps: sequence 0 has 2 masked positions in 2 blocks of 1, more blocks than the 1 steps",
    ),
    (["--decoder", "threshold", "--temperature", "-2"], r"--temperature: expected a number >= 0"),
    (
        ["--decoder", "threshold", "--factor", "2"],
        r"--factor: only the factor decoder reads factor, not decoder 'threshold'$",
    ),
]


@pytest.mark.parametrize(
    ("options", "message"), INFILL_BAD_COMMAND_LINES, ids=[" ".join(o) for o, _ in INFILL_BAD_COMMAND_LINES]
)
def test_infill_names_a_bad_command_line_before_loading(options, message, model_dir, no_weights, capsys):
    status, out, err = run(capsys, *infill(model_dir, "w1 <mask:2> w2"), *options)
    assert status == 2 and out == ""
    assert_error(err, "mdfast infill", message)


def test_infill_reads_escapes_and_the_shorthand():
    assert infill_verb.expand_text(r"a\nb <mask:2>\tc\\n", "[M]") == ("a\nb [M][M]\tc\\n", 2)
    assert infill_verb.expand_text("[M] x <mask:1>", "[M]") == ("[M] x [M]", 2)


def spy_on_options(monkeypatch, verb: str) -> list:
    """The ``DecodeOptions`` each ``mdfast.decode.<verb>_with_options`` call gets, in a list filled as they run."""
    name, calls = f"{verb}_with_options", []
    original = getattr(mdfast.decode, name)

    def spy(model, input_ids, options, *args, **kwargs):
        calls.append(options)
        return original(model, input_ids, options, *args, **kwargs)

    monkeypatch.setattr(mdfast.decode, name, spy)
    return calls


@pytest.mark.parametrize("verb", ["generate", "infill"])
def test_suppress_mask_blocks_the_mask_id(verb, model_dir, capsys, monkeypatch):
    """--suppress-mask decodes with the folder's mask id in ``DecodeOptions.suppress_tokens``."""
    calls = spy_on_options(monkeypatch, verb)
    argv = generate(model_dir) if verb == "generate" else infill(model_dir, "w1 <mask:2> w2")
    status, _, err = run(capsys, *argv, "--suppress-mask")
    assert status == 0, err
    mask_id = load_tokenizer(model_dir).mask_token_id
    assert [options.suppress_tokens for options in calls] == [[mask_id]]


@pytest.mark.parametrize("verb", ["generate", "infill"])
@pytest.mark.parametrize("factor", [None, "0.5"])
def test_the_factor_decoder_decodes_with_its_factor(verb, factor, model_dir, capsys, monkeypatch):
    """``--decoder factor --factor F`` decodes with ``DecodeOptions(decoder="factor", factor=F)``; without
    --factor the field stays None (the decoder's default 1.0)."""
    calls = spy_on_options(monkeypatch, verb)
    argv = generate(model_dir) if verb == "generate" else infill(model_dir, "w1 <mask:3> w2")
    status, out, err = run(capsys, *argv, "--decoder", "factor", *(["--factor", factor] if factor else []))
    assert status == 0, err
    assert [(options.decoder, options.factor) for options in calls] == [("factor", factor and float(factor))]
    assert all(word in VOCAB for word in out.split())
    assert re.search(r"\b[1-4] forwards", err), err


@pytest.mark.parametrize("mode", ["dual", "prefix"])
def test_generate_with_a_kv_cache(mode, llada_dir, capsys):
    """--cache on a native LLaDA folder decodes; --cache-refresh 1 gives exactly the tokens of no cache."""
    argv = [*generate(llada_dir), "--max-new-tokens", "8", "--steps", "8", "--block-length", "4"]
    status, plain, err = run(capsys, *argv)
    assert status == 0, err
    status, cached, err = run(capsys, *argv, "--cache", mode, "--cache-refresh", "1")
    assert status == 0 and cached == plain, err
    status, _, err = run(capsys, *argv, "--cache", mode)
    assert status == 0 and "8 forwards" in err, err


def test_cache_on_a_model_without_a_native_body_is_named(model_dir, capsys):
    status, _, err = run(capsys, *generate(model_dir), "--cache", "dual")
    assert status != 0 and "cache: only the native LLaDA body" in err, err


def test_cache_refresh_without_a_cache_is_a_usage_error(model_dir, no_weights, capsys):
    status, _, err = run(capsys, *generate(model_dir), "--cache-refresh", "2")
    assert status == 2 and "--cache-refresh: refreshes a KV cache, but cache is None" in err, err
