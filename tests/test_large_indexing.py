"""64-bit offsets: token_stats and xflow_step on the cpu backend with B * N * V > 2^31 logits.

bfloat16 logits (2, 1025, 2^20): 2^31 + 2^21 elements, 4.3 GB; the last rows of the second
sequence start past element 2^31, where an offset computed in 32 bits wraps. Those rows are
compared with ``mdfast.reference`` evaluated in float64 on them alone. Skipped unless
MDFAST_LARGE_TESTS=1 (it needs ~5 GB of free memory and about a minute):
``MDFAST_LARGE_TESTS=1 python -m pytest -m large tests/test_large_indexing.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
from checks import RTOL, assert_close, assert_equal, check_step, reference_step, require_backend

import mdfast
from mdfast import FlowConfig, reference

pytestmark = [
    pytest.mark.large,
    pytest.mark.skipif(
        os.environ.get("MDFAST_LARGE_TESTS") != "1", reason="4.3 GB of logits: set MDFAST_LARGE_TESTS=1 to run it"
    ),
]

B, N, V, E = 2, 1025, 2**20, 16
TAIL = 3  # rows compared per sequence: the last ones
PLANTED = N - 2  # the row of each sequence that the hard commit picks (c ~ 0.9, the others ~ 0)


@pytest.fixture(scope="module")
def logits() -> torch.Tensor:
    """N(0, 1) bfloat16 logits, row PLANTED of each sequence with one entry making its c ~ 0.9."""
    assert B * N * V > 2**31
    generator = torch.Generator().manual_seed(0)
    logits = torch.empty(B, N, V, dtype=torch.bfloat16)
    for b in range(B):
        for n in range(0, N, 64):
            logits[b, n : n + 64].normal_(generator=generator)
    # sum_v exp(z_v) ~ V e^(1/2); z = log(9 V e^(1/2)) gives p ~ 0.9
    logits[:, PLANTED, 12345] = math.log(9 * V * math.exp(0.5))
    return logits


def test_token_stats_past_two_to_the_31(logits):
    require_backend("cpu")
    got = mdfast.token_stats(logits, 4, full_entropy=True, backend="cpu", check_finite=False)
    tail = logits[:, -TAIL:]
    want = reference.token_stats(tail.double(), 4, full_entropy=True)
    rtol = RTOL[torch.bfloat16]
    assert_equal("argmax", got.argmax[:, -TAIL:], want["argmax"])
    assert_equal("topk_ids", got.topk_ids[:, -TAIL:], want["topk_ids"])
    assert_close("topk_probs", got.topk_probs[:, -TAIL:], want["topk_probs"], rtol)
    assert_close("lse", got.lse[:, -TAIL:], want["lse"], rtol)
    assert_close("entropy_full", got.entropy_full[:, -TAIL:], want["entropy_full"], rtol, scale=1.0)
    assert got.topk_ids[:, PLANTED, 0].tolist() == [12345] * B


def test_xflow_step_past_two_to_the_31(logits):
    require_backend("cpu")
    generator = torch.Generator().manual_seed(1)
    X = torch.randn(B, N, E, generator=generator)
    t = torch.rand(B, N, generator=generator)
    t[:, PLANTED] = 0.5  # its update stays below the commit threshold: it is committed
    embedding = torch.randn(V, E, generator=generator).to(torch.bfloat16)
    mask = torch.randn(E, generator=generator)
    rho = torch.full((B,), 0.5)
    config = FlowConfig()
    X_before = X.clone()
    out = mdfast.xflow_step(logits, X, t, embedding, mask, None, rho, config=config, backend="cpu", check_finite=False)
    assert out.committed.tolist() == [PLANTED] * B, "the planted row is the commit"

    tail = slice(N - TAIL, N)
    want = reference_step(logits[:, tail], X[:, tail], t[:, tail], embedding, mask, None, rho, config)
    assert_equal("committed", out.committed - (N - TAIL), want["committed"])
    fields = ("X", "t", "tokens", "confidence", "action", "reedited", "lse")
    tail_out = dataclasses.replace(out, committed=want["committed"], **{f: getattr(out, f)[:, tail] for f in fields})
    check_step(tail_out, want, X_before[:, tail], embedding, RTOL[torch.bfloat16])
