"""A benchmark run's log in its output folder: one JSON line of settings, then one line per finished piece.

A run appends each piece (a grid cell, a generated problem) as it finishes, flushed to disk, so a run stopped
at any point keeps what it finished. Opening the log again with the same settings resumes it (``entries``
holds the finished pieces); other settings raise ``SettingsMismatch``, unless ``restart`` discards the old run.
A last line cut short by a kill is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["RunLog", "SettingsMismatch"]


class SettingsMismatch(ValueError):
    """The output folder holds a run whose settings differ from this one's (the message names each)."""


class RunLog:
    """An append-only JSONL file: ``{"settings": ...}`` first, then the run's finished pieces.

    path: the file (its folder is created). settings: JSON-ready dict that identifies the run.
    restart: discard an earlier run in the file instead of resuming it.
    entries: the pieces an earlier run with the same settings finished (empty for a new run).
    """

    def __init__(self, path: str | os.PathLike, settings: dict, *, restart: bool = False) -> None:
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))
        self.entries: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not restart:
            self.entries = self._read()
        else:
            self._rewrite()

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
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in lines))
        partial.replace(self.path)


def describe_differences(before: dict, now: dict) -> str:
    """``name: X there, Y here`` for each setting that differs, joined by "; " ("" when none does)."""
    names = list(dict.fromkeys([*before, *now]))
    return "; ".join(
        f"{name}: {json.dumps(before.get(name))} there, {json.dumps(now.get(name))} here"
        for name in names
        if before.get(name) != now.get(name)
    )
