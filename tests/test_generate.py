"""mdfast.generate / mdfast.patch against eager loops written here straight from SPEC.md.

The eager loops forward the whole sequence with the model's own head (every row projected),
compute every statistic in float64 with a full softmax and stable sorts, and loop over tokens in
Python; the fast loop must give exactly their tokens, for batch 1 and for a left-padded batch of 3,
and every sequence of a padded batch must get exactly the tokens it gets alone.
"""

from __future__ import annotations

import math

import pytest
import torch
from checks import assert_close, tiny_bert

import mdfast
from mdfast import reference
from mdfast.decode.schedule import top_positions

transformers = pytest.importorskip("transformers", reason="the tests build tiny models from transformers classes")

MASK = 4
DISCRETE = ["low_confidence", "maskgit_plus", "topk_margin", "entropy", "rcr", "soft_mask", "threshold", "factor"]
PARALLEL = ("threshold", "factor")  # a block runs until it is filled: data-dependent step counts


def tiny_dream(seed=0):
    """A Qwen2-shaped model wired as Dream: model_type "Dream" makes mdfast read shifted logits."""
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=72,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        initializer_range=0.5,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    model.config.model_type = "Dream"
    return model


def prompts(batch: int, vocab: int, P: int = 7):
    """(input_ids, attention_mask): random prompts, left-padded to lengths P, P - 2, P - 4."""
    ids = torch.randint(5, vocab, (batch, P))
    mask = torch.ones(batch, P, dtype=torch.long)
    for b in range(1, batch):
        mask[b, : 2 * b] = 0
        ids[b, : 2 * b] = 0
    return ids, mask


# ---------------------------------------------------------------------------------------------
# The eager loops
# ---------------------------------------------------------------------------------------------


def eager_logits(model, inputs_embeds, mask, P, shifted):
    """Response logits (B, N, V) from a plain forward of every row."""
    kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": mask}
    kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)  # skip the left padding
    logits = model(**kwargs).logits
    if shifted:  # Dream: row j predicts position j + 1
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits[:, P:]


