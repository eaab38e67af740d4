"""PolicyGRPOTrainer (mdfast/train/grpo.py) on a tiny random BERT: what moves, what is logged,
checkpoints that resume to the same run, and the ``mdfast train grpo`` command end to end."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mdfast import StepPolicy
from mdfast.train.grpo import PolicyGRPOConfig, PolicyGRPOTrainer, main

pytest.importorskip("transformers", reason="the tests decode with a tiny transformers BERT")
from checks import tiny_bert
from train_fixtures import MASK, even_reward, prompt_ids


def dataset(count=4):
    return [{"prompt_ids": ids, "parity": i % 2} for i, ids in enumerate(prompt_ids(count, seed=3))]


def config(tmp_path, **overrides):
    values = {
        "output_dir": str(tmp_path / "run"),
        "num_generations": 3,
        "per_device_train_batch_size": 2,
        "max_completion_length": 5,
        "steps": 3,
        "max_steps": 2,
        "logging_steps": 1,
        "save_steps": None,
        "disable_tqdm": True,
        "backend": "torch",
        "learning_rate": 1e-2,
    }
    values.update(overrides)
    return PolicyGRPOConfig(**values)


def trainer(tmp_path, policy_seed=0, eval_fn=None, **overrides):
    torch.manual_seed(policy_seed)
    policy = StepPolicy(8)
    return PolicyGRPOTrainer(
        policy, tiny_bert(), even_reward, dataset(), config(tmp_path, **overrides), eval_fn, mask_token_id=MASK
    )


def test_grpo_moves_only_the_policy_and_logs_trl_and_spec_metrics(tmp_path):
    calls = []

    def eval_fn(policy):
        calls.append(policy)
        return {"score": 0.5}

    run = trainer(tmp_path, eval_fn=eval_fn, num_iterations=1, eval_steps=2)
    model_before = {name: p.clone() for name, p in run.model.state_dict().items()}
    policy_before = {name: p.clone() for name, p in run.policy.state_dict().items()}
    history = run.train()
    for name, p in run.model.state_dict().items():
        assert torch.equal(p, model_before[name]), name
    assert all(not p.requires_grad and p.grad is None for p in run.model.parameters())
    assert any(not torch.equal(p, policy_before[name]) for name, p in run.policy.state_dict().items())
    assert getattr(run.model, "mdfast_adapter", None) is None  # patched for the run only

    steps = [h for h in history if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2]
    first = steps[0]
    for name in (
        "reward",
        "reward_std",
        "rewards/even_reward/mean",
        "rewards/even_reward/std",
        "frac_reward_zero_std",
        "clip_ratio/region_mean",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "approx_kl",
        "learning_rate",
        "grad_norm",
        "loss",
        "completions/t_final_mean",
        "completions/frac_t_below_commit",
        "policy/entropy",
        "policy/mu_mean",
        "policy/kappa_mean",
        "rollout/reedits_per_trajectory",
        "rollout/hard_commits_per_trajectory",
        "rollout/nfe",
    ):
        assert name in first, name
    # num_iterations = 1: log pi_old is recomputed by the loss's own computation, so r = 1 exactly
    assert first["policy/ratio_mean"] == 1.0 and first["clip_ratio/region_mean"] == 0.0
    assert first["rollout/nfe"] == 3.0 and first["learning_rate"] == 1e-2
    assert sum(first["policy/log2_action_hist"]) == first["policy/active_tokens"]
    assert [h["step"] for h in history if "eval/score" in h] == [0, 2] and len(calls) == 2
    with open(os.path.join(run.args.output_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records] == [0, 1, 2, 2]
    assert os.path.isfile(os.path.join(run.args.output_dir, "policy.safetensors"))


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(tmp_path):
    whole = trainer(tmp_path / "a", max_steps=2)
    whole.train()
    first = trainer(tmp_path / "b", max_steps=1, save_steps=1)
    first.train()
    assert os.path.isfile(tmp_path / "b" / "run" / "checkpoint-1" / "policy.safetensors")
    resumed = trainer(tmp_path / "b", policy_seed=1, max_steps=2)  # other initial weights: the checkpoint wins
    resumed.train(resume_from_checkpoint=True)
    assert resumed.global_step == 2
    for name, p in whole.policy.state_dict().items():
        assert torch.equal(p, resumed.policy.state_dict()[name]), name
    loaded = StepPolicy.load(tmp_path / "b" / "run" / "checkpoint-2" / "policy.safetensors")
    assert all(torch.equal(p, loaded.state_dict()[n]) for n, p in resumed.policy.state_dict().items())


def test_config_and_trainer_refuse_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="num_generations"):
        PolicyGRPOConfig(num_generations=1)
    with pytest.raises(ValueError, match="groups_per_rollout_batch"):
        PolicyGRPOConfig(per_device_train_batch_size=3, groups_per_rollout_batch=2)
    with pytest.raises(ValueError, match="scale_rewards"):
        PolicyGRPOConfig(scale_rewards="batch")
    with pytest.raises(ValueError, match="reward_weights"):
        trainer(tmp_path, reward_weights=[1.0, 2.0])
    assert PolicyGRPOConfig(budget=0.25).steps_for(256) == 64
    assert PolicyGRPOConfig(budget=0.25, block_length=32).steps_for(256) == 64
    assert PolicyGRPOConfig(budget=0.1, block_length=32).steps_for(256) == 24  # 3 steps per block


def test_the_command_trains_a_policy_end_to_end(tmp_path):
    folder = tmp_path / "model"
    tiny_bert().save_pretrained(folder)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dataset()))
    out = tmp_path / "policy"
    argv = ["--model", str(folder), "--data", str(data), "--reward", "train_fixtures:even_reward"]
    argv += ["--mask-token-id", str(MASK), "--device", "cpu", "--output-dir", str(out), "--backend", "torch"]
    argv += ["--num-generations", "2", "--per-device-train-batch-size", "2", "--max-completion-length", "4"]
    argv += ["--steps", "2", "--max-steps", "2", "--logging-steps", "1", "--disable-tqdm", "--policy-hidden", "8"]
    assert main(argv) == 0
    policy = StepPolicy.load(out / "policy.safetensors")
    assert policy.hidden == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert main([*argv, "--max-steps", "3", "--resume"]) == 0
    assert os.path.isdir(out / "checkpoint-3")
    with pytest.raises(SystemExit, match="--reward"):
        main(["--model", str(folder), "--data", str(data), "--preset", "paper-code"])
