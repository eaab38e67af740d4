"""``mdfast train recipe antibody-policy``: its help, its command-line checks, and its last stages end to end.

The end-to-end tests run the ship stage on a tiny policy with the grpo and evaluate summaries written here, and
(slow) the evaluate stage on two held-out genes at one small budget before it; both need the eval and train
extras (AntiBERTy's weights and ANARCI's genes).
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch

import mdfast.cli
from mdfast import StepPolicy
from mdfast.cli import train_recipe

EXTRAS = ("antiberty", "anarci", "accelerate", "matplotlib")
MISSING = [name for name in EXTRAS if importlib.util.find_spec(name) is None]
needs_extras = pytest.mark.skipif(bool(MISSING), reason=f"needs the eval and train extras (missing: {MISSING})")
ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:home|tmp|work|root|Users)/")


def recipe(*argv) -> int:
    return mdfast.cli.main(["train", "recipe", "antibody-policy", *map(str, argv)])


def test_help_lists_the_options_and_runs_nothing(capsys):
    try:
        status = recipe("--help")
    except SystemExit as exit:
        status = exit.code or 0
    assert status == 0
    text = capsys.readouterr().out
    for option in ("--stages", "--out", "--ship-dir", "--init-policy", "--budgets"):
        assert option in text


def test_the_stage_names_agree_with_the_recipe():
    common = pytest.importorskip("mdfast.train.recipe.common", reason="the train extra")
    assert train_recipe.STAGES == common.STAGES


def test_unknown_stages_are_a_usage_error(tmp_path, capsys):
    assert recipe("--stages", "align,polish", "--out", tmp_path / "run") == 2
    assert "--stages" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_recorded_command_hides_absolute_paths(tmp_path):
    parser = mdfast.cli.errors.ArgumentParser(prog="x")
    train_recipe.add_antibody_policy_arguments(parser)
    args = parser.parse_args(["--stages", "grpo", "--out", str(tmp_path), "--init-policy", "default", "--minutes", "5"])
    assert train_recipe.shown_command(args) == (
        "mdfast train recipe antibody-policy --stages grpo --out OUT --minutes 5.0 --init-policy default"
    )
    args = parser.parse_args(["--out", "build/run", "--policy", str(tmp_path / "p.safetensors"), "--resume"])
    assert train_recipe.shown_command(args) == (
        "mdfast train recipe antibody-policy --stages align,grpo,evaluate --out build/run --resume --policy POLICY"
    )


def grpo_summary(command: str) -> dict:
    """The fields of OUT/grpo/grpo.json the ship stage reads."""
    return {
        "command": command,
        "date": "2026-01-01T00:00:00",
        "mdfast_commit": None,
        "torch_threads": 1,
        "model": "AntiBERTy (antiberty 0.1.3), base",
        "grpo_model": "base",
        "task": "suffix",
        "budget": "1/4",
        "reward": "span residue accuracy + lam * t_final",
        "data": {"training_genes": 3, "species": ["mouse"]},
        "steps_done": 0,
        "config": {"lam": 0.2, "backend": "auto", "disable_tqdm": True},
        "seconds": {"per_step": 1.0},
    }


def evaluate_summary(policy_file) -> dict:
    """The fields of OUT/evaluate/evaluate.json the ship stage reads: one record of two genes."""
    record = {"task": "suffix", "model": "base", "decoder": "xflow", "policy": "trained", "budget": "1/4"}
    record.update(accuracy=0.5, accuracy_se=0.1)
    command = "mdfast train recipe antibody-policy --stages evaluate --out OUT"
    summary = {"command": command, "date": "2026-01-01", "genes": 2, "records": [record], "comparisons": []}
    return {**summary, "policy_file": str(policy_file)}


def tiny_run(folder):
    """OUT/grpo with a tiny trained policy and its summary; returns the policy."""
    (folder / "grpo").mkdir(parents=True)
    torch.manual_seed(0)
    policy = StepPolicy(8)
    policy.save(folder / "grpo" / "policy.safetensors")
    command = "mdfast train recipe antibody-policy --stages grpo --out build/antibody-policy"
    (folder / "grpo" / "grpo.json").write_text(json.dumps(grpo_summary(command)))
    return policy


def check_shipped(ship, policy: StepPolicy) -> dict:
    card_text = (ship / "antiberty-suffix.json").read_text()
    assert not ABSOLUTE_PATH.search(card_text), card_text
    card = json.loads(card_text)
    shipped = StepPolicy.load(ship / "antiberty-suffix.safetensors")
    assert shipped.constants() == policy.constants()
    for key, value in policy.state_dict().items():
        assert torch.equal(shipped.state_dict()[key], value), key
    assert card["command"] == "mdfast train recipe antibody-policy --stages grpo --out build/antibody-policy"
    return card


@needs_extras
def test_ship_writes_the_policy_and_its_card(tmp_path):
    out, ship = tmp_path / "run", tmp_path / "ship"
    policy = tiny_run(out)
    (out / "evaluate").mkdir()
    summary = evaluate_summary(out / "grpo" / "policy.safetensors")
    (out / "evaluate" / "evaluate.json").write_text(json.dumps(summary))
    assert recipe("--stages", "ship", "--out", out, "--ship-dir", ship) == 0
    card = check_shipped(ship, policy)
    assert card["accuracy"] == {"suffix, base model": {"xflow trained policy": {"1/4": [0.5, 0.1]}}}
    assert "disable_tqdm" not in card["training"]["config"]


@needs_extras
def test_ship_without_the_earlier_stages_says_which_to_run(tmp_path, capsys):
    assert recipe("--stages", "ship", "--out", tmp_path, "--ship-dir", tmp_path / "ship") == 1
    assert "grpo,evaluate" in capsys.readouterr().err


@pytest.mark.slow
@needs_extras
def test_evaluate_then_ship_on_two_genes(tmp_path):
    out, ship = tmp_path / "run", tmp_path / "ship"
    policy = tiny_run(out)
    argv = ["--stages", "evaluate,ship", "--out", out, "--genes", 2, "--budgets", "1/8", "--tasks", "suffix"]
    assert recipe(*argv, "--ship-dir", ship, "--batch-size", 2) == 0
    evaluation = json.loads((out / "evaluate" / "evaluate.json").read_text())
    assert {(r["decoder"], r["policy"]) for r in evaluation["records"]} == {
        ("xflow", "default"),
        ("xflow", "trained"),
        ("low_confidence", None),
    }
    assert all(r["genes"] == 2 and r["budget"] == "1/8" for r in evaluation["records"])
    assert (out / "evaluate" / "evaluate.png").is_file() and (out / "evaluate" / "evaluate.md").is_file()
    card = check_shipped(ship, policy)
    assert card["evaluation"]["command"].startswith("mdfast train recipe antibody-policy --stages evaluate,ship")
    assert "--out OUT" in card["evaluation"]["command"] and card["evaluation"]["genes"] == 2