def ranked(scores: list[float]) -> list[int]:
    """Indices by score descending, ties -> smaller index."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def schedule(n: int, steps: int) -> list[int]:
    base, extra = divmod(n, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def eager_discrete(
    model,
    ids,
    mask,
    N,
    steps,
    decoder,
    block_length,
    *,
    shifted=False,
    temperature=0.0,
    generator=None,
    tau=0.9,
    factor=1.0,
    soft=(3, 0.25, 5.0, -1.0),
):
    B, P = ids.shape
    W_e = model.get_input_embeddings().weight.detach()
    x = torch.cat([ids, torch.full((B, N), MASK)], dim=1)
    full_mask = torch.cat([mask, torch.ones(B, N, dtype=torch.long)], dim=1)
    running = torch.full((B, N), -math.inf, dtype=torch.float64)
    decoded = torch.zeros(B, N, dtype=torch.bool)  # a position is decoded even if its token is [MASK]
    soft_inputs = {}  # (b, position) -> embedding for soft-masking
    n_blocks = N // block_length
    for blk in range(n_blocks):
        lo, hi = blk * block_length, (blk + 1) * block_length
        counts = schedule(block_length, steps // n_blocks)
        step = 0
        while True:
            with torch.no_grad():
                embeds = model.get_input_embeddings()(x).clone()
                for (b, i), e in soft_inputs.items():
                    embeds[b, P + i] = e
                logits = eager_logits(model, embeds, full_mask, P, shifted)[:, lo:hi].double()
            p = torch.softmax(logits, -1)
            if temperature > 0:
                u = torch.rand(logits.shape, generator=generator, dtype=torch.float64)
                x0 = torch.argmax(logits / temperature - torch.log(-torch.log(u)), -1)
            else:
                x0 = torch.argmax(logits, -1)
            soft_inputs = {}
            for b in range(B):
                block = x[b, P + lo : P + hi]
                masked = [i for i in range(block_length) if not decoded[b, lo + i]]
                conf = {}
                for i in range(block_length):
                    pi = p[b, i]
                    top = torch.sort(pi, descending=True, stable=True).values
                    h_full = -(pi[pi > 0] * pi[pi > 0].log()).sum().item()
                    conf[i] = {
                        "low_confidence": pi[x0[b, i]].item(),
                        "maskgit_plus": pi[x0[b, i]].item(),
                        "threshold": pi[x0[b, i]].item(),
                        "factor": pi[x0[b, i]].item(),
                        "soft_mask": pi[x0[b, i]].item(),
                        "rcr": pi[x0[b, i]].item(),
                        "topk_margin": (top[0] - top[1]).item(),
                        "entropy": -h_full,
                    }[decoder]
                if decoder == "rcr":
                    for i in masked:
                        block[i] = x0[b, i]
                        running[b, lo + i] = max(running[b, lo + i].item(), conf[i])
                    keep = ranked([running[b, lo + i].item() for i in range(block_length)])[: sum(counts[: step + 1])]
                    for i in range(block_length):
                        decoded[b, lo + i] = i in keep
                        if i not in keep:
                            block[i] = MASK
                    continue
                if decoder == "threshold":
                    order = ranked([conf[i] for i in masked])
                    chosen = {masked[order[0]]} | {i for i in masked if conf[i] > tau}
                elif decoder == "factor":  # SPEC 8: the largest n with c(n) >= 1 - f / (n + 1), at least one
                    order = [masked[j] for j in ranked([conf[i] for i in masked])]  # c(1) >= c(2) >= ...
                    c = [conf[i] for i in order]
                    n = max([n for n in range(1, len(c) + 1) if c[n - 1] >= 1 - factor / (n + 1)], default=1)
                    chosen = set(order[:n])
                else:
                    order = ranked([conf[i] for i in masked])
                    chosen = {masked[j] for j in order[: counts[step]]}
                for i in chosen:
                    block[i] = x0[b, i]
                    decoded[b, lo + i] = True
                if decoder == "soft_mask":
                    k, w_s, w_a, w_b = soft
                    for i in masked:
                        if i in chosen:
                            continue
                        pi = p[b, i]
                        order_v = torch.sort(logits[b, i], descending=True, stable=True).indices[:k]
                        q = pi[order_v] / pi[order_v].sum()
                        h_full = -(pi[pi > 0] * pi[pi > 0].log()).sum()
                        lam = w_s * torch.sigmoid(w_a * (-h_full - w_b))
                        soft_inputs[(b, lo + i)] = (
                            (1 - lam) * W_e[MASK].double() + lam * (q[:, None] * W_e[order_v].double()).sum(0)
                        ).float()
            done = bool(decoded[:, lo:hi].all()) if decoder in PARALLEL else step + 1 >= steps // n_blocks
            if done:
                break
            step += 1
    return x


def eager_xflow(model, ids, mask, N, steps, block_length, policy=None, shifted=False):
    """SPEC 2 with the float64 reference step; returns (sequences, [(X, t) after each step])."""
    B, P = ids.shape
    W_e = model.get_input_embeddings().weight.detach().double()
    m = W_e[MASK]
    X = m.expand(B, N, -1).clone()
    t = torch.zeros(B, N, dtype=torch.float64)
    tokens = torch.full((B, N), MASK)
    full_mask = torch.cat([mask, torch.ones(B, N, dtype=torch.long)], dim=1)
    states = []
    n_blocks = N // block_length
    T = steps // n_blocks
    for blk in range(n_blocks):
        lo, hi = blk * block_length, (blk + 1) * block_length
        if blk > 0:  # the finished block: plain embeddings of its final tokens
            X[:, lo - block_length : lo] = W_e[tokens[:, lo - block_length : lo]]
            t[:, lo - block_length : lo] = 1.0
        for l in range(T):
            with torch.no_grad():
                embeds = torch.cat([model.get_input_embeddings()(ids), X.float()], dim=1)
                logits = eager_logits(model, embeds, full_mask, P, shifted)[:, lo:hi]
            out = reference.xflow_step(logits.double(), X[:, lo:hi], t[:, lo:hi], W_e, m, policy, l / max(T - 1, 1))
            X[:, lo:hi], t[:, lo:hi] = out["X"], out["t"]
            tokens[:, lo:hi] = out["tokens"]
            states.append((X.clone(), t.clone()))
    return torch.cat([ids, tokens], dim=1), states


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", DISCRETE)
@pytest.mark.parametrize("batch", [1, 3])
def test_discrete_decoders_match_eager_loops(decoder, batch):
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    ids, mask = prompts(batch, 64)
    out = model.mdfast_generate(ids, mask, max_new_tokens=12, steps=6, decoder=decoder, block_length=4)
    want = eager_discrete(model, ids, mask, 12, 6, decoder, 4)
    assert torch.equal(out.sequences, want), (
        f"{decoder}: fast {out.sequences[:, 7:].tolist()} != eager {want[:, 7:].tolist()}"
    )
    if decoder not in PARALLEL:
        assert out.nfe == 6 and len(out.step_times) == 6


@pytest.mark.parametrize("factor", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_factor_matches_its_eager_loop(factor, batch):
    """SPEC 8's factor rule at factors that commit one token a step up to a whole block at once."""
    model = mdfast.patch(tiny_bert(4), mask_token_id=MASK)
    ids, mask = prompts(batch, 64)
    out = model.mdfast_generate(ids, mask, max_new_tokens=12, steps=6, decoder="factor", factor=factor, block_length=4)
    want = eager_discrete(model, ids, mask, 12, 6, "factor", 4, factor=factor)
    assert torch.equal(out.sequences, want), f"fast {out.sequences[:, 7:].tolist()} != eager {want[:, 7:].tolist()}"
    assert 3 <= out.nfe <= 12 and len(out.step_times) == out.nfe


