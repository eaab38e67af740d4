"""bench/RESULTS.md, "CPU: the KV cache": ``mdfast.generate`` with no cache, a prefix cache and a dual cache.

bench/bench_cache.py's random native LLaDA (weights N(0, 0.02^2), norms 1, seed 0) at d_model 256, 4 layers,
4 heads, vocab 32000, float32; one prompt of 96 random ids, 32 new tokens in blocks of 16, 16 steps, B = 1.
Per decoder one group: no cache is the baseline, "prefix" and "dual" (refresh at each block's first step)
are timed beside it. A cached call need not give no cache's tokens, so each case checks that the call
decodes every position and keeps the prompt, and each cached mode that ``cache_refresh=1`` (a refresh at
every step) gives no cache's token ids exactly; the share of tokens equal to no cache's goes into the JSON.
Median of 5 calls after one warm-up call.
"""

from __future__ import annotations

import pytest
import torch

import mdfast

BODY = {"d_model": 256, "n_layers": 4, "n_heads": 4, "vocab_size": 32000}
PROMPT, NEW, BLOCK, STEPS = 96, 32, 16, 16
ROUNDS = 5
MODES = ["none", "prefix", "dual"]
SETTING = f"random LLaDA d256x4 V32000 B=1 {PROMPT}+{NEW} block={BLOCK} steps={STEPS}"


@pytest.fixture(scope="module")
def setting(bench_cache):
    """(model, prompt ids (1, 96)) from bench_cache's random body and random prompts."""
    shape = bench_cache.Shape(prompt=PROMPT, new=NEW, block=BLOCK, steps=STEPS, batch=1)
    model = bench_cache.random_llada(BODY, shape.length, seed=0)
    ids, _ = bench_cache.prompts("random", shape, BODY["vocab_size"], seed=0)[1]
    return model, ids


def generate(setting, decoder: str, mode: str, **options) -> mdfast.GenerateOutput:
    """One ``mdfast.generate`` call of the setting with cache ``mode`` ("none": no cache)."""
    model, ids = setting
    cache = {} if mode == "none" else {"cache": mode}
    with torch.no_grad():
        return mdfast.generate(
            model, ids, max_new_tokens=NEW, steps=STEPS, block_length=BLOCK, decoder=decoder, **cache, **options
        )


def run_mode(timed, outputs, setting, decoder: str, mode: str, extra_info: dict) -> None:
    """Time one cache mode and check it (module docstring)."""
    model, ids = setting
    out = timed(lambda: generate(setting, decoder, mode), mode, baseline=mode == "none", rounds=ROUNDS)
    got = out.sequences
    assert got.shape == (1, PROMPT + NEW) and out.nfe == STEPS
    assert torch.equal(got[:, :PROMPT], ids), "the prompt is kept"
    assert not (got[:, PROMPT:] == model.config.mask_token_id).any(), "every response position is decoded"
    if mode == "none":
        outputs.put(("cache", decoder), got)
        assert len(set(got[0, PROMPT:].tolist())) > 1, "one token everywhere would test nothing"
        return
    want = outputs.get(("cache", decoder), lambda: generate(setting, decoder, "none").sequences)
    exact = generate(setting, decoder, mode, cache_refresh=1).sequences
    assert torch.equal(exact, want), f"cache={mode!r} with cache_refresh=1 differs from no cache"
    extra_info["equal_to_no_cache"] = float((got[:, PROMPT:] == want[:, PROMPT:]).float().mean())


@pytest.mark.benchmark(group=f"cache low_confidence {SETTING}")
@pytest.mark.parametrize("mode", MODES)
def test_cache_low_confidence(timed, outputs, setting, benchmark, mode):
    run_mode(timed, outputs, setting, "low_confidence", mode, benchmark.extra_info)


@pytest.mark.benchmark(group=f"cache xflow {SETTING}")
@pytest.mark.parametrize("mode", MODES)
def test_cache_xflow(timed, outputs, setting, benchmark, mode):
    run_mode(timed, outputs, setting, "xflow", mode, benchmark.extra_info)
