"""bench/RESULTS.md, "CPU: C++ backend against the eager reference": token_stats and xflow_step per backend.

The cases of ``mdfast bench`` (``mdfast.benchmark.step_cases``) at its first CPU shape, B x N x V x E =
1 x 256 x 32000 x 1024, float32 logits, random inputs from seed 0, every call with ``check_finite=False``.
In each group the eager reference (``backend="torch"``) is the baseline and the C++ backend ("cpu") is timed
beside it; each checks its output against the other's: ids and flags equal, the rest within float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from mdfast.benchmark import CPU_SHAPES, Case, probe_backend, step_cases

B, N, V, E = CPU_SHAPES[0]
SHAPE = f"{B}x{N}x{V}x{E} float32"
BACKENDS = ["torch", "cpu"]
OTHER = {"torch": "cpu", "cpu": "torch"}
WARMUP = dict(warmup=True, warmup_iterations=3)
RTOL, ATOL = 1e-4, 1e-5  # float32 rounding: the C++ rows sum in another order than torch's reductions


@pytest.fixture(scope="module")
def cases() -> dict[tuple[str, str], Case]:
    """(op, variant) -> the case: token_stats "k=4", xflow_step "heuristic" and "random" (a 64-wide policy)."""
    reason = probe_backend("cpu", torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"the C++ backend does not run here: {reason}")
    torch.manual_seed(0)
    return {(c.op, c.variant): c for c in step_cases(B, N, V, E, torch.float32, torch.device("cpu"), BACKENDS)}


def check_stats(got, want) -> None:
    """TokenStats of one backend against the other's."""
    assert torch.equal(got.argmax, want.argmax), "argmax differs"
    assert torch.equal(got.topk_ids, want.topk_ids), "topk_ids differ"
    for name in ("topk_probs", "lse", "margin", "entropy_topk"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=RTOL, atol=ATOL, msg=name)


def check_step(got, want) -> None:
    """An XFlowStep of one backend against the other's."""
    for name in ("tokens", "reedited", "committed"):
        assert torch.equal(getattr(got, name), getattr(want, name)), f"{name} differs"
    for name in ("confidence", "action", "t", "X", "lse"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=RTOL, atol=ATOL, msg=name)
    assert bool(got.reedited.any()) and bool((~got.reedited).any()), "both re-edited and updated tokens"


def run_case(timed, case: Case, backend: str, check) -> None:
    """Time ``case`` on ``backend`` (the torch reference is the baseline) and check it against the other backend."""
    got = timed(case.runs[backend], backend, baseline=backend == "torch")
    check(got, case.runs[OTHER[backend]]())


@pytest.mark.benchmark(group=f"token_stats k=4 {SHAPE}", **WARMUP)
@pytest.mark.parametrize("backend", BACKENDS)
def test_token_stats(timed, cases, backend):
    with torch.no_grad():
        run_case(timed, cases["token_stats", "k=4"], backend, check_stats)


@pytest.mark.benchmark(group=f"xflow_step heuristic {SHAPE}", **WARMUP)
@pytest.mark.parametrize("backend", BACKENDS)
def test_xflow_step_heuristic(timed, cases, backend):
    with torch.no_grad():
        run_case(timed, cases["xflow_step", "heuristic"], backend, check_step)


@pytest.mark.benchmark(group=f"xflow_step random policy {SHAPE}", **WARMUP)
@pytest.mark.parametrize("backend", BACKENDS)
def test_xflow_step_random_policy(timed, cases, backend):
    with torch.no_grad():
        run_case(timed, cases["xflow_step", "random"], backend, check_step)
