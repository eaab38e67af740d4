"""Every Triton kernel compiles for sm_90 without spilling registers, in every specialisation mdfast's shapes make.

Triton's compiler and ptxas need no GPU. The specialisations are the launchers' at mdfast's shapes,
as Triton specialises them at run time (integers equal to 1 or divisible by 16, 16-byte aligned
pointers): what the interpreter-run tests cannot see. The table (registers, local and shared memory
per specialisation) is what ``python tests/compile_kernels.py`` prints.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton", reason="compiles the Triton kernels")

PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.skipif(not PTXAS.is_file(), reason=f"Triton's bundled ptxas is not at {PTXAS}")
@pytest.mark.slow
def test_triton_kernels_compile_for_hopper_without_spills():
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    script = Path(__file__).with_name("compile_kernels.py")
    result = subprocess.run(
        [sys.executable, str(script), "--no-spills"], env=env, capture_output=True, text=True, timeout=1200
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    rows = [line for line in result.stdout.splitlines() if line.startswith("| _")]
    summary = re.search(r"(\d+) launches recorded, (\d+) distinct specialisations compiled", result.stdout)
    assert summary and int(summary[2]) == len(rows) >= 30, result.stdout  # every specialisation has its row
    assert not any("FAILED" in row for row in rows), result.stdout
