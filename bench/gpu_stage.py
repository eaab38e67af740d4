"""What every stage of the GPU check shares: the Stage record of its checks, its exit statuses, its results.

A stage prints what it does as it goes and ends with one line ``KEY: <its key figure>``; its exit status is
PASS (0), FAIL (1) or SKIP (3, the KEY line says why). Stages that measure write ``<results>/<stage>.json``.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

PASS, FAIL, SKIP = 0, 1, 3


class Stage:
    """What one stage ran: each case passes or fails on its own (the others still run)."""

    def __init__(self, name: str, budget: float) -> None:
        self.name = name
        self.started = time.monotonic()
        self.deadline = self.started + budget
        self.passed: list[str] = []
        self.failed: list[str] = []

    def left(self) -> float:
        """Seconds left before the stage's own deadline."""
        return self.deadline - time.monotonic()

    def case(self, name: str, fn: Callable[[], object]):
        """Run one check; PASS or FAIL (with the traceback's end) is printed with its duration."""
        start = time.monotonic()
        try:
            result = fn()
        except Exception as error:
            lines = traceback.format_exception(type(error), error, error.__traceback__)
            print(f"FAIL {name} ({time.monotonic() - start:.1f} s): {type(error).__name__}: {error}", flush=True)
            print("".join(lines[-4:]).rstrip(), flush=True)
            self.failed.append(name)
            return None
        print(f"PASS {name} ({time.monotonic() - start:.1f} s)", flush=True)
        self.passed.append(name)
        return result

    def finish(self, key: str = "") -> int:
        """Print the KEY line (checks passed, the failed ones, ``key``); PASS, or FAIL if any check failed."""
        total = len(self.passed) + len(self.failed)
        summary = f"{len(self.passed)}/{total} checks pass"
        if self.failed:
            summary += f"; failed: {', '.join(self.failed[:4])}{' ...' if len(self.failed) > 4 else ''}"
        print(f"KEY: {summary}{'; ' + key if key else ''}", flush=True)
        return FAIL if self.failed else PASS


def skip(reason: str) -> int:
    """Print ``reason`` as the KEY line; the SKIP status."""
    print(f"KEY: {reason}", flush=True)
    return SKIP


def write_results(directory: str | None, stage: str, data: dict) -> None:
    """``data`` as ``<directory>/<stage>.json`` (nothing without a directory)."""
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / f"{stage}.json").write_text(json.dumps(data, indent=1))


def read_results(directory: str | None, stage: str) -> dict | None:
    """What ``write_results`` wrote for ``stage``, or None."""
    path = Path(directory or ".") / f"{stage}.json"
    return json.loads(path.read_text()) if path.is_file() else None
