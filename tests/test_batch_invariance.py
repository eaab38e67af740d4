"""Batch invariance: a row's tokens do not depend on the batch it is decoded in.

A row decoded alone, inside a left-padded batch of 8 with other prompts, and at other positions of
that batch gets the same tokens: for every decoder of ``DECODERS``, greedy and sampled (temperature
> 0, or x-flow's ``sample=True`` with a policy) with one ``torch.Generator`` per row (a list: row b
draws from generator b alone), on the cpu and torch backends, and with SPEC 8's KV cache
(``cache="dual"`` / ``"prefix"``, refreshed per row) on a tiny native LLaDA. A single generator for
the whole call draws for all rows in turn, so a row's draws depend on its batch: that is what the
per-row list is for.

On the CPU the tokens are equal: a row's logits in a batch match its solo run's, at most to the last
bits where a float32 matmul blocks by the batch's shape (the policy MLP's actions, say), far below
any gap between two tokens' logits here. A GPU promises no bitwise equality either: cuBLAS and
attention kernels pick their reduction order by shape, so a row's logits in a batch may differ from
its solo run's in the last bits, and a token whose top two logits are that close may differ (and
CUDA draws are not CPU draws); these tests run on the CPU only.
"""

from __future__ import annotations

import pytest
import torch
from checks import assert_close, assert_equal, make_state, random_policy, tiny_bert
from test_llada import tiny_llada

import mdfast
from mdfast import backends
from mdfast.decode.options import DECODERS

pytestmark = pytest.mark.usefixtures("one_thread")

MASK = 4  # tests/checks.py tiny_bert's mask id by convention
LLADA_MASK = 49  # test_llada.TINY's mask id
B, P, NEW = 8, 9, 8
ORDERS = {"in order": list(range(B)), "reversed": list(reversed(range(B)))}


def require(backend: str) -> str:
    reason = backends.get(backend).unavailable_reason()
    if reason is not None:
        pytest.skip(f"backend {backend!r} unavailable here (the C++ extension builds just in time): {reason}")
    return backend


def rows(low: int, high: int) -> list[torch.Tensor]:
    """B prompts of different lengths (1 .. P tokens), ids in [low, high)."""
    g = torch.Generator().manual_seed(11)
    return [torch.randint(low, high, (1 + (3 * b) % P,), generator=g) for b in range(B)]


