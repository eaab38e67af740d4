"""A benchmark run's log in its output folder: one JSON line of settings, then one line per finished piece.

A run appends each piece (a grid cell, a generated problem) as it finishes, flushed to disk, so a run stopped
at any point keeps what it finished. Opening the log again with the same settings resumes it (``entries``
holds the finished pieces); other settings raise ``SettingsMismatch``, unless ``restart`` discards the old run.
A last line cut short by a kill is dropped.

One run at a time per folder: a RunLog holds an exclusive lock (``fcntl.flock``, non-blocking) on
``<folder>/.mdfast-eval.lock`` from its opening to its ``close`` (or the process's end); a second process that
opens a RunLog in that folder meanwhile gets ``OutFolderBusy`` naming the folder and the holder's pid, so two
runs never interleave their lines. RunLogs of one process share the folder's lock.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from mdfast.atomic import atomic_write_text

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not kept apart
    fcntl = None

__all__ = ["LOCK_FILE", "OutFolderBusy", "RunLog", "SettingsMismatch"]

LOCK_FILE = ".mdfast-eval.lock"
_held: dict[str, list[int]] = {}  # folder (real path) -> [lock file descriptor, RunLogs holding it]


class OutFolderBusy(RuntimeError):
    """Another process runs a benchmark into the same output folder (the message names it and that pid)."""


def _lock(folder: Path) -> str:
    """Take (or share, within this process) the exclusive lock of ``folder``; returns the key to release it."""
    key = os.path.realpath(folder)
    if key in _held:
        _held[key][1] += 1
        return key
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode(errors="replace").strip()
            os.close(fd)
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise OutFolderBusy(
                f"{folder}: another mdfast eval run{pid} is writing to this --out folder; wait for it to finish "
                "or pass another --out"
            ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = [fd, 1]
    return key


def _unlock(key: str) -> None:
    held = _held[key]
    held[1] -= 1
    if held[1] == 0:
        del _held[key]
        os.close(held[0])  # closing the descriptor releases the flock


class SettingsMismatch(ValueError):
    """The output folder holds a run whose settings differ from this one's (the message names each)."""


class RunLog:
    """An append-only JSONL file: ``{"settings": ...}`` first, then the run's finished pieces.

    path: the file (its folder is created). settings: JSON-ready dict that identifies the run.
    restart: discard an earlier run in the file instead of resuming it.
    entries: the pieces an earlier run with the same settings finished (empty for a new run).
    Holds the folder's lock until ``close`` (``OutFolderBusy`` when another process holds it).
    """

    def __init__(self, path: str | os.PathLike, settings: dict, *, restart: bool = False) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.entries: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_key: str | None = _lock(self.path.parent)
        try:
            if self.path.exists() and not restart:
                self.entries = self._read()
            else:
                self._rewrite()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the folder's lock (once; the process's end releases it too)."""
        if getattr(self, "_lock_key", None) is not None:
            key, self._lock_key = self._lock_key, None
            _unlock(key)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the module may be gone; the OS releases it
            self.close()

    def append(self, entry: dict) -> None:
        """Write one finished piece as a line, flushed to disk before returning."""
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(json.loads(json.dumps(entry)))

    def _read(self) -> list[dict]:
        lines = self.path.read_text().splitlines()
        parsed = []
        for i, line in enumerate(lines):
            try:
                parsed.append(json.loads(line))
            except json.JSONDecodeError:
                if i + 1 < len(lines):
                    raise ValueError(f"{self.path}: line {i + 1} is not JSON; pass --restart to discard it") from None
        if not parsed or not isinstance(parsed[0], dict) or "settings" not in parsed[0]:
            raise ValueError(f"{self.path}: not a run log (no settings line); pass --restart to discard it")
        differences = describe_differences(parsed[0]["settings"], self.settings)
        if differences:
            raise SettingsMismatch(
                f"{self.path.parent} holds a run with other settings ({differences}): pass the same options to "
                "resume it, --restart to discard it, or another --out"
            )
        entries = parsed[1:]
        if len(parsed) < len(lines):  # a line cut short by a kill
            self._rewrite(entries)
        return entries

    def _rewrite(self, entries: list[dict] = ()) -> None:
        lines = [json.dumps({"settings": self.settings}), *(json.dumps(e) for e in entries)]
        atomic_write_text(self.path, "".join(line + "\n" for line in lines))


def describe_differences(before: dict, now: dict) -> str:
    """``name: X there, Y here`` for each setting that differs, joined by "; " ("" when none does)."""
    names = list(dict.fromkeys([*before, *now]))
    return "; ".join(
        f"{name}: {json.dumps(before.get(name))} there, {json.dumps(now.get(name))} here"
        for name in names
        if before.get(name) != now.get(name)
    )