@pytest.mark.parametrize("decoder, options", [("factor", dict(factor=2.0)), ("threshold", dict(tau=0.3))])
def test_parallel_rows_finish_at_their_own_steps(decoder, options):
    """At B > 1 each row fills its blocks at its own pace: a batch takes as many forwards as its
    slowest row, and every row's tokens are complete after exactly the forwards its solo run takes
    (the rows here take different numbers of steps), with the same tokens as alone."""
    model = mdfast.patch(tiny_bert(6), mask_token_id=MASK)
    ids, mask = prompts(3, 64)
    args = dict(max_new_tokens=12, steps=6, decoder=decoder, block_length=4, suppress_tokens=[MASK]) | options
    batch = model.mdfast_generate(ids, mask, return_history=True, **args)
    solo = []
    for b in range(3):
        real = mask[b].bool()
        alone = model.mdfast_generate(ids[b : b + 1, real], **args)
        assert torch.equal(batch.sequences[b, 7:], alone.sequences[0, int(real.sum()) :]), f"sequence {b}"
        solo.append(alone.nfe)
    assert len(set(solo)) > 1, f"the rows should take different numbers of steps here, took {solo}"
    assert batch.nfe == max(solo) == len(batch.history)
    for b in range(3):
        filled = [bool((record["tokens"][b] != MASK).all()) for record in batch.history]
        assert filled.index(True) == solo[b] - 1 and all(filled[solo[b] - 1 :]), f"sequence {b}: {filled}"


@pytest.mark.parametrize("decoder", ["low_confidence", "rcr"])
def test_temperature_sampling_matches_eager_loop(decoder):
    model = mdfast.patch(tiny_bert(1), mask_token_id=MASK)
    ids, mask = prompts(3, 64)
    out = model.mdfast_generate(
        ids,
        mask,
        max_new_tokens=8,
        steps=4,
        decoder=decoder,
        temperature=0.8,
        generator=torch.Generator().manual_seed(5),
    )
    want = eager_discrete(
        model, ids, mask, 8, 4, decoder, 8, temperature=0.8, generator=torch.Generator().manual_seed(5)
    )
    assert torch.equal(out.sequences, want)


