"""No crash loses finished work: ``mdfast train grpo`` and ``mdfast train mdlm`` killed (SIGKILL) and resumed.

Each test runs the command uninterrupted, then runs it again in a subprocess that is killed with SIGKILL at a
seeded random point (a seeded delay after the run's log reaches a seeded step, so the kill lands anywhere: in a
step, in a checkpoint's writes, between them), resumes it with the same command plus ``--resume``, and checks
that the final weights, optimizer state and logged metrics are bit for bit the uninterrupted run's (CPU, one
thread). The ``slow`` variants kill the same run several times over before letting it finish.

Run as a script (``python tests/test_crash_resume.py mdlm ARGV``) this file is the MDLM subprocess: the command
with the token streams of a few standard-library files instead of the whole library (as test_mdlm.py does).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import mdfast.cli
from mdfast import StepPolicy

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent
TRAIN_FILES = ("json/encoder.py", "json/decoder.py", "textwrap.py")
HELDOUT_FILES = ("string.py",)
MDLM_TINY = ["--seq-len", "64", "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--span-min", "4"]
MDLM_TINY += ["--span-max", "32", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "4", "--eval-windows", "16"]
MDLM_TINY += ["--evals", "3", "--seed", "5", "--save-dtype", "float32"]


def small_streams():
    """The (training, held-out) token streams of a few standard-library files."""
    from mdfast.code_model import data as code_data  # measured import cost: tokenizers, transformers

    tokenizer = code_data.load_tokenizer()
    lib = Path(sysconfig.get_paths()["stdlib"])
    return tuple(
        code_data.encode_files(tokenizer, [(lib / name).read_text(encoding="utf-8") for name in names])
        for names in (TRAIN_FILES, HELDOUT_FILES)
    )


def use_small_streams(setattr=setattr) -> None:
    """Make ``mdfast train mdlm`` read ``small_streams`` (``setattr``: pytest's monkeypatch.setattr in a test)."""
    from mdfast.code_model import pretrain  # measured import cost: tokenizers, transformers

    streams = small_streams()
    setattr(pretrain, "token_streams", lambda tokenizer, cache: streams)


def environment() -> dict[str, str]:
    """The subprocess's environment: one thread, offline, the tests folder importable (the reward function)."""
    paths = [str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(paths)}


def run_and_kill(command: list[str], log: Path, kill_after_step: int, delay: float, timeout: float = 120.0) -> int:
    """Run ``command``; SIGKILL it ``delay`` seconds after ``log`` first shows a step >= ``kill_after_step``.

    Returns the exit status (-9 when killed; the run may also have finished first, status 0).
    """
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and last_step(log) < kill_after_step:
            if time.monotonic() > deadline:
                raise AssertionError(f"{command}: no step {kill_after_step} in {log} within {timeout} s")
            time.sleep(0.01)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"{command}: exit {process.returncode}\n{process.stderr.read().decode()}")
    process.stderr.close()
    return process.returncode


def last_step(log: Path) -> int:
    """The highest step of the whole lines of a JSONL log so far (-1 when there is none)."""
    try:
        lines = log.read_text().split("\n")[:-1]
    except FileNotFoundError:
        return -1
    steps = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            steps.append(json.loads(line)["step"])
    return max(steps, default=-1)


def records(log: Path, timing: tuple[str, ...]) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in timing} for line in log.read_text().splitlines()]