def left_padded(prompts: list[torch.Tensor], order: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts in ``order``, left-padded with id 0 to P: (input_ids, attention_mask)."""
    ids = torch.zeros(len(order), P, dtype=torch.long)
    mask = torch.zeros(len(order), P, dtype=torch.long)
    for i, b in enumerate(order):
        ids[i, P - len(prompts[b]) :] = prompts[b]
        mask[i, P - len(prompts[b]) :] = 1
    return ids, mask


def sampling(decoder: str, sampled: bool) -> dict:
    """The decoding keywords for a greedy or a sampled run of ``decoder``."""
    if not sampled:
        return {}
    if decoder == "xflow":
        return {"policy": random_policy(), "sample": True}
    return {"temperature": 0.8}


def generators(order: list[int], sampled: bool) -> dict:
    """One generator per row, seeded by the row's identity (not its place in the batch)."""
    return {"generator": [torch.Generator().manual_seed(1000 + b) for b in order]} if sampled else {}


def check_invariance(model, prompts: list[torch.Tensor], orders: dict, kwargs) -> torch.Tensor:
    """Every row's response in each batch order equals its solo run's; returns the solo responses (B, NEW).

    ``kwargs(order)``: the decoding keywords for the rows ``order`` (their generators).
    """
    solo = []
    for b, prompt in enumerate(prompts):
        out = mdfast.generate(model, prompt[None], max_new_tokens=NEW, **kwargs([b]))
        solo.append(out.sequences[0, -NEW:])
    solo = torch.stack(solo)
    for name, order in orders.items():
        ids, mask = left_padded(prompts, order)
        batch = mdfast.generate(model, ids, mask, max_new_tokens=NEW, **kwargs(order)).sequences[:, -NEW:]
        for i, b in enumerate(order):
            assert_equal(f"row {b} at position {i} ({name})", batch[i], solo[b])
    assert len(set(solo.reshape(-1).tolist())) > 1, "one token everywhere tests nothing"
    return solo


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("decoder", sorted(DECODERS))
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_a_row_decodes_alone_as_in_any_batch(backend, decoder, sampled):
    """tiny_bert, 8 prompts of 1 .. 9 tokens, 8 new tokens in 2 blocks: each row's tokens alone == in the batch,
    in two orders (each row at two positions)."""
    require(backend)
    model = tiny_bert(3)
    decode = sampling(decoder, sampled)

    def kwargs(order):
        common = dict(steps=4, block_length=4, decoder=decoder, backend=backend, mask_token_id=MASK)
        return common | decode | generators(order, sampled)

    check_invariance(model, rows(5, 64), ORDERS, kwargs)


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("decoder", ["xflow", "low_confidence", "threshold"])
@pytest.mark.parametrize("cache", ["dual", "prefix"])
def test_a_row_decodes_alone_as_in_any_batch_with_a_cache(cache, decoder, sampled):
    """A tiny native LLaDA with SPEC 8's KV cache (each row refreshes on its own schedule), the cpu backend."""
    require("cpu")
    torch.manual_seed(0)
    model = tiny_llada()
    decode = sampling(decoder, sampled)

    def kwargs(order):
        common = dict(steps=4, block_length=4, decoder=decoder, backend="cpu", cache=cache)
        return common | decode | generators(order, sampled)

    check_invariance(model, rows(0, 48), ORDERS, kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("decoder", sorted(DECODERS))
def test_every_position_with_a_cache(decoder):
    """The cached, sampled decode of every decoder with each row at every position of the batch (8 rotations)."""
    require("cpu")
    torch.manual_seed(0)
    model = tiny_llada()
    decode = sampling(decoder, True)

    def kwargs(order):
        common = dict(steps=4, block_length=4, decoder=decoder, backend="cpu", cache="dual")
        return common | decode | generators(order, True)

    rotations = {f"rotated by {r}": [(b + r) % B for b in range(B)] for r in range(B)}
    check_invariance(model, rows(0, 48), rotations, kwargs)


def test_one_generator_for_the_batch_draws_per_batch():
    """Why the per-row list: with one generator for the call a row's draws depend on the rows before it."""
    model = tiny_bert(3)
    prompts = rows(5, 64)
    common = dict(max_new_tokens=NEW, steps=4, decoder="low_confidence", temperature=5.0, mask_token_id=MASK)
    ids, mask = left_padded(prompts, list(range(B)))
    batch = mdfast.generate(model, ids, mask, generator=torch.Generator().manual_seed(1), **common).sequences
    last = mdfast.generate(model, prompts[-1][None], generator=torch.Generator().manual_seed(1), **common)
    assert not torch.equal(batch[-1, -NEW:], last.sequences[0, -NEW:])
    per_row = [torch.Generator().manual_seed(1) for _ in range(B)]
    batch = mdfast.generate(model, ids, mask, generator=per_row, **common).sequences
    assert torch.equal(batch[-1, -NEW:], last.sequences[0, -NEW:])


@pytest.mark.parametrize(
    "generator, error, message",
    [
        ([torch.Generator()] * 2, ValueError, r"generator: expected one torch.Generator per row, 3, got a list of 2"),
        ([torch.Generator(), 7, torch.Generator()], TypeError, "generator: expected a torch.Generator, a list"),
        ([], TypeError, "generator: expected a torch.Generator, a list"),
    ],
)
def test_bad_generator_lists_are_named(generator, error, message):
    ids, mask = left_padded(rows(5, 64)[:3], [0, 1, 2])
    with pytest.raises(error, match=message):
        options = dict(decoder="low_confidence", temperature=1.0, generator=generator, mask_token_id=MASK)
        mdfast.generate(tiny_bert(3), ids, mask, max_new_tokens=4, steps=2, **options)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_a_sampled_step_draws_each_sequence_from_its_own_generator(backend):
    """``mdfast.xflow_step(sample=True)`` with a list of B generators: sequence b's draws (and so its
    actions and state) are those of the sequence stepped alone with generator b: the same uniforms,
    to the last bits the policy's float32 matmul rounds differently at another batch shape."""
    require(backend)
    policy = random_policy()
    logits, X, t, embedding, m = make_state(3, 5, 40, 4, device="cpu")

    def step(rows, seeds):
        generator = [torch.Generator().manual_seed(s) for s in seeds]
        state = (logits[rows], X[rows], t[rows], embedding, m, policy, 0.5)
        return mdfast.xflow_step(*state, sample=True, generator=generator, backend=backend)

    batch = step(slice(0, 3), [10, 11, 12])
    for b in range(3):
        alone = step(slice(b, b + 1), [10 + b])
        assert_equal(f"tokens of sequence {b}", batch.tokens[b], alone.tokens[0])
        for name in ("draw", "action", "X", "t"):
            assert_close(f"{name} of sequence {b}", getattr(batch, name)[b], getattr(alone, name)[0], 1e-5, 1e-6)
    with pytest.raises(ValueError, match=r"generator: expected a torch.Generator or a list of B = 3 of them"):
        step(slice(0, 3), [10, 11])