@pytest.mark.parametrize("with_policy", [False, True], ids=["heuristic", "policy"])
@pytest.mark.parametrize("batch", [1, 3])
def test_xflow_matches_reference_states(batch, with_policy):
    model = mdfast.patch(tiny_bert(2), mask_token_id=MASK)
    torch.manual_seed(3)
    policy = mdfast.StepPolicy(hidden=16) if with_policy else None
    ids, mask = prompts(batch, 64)
    out = model.mdfast_generate(
        ids, mask, max_new_tokens=8, steps=8, decoder="xflow", block_length=4, policy=policy, return_history=True
    )
    want, states = eager_xflow(model, ids, mask, 8, 8, 4, policy=policy)
    assert torch.equal(out.sequences, want)
    assert len(out.history) == len(states) == 8
    for record, (X, t) in zip(out.history, states):
        assert_close("X", record["X"], X, 1e-4, scale=1.0)
        assert_close("t", record["t"], t, 1e-4, scale=1.0)


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence", "topk_margin"])
def test_dream_shifted_logits_match_eager_loop(decoder):
    model = mdfast.patch(tiny_dream(), mask_token_id=MASK)
    assert model.mdfast_adapter.family == "dream" and model.mdfast_adapter.shifted
    ids, mask = prompts(3, 72)
    out = model.mdfast_generate(ids, mask, max_new_tokens=8, steps=8, decoder=decoder, block_length=4)
    if decoder == "xflow":
        want, _ = eager_xflow(model, ids, mask, 8, 8, 4, shifted=True)
    else:
        want = eager_discrete(model, ids, mask, 8, 8, decoder, 4, shifted=True)
    assert torch.equal(out.sequences, want)


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence", "rcr", "soft_mask", "threshold", "factor"])
def test_padded_batch_equals_solo_runs(decoder):
    model = mdfast.patch(tiny_bert(4), mask_token_id=MASK)
    ids, mask = prompts(3, 64)
    batch = model.mdfast_generate(ids, mask, max_new_tokens=8, steps=4, decoder=decoder)
    for b in range(3):
        real = mask[b].bool()
        alone = model.mdfast_generate(ids[b : b + 1, real], max_new_tokens=8, steps=4, decoder=decoder)
        assert torch.equal(batch.sequences[b, 7:], alone.sequences[0, int(real.sum()) :]), f"sequence {b}"


def test_tokens_after_eos_are_eos():
    model = mdfast.patch(tiny_bert(5), mask_token_id=MASK)
    ids, mask = prompts(3, 64)
    plain = model.mdfast_generate(ids, mask, max_new_tokens=10, steps=5, decoder="low_confidence")
    eos = int(plain.sequences[0, 7 + 3])
    out = model.mdfast_generate(ids, mask, max_new_tokens=10, steps=5, decoder="low_confidence", eos_token_id=[eos, 63])
    for b in range(3):
        response, before = out.sequences[b, 7:], plain.sequences[b, 7:]
        hits = [i for i, v in enumerate(before.tolist()) if v in (eos, 63)]
        if hits:
            first = hits[0]
            assert torch.equal(response[: first + 1], before[: first + 1])
            assert bool((response[first:] == before[first]).all())
        else:
            assert torch.equal(response, before)


def test_patch_and_unpatch_keep_the_model_intact():
    model = tiny_bert(6)
    head = model.get_output_embeddings()
    ids = torch.randint(5, 64, (2, 9))
    before = model(input_ids=ids).logits
    mdfast.patch(model, mask_token_id=MASK)
    assert torch.equal(model(input_ids=ids).logits, before), "a patched model's own forward is unchanged"
    out = mdfast.generate(model, ids, max_new_tokens=4, steps=2, decoder="low_confidence")
    assert out.sequences.shape == (2, 13)
    mdfast.unpatch(model)
    assert model.get_output_embeddings() is head and not hasattr(model, "mdfast_generate")
    fresh = tiny_bert(6)
    mdfast.generate(fresh, ids, max_new_tokens=4, steps=2, mask_token_id=MASK)  # adapted for the call only
    assert isinstance(fresh.get_output_embeddings(), torch.nn.Linear)


