"""bench/RESULTS.md, "CPU: the LLaDA body, native against the eager port": one decoding call per loop.

bench/bench_e2e.py's tiny preset (SPEC 5 LLaDA, 4 layers, 256 wide, 4 heads, MLP 768, V = 32000, float32,
random weights from seed 0), prompt 32 random ids, 64 new tokens in one block, 16 steps, B = 1. Per decoder
(x-flow, low-confidence) one group: the baseline is bench_e2e's eager loop (every row projected; float64
softmax and topk, or ``mdfast.reference.xflow_step``) on the eager unfused port, and "mdfast" is
``mdfast.generate`` on the native body holding the same weight tensors. Both must give the same token ids.
Median of 5 calls after one warm-up call.
"""

from __future__ import annotations

import pytest
import torch

import mdfast

PROMPT, NEW, STEPS = 32, 64, 16
ROUNDS = 5
LOOPS = ["eager port", "mdfast"]


@pytest.fixture(scope="module")
def setting(bench_e2e):
    """(native body, eager port on its weights, prompt ids (1, 32), preset) from bench_e2e's tiny preset."""
    preset = dict(bench_e2e.PRESETS["tiny"])
    native, port = bench_e2e.llada_pair(preset, torch.device("cpu"), torch.float32, seed=0)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, preset["vocab"], (1, PROMPT), generator=generator)
    return native, port, ids, preset


def loop_call(bench_e2e, setting, decoder: str, loop: str):
    """The call of ``loop`` for ``decoder``: sequences (1, 32 + 64)."""
    native, port, ids, _ = setting
    if loop == "mdfast":
        mask = bench_e2e.MASK
        return lambda: (
            mdfast.generate(native, ids, max_new_tokens=NEW, steps=STEPS, decoder=decoder, mask_token_id=mask).sequences
        )
    return lambda: bench_e2e.EAGER_LOOPS[decoder](port, ids, NEW, STEPS)


def run_loop(timed, outputs, bench_e2e, setting, decoder: str, loop: str) -> None:
    """Time one loop, then check its sequences against the other loop's: the same token ids."""
    with torch.no_grad():
        got = timed(loop_call(bench_e2e, setting, decoder, loop), loop, baseline=loop != "mdfast", rounds=ROUNDS)
        outputs.put(("decode", decoder, loop), got)
        other = next(name for name in LOOPS if name != loop)
        want = outputs.get(("decode", decoder, other), loop_call(bench_e2e, setting, decoder, other))
    ids, mask = setting[2], bench_e2e.MASK
    assert got.shape == (1, PROMPT + NEW)
    assert torch.equal(got[:, :PROMPT], ids), "the prompt is kept"
    assert not (got[:, PROMPT:] == mask).any(), "every response position is decoded"
    assert len(set(got[0, PROMPT:].tolist())) > 1, "one token everywhere would test nothing"
    assert torch.equal(got, want), f"{loop} and {other} decode different token ids"


@pytest.mark.benchmark(group=f"decode xflow LLaDA tiny B=1 {PROMPT}+{NEW} steps={STEPS}")
@pytest.mark.parametrize("loop", LOOPS)
def test_decode_xflow(timed, outputs, bench_e2e, setting, loop):
    run_loop(timed, outputs, bench_e2e, setting, "xflow", loop)


@pytest.mark.benchmark(group=f"decode low_confidence LLaDA tiny B=1 {PROMPT}+{NEW} steps={STEPS}")
@pytest.mark.parametrize("loop", LOOPS)
def test_decode_low_confidence(timed, outputs, bench_e2e, setting, loop):
    run_loop(timed, outputs, bench_e2e, setting, "low_confidence", loop)
