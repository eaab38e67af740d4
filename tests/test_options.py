"""DecodeOptions: every named error of ``validate``, a frozen object, and the same tokens as the keywords."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from checks import tiny_bert

import mdfast
from mdfast import DecodeOptions, FlowConfig, StepPolicy
from mdfast.decode import DECODERS

MASK = 4


@pytest.mark.parametrize(
    "fields, check, error, message",
    [
        (dict(steps=0), {}, ValueError, r"^steps: expected a positive int"),
        (dict(steps=2.0), {}, ValueError, r"^steps: expected a positive int"),
        (dict(steps=9), dict(max_new_tokens=8), ValueError, r"^steps: expected at most max_new_tokens = 8"),
        (dict(steps=4, block_length=0), {}, ValueError, r"^block_length: expected a positive int or None"),
        (
            dict(steps=4, block_length=3),
            dict(max_new_tokens=8),
            ValueError,
            r"^block_length: expected a positive divisor",
        ),
        (dict(steps=3, block_length=4), dict(max_new_tokens=8), ValueError, r"^steps: 3 steps do not split evenly"),
        (dict(steps=4), dict(max_new_tokens=0), ValueError, r"^max_new_tokens: expected a positive int"),
        (dict(steps=5), dict(masked=[4, 2]), ValueError, r"^steps: expected at most 4 steps"),
        (dict(steps=2, block_length=2), dict(masked=[2, 5]), ValueError, r"^steps: sequence 1 has 5 masked"),
        (dict(steps=4, decoder="greedy"), {}, ValueError, r"^decoder: expected one of"),
        (dict(steps=4, decoder="rcr", temperature=-1.0), {}, ValueError, r"^temperature: expected a number >= 0"),
        (dict(steps=4, temperature=0.5), {}, ValueError, r"^temperature: the x-flow decoder has no temperature"),
        (
            dict(steps=4, decoder="low_confidence", policy=StepPolicy()),
            {},
            ValueError,
            "^policy: only the xflow decoder takes a step policy, not 'low_confidence'",
        ),
        (dict(steps=4, policy="policy.pt"), {}, TypeError, r"^policy: expected a mdfast.StepPolicy"),
        (dict(steps=4, eos_token_id="[SEP]"), {}, TypeError, r"^eos_token_id: expected a token id"),
        (dict(steps=4, eos_token_id=[]), {}, TypeError, r"^eos_token_id: expected a token id"),
        (dict(steps=4, eos_token_id=-1), {}, ValueError, r"^eos_token_id: expected ids in >= 0"),
        (
            dict(steps=4, eos_token_id=[3, 64]),
            dict(vocab_size=64),
            ValueError,
            r"^eos_token_id: expected ids in \[0, 64\)",
        ),
        (dict(steps=4, suppress_tokens=3), {}, TypeError, r"^suppress_tokens: expected a list of token ids"),
        (
            dict(steps=4, suppress_tokens=[70]),
            dict(vocab_size=64),
            ValueError,
            r"^suppress_tokens: expected ids in \[0, 64\)",
        ),
        (
            dict(steps=4, suppress_tokens=[0, 1, 2]),
            dict(vocab_size=3),
            ValueError,
            r"^suppress_tokens: every one of the 3",
        ),
        (dict(steps=4, tau=0.5), {}, TypeError, r"^tau: only the threshold decoder reads tau, not decoder 'xflow'"),
        (dict(steps=4, decoder="rcr", k=3), {}, TypeError, r"^k: only the soft_mask decoder reads k"),
        (dict(steps=4, decoder="threshold", sample=True), {}, TypeError, r"^sample: only the xflow decoder"),
        (
            dict(steps=4, decoder="threshold", tau=1.5),
            {},
            ValueError,
            r"^tau: expected a confidence threshold in \[0, 1\]",
        ),
        (dict(steps=4, decoder="factor", factor=0), {}, ValueError, r"^factor: expected a number > 0, got 0$"),
        (dict(steps=4, decoder="factor", factor=-0.5), {}, ValueError, r"^factor: expected a number > 0, got -0.5$"),
        (dict(steps=4, decoder="factor", factor="2"), {}, ValueError, r"^factor: expected a number > 0, got '2'$"),
        (dict(steps=4, decoder="factor", factor=True), {}, ValueError, r"^factor: expected a number > 0, got True$"),
        (
            dict(steps=4, decoder="threshold", factor=1.0),
            {},
            TypeError,
            r"^factor: only the factor decoder reads factor, not decoder 'threshold'$",
        ),
        (
            dict(steps=4, factor=2.0),
            {},
            TypeError,
            r"^factor: only the factor decoder reads factor, not decoder 'xflow'$",
        ),
        (dict(steps=4, decoder="factor", tau=0.5), {}, TypeError, r"^tau: only the threshold decoder reads tau"),
        (dict(steps=4, decoder="soft_mask", k=9), {}, ValueError, r"^k: expected an int in \[2, 8\]"),
        (dict(steps=4, decoder="soft_mask", w_s="big"), {}, TypeError, r"^w_s: expected a number"),
        (dict(steps=4, config={"k": 4}), {}, TypeError, r"^config: expected a mdfast.FlowConfig"),
        (dict(steps=4, record_rollout=True), {}, ValueError, r"^record_rollout: records sampled trajectories"),
        (dict(steps=4, sample=True), {}, ValueError, r"^sample: draws the policy's actions; pass a policy"),
        (dict(steps=4, backend="gpu"), {}, ValueError, r"^backend: expected one of \('auto', 'torch'"),
        (dict(steps=4, cuda_graph="yes"), {}, TypeError, r"^cuda_graph: expected True or False"),
        (dict(steps=4, generator=0), {}, TypeError, r"^generator: expected a torch.Generator"),
    ],
)
def test_validate_names_the_field(fields, check, error, message):
    with pytest.raises(error, match=message):
        DecodeOptions(**fields).validate(**check)


def test_good_options_validate_to_themselves_with_or_without_the_model():
    for options in [
        DecodeOptions(steps=4),
        DecodeOptions(steps=4, block_length=2, eos_token_id=[1, 2], suppress_tokens=[MASK]),
        DecodeOptions(steps=4, policy=StepPolicy(), sample=True, record_rollout=True, config=FlowConfig()),
        DecodeOptions(steps=4, decoder="threshold", tau=0.7, temperature=0.5),
        DecodeOptions(steps=4, decoder="factor", factor=0.5),
        DecodeOptions(steps=4, decoder="factor", factor=3, temperature=0.5),
        DecodeOptions(steps=4, decoder="soft_mask", k=4, w_s=0.5, w_a=2, w_b=0.0),
    ]:
        assert options.validate() is options
        assert options.validate(max_new_tokens=8, vocab_size=64) is options


def test_every_per_decoder_field_belongs_to_a_decoder():
    names = {f.name for f in dataclasses.fields(DecodeOptions)}
    for decoder in DECODERS:
        DecodeOptions(steps=1, decoder=decoder).validate(max_new_tokens=1)
    assert {"config", "sample", "record_rollout", "tau", "factor", "k", "w_s", "w_a", "w_b"} <= names


def test_from_kwargs_names_an_unknown_option():
    assert DecodeOptions.from_kwargs(steps=4, decoder="threshold", tau=0.5) == DecodeOptions(
        steps=4, decoder="threshold", tau=0.5
    )
    with pytest.raises(TypeError, match=r"^taus: not a decoding option"):
        DecodeOptions.from_kwargs(steps=4, taus=0.5)
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    with pytest.raises(TypeError, match=r"^temprature: not a decoding option"):
        model.mdfast_generate(torch.randint(5, 64, (1, 4)), max_new_tokens=4, steps=2, temprature=0.5)


def test_options_are_frozen():
    options = DecodeOptions(steps=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.steps = 8
    assert dataclasses.replace(options, steps=8).steps == 8 and options.steps == 4


@pytest.mark.parametrize(
    "fields",
    [
        dict(steps=4, decoder="low_confidence", block_length=4, eos_token_id=9),
        dict(steps=4, decoder="soft_mask", k=4, suppress_tokens=[5, 6]),
        dict(steps=2, decoder="threshold", tau=0.5),
        dict(steps=2, decoder="factor", factor=2.0, block_length=4),
        dict(steps=4),
    ],
)
def test_options_decode_as_the_keywords_do(fields):
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    ids = torch.randint(5, 64, (2, 5), generator=torch.Generator().manual_seed(1))
    by_keywords = mdfast.generate(model, ids, max_new_tokens=8, **fields)
    by_options = mdfast.generate_with_options(model, ids, DecodeOptions(**fields), max_new_tokens=8)
    assert torch.equal(by_keywords.sequences, by_options.sequences) and by_keywords.nfe == by_options.nfe
    masked = torch.cat([ids, torch.full((2, 8), MASK)], 1)
    filled = mdfast.infill_with_options(model, masked, DecodeOptions(**fields))
    assert torch.equal(filled.sequences, mdfast.infill(model, masked, **fields).sequences)


def test_options_are_checked_before_the_model_is_needed():
    """The CLI checks its budget with ``validate(max_new_tokens=...)`` before loading any model."""
    with pytest.raises(ValueError, match=r"^steps: expected at most max_new_tokens = 4"):
        DecodeOptions(steps=8, decoder="low_confidence", eos_token_id=2).validate(max_new_tokens=4)
