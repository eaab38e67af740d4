"""The ``mdfast`` command (mdfast/cli.py), called in-process: ``main([...])`` and its output.

Models are tiny random BERTs saved to a temporary folder with a tokenizer built offline (a
vocab file, or the ``tokenizers`` library); nothing reaches the hub. Every error must be one line
``mdfast <command>: error: ...`` with no traceback, exit status 2 for a bad command line and 1 for a
runtime failure, and the checks that can run before the weights load must run before them
(``load_model`` is replaced by a stand-in that says it was reached).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch
from checks import tiny_bert

import mdfast
import mdfast.loading
from mdfast import cli
from mdfast.backends import native

transformers = pytest.importorskip("transformers", reason="the tests build tiny models from transformers classes")

WORDS = [f"w{i}" for i in range(59)]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]  # 64 tokens, [MASK] = 4


def save(folder, vocab=None, model=None):
    """A model folder: the model, and a BertTokenizer over ``vocab`` (None: no tokenizer files)."""
    folder.mkdir(parents=True, exist_ok=True)
    (model or tiny_bert()).save_pretrained(folder)
    if vocab is not None:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save(tmp_path_factory.mktemp("model"), VOCAB)


def run(capsys, *argv):
    """(status, stdout, stderr) of ``mdfast argv...``."""
    capsys.readouterr()  # what came before (transformers' progress bars)
    status = cli.main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_error(err, prog, pattern):
    """``err`` is exactly one line ``<prog>: error: ...`` matching ``pattern``, no traceback."""
    import re

    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


class WeightsLoaded(Exception):
    pass


@pytest.fixture
def no_weights(monkeypatch):
    """The weights must not load: reaching ``load_model`` ends the command with a named error."""

    def load_model(*args, **kwargs):
        raise cli.CommandError("the weights were loaded")

    monkeypatch.setattr(mdfast.loading, "load_model", load_model)


def generate(folder, *options):
    base = ["generate", "--model", folder, "--prompt", "w1 w2 w3", "--device", "cpu", "--backend", "torch"]
    return [*base, "--decoder", "low_confidence", "--steps", "4", "--max-new-tokens", "4", *options]


# ---------------------------------------------------------------------------------------------
# The top level
# ---------------------------------------------------------------------------------------------


def test_version(capsys):
    status, out, err = run(capsys, "--version")
    assert (status, out, err) == (0, f"mdfast {mdfast.__version__}\n", "")


def test_help_lists_every_command(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and out.startswith("usage: mdfast ")
    for name, command in cli.COMMANDS.items():
        assert f"  {name}" in out and command.help in out


def test_no_command_is_a_usage_error(capsys):
    status, out, err = run(capsys)
    assert status == 2 and out == "" and "commands:" in err


def test_unknown_command_is_named(capsys):
    status, _, err = run(capsys, "frobnicate")
    assert status == 2
    assert_error(err, "mdfast", rf"unknown command 'frobnicate' \(choose from {', '.join(cli.COMMANDS)}\)")


def test_unknown_top_level_option_is_named(capsys):
    status, _, err = run(capsys, "--frobnicate", "info")
    assert status == 2
    assert_error(err, "mdfast", "unrecognized arguments: --frobnicate")


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_every_command_help_runs_nothing(name, capsys, monkeypatch):
    command = cli.COMMANDS[name]
    target = command.load()
    if hasattr(target, "run"):
        monkeypatch.setattr(target, "run", lambda args: pytest.fail(f"`mdfast {name} --help` ran the command"))
    status, out, err = run(capsys, name, "--help")
    assert status == 0 and err == ""
    assert out.startswith(f"usage: mdfast {name}")


@pytest.mark.parametrize("group", ["train"])
def test_every_sub_command_help_runs_nothing(group, capsys, monkeypatch):
    commands = cli.COMMANDS[group].load()
    monkeypatch.setattr(type(commands), "run", lambda self, args: pytest.fail(f"`mdfast {group} --help` ran"))
    for name in commands.modules:
        status, out, err = run(capsys, group, name, "--help")
        assert status == 0 and err == "" and out.startswith(f"usage: mdfast {group} {name}")


def test_bench_help_is_clean(capsys):
    status, out, _ = run(capsys, "bench", "--help")
    assert status == 0 and out.startswith("usage: mdfast bench")
    assert "``" not in out and "bench_step.py" not in out


# ---------------------------------------------------------------------------------------------
# Sub-commands plug in: a module with add_arguments/run (nested commands too), or main(argv)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def plugged(monkeypatch):
    """`mdfast eval antibody|humaneval ...` from a module written the way the docstring says."""
    calls = []
    module = types.ModuleType("fake_eval")

    def add_arguments(parser):
        tasks = parser.add_subparsers(dest="task", required=True, metavar="task")
        antibody = tasks.add_parser("antibody", help="the antibody benchmark")
        antibody.add_argument("--budgets", default="1/4,1")
        humaneval = tasks.add_parser("humaneval", help="HumanEval")
        humaneval.add_argument("--steps", type=int, default=64)

    def run(args):
        if args.task == "humaneval" and args.steps < 1:
            raise cli.UsageError(f"--steps: expected at least 1, got {args.steps}")
        calls.append(args)
        return 0

    module.add_arguments, module.run = add_arguments, run
    scripted = types.ModuleType("fake_script")
    scripted.main = lambda argv: calls.append(argv) or 3
    monkeypatch.setitem(sys.modules, "fake_eval", module)
    monkeypatch.setitem(sys.modules, "fake_script", scripted)
    monkeypatch.setitem(cli.COMMANDS, "eval", cli.Command("fake_eval", "measure decoding quality", extra="eval"))
    monkeypatch.setitem(cli.COMMANDS, "script", cli.Command("fake_script", "parses its own argv"))
    monkeypatch.setitem(cli.COMMANDS, "train", cli.Command("fake_missing_train", "train", extra="train"))
    return calls


def test_a_plugged_command_runs_with_its_own_parser(plugged, capsys):
    assert run(capsys, "eval", "antibody", "--budgets", "1/8")[0] == 0
    assert plugged[-1].task == "antibody" and plugged[-1].budgets == "1/8"
    assert run(capsys, "--debug", "eval", "humaneval", "--steps", "8")[0] == 0
    assert plugged[-1].steps == 8
    assert run(capsys, "script", "--anything", "x") == (3, "", "")
    assert plugged[-1] == ["--anything", "x"]
    out = run(capsys, "--help")[1]
    assert "  eval" in out and "measure decoding quality" in out


def test_a_plugged_command_reports_errors_in_one_line(plugged, capsys):
    status, _, err = run(capsys, "eval", "antibody", "--bogus")
    assert status == 2
    assert_error(err, "mdfast eval", "unrecognized arguments: --bogus")
    status, _, err = run(capsys, "eval", "humaneval", "--steps", "many")
    assert status == 2
    assert_error(err, "mdfast eval humaneval", "argument --steps: invalid int value: 'many'")
    status, _, err = run(capsys, "eval")
    assert status == 2
    assert_error(err, "mdfast eval", "required: task")
    status, _, err = run(capsys, "eval", "humaneval", "--steps", "0")
    assert status == 2
    assert_error(err, "mdfast eval", "--steps: expected at least 1, got 0")
    status, out, _ = run(capsys, "eval", "antibody", "--help")
    assert status == 0 and out.startswith("usage: mdfast eval antibody")
    status, _, err = run(capsys, "train", "grpo")
    assert status == 1
    assert_error(err, "mdfast train", r"fake_missing_train.*pip install \"mdfast\[train\]\"")
    assert run(capsys, "info", "--help")[0] == 0, "the other commands still work"


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
    (["--steps", "0"], r"--steps: expected at least 1, got 0"),
    (["--steps", "8"], r"--steps 8: more steps than the 4 tokens to decode"),
    (["--max-new-tokens", "0"], r"--max-new-tokens: expected at least 1, got 0"),
    (["--block-length", "3"], r"--block-length 3: must divide --max-new-tokens 4"),
    (
        ["--max-new-tokens", "8", "--steps", "3", "--block-length", "4"],
        r"--steps 3: must be a multiple of the 2 blocks",
    ),
    (["--temperature", "-1"], r"--temperature: expected a number >= 0, got -1"),
    (["--device", "gpu"], r"--device: expected cpu, cuda or cuda:N, got 'gpu'"),
    (["--backend", "gpu"], r"argument --backend: invalid choice: 'gpu'"),
    (["--backend", "cuda"], r"--backend cuda cannot run with --device cpu"),
    (["--decoder", "xflow", "--policy", "/nowhere/p.safetensors"], r"--policy: no such file: /nowhere/p.safetensors"),
    (["--decoder", "nonsense"], r"argument --decoder: invalid choice: 'nonsense'"),
    (["--mask-token-id", "64"], r"--mask-token-id: 64 is outside the model's 64 embeddings"),
    (["--mask-token-id", "-1"], r"--mask-token-id: expected a token id >= 0, got -1"),
]


@pytest.mark.parametrize(("options", "message"), BAD_COMMAND_LINES, ids=[" ".join(o) for o, _ in BAD_COMMAND_LINES])
def test_generate_names_a_bad_command_line_before_loading(options, message, model_dir, no_weights, capsys):
    status, out, err = run(capsys, *generate(model_dir, *options))
    assert status == 2 and out == ""
    assert_error(err, "mdfast generate", message)


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
    """transformers builds a tokenizer of the 5 special tokens for a folder without tokenizer
    files; it used to decode to an empty line."""
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
    tokenizers = pytest.importorskip("tokenizers", reason="the test builds a tokenizer with the tokenizers library")
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


# ---------------------------------------------------------------------------------------------
# mdfast info
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_process(monkeypatch, tmp_path):
    """What `mdfast info` sees in a new process with an empty build cache; building is a failure."""
    monkeypatch.setenv("MDFAST_BUILD_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setattr(native, "_failed", {})
    monkeypatch.setattr(native, "load", lambda spec: pytest.fail(f"`mdfast info` compiled {spec.name}"))
    return tmp_path / "cache"


def test_info_compiles_nothing_and_says_where_it_will_cache(fresh_process, capsys):
    if importlib.util.find_spec(native.CPU_EXTENSION.prebuilt) is not None:
        pytest.skip("the CPU extension was compiled at install time (MDFAST_BUILD_EXT=1)")
    status, out, err = run(capsys, "info")
    assert status == 0 and err == ""
    assert out.startswith(f"mdfast {mdfast.__version__}, Python ")
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(lines) == {"torch", "cpu", "cuda", "triton"}
    assert lines["torch"].split()[1] == "available"
    assert "not compiled yet" in lines["cpu"] and "mdfast info --build" in lines["cpu"]
    assert str(fresh_process / native.CPU_EXTENSION.name) in lines["cpu"]
    if not torch.cuda.is_available():
        assert lines["cuda"].endswith("unavailable: no CUDA device")


def test_info_build_compiles_what_runs_here(fresh_process, capsys, monkeypatch):
    """`--build` loads every backend (``backends.available()``, which compiles) and prints why not."""
    calls = []
    reasons = {"torch": None, "cpu": "mdfast_cpu: RuntimeError: no C++ compiler", "cuda": "no CUDA device"}
    monkeypatch.setattr(mdfast.backends, "available", lambda: calls.append("built") or {**reasons, "triton": None})
    assert run(capsys, "info")[0] == 0 and calls == []
    status, out, _ = run(capsys, "info", "--build")
    assert status == 0 and calls == ["built"]
    assert "  cpu     unavailable: mdfast_cpu: RuntimeError: no C++ compiler\n" in out
    assert "  triton  available\n" in out


def test_info_says_available_for_a_compiled_extension(capsys, monkeypatch):
    reason = mdfast.backends.get("cpu").unavailable_reason()  # compiles it once for the test session
    if reason is not None:
        pytest.skip(f"the CPU extension cannot be compiled here: {reason}")
    monkeypatch.setattr(native, "_loaded", {})  # a new process: found in the cache, not loaded yet
    assert native.build_state(native.CPU_EXTENSION)[0]
    status, out, _ = run(capsys, "info")
    assert status == 0 and any(line.split()[:2] == ["cpu", "available"] for line in out.splitlines())


def test_build_state_finds_the_build_of_these_sources_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MDFAST_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    spec = native.ExtensionSpec(name="mdfast_probe", prebuilt="mdfast._probe_ext", sources=(), cflags=())
    folder = native.build_dir(spec)
    assert native.build_state(spec) == (False, str(folder))
    folder.mkdir()
    (folder / f"{native.module_name(spec)}.so").write_bytes(b"")
    assert native.build_state(spec) == (True, str(folder))
    other = native.ExtensionSpec(name="mdfast_probe", prebuilt="mdfast._probe_ext", sources=(), cflags=("-O1",))
    assert native.build_dir(other) != folder and not native.build_state(other)[0], "other flags: another build"


def test_generate_runs_a_llada_checkpoint_natively(tmp_path, capsys):
    """A LLaDA checkpoint folder (config.json model_type "llada", as mdfast.save_llada and LLaDA's
    release write it) decodes on mdfast's native body: no remote code, no --trust-remote-code."""
    from mdfast.code_model import data as code_data
    from mdfast.code_model import pretrain as mdlm
    from mdfast.loading import load_config, load_model

    tokenizer = code_data.load_tokenizer()
    options = mdlm.TrainOptions(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64)
    mdfast.save_llada(mdfast.LLaDAModel(mdlm.code_model_config(options, len(tokenizer))), tmp_path)
    code_data.save_tokenizer(tokenizer, tmp_path, 256)
    assert isinstance(load_model(tmp_path), mdfast.LLaDAModel) and load_config(tmp_path).model_type == "llada"
    status, _, err = run(capsys, *generate(tmp_path, "--decoder", "xflow", "--backend", "auto"))
    assert status == 0, err
    assert "4 forwards" in err
