"""The example policies shipped with mdfast (mdfast/policy.py: StepPolicy.examples / example / example_card).

The loader is checked on a folder written here (``EXAMPLE_POLICIES`` pointed at it); the policies the package
really ships (``mdfast/data/policies/``, written by ``mdfast train recipe antibody-policy --stages ship``) are
loaded and run through one x-flow step against the float64 reference.
"""

from __future__ import annotations

import json

import pytest
import torch
from checks import RTOL, check_step, make_state, reference_step

import mdfast
from mdfast import FlowConfig, StepPolicy
from mdfast import policy as policy_module

CARD_FIELDS = ("name", "model", "task", "budget", "command", "date", "accuracy")


def write_example(folder, name, seed):
    torch.manual_seed(seed)
    policy = StepPolicy(8)
    policy.save(folder / f"{name}.safetensors")
    (folder / f"{name}.json").write_text(json.dumps({"name": name, "seed": seed}))
    return policy


@pytest.fixture
def examples_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(policy_module, "EXAMPLE_POLICIES", tmp_path)
    return tmp_path


def test_examples_are_listed_and_load_in_one_line(examples_folder):
    written = {name: write_example(examples_folder, name, seed) for seed, name in enumerate(["zeta", "alpha"])}
    (examples_folder / "README.md").write_text("not a policy")
    assert StepPolicy.examples() == ["alpha", "zeta"]
    for name, policy in written.items():
        loaded = StepPolicy.example(name)
        assert loaded.constants() == policy.constants()
        for key, value in policy.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert StepPolicy.example_card(name) == {"name": name, "seed": ["zeta", "alpha"].index(name)}


def test_an_unknown_name_lists_the_known_ones(examples_folder):
    write_example(examples_folder, "antibody-test", 0)
    write_example(examples_folder, "other", 1)
    with pytest.raises(ValueError, match=r"no example policy 'nope'.*'antibody-test', 'other'"):
        StepPolicy.example("nope")
    with pytest.raises(ValueError, match=r"'antibody-test', 'other'"):
        StepPolicy.example_card("nope")


def test_no_folder_means_no_examples(tmp_path, monkeypatch):
    monkeypatch.setattr(policy_module, "EXAMPLE_POLICIES", tmp_path / "absent")
    assert StepPolicy.examples() == []
    with pytest.raises(ValueError, match="ships no example policy"):
        StepPolicy.example("antiberty-span")


def test_a_policy_without_its_card_is_reported(examples_folder):
    write_example(examples_folder, "lonely", 0)
    (examples_folder / "lonely.json").unlink()
    assert StepPolicy.example("lonely").hidden == 8
    with pytest.raises(FileNotFoundError, match=r"lonely\.json is missing"):
        StepPolicy.example_card("lonely")


def shipped():
    names = StepPolicy.examples()
    if not names:
        pytest.skip("no example policy shipped yet (mdfast train recipe antibody-policy --stages ship writes one)")
    return names


def test_shipped_policies_are_small_and_carry_their_card():
    for name in shipped():
        path = policy_module.EXAMPLE_POLICIES / f"{name}.safetensors"
        assert path.stat().st_size < 64 * 1024, f"{path}: an example policy is a few KB"
        card = StepPolicy.example_card(name)
        missing = [field for field in CARD_FIELDS if field not in card]
        assert not missing, f"{name}.json lacks {missing}"
        assert card["name"] == name


def test_shipped_policies_run_an_xflow_step():
    for name in shipped():
        policy = StepPolicy.example(name)
        config = FlowConfig(k=policy.k, a_min=policy.a_min, a_max=policy.a_max)
        logits, X, t, embedding, m = make_state(2, 7, 25, 16, device="cpu")  # AntiBERTy's vocabulary of 25
        rho = torch.rand(2)
        X_before = X.clone()
        out = mdfast.xflow_step(logits, X, t, embedding, m, policy, rho, config=config)
        want = reference_step(logits, X, t, embedding, m, policy, rho, config)
        check_step(out, want, X_before, embedding, RTOL[torch.float32])