def test_xflow_sampling_returns_log_probs_with_gradients():
    model = mdfast.patch(tiny_bert(7), mask_token_id=MASK)
    policy = mdfast.StepPolicy(hidden=8)
    ids, mask = prompts(2, 64)
    out = model.mdfast_generate(
        ids, mask, max_new_tokens=6, steps=3, policy=policy, sample=True, generator=torch.Generator().manual_seed(0)
    )
    again = model.mdfast_generate(
        ids, mask, max_new_tokens=6, steps=3, policy=policy, sample=True, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(out.sequences, again.sequences) and len(out.log_probs) == 3
    torch.stack(out.log_probs).sum().backward()
    assert policy.fc1.weight.grad is not None


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        (dict(steps=0), ValueError, "steps: expected a positive int"),
        (dict(block_length=5), ValueError, "block_length: expected a positive divisor"),
        (dict(block_length=4, steps=3), ValueError, "do not split evenly over 2 blocks"),
        (dict(decoder="greedy"), ValueError, "decoder: expected one of"),
        (
            dict(decoder="low_confidence", policy=mdfast.StepPolicy()),
            ValueError,
            "only the xflow decoder takes a step policy",
        ),
        (dict(decoder="xflow", temperature=0.5), ValueError, "the x-flow decoder has no temperature"),
        (dict(decoder="threshold", tau=1.5), ValueError, "tau"),
        (dict(decoder="rcr", tau=0.5), TypeError, "decoder 'rcr'"),
        (dict(temperature=-1.0), ValueError, "temperature"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    args = dict(max_new_tokens=8, steps=4) | kwargs
    with pytest.raises(error, match=message):
        model.mdfast_generate(torch.randint(5, 64, (1, 4)), **args)


def test_bad_inputs_are_named():
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    with pytest.raises(TypeError, match=r"input_ids: expected an int64 tensor \(B, P\)"):
        model.mdfast_generate(torch.rand(1, 4), max_new_tokens=4, steps=2)
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(1, 4\)"):
        model.mdfast_generate(torch.randint(5, 64, (1, 4)), torch.ones(1, 5), max_new_tokens=4, steps=2)
    with pytest.raises(ValueError, match="has no mask_token_id"):
        mdfast.patch(tiny_bert())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        mdfast.patch(tiny_bert(), mask_token_id=64)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(mask_token_id=7), ValueError, "mask_token_id: 7 disagrees with the id 4"),
        (dict(eos_token_id="[SEP]"), TypeError, "eos_token_id: expected a token id"),
        (dict(eos_token_id=999), ValueError, r"eos_token_id: expected ids in \[0, 64\)"),
        (dict(eos_token_id=[]), TypeError, "eos_token_id"),
        (dict(input_ids=torch.tensor([[5, 64, 9]])), ValueError, r"input_ids: expected token ids in \[0, 64\)"),
        (dict(input_ids=torch.tensor([[5, -1, 9]])), ValueError, "from -1 to 9"),
        (
            dict(max_new_tokens=58),
            ValueError,
            "7 prompt \\+ 58 new tokens = 65 positions, but BertForMaskedLM takes at most 64",
        ),
        (dict(steps=9), ValueError, "steps: expected at most max_new_tokens = 8 steps"),
    ],
)
def test_edges_are_named_before_any_forward(kwargs, error, message):
    """The edges: a mask id that disagrees with the patched one, EOS ids that are no ids of
    the vocabulary, prompt ids outside it, more positions than the model has, more steps than
    tokens: named errors, raised before the first forward (no more errors after a whole decode)."""
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    forwards = []
    model.register_forward_hook(lambda *args: forwards.append(1))
    args = dict(input_ids=torch.randint(5, 64, (1, 7)), max_new_tokens=8, steps=4) | kwargs
    with pytest.raises(error, match=message):
        mdfast.generate(model, **args)
    assert not forwards, "the error comes before any forward"


def test_non_finite_logits_are_reported_not_decoded():
    """A NaN in one step's logits raises ValueError after the loop: no tokens come back."""
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    with torch.no_grad():
        model.cls.predictions.decoder.bias[7] = float("nan")
    for decoder in ["xflow", "low_confidence", "entropy", "soft_mask"]:
        with pytest.raises(ValueError, match="not a finite distribution"):
            model.mdfast_generate(torch.randint(5, 64, (2, 4)), max_new_tokens=4, steps=4, decoder=decoder)


def test_top_positions_reads_its_count_from_a_tensor():
    """The selection rule with ties (stable: smaller index first), for an int and a (1,) tensor."""
    score = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.9], [0.0, 0.0, 0.0, 0.0, 0.0]])
    for count, want in [
        (1, [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]),
        (3, [[1, 1, 0, 0, 1], [1, 1, 1, 0, 0]]),
        (0, [[0] * 5] * 2),
    ]:
        assert top_positions(score, count).tolist() == [[bool(v) for v in row] for row in want]
        assert torch.equal(top_positions(score, torch.tensor([count])), top_positions(score, count))


