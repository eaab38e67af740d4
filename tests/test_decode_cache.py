"""SPEC 8's KV cache in decoding (mdfast/decode/cache.py): ``generate`` / ``infill`` with ``cache=``.

A tiny random native LLaDA in float64 (tests/test_llada.py's ``tiny_llada``). ``cache_refresh=1``
(every step a refresh) gives the tokens of no cache, for every decoder and both modes; a
left-padded batch decodes each row as its solo run (fixed schedules: the rows share one refresh
plan); infilling with two masked spans, rows of different mask counts included, decodes in every
mode; the default refresh (per block) takes one full forward per block and S-only forwards
between; S is distinct per row, the block first; bad options and bodies without a cache are named
errors.
"""

from __future__ import annotations

import functools

import pytest
import torch
from checks import assert_equal, tiny_bert
from test_llada import tiny_llada

import mdfast
from mdfast.decode.cache import CachedForward
from mdfast.decode.options import DECODERS, DecodeOptions
from mdfast.decode.schedule import Schedule
from mdfast.models import adapt, release

MASK = 49  # test_llada.TINY's mask id
MODES = ["dual", "prefix"]


def model64():
    torch.manual_seed(0)
    return tiny_llada().double()


def prompts(batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids below the EOS / mask ids, left padding of 0, 1, 3, 4, ... zeros: prompts of different lengths."""
    ids = torch.randint(0, 48, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        mask[b, : b + b // 2] = 0
    return ids, mask


def count_cached(model) -> list[int]:
    """Count the model's S-only forwards (``forward_cached`` calls) in the returned list's one entry."""
    calls = [0]
    original = model.forward_cached

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    model.forward_cached = counted
    return calls


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_refresh_every_step_equals_no_cache(decoder, mode):
    model = model64()
    ids, mask = prompts(3, 6)
    kwargs = {"max_new_tokens": 8, "steps": 4, "block_length": 4, "decoder": decoder}
    want = mdfast.generate(model, ids, mask, **kwargs)
    calls = count_cached(model)
    got = mdfast.generate(model, ids, mask, cache=mode, cache_refresh=1, **kwargs)
    assert_equal("sequences", got.sequences, want.sequences)
    assert got.nfe == want.nfe
    assert calls[0] == 0, "cache_refresh=1 refreshes at every step"
    assert len(set(want.sequences[:, 6:].reshape(-1).tolist())) > 1, "one token everywhere tests nothing"


@pytest.mark.parametrize("cache", [{"cache": "dual"}, {"cache": "prefix"}, {"cache": "dual", "cache_vicinity": 2}])
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_padded_batch_equals_solo_runs(decoder, cache):
    """Each row of a left-padded batch decodes to its solo run's tokens, whatever the other rows' refreshes."""
    model = model64()
    ids, mask = prompts(4, 7)
    kwargs = {"max_new_tokens": 8, "steps": 8, "block_length": 4, "decoder": decoder, **cache}
    batch = mdfast.generate(model, ids, mask, **kwargs).sequences
    for b in range(4):
        pad = int((mask[b] == 0).sum())
        solo = mdfast.generate(model, ids[b : b + 1, pad:], **kwargs).sequences
        assert_equal(f"row {b}", batch[b : b + 1, 7:], solo[:, 7 - pad :])


def count_row_refreshes(model) -> list[int]:
    """Count the model's refreshes of some rows only (``forward(cache_rows=)``) in the returned list's one entry."""
    calls = [0]
    original = model.forward

    @functools.wraps(original)  # mdfast.patch reads the forward's signature
    def counted(*args, **kwargs):
        calls[0] += kwargs.get("cache_rows") is not None
        return original(*args, **kwargs)

    model.forward = counted
    return calls


@pytest.mark.parametrize("decoder", ["threshold", "factor"])
def test_parallel_commit_rules_with_a_cache(decoder):
    """Threshold and factor rows leave their blocks at different steps: rows that open a block refresh alone."""
    model = model64()
    ids, mask = prompts(3, 6)
    kwargs = {"max_new_tokens": 8, "steps": 8, "block_length": 4, "decoder": decoder}
    for mode in MODES:
        out = mdfast.generate(model, ids[:1], cache=mode, **kwargs)
        assert out.sequences.shape == (1, 14) and 2 <= out.nfe <= 8
        want = mdfast.generate(model, ids, mask, **kwargs).sequences
        assert_equal(mode, mdfast.generate(model, ids, mask, cache=mode, cache_refresh=1, **kwargs).sequences, want)
    # rows that move at different speeds: some steps refresh some rows only, and each row is its solo run
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(40)  # confident enough that rows commit unevenly
    torch.manual_seed(3)
    ids = torch.randint(0, 48, (4, 6))
    kwargs = {"max_new_tokens": 12, "steps": 12, "block_length": 3, "decoder": decoder, "cache": "dual"}
    calls = count_row_refreshes(model)
    batch = mdfast.generate(model, ids, **kwargs)
    assert calls[0] > 0, "no step refreshed some rows only: the rows never drifted apart"
    for b in range(4):
        assert_equal(f"row {b}", batch.sequences[b : b + 1], mdfast.generate(model, ids[b : b + 1], **kwargs).sequences)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decoder", ["low_confidence", "xflow"])
def test_vicinity_over_the_whole_sequence_is_exact(decoder, mode):
    """A vicinity of L recomputes every position at every step from the current inputs: no cache's tokens."""
    model = model64()
    ids, mask = prompts(3, 6)
    kwargs = {"max_new_tokens": 8, "steps": 8, "block_length": 4, "decoder": decoder}
    want = mdfast.generate(model, ids, mask, **kwargs).sequences
    calls = count_cached(model)
    got = mdfast.generate(model, ids, mask, cache=mode, cache_vicinity=14, **kwargs).sequences
    assert calls[0] > 0, "the steps between refreshes are cached steps"
    assert_equal("vicinity 14", got, want)


def two_spans() -> torch.Tensor:
    """Two rows with two separate masked spans each, of different total counts (5 and 8)."""
    ids = torch.randint(0, 48, (2, 16))
    ids[0, 2:4] = MASK
    ids[0, 9:12] = MASK
    ids[1, 0:3] = MASK
    ids[1, 7:12] = MASK
    return ids


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("decoder", ["low_confidence", "xflow", "threshold"])
def test_infill_two_spans(decoder, mode):
    model = model64()
    ids = two_spans()
    kwargs = {"steps": 4, "block_length": 3, "decoder": decoder}
    want = mdfast.infill(model, ids, **kwargs).sequences
    exact = mdfast.infill(model, ids, cache=mode, cache_refresh=1, **kwargs).sequences
    assert_equal("cache_refresh=1", exact, want)
    calls = count_cached(model)
    got = mdfast.infill(model, ids, cache=mode, **kwargs).sequences
    assert calls[0] > 0, "some steps feed S only"
    masked = ids == MASK
    assert_equal("positions outside M", got[~masked], ids[~masked])
    for b in range(2):  # rows of different mask counts: each is its solo run
        assert_equal(f"row {b}", got[b : b + 1], mdfast.infill(model, ids[b : b + 1], cache=mode, **kwargs).sequences)


def test_dual_default_refresh_counts():
    """Default refresh: one full forward at each block's first step, S-only forwards between; nfe = steps."""
    model = model64()
    ids, mask = prompts(2, 5)
    calls = count_cached(model)
    out = mdfast.generate(
        model, ids, mask, max_new_tokens=12, steps=12, block_length=4, decoder="low_confidence", cache="dual"
    )
    assert out.nfe == 12 and calls[0] == 12 - 3
    calls[0] = 0
    out = mdfast.generate(model, ids, mask, max_new_tokens=12, steps=12, block_length=4, cache="dual", cache_refresh=2)
    assert out.nfe == 12 and calls[0] == 3 * 2  # steps 1 and 3 of each block of 4
    assert not (out.sequences[:, 5:] == MASK).all()


def test_vicinity_positions():
    """Dual with vicinity w: S is the block, then the w real positions before it and the w after it, all written."""
    model = model64()
    ids, mask = prompts(2, 6)
    ids = torch.cat([ids, torch.full((2, 8), MASK)], dim=1)
    mask = torch.cat([mask, torch.ones(2, 8, dtype=torch.long)], dim=1)
    adapter = adapt(model)
    try:
        schedule = Schedule(ids == MASK, 8, 4)
        cached = CachedForward(adapter, schedule, "dual", None, mask, vicinity=2)
        cached.plan([0, 0])
        S, write = cached.positions(schedule.block(torch.tensor([0, 0])))
        assert S.shape == (2, 8) and bool(write.all())
        assert sorted(S[0].tolist()) == list(range(4, 12)), "block 6..9, two on each side"
        cached.plan([1, 1])
        S, write = cached.positions(schedule.block(torch.tensor([1, 1])))
        assert sorted(S[0, write[0]].tolist()) == list(range(8, 14)), "two before, none after the last block"
        assert write[0].sum() == 6 and not bool(write[0, :4].logical_not().any())
    finally:
        release(adapter)


def test_positions_are_distinct_with_the_block_first():
    model = model64()
    ids = two_spans()
    decode = ids == MASK
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    adapter = adapt(model)
    try:
        schedule = Schedule(decode, 4, 3)
        for mode in MODES:
            cached = CachedForward(adapter, schedule, mode, None, mask)
            for block_index in ([0, 0], [1, 2], [1, 1]):
                cached.plan(block_index)
                block = schedule.block(torch.tensor(block_index))
                S, write = cached.positions(block)
                assert S.shape == write.shape and S.shape[1] == cached.width
                for b in range(2):
                    row = S[b].tolist()
                    assert len(set(row)) == len(row) and all(0 <= p < 16 for p in row)
                    valid = block.valid[b]
                    assert_equal("block first", S[b, :3][valid], block.positions[b][valid])
                    written = {p for p, w in zip(row, write[b].tolist()) if w}
                    wanted = set(block.positions[b][valid].tolist())
                    if mode == "prefix" and bool(valid[0]):
                        start = int(block.positions[b, 0])
                        assert set(range(start, 16)) <= set(row), "prefix: every position from the block on"
                        wanted |= set(range(start, 16))
                    assert written == wanted, "spare entries only query"
                if mode == "dual":
                    assert 0 in S[0].tolist() or bool(block.valid[0].all()), "row 0's spare entries take its padding"
    finally:
        release(adapter)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cache": "full"}, "cache: expected one of"),
        ({"cache": "dual", "cache_refresh": 0}, "cache_refresh: expected an int >= 1"),
        ({"cache": "dual", "cache_refresh": 1.5}, "cache_refresh: expected an int >= 1"),
        ({"cache": "dual", "cache_refresh": True}, "cache_refresh: expected an int >= 1"),
        ({"cache_refresh": 2}, "cache_refresh: refreshes a KV cache, but cache is None"),
        ({"cache": "dual", "cache_vicinity": -1}, "cache_vicinity: expected an int >= 0"),
        ({"cache": "dual", "cache_vicinity": 1.0}, "cache_vicinity: expected an int >= 0"),
        ({"cache_vicinity": 2}, "cache_vicinity: widens a KV cache's steps, but cache is None"),
    ],
)
def test_bad_cache_options(options, message):
    with pytest.raises(ValueError, match=message):
        DecodeOptions(steps=4, **options).validate()
    with pytest.raises(ValueError, match=message):
        mdfast.generate(model64(), torch.zeros(1, 3, dtype=torch.long), max_new_tokens=4, steps=4, **options)


def test_cache_on_a_model_without_a_native_body():
    model = tiny_bert()
    ids = torch.randint(5, 64, (1, 8))
    ids[0, 3:5] = 4
    with pytest.raises(ValueError, match=r"cache: only the native LLaDA body \(mdfast.LLaDAModel"):
        mdfast.infill(model, ids, steps=2, decoder="low_confidence", mask_token_id=4, cache="dual")
    with pytest.raises(ValueError, match="cache: only the native LLaDA body"):
        mdfast.generate(model, ids[:, :3], max_new_tokens=4, steps=2, mask_token_id=4, cache="prefix")
    assert isinstance(model.get_output_embeddings(), torch.nn.Linear), "the head is put back after the error"
