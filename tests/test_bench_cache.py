"""bench/bench_cache.py --quick runs end to end and writes the KV cache report's tables in their structure."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "bench_cache.py"


def table(text: str, heading: str) -> list[list[str]]:
    """The body rows (cells stripped) of the markdown table under ``heading``."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, f"no table under {heading!r}"
    assert set(lines[1].replace("|", "")) == {"-"}, "the second line separates the header"
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bench_cache") / "cache.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # 1: some target missed, which toy shapes may well do; anything else is a crash
    assert run.returncode in (0, 1), run.stderr[-3000:]
    text = out.read_text()
    assert text in run.stdout, "the report is printed as written"
    return text


def test_the_header_names_device_date_torch_and_command(report):
    for key in (
        "- device: CPU",
        "- date: ",
        "- torch ",
        "- command: `python bench/bench_cache.py --quick",
        "- timing: ",
    ):
        assert key in report, key


def test_the_tokens_table_has_every_setting_and_consistent_ratios(report):
    rows = table(report, "## Tokens/s")
    assert all(len(r) == 9 for r in rows)
    settings = {(r[0], r[1], r[2], r[3]) for r in rows}
    for decoder in ("low_confidence", "xflow"):
        for mode in ("none", "prefix", "dual"):
            assert ("code", "1", decoder, mode) in settings
        for mode in ("none", "dual"):
            assert ("code", "2", decoder, mode) in settings
            assert ("random", "1", decoder, mode) in settings
    base = {(r[0], r[1], r[2]): float(r[5]) for r in rows if r[3] == "none"}
    for model, batch, decoder, mode, seconds, tokens_per_s, ratio, target, met in rows:
        assert float(seconds) > 0 and float(tokens_per_s) > 0
        assert float(ratio.rstrip("x")) == pytest.approx(float(tokens_per_s) / base[(model, batch, decoder)], rel=0.02)
        if mode == "none":
            assert ratio == "1.00x" and target == "" and met == ""
        else:
            assert re.fullmatch(r">= [\d.]+x", target), target
            assert met == ("yes" if float(ratio.rstrip("x")) >= float(target[3:-1]) else "no")


def test_the_forward_table_sets_each_forward_against_its_flop_ratio(report):
    rows = table(report, "## Ms per forward")
    assert all(len(r) == 8 for r in rows)
    assert {(r[0], r[1]) for r in rows} == {("code", "1"), ("code", "2"), ("random", "1")}
    forwards = {r[2] for r in rows}
    assert forwards == {"full, no cache", "refresh (full + K, V)", "cached, dual", "cached, prefix"}
    for _model, _batch, forward, _S, ms, rel, flop, overhead in rows:
        assert float(ms) > 0
        if forward == "cached, dual":
            assert float(flop) == pytest.approx(8 / 40, abs=1e-3)  # --quick: block 8 of 24 + 16 positions
        assert float(overhead.rstrip("x")) == pytest.approx(float(rel) / float(flop), rel=0.02, abs=0.01)
