"""mdfast.infill against eager loops written here straight from SPEC.md sections 2, 3 and 7.

The eager loop decodes each row on its own terms: its masked positions M_b (left to right), its
blocks of ``block_length`` (the last one shorter), its ``steps`` split over its own blocks (the
first blocks get the extra steps), one forward of the whole batch per step with every row projected
(float64 softmax, stable sorts, Python loops over tokens; x-flow through the float64 reference step
called per row on that row's real block entries only). The fast loop must give exactly its tokens
(x-flow: its X and t after every step, within the DEVELOPERS.md bound), for batches whose rows hold
a prefix, an interior span and several spans (different numbers of masks per row), and every row of
a left-padded batch must decode exactly as it does alone.
"""

from __future__ import annotations

import math

import pytest
import torch
from checks import assert_close, tiny_bert

import mdfast
from mdfast import reference

transformers = pytest.importorskip("transformers", reason="the tests build tiny models from transformers classes")

from test_generate import DISCRETE, MASK, PARALLEL, eager_logits, ranked, schedule, tiny_dream  # noqa: E402

DECODERS = ["xflow", *DISCRETE]


def masked_rows(B: int, L: int, spans: list[list[tuple[int, int]]], vocab: int = 64, seed: int = 0):
    """input_ids (B, L) of random given tokens with MASK over each row's [start, stop) spans."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, L), generator=g)
    for b, row in enumerate(spans):
        for start, stop in row:
            ids[b, start:stop] = MASK
    return ids


# Row 0: a prefix (4 masks); row 1: one interior span (5); row 2: several spans, right context (6).
PATTERNS = [[(0, 4)], [(5, 10)], [(2, 4), (7, 8), (10, 13)]]


# ---------------------------------------------------------------------------------------------
# The eager loop (SPEC 2, 3, 7)
# ---------------------------------------------------------------------------------------------


def row_steps(n_masked: int, steps: int, block_length: int | None) -> list[tuple[int, int, int]]:
    """SPEC 7 for one row: (block j, step l within it, the block's T) for each of the ``steps``
    steps; blocks of block_length slots of M in order, steps split evenly, the first blocks one more."""
    if n_masked == 0:
        return []
    n = n_masked if block_length is None else block_length
    K = math.ceil(n_masked / n)
    return [(j, l, T) for j, T in enumerate(schedule(steps, K)) for l in range(T)]


def eager_infill(
    model,
    ids,
    mask,
    steps,
    decoder,
    block_length,
    *,
    shifted=False,
    policy=None,
    tau=0.9,
    factor=1.0,
    soft=(3, 0.25, 5.0, -1.0),
):
    """Returns (sequences, [(X, t) per row after each step]) (x-flow) or (sequences, None)."""
    B, L = ids.shape
    att = torch.ones_like(ids) if mask is None else mask
    W_e = model.get_input_embeddings().weight.detach()
    W64, m64 = W_e.double(), W_e[MASK].double()
    M = [[p for p in range(L) if ids[b, p] == MASK and att[b, p]] for b in range(B)]
    longest = max(len(row) for row in M)
    n = longest if block_length is None else min(block_length, longest)
    blocks = [
        [list(range(j, min(j + n, len(M[b])))) for j in range(0, len(M[b]), n)] for b in range(B)
    ]  # slots per block
    plans = [row_steps(len(M[b]), steps, n) for b in range(B)]
    x = ids.clone()
    decoded = [set() for _ in range(B)]  # slots holding a decoded token (even if it is [MASK])
    running = [dict() for _ in range(B)]
    soft_inputs = {}
    X = [m64.expand(len(M[b]), -1).clone() for b in range(B)]
    t = [torch.zeros(len(M[b]), dtype=torch.float64) for b in range(B)]
    tokens = [[MASK] * len(M[b]) for b in range(B)]
    current = [0] * B  # threshold, factor: each row's block
    states = []
    s = 0
    while True:
        if decoder in PARALLEL:
            active = [(b, current[b], None, None) for b in range(B) if current[b] < len(blocks[b])]
            if not active:
                break
        else:
            if s == steps:
                break
            active = [(b, *plans[b][s]) for b in range(B) if plans[b]]
        if decoder == "xflow":
            for b, j, l, _T in active:
                if l == 0 and j > 0:  # the finished block: plain embeddings of its final tokens
                    for i in blocks[b][j - 1]:
                        X[b][i], t[b][i] = W64[tokens[b][i]], 1.0
        with torch.no_grad():
            embeds = model.get_input_embeddings()(x).clone()
            for b in range(B):
                if decoder == "xflow" and M[b]:
                    embeds[b, M[b]] = X[b].float()
            for (b, p), e in soft_inputs.items():
                embeds[b, p] = e
            logits = eager_logits(model, embeds, att, 0, shifted).double()
        soft_inputs = {}
        for b, j, l, T in active:
            slots = blocks[b][j]
            pos = [M[b][i] for i in slots]
            if decoder == "xflow":
                out = reference.xflow_step(
                    logits[b : b + 1, pos], X[b][slots][None], t[b][slots][None], W64, m64, policy, l / max(T - 1, 1)
                )
                X[b][slots], t[b][slots] = out["X"][0], out["t"][0]
                for i, token in zip(slots, out["tokens"][0].tolist()):
                    tokens[b][i] = token
                continue
            p = torch.softmax(logits[b, pos], -1)
            x0 = torch.argmax(logits[b, pos], -1)
            conf = {}
            for k, i in enumerate(slots):
                pi = p[k]
                top = torch.sort(pi, descending=True, stable=True).values
                h_full = -(pi[pi > 0] * pi[pi > 0].log()).sum().item()
                conf[i] = {"topk_margin": (top[0] - top[1]).item(), "entropy": -h_full}.get(decoder, pi[x0[k]].item())
            masked = [i for i in slots if i not in decoded[b]]
            if decoder == "rcr":
                counts = schedule(len(slots), T)
                for i in masked:
                    x[b, M[b][i]] = x0[slots.index(i)]
                    running[b][i] = max(running[b].get(i, -math.inf), conf[i])
                order = ranked([running[b][i] for i in slots])[: sum(counts[: l + 1])]
                keep = {slots[k] for k in order}
                for i in slots:
                    if i in keep:
                        decoded[b].add(i)
                    else:
                        decoded[b].discard(i)
                        x[b, M[b][i]] = MASK
                continue
            order = ranked([conf[i] for i in masked])
            if decoder == "threshold":
                chosen = ({masked[order[0]]} | {i for i in masked if conf[i] > tau}) if masked else set()
            elif decoder == "factor":  # SPEC 8: the largest n with c(n) >= 1 - f / (n + 1), at least one
                c = [conf[masked[k]] for k in order]
                n_commit = max([n for n in range(1, len(c) + 1) if c[n - 1] >= 1 - factor / (n + 1)], default=1)
                chosen = {masked[k] for k in order[:n_commit]}
            else:
                chosen = {masked[k] for k in order[: schedule(len(slots), T)[l]]}
            for i in chosen:
                x[b, M[b][i]] = x0[slots.index(i)]
                decoded[b].add(i)
            if decoder == "soft_mask":
                k_mix, w_s, w_a, w_b = soft
                for i in masked:
                    if i in chosen:
                        continue
                    pi = p[slots.index(i)]
                    top_v = torch.sort(logits[b, M[b][i]], descending=True, stable=True).indices[:k_mix]
                    q = pi[top_v] / pi[top_v].sum()
                    h_full = -(pi[pi > 0] * pi[pi > 0].log()).sum()
                    lam = w_s * torch.sigmoid(w_a * (-h_full - w_b))
                    soft_inputs[(b, M[b][i])] = ((1 - lam) * m64 + lam * (q[:, None] * W64[top_v]).sum(0)).float()
            if decoder in PARALLEL and all(i in decoded[b] for i in slots):
                current[b] += 1
        if decoder == "xflow":
            states.append([(X[b].clone(), t[b].clone()) for b in range(B)])
        s += 1
    if decoder == "xflow":
        for b in range(B):
            for i, p in enumerate(M[b]):
                x[b, p] = tokens[b][i]
        return x, states
    return x, None


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_length", [None, 3], ids=["one_block", "blocks_of_3"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_infill_matches_eager_loop(decoder, block_length):
    """A prefix, an interior span and several spans in one batch (4, 5 and 6 masks): 5 steps split
    3 + 2 over blocks of 3 (a shorter last block), or 5 steps over each row's single block (row 0
    with 4 masks has a step that commits nothing)."""
    model = mdfast.patch(tiny_bert(3), mask_token_id=MASK)
    ids = masked_rows(3, 14, PATTERNS)
    out = model.mdfast_infill(ids, steps=5, decoder=decoder, block_length=block_length, return_history=True)
    want, states = eager_infill(model, ids, None, 5, decoder, block_length)
    assert torch.equal(out.sequences, want), f"{decoder}: fast {out.sequences.tolist()} != eager {want.tolist()}"
    assert torch.equal(out.sequences[ids != MASK], ids[ids != MASK]), "given tokens are kept"
    if decoder not in PARALLEL:
        assert out.nfe == 5 and len(out.history) == 5
    if decoder == "xflow":
        W_e = model.get_input_embeddings().weight.detach()
        for record, rows in zip(out.history, states):
            for b, (X, t) in enumerate(rows):
                n = X.shape[0]
                assert_close("X", record["X"][b, :n], X, 1e-4, scale=1.0)
                assert_close("t", record["t"][b, :n], t, 1e-4, scale=1.0)
                assert bool((record["t"][b, n:] == 1).all()), "padding slots stay at t = 1"
                assert torch.equal(record["X"][b, n:], W_e[MASK].float().expand(6 - n, -1)), "and at X = m"


def test_xflow_infill_with_a_policy_matches_eager_loop():
    model = mdfast.patch(tiny_bert(2), mask_token_id=MASK)
    torch.manual_seed(3)
    policy = mdfast.StepPolicy(hidden=16)
    ids = masked_rows(3, 14, PATTERNS, seed=1)
    out = model.mdfast_infill(ids, steps=4, block_length=3, policy=policy, return_history=True)
    want, states = eager_infill(model, ids, None, 4, "xflow", 3, policy=policy)
    assert torch.equal(out.sequences, want)
    for record, rows in zip(out.history, states):
        for b, (X, t) in enumerate(rows):
            assert_close("X", record["X"][b, : X.shape[0]], X, 1e-4, scale=1.0)
            assert_close("t", record["t"][b, : X.shape[0]], t, 1e-4, scale=1.0)


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence", "topk_margin"])
def test_dream_infill_reads_shifted_logits(decoder):
    """Dream: position j is predicted by row j - 1, also inside and after masked spans."""
    model = mdfast.patch(tiny_dream(), mask_token_id=MASK)
    ids = masked_rows(2, 12, [[(1, 4), (8, 10)], [(4, 9)]], vocab=72)
    out = model.mdfast_infill(ids, steps=4, decoder=decoder, block_length=2)
    want, _ = eager_infill(model, ids, None, 4, decoder, 2, shifted=True)
    assert torch.equal(out.sequences, want)


@pytest.mark.parametrize("block_length", [None, 2], ids=["one_block", "blocks_of_2"])
@pytest.mark.parametrize("decoder", [*DECODERS, "xflow_policy"])
def test_padded_batch_equals_solo_runs(decoder, block_length):
    """Left padding of different lengths and different mask counts (3, 5 and 4) per row, in one
    block each (padding entries in the batch's blocks that a solo run has not) or in blocks of 2
    (2, 3 and 2 blocks): each row decodes exactly as it does alone (x-flow also with a random
    policy, whose actions stay below 1: a padding entry must then still never take the commit)."""
    model = mdfast.patch(tiny_bert(4), mask_token_id=MASK)
    options = {}
    if decoder == "xflow_policy":
        torch.manual_seed(1)
        decoder, options = "xflow", {"policy": mdfast.StepPolicy(hidden=16)}
    ids = masked_rows(3, 12, [[(9, 12)], [(4, 7), (9, 11)], [(6, 8), (10, 12)]], seed=2)
    mask = torch.ones_like(ids)
    mask[1, :2] = mask[2, :4] = 0
    ids[1, :2] = ids[2, :4] = 0
    batch = model.mdfast_infill(ids, mask, steps=3, decoder=decoder, block_length=block_length, **options)
    for b in range(3):
        real = mask[b].bool()
        alone = model.mdfast_infill(
            ids[b : b + 1, real], steps=3, decoder=decoder, block_length=block_length, **options
        )
        assert torch.equal(batch.sequences[b, real], alone.sequences[0]), f"sequence {b}"
        assert torch.equal(batch.sequences[b, ~real], ids[b, ~real]), "padding is returned as it was"


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence", "rcr", "soft_mask", "threshold", "factor"])
def test_generate_is_infill_of_an_appended_suffix(decoder):
    model = mdfast.patch(tiny_bert(5), mask_token_id=MASK)
    ids = torch.randint(5, 64, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = mask[2, :4] = 0
    kwargs = dict(steps=4, decoder=decoder, block_length=4, return_history=True)
    generated = model.mdfast_generate(ids, mask, max_new_tokens=8, **kwargs)
    suffix = torch.full((3, 8), MASK)
    infilled = model.mdfast_infill(torch.cat([ids, suffix], 1), torch.cat([mask, torch.ones_like(suffix)], 1), **kwargs)
    assert torch.equal(generated.sequences, infilled.sequences) and generated.nfe == infilled.nfe
    for a, b in zip(generated.history, infilled.history, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rows_without_masks_are_returned_as_they_are():
    model = mdfast.patch(tiny_bert(6), mask_token_id=MASK)
    ids = masked_rows(3, 12, [[], [(3, 8)], []], seed=3)
    for decoder in ["xflow", "low_confidence", "threshold", "factor"]:
        out = model.mdfast_infill(ids, steps=5, decoder=decoder, block_length=2)
        alone = model.mdfast_infill(ids[1:2], steps=5, decoder=decoder, block_length=2)
        assert torch.equal(out.sequences[[0, 2]], ids[[0, 2]])
        assert torch.equal(out.sequences[1], alone.sequences[0])


def test_steps_that_do_not_divide_give_the_first_blocks_one_more():
    """7 masks in blocks of 3 (3, 3 and 1) and 5 steps: the blocks get 2, 2 and 1 steps, committing
    2 + 1, 2 + 1 and 1 tokens; the same tokens as the eager loop."""
    model = mdfast.patch(tiny_bert(7), mask_token_id=MASK)
    ids = masked_rows(1, 10, [[(2, 9)]], seed=4)
    out = model.mdfast_infill(ids, steps=5, decoder="low_confidence", block_length=3, return_history=True)
    want, _ = eager_infill(model, ids, None, 5, "low_confidence", 3)
    assert torch.equal(out.sequences, want) and out.nfe == 5
    decoded = [int((record["tokens"] != MASK).sum()) for record in out.history]
    assert decoded == [2, 3, 5, 6, 7], f"tokens decoded after each step: {decoded}"


def test_eos_fills_the_decoded_positions_after_it():
    model = mdfast.patch(tiny_bert(8), mask_token_id=MASK)
    ids = masked_rows(2, 14, [[(1, 5), (8, 14)], [(2, 12)]], seed=5)
    plain = model.mdfast_infill(ids, steps=5, decoder="low_confidence")
    eos = int(plain.sequences[0, 3])
    out = model.mdfast_infill(ids, steps=5, decoder="low_confidence", eos_token_id=eos)
    for b in range(2):
        positions = (ids[b] == MASK).nonzero().squeeze(-1)
        before, after = plain.sequences[b, positions], out.sequences[b, positions]
        hits = (before == eos).nonzero()
        first = int(hits[0]) if hits.numel() else len(positions)
        assert torch.equal(after[:first], before[:first]) and bool((after[first:] == eos).all())
        assert torch.equal(out.sequences[b, ids[b] != MASK], ids[b, ids[b] != MASK]), "given tokens never change"


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(steps=0), ValueError, "steps: expected a positive int"),
        (dict(steps=7), ValueError, r"steps: expected at most 6 steps"),
        (dict(steps=2, block_length=2), ValueError, "sequence 0 has 6 masked positions in 3 blocks of 2"),
        (dict(block_length=0), ValueError, "block_length: expected a positive int or None"),
        (dict(decoder="greedy"), ValueError, "decoder: expected one of"),
        (dict(eos_token_id="[SEP]"), TypeError, "eos_token_id: expected a token id"),
        (dict(eos_token_id=[3, 64]), ValueError, r"eos_token_id: expected ids in \[0, 64\)"),
        (dict(mask_token_id=64), ValueError, "mask_token_id: 64 is outside the vocabulary"),
    ],
)
def test_bad_arguments_are_named_before_any_forward(kwargs, error, message):
    model = tiny_bert()
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    ids = masked_rows(1, 10, [[(2, 8)]])
    args = dict(steps=4, mask_token_id=MASK) | kwargs
    with pytest.raises(error, match=message):
        mdfast.infill(model, ids, **args)
    assert not forwards, "the error comes before any forward"


def test_bad_inputs_are_named():
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    with pytest.raises(TypeError, match=r"input_ids: expected an int64 tensor \(B, L\)"):
        model.mdfast_infill(torch.rand(1, 4), steps=2)
    with pytest.raises(ValueError, match="no position holds the mask id in any sequence"):
        model.mdfast_infill(torch.randint(5, 64, (2, 6)), steps=2)
    padded = torch.tensor([[MASK, MASK, 7, 8]])
    with pytest.raises(ValueError, match="no position holds the mask id"):  # masks under padding are not M
        model.mdfast_infill(padded, torch.tensor([[0, 0, 1, 1]]), steps=1)
    with pytest.raises(ValueError, match=r"input_ids: expected token ids in \[0, 64\).*from 4 to 70"):
        model.mdfast_infill(torch.tensor([[MASK, 70, 5]]), steps=1)
    with pytest.raises(ValueError, match="65 tokens = 65 positions, but BertForMaskedLM takes at most 64"):
        model.mdfast_infill(torch.full((1, 65), MASK), steps=1)
    with pytest.raises(ValueError, match="mask_token_id: 7 disagrees with the id 4"):
        model.mdfast_infill(torch.tensor([[MASK, 5]]), steps=1, mask_token_id=7)
    dream = mdfast.patch(tiny_dream(), mask_token_id=MASK)
    with pytest.raises(ValueError, match="masked position 0 of sequence 0 has no real position before it"):
        dream.mdfast_infill(torch.tensor([[MASK, 9, 10]]), steps=1)
    with pytest.raises(ValueError, match="masked position 2 of sequence 0 has no real position before it"):
        dream.mdfast_infill(torch.tensor([[0, 0, MASK, 10]]), torch.tensor([[0, 0, 1, 1]]), steps=1)


def test_a_sampled_rollout_records_each_rows_own_slots():
    """x-flow with sample=True, record_rollout=True (SPEC 6.2's record): the same generator state
    records the same trajectory; rows with different mask counts record their own slots, padding
    slots stay empty; the record needs sampling."""
    model = mdfast.patch(tiny_bert(4), mask_token_id=MASK)
    torch.manual_seed(3)
    policy = mdfast.StepPolicy(hidden=16)
    ids = masked_rows(2, 12, [[(3, 6)], [(2, 4), (7, 11)]], seed=4)
    options = dict(steps=3, decoder="xflow", policy=policy, sample=True, record_rollout=True, block_length=2)
    first = model.mdfast_infill(ids, generator=torch.Generator().manual_seed(9), **options)
    again = model.mdfast_infill(ids, generator=torch.Generator().manual_seed(9), **options)
    for name, value in first.rollout.items():
        assert torch.equal(again.rollout[name], value), name
    both = first.rollout
    assert both["positions"].shape == (2, 6) and both["valid"].tolist() == [[True] * 3 + [False] * 3, [True] * 6]
    assert not bool(both["active"][0, :, 3:].any()) and bool((both["states"][0, :, 3:] == 0).all())
    assert bool(both["active"].any(1)[both["valid"]].all()), "every decoded slot took a flow update"
    assert bool(((both["t_final"] >= 0) & (both["t_final"] <= 1)).all())
    with pytest.raises(ValueError, match="record_rollout: records sampled trajectories"):
        model.mdfast_infill(ids, steps=3, decoder="xflow", record_rollout=True)