def kill_points(seed: int, count: int, last: int) -> list[tuple[int, float]]:
    """``count`` seeded (step to wait for, delay in seconds after it) pairs, steps rising within 1..last."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(1, last + 1), count))
    return [(step, rng.uniform(0.0, 0.3)) for step in steps]


# ---------------------------------------------------------------------------------------------
# GRPO
# ---------------------------------------------------------------------------------------------

GRPO_TIMING = ()  # metrics.jsonl holds no timing


def grpo_setup(tmp_path: Path, max_steps: int) -> tuple[list[str], Path]:
    """``mdfast train grpo`` arguments on a tiny BERT (test_train_grpo.py's), less --output-dir; and the model."""
    from checks import tiny_bert
    from train_fixtures import MASK, prompt_ids

    folder = tmp_path / "model"
    if not folder.exists():
        tiny_bert().save_pretrained(folder)
    data = tmp_path / "train.jsonl"
    rows = [{"prompt_ids": ids, "parity": i % 2} for i, ids in enumerate(prompt_ids(6, seed=3))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--model", str(folder), "--data", str(data), "--reward", "train_fixtures:even_reward"]
    argv += ["--mask-token-id", str(MASK), "--device", "cpu", "--backend", "torch", "--disable-tqdm"]
    argv += ["--num-generations", "3", "--per-device-train-batch-size", "2", "--max-completion-length", "5"]
    argv += ["--steps", "3", "--policy-hidden", "8", "--learning-rate", "1e-2", "--max-steps", str(max_steps)]
    argv += ["--logging-steps", "1", "--save-steps", "1", "--seed", "7"]
    return argv, folder


def check_grpo_resumes_after_kills(tmp_path: Path, max_steps: int, kills: list[tuple[int, float]]) -> int:
    """Run, kill at each of ``kills``, resume each time, finish; compare to the run never killed. Returns the kills."""
    pytest.importorskip("transformers", reason="the GRPO run decodes with a tiny transformers BERT")
    argv, _ = grpo_setup(tmp_path, max_steps)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert mdfast.cli.main(["train", "grpo", *argv, "--output-dir", str(whole)]) == 0
    command = [sys.executable, "-m", "mdfast", "train", "grpo", *argv, "--output-dir", str(parts)]
    killed = 0
    for step, delay in kills:
        resume = ["--resume"] if any(parts.glob("checkpoint-*/trainer_state.pt")) else []
        killed += run_and_kill(command + resume, parts / "metrics.jsonl", step, delay) == -signal.SIGKILL
    resume = ["--resume"] if any(parts.glob("checkpoint-*/trainer_state.pt")) else []
    assert mdfast.cli.main(["train", "grpo", *argv, "--output-dir", str(parts), *resume]) == 0
    final = {
        name: StepPolicy.load(run / "policy.safetensors").state_dict() for name, run in (("a", whole), ("b", parts))
    }
    for key, value in final["a"].items():
        assert torch.equal(value, final["b"][key]), key
    state = {
        name: torch.load(run / f"checkpoint-{max_steps}" / "trainer_state.pt") for name, run in ((0, whole), (1, parts))
    }
    for a, b in zip(state[0]["optimizer"]["state"].values(), state[1]["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert state[0]["scheduler"] == state[1]["scheduler"]
    assert records(whole / "metrics.jsonl", GRPO_TIMING) == records(parts / "metrics.jsonl", GRPO_TIMING)
    assert [r["step"] for r in records(parts / "metrics.jsonl", GRPO_TIMING)] == list(range(1, max_steps + 1))
    assert not list(parts.rglob("*.tmp")), "no temporary file is left behind"
    return killed


def test_grpo_killed_at_a_random_point_resumes_to_the_uninterrupted_run(tmp_path):
    killed = check_grpo_resumes_after_kills(tmp_path, max_steps=8, kills=kill_points(seed=1, count=1, last=4))
    assert killed == 1, "the run was killed before it finished"


@pytest.mark.slow
def test_grpo_killed_five_times_resumes_to_the_uninterrupted_run(tmp_path):
    killed = check_grpo_resumes_after_kills(tmp_path, max_steps=14, kills=kill_points(seed=2, count=5, last=12))
    assert killed >= 4


# ---------------------------------------------------------------------------------------------
# MDLM (the code model)
# ---------------------------------------------------------------------------------------------

MDLM_TIMING = ("elapsed_s", "tokens_per_s", "plan")


def check_mdlm_resumes_after_kills(tmp_path: Path, steps: int, kills: list[tuple[int, float]], monkeypatch) -> int:
    """Run, kill at each of ``kills``, resume each time, finish; compare to the run never killed. Returns the kills."""
    from mdfast.code_model import pretrain  # measured import cost: tokenizers, transformers

    use_small_streams(monkeypatch.setattr)

    argv = ["--device", "cpu", "--quiet", "--threads", "1", "--steps", str(steps), "--log-every", "1"]
    argv += ["--save-minutes", "0.0001", *MDLM_TINY]  # a checkpoint after every step
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert mdfast.cli.main(["train", "mdlm", "--out", str(whole), *argv]) == 0
    command = [sys.executable, str(Path(__file__).resolve()), "mdlm", "--out", str(parts), *argv]
    killed = 0
    for step, delay in kills:
        resume = ["--resume"] if (parts / pretrain.STATE_FILE).exists() else []
        killed += run_and_kill(command + resume, parts / pretrain.LOG_FILE, step, delay) == -signal.SIGKILL
    resume = ["--resume"] if (parts / pretrain.STATE_FILE).exists() else []
    assert mdfast.cli.main(["train", "mdlm", "--out", str(parts), *argv, *resume]) == 0
    state = [torch.load(run / pretrain.STATE_FILE, weights_only=False) for run in (whole, parts)]
    assert state[0]["step"] == state[1]["step"] == steps
    for key, value in state[0]["model"].items():
        assert torch.equal(value, state[1]["model"][key]), key
    for a, b in zip(state[0]["optimizer"]["state"].values(), state[1]["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    shipped = [load_file(run / "model-00001-of-00001.safetensors") for run in (whole, parts)]
    assert all(torch.equal(value, shipped[1][key]) for key, value in shipped[0].items())
    assert records(whole / pretrain.LOG_FILE, MDLM_TIMING) == records(parts / pretrain.LOG_FILE, MDLM_TIMING)
    runs = [json.loads((run / pretrain.RUN_FILE).read_text()) for run in (whole, parts)]
    assert runs[0]["heldout_eval"] == runs[1]["heldout_eval"] and runs[1]["step"] == steps
    assert not list(parts.rglob("*.tmp")), "no temporary file is left behind"
    return killed


def test_mdlm_killed_at_a_random_point_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    kills = kill_points(seed=1, count=1, last=8)
    killed = check_mdlm_resumes_after_kills(tmp_path, steps=16, kills=kills, monkeypatch=monkeypatch)
    assert killed == 1, "the run was killed before it finished"


@pytest.mark.slow
def test_mdlm_killed_five_times_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
    kills = kill_points(seed=2, count=5, last=26)
    killed = check_mdlm_resumes_after_kills(tmp_path, steps=30, kills=kills, monkeypatch=monkeypatch)
    assert killed >= 4


if __name__ == "__main__":
    if sys.argv[1:2] != ["mdlm"]:
        raise SystemExit("usage: python tests/test_crash_resume.py mdlm ARGV (mdfast train mdlm on small streams)")
    torch.set_num_threads(1)
    use_small_streams()
    sys.exit(mdfast.cli.main(["train", "mdlm", *sys.argv[2:]]))
