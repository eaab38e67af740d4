"""Run untrusted Python programs (model-written code) one subprocess each, with limits.

Each program runs in a fresh interpreter (``python -I -S -B``: no site-packages, no user site, no PYTHON*
variables, no script directory on sys.path) started by ``sandbox_entry.py``, in a fresh scratch directory as its
working directory (removed afterwards), with stdin closed, stdout and stderr to files, and a minimal
environment (PATH, HOME = TMPDIR = the scratch directory, LANG, one thread for OpenMP/BLAS).

What holds, and where:
- wall time: ``Limits.seconds``, then SIGKILL to the program's whole process group; CPU time RLIMIT_CPU;
- memory: RLIMIT_AS (address space) ``Limits.memory_bytes``; files written at most ``Limits.file_bytes`` each
  (RLIMIT_FSIZE), ``Limits.open_files`` descriptors, no core files;
- processes: RLIMIT_NPROC = ``Limits.processes`` (default 1: the program itself; no fork, no thread). The kernel
  does not enforce it for root, so a root caller's programs run as uid ``SANDBOX_UID + slot`` (one uid per
  concurrently running program, so the count is the program's own); a non-root caller's count is all of that
  user's processes, so with the default no program can start one either;
- the strong mode ("namespace", where the kernel allows ``unshare``: root, or unprivileged user namespaces):
  new mount and network namespaces (``sandbox_namespace.py``). No network (not even loopback); the whole
  filesystem read-only but for the scratch directory; an empty read-only tmpfs over /tmp, /var/tmp, /dev/shm,
  /run, the system temp folder, /home, /root and the caller's home (the interpreter's standard library bound
  back in, read-only). A non-root caller's program also loses every capability its user namespace gave it;
- the weak mode ("rlimits", where the kernel refuses, or ``Limits.namespaces`` is False): the limits above, an
  empty network namespace where the kernel allows that alone, else a guard that disables the socket module (not
  a boundary: ctypes gets around it); files: as root, the program is an unprivileged uid that owns nothing but
  its scratch directory (world-writable folders such as /tmp and /dev/shm stay writable); as a non-root caller
  it keeps that user's file permissions (then nothing but the scratch working directory isolates it).
In both modes a seccomp filter (``sandbox_seccomp.py``, where the kernel allows it) refuses signals to any other
process and ptrace, so that a non-root caller's programs, which run as its own uid, cannot kill or trace it.
Each result's ``sandbox`` says which held: mode, network ("namespace" | "guard"), filesystem ("private" |
"shared"), seccomp (bool), uid. bench/RELIABILITY.md ("The sandbox") lists the escape attempts tried in each mode.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

SANDBOX_UID = 64000  # + slot; below 65534 (nobody), within the 16-bit ranges containers usually map
ENTRY = Path(__file__).with_name("sandbox_entry.py")
TAIL_CHARS = 2000
SETUP_FAILED = 125  # sandbox_entry.py's exit status when it cannot isolate the program or drop root


@dataclass(frozen=True)
class Limits:
    """Per program: wall seconds, address space, bytes per written file, open files, processes (module doc).

    - namespaces: use the strong mode where the kernel allows it (False: the weak mode everywhere, to compare).
    """

    seconds: float = 10.0
    memory_bytes: int = 1 << 30
    file_bytes: int = 1 << 24
    open_files: int = 64
    processes: int = 1
    namespaces: bool = True

    def __post_init__(self) -> None:
        for name in ("seconds", "memory_bytes", "file_bytes", "open_files", "processes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"limits.{name}: expected a positive number, got {value!r}")
        if not isinstance(self.namespaces, bool):
            raise TypeError(f"limits.namespaces: expected a bool, got {self.namespaces!r}")


def run_program(source: str, limits: Limits = Limits(), slot: int = 0) -> dict:
    """Run one program (its full source) in the sandbox; a dict of what happened.

    Returns: passed (exit status 0 within the limits), status ("passed" | "timed out" | "failed: <last stderr
    line>" | "killed by <signal>" | "sandbox setup failed: ..."), returncode, seconds, stderr (its last 2,000
    characters), sandbox ({"mode", "network", "filesystem", "seccomp", "uid"}: what isolation held, module
    doc; None when the setup failed).
    slot: 0 <= slot < 1000, picks the uid among concurrently running programs.
    """
    if not isinstance(source, str):
        raise TypeError(f"source: expected a str, got {type(source).__name__}")
    if not (isinstance(slot, int) and 0 <= slot < 1000):
        raise ValueError(f"slot: expected an int in [0, 1000), got {slot!r}")
    scratch = Path(tempfile.mkdtemp(prefix="mdfast-sandbox-"))
    try:
        return _run_in(scratch, source, limits, SANDBOX_UID + slot)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_programs(
    sources: list[str], limits: Limits = Limits(), workers: int | None = None, progress=None
) -> list[dict]:
    """``run_program`` for each source, ``workers`` at a time (default: the CPU count); results in order.

    progress: called with no argument after each program (a progress bar's update).
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not (isinstance(workers, int) and 1 <= workers <= 1000):
        raise ValueError(f"workers: expected an int in [1, 1000], got {workers!r}")
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(workers):
        slots.put(slot)

    def one(source: str) -> dict:
        slot = slots.get()
        try:
            return run_program(source, limits, slot)
        finally:
            slots.put(slot)
            if progress is not None:
                progress()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, sources))