@pytest.mark.parametrize("decoder", ["xflow", *DISCRETE])
def test_a_step_writes_only_into_existing_tensors(decoder):
    """What lets a CUDA graph replay a step (decode/graphs.py): a step (``loop._Step``: the
    decoder's ``begin_step``, ``write_inputs`` and ``step`` around the forward) rebinds no
    attribute of the step, the decoder or its schedule (they write into the tensors that exist
    before the first step) and the step number comes from the device counter, so calling the same
    step object again and again walks the schedule of every block: the same tokens as the loop."""
    from mdfast.decode.loop import DECODERS, _Step
    from mdfast.decode.schedule import Schedule
    from mdfast.models import adapt, release

    model = tiny_bert(6)
    ids = torch.randint(5, 64, (2, 5))
    want = mdfast.generate(model, ids, max_new_tokens=8, steps=4, decoder=decoder, block_length=4, mask_token_id=MASK)
    adapter = adapt(model, MASK)
    try:
        full = torch.cat([ids, torch.full((2, 8), MASK)], dim=1)
        schedule = Schedule(full == MASK, 4, 4)
        dec = DECODERS[decoder](adapter, schedule, backend="auto", generator=None, temperature=0.0)
        assert dec.capturable
        step = _Step(adapter, dec, full, None)
        objects = {"step": step, "decoder": dec, "schedule": schedule}
        before = {name: dict(vars(o)) for name, o in objects.items()}
        n = 0
        while True:
            step()
            for name, o in objects.items():
                rebound = sorted(key for key, value in vars(o).items() if before[name].get(key) is not value)
                assert not rebound, f"{decoder}: a step rebound {name}.{rebound}"
            n += 1
            if dec.finished(n - 1):
                break
        assert int(schedule.step_index) == n
        assert torch.equal(dec.tokens(), want.sequences[:, 5:])
    finally:
        release(adapter)


def test_unsupported_models_are_refused_with_a_reason():
    class NoEmbeddings(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(ValueError, match="has no input embedding table"):
        mdfast.patch(NoEmbeddings(), mask_token_id=0)
    model = tiny_bert()
    model.config.model_type = "llada2_moe"
    with pytest.raises(ValueError, match=r"LLaDA2\.0 block diffusion.*not supported yet"):
        mdfast.patch(model, mask_token_id=MASK)


def test_antiberty_real_weights():
    """The real 25.8M-parameter masked LM shipped in antiberty==0.1.3 (SPEC 4)."""
    antiberty = pytest.importorskip(
        "antiberty", reason="antiberty==0.1.3 is not installed (pip install antiberty==0.1.3)"
    )
    import os

    path = os.path.join(os.path.dirname(antiberty.__file__), "trained_models", "AntiBERTy_md_smooth")
    model = mdfast.patch(transformers.BertForMaskedLM.from_pretrained(path).eval(), mask_token_id=4)
    assert model.get_input_embeddings().num_embeddings == 25
    ids = torch.tensor([[2, 5, 9, 13, 8, 22, 6, 11]])  # [CLS] and residues
    for decoder in ("xflow", "low_confidence"):
        out = model.mdfast_generate(ids, max_new_tokens=8, steps=4, decoder=decoder)
        if decoder == "xflow":
            want, _ = eager_xflow(model, ids, torch.ones_like(ids), 8, 4, 8)
        else:
            want = eager_discrete(model, ids, torch.ones_like(ids), 8, 4, decoder, 8)
        assert torch.equal(out.sequences, want)


def test_generate_command_decodes_a_local_model(tmp_path, capsys):
    """`mdfast generate --model PATH --prompt TEXT` on a model and tokenizer saved to disk."""
    from mdfast.cli import main

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(59)]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    model = tiny_bert(8)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (
        main(
            [
                "generate",
                "--model",
                str(tmp_path),
                "--prompt",
                "w1 w2 w3",
                "--decoder",
                "low_confidence",
                "--steps",
                "4",
                "--max-new-tokens",
                "4",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr()
    assert "4 forwards" in printed.err
    words = printed.out.split()
    assert 1 <= len(words) <= 4 and all(w in vocab for w in words)
