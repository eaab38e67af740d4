"""Two eval runs writing to the same --out are kept apart: the second is refused, never interleaved.

A RunLog holds ``<out>/.mdfast-eval.lock`` (fcntl.flock, non-blocking) while it is open; another process's
RunLog in that folder raises OutFolderBusy naming the folder and the holder's pid, and ``mdfast eval`` exits 1
with that one line. The lock goes with its holder: a killed run leaves nothing that blocks the next one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import mdfast.cli
from mdfast.code_model.shipped import SHIPPED_MODEL_DIR
from mdfast.eval.run_log import LOCK_FILE, OutFolderBusy, RunLog

fcntl = pytest.importorskip("fcntl", reason="the --out lock uses fcntl.flock (POSIX only)")

HOLD = """
import sys
from mdfast.eval.run_log import RunLog
log = RunLog(sys.argv[1], {"run": "other"})
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_held_lock_refuses_a_second_run_log_naming_folder_and_pid(tmp_path):
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        with pytest.raises(OutFolderBusy, match=rf"^{tmp_path}: another mdfast eval run \(pid 4242\) is writing"):
            RunLog(tmp_path / "code.jsonl", {"a": 1})
        assert not (tmp_path / "code.jsonl").exists(), "refused before anything is written"
    finally:
        os.close(fd)
    log = RunLog(tmp_path / "code.jsonl", {"a": 1})
    assert (tmp_path / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    again = RunLog(tmp_path / "code.jsonl", {"a": 1})  # one process's logs share the folder's lock
    log.close()
    again.append({"cell": 1})
    again.close()


def test_a_second_process_is_refused_until_the_first_is_killed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "code.jsonl")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    try:
        assert holder.stdout.readline() == b"holding\n"
        with pytest.raises(OutFolderBusy, match=rf"{tmp_path}: .*\(pid {holder.pid}\)"):
            RunLog(tmp_path / "code.jsonl", {"run": "other"})
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    log = RunLog(tmp_path / "code.jsonl", {"run": "other"})  # the kill released the lock
    assert log.entries == []
    log.close()


def test_the_command_exits_1_with_one_line_naming_the_folder(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the eval extra's matplotlib is not installed")
    fd = os.open(tmp_path / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        argv = ["eval", "code", "--model", str(SHIPPED_MODEL_DIR), "--cases", "1", "--out", str(tmp_path)]
        assert mdfast.cli.main([*argv, "--no-progress"]) == 1
    finally:
        os.close(fd)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"mdfast eval code: error: OutFolderBusy: {tmp_path}: another mdfast eval run (pid 4242)")