@functools.lru_cache(maxsize=1)
def strong_mode_available() -> bool:
    """Whether this kernel lets a program run in the strong mode (module doc); found once, by running one."""
    result = run_program("pass\n", Limits(seconds=30))
    return result["passed"] and result["sandbox"]["mode"] == "namespace"


def hidden_folders() -> list[str]:
    """The folders the strong mode covers with an empty tmpfs (those that exist, where this process runs)."""
    homes = [os.path.expanduser("~")]
    with contextlib.suppress(KeyError):  # a uid without a passwd entry (some containers)
        homes.append(pwd.getpwuid(os.getuid()).pw_dir)
    candidates = ["/tmp", "/var/tmp", "/dev/shm", "/run", tempfile.gettempdir(), "/home", "/root", *homes]
    kept = [path for path in candidates if os.path.isabs(path) and os.path.isdir(path)]
    return [path for path in dict.fromkeys(kept) if os.path.realpath(path) != "/"]


def _run_in(scratch: Path, source: str, limits: Limits, uid: int) -> dict:
    (scratch / "program.py").write_text(source)
    config = {
        "program": str(scratch / "program.py"),
        "report": str(scratch / "sandbox.json"),
        "memory_bytes": int(limits.memory_bytes),
        "cpu_seconds": int(limits.seconds) + 1,
        "file_bytes": int(limits.file_bytes),
        "open_files": int(limits.open_files),
        "processes": int(limits.processes),
        "uid": uid,
        "scratch": str(scratch),
        "namespaces": limits.namespaces,
        "hide": hidden_folders(),
    }
    (scratch / "config.json").write_text(json.dumps(config))
    if os.geteuid() == 0:
        for path in (scratch, scratch / "program.py"):
            os.chown(path, uid, uid)
    scratch.chmod(0o700)
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(scratch),
        "TMPDIR": str(scratch),
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    start = time.monotonic()
    with open(scratch / "stdout", "wb") as stdout, open(scratch / "stderr", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(ENTRY), str(scratch / "config.json")],
            cwd=scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
        timed_out = _wait_unreaped(process.pid, start + limits.seconds)
        seconds = time.monotonic() - start
        with contextlib.suppress(ProcessLookupError, PermissionError):  # the leader is not reaped yet: its
            os.killpg(process.pid, signal.SIGKILL)  # process group id cannot have been reused
        returncode = process.wait()
    tail = (scratch / "stderr").read_bytes()[-TAIL_CHARS:].decode("utf-8", "replace")
    report = scratch / "sandbox.json"
    sandbox = json.loads(report.read_text()) if report.exists() else None
    return {
        "passed": returncode == 0 and not timed_out,
        "status": _status(returncode, timed_out, tail, (scratch / "stderr").stat().st_size >= limits.file_bytes),
        "returncode": returncode,
        "seconds": seconds,
        "stderr": tail,
        "sandbox": sandbox,
    }


def _wait_unreaped(pid: int, deadline: float) -> bool:
    """Wait until the child exits (left unreaped) or the deadline passes; True when it timed out."""
    delay = 0.001
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return True
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
    return False


def _status(returncode: int, timed_out: bool, stderr: str, stderr_full: bool = False) -> str:
    if timed_out:
        return "timed out"
    if returncode == 0:
        return "passed"
    if stderr_full and returncode > 0:  # its last line is the output, not an error
        return "failed: stderr reached the file size limit (Limits.file_bytes)"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if returncode == SETUP_FAILED and last.startswith("mdfast sandbox:"):
        return f"sandbox setup failed: {last}"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"failed: {last}" if last else f"failed: exit status {returncode}"
