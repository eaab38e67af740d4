"""PolicyGRPOTrainer (mdfast/train/grpo.py) and ``mdfast train grpo`` on a tiny random BERT.

What moves, what is logged, checkpoints that resume to the same run, and the command end to end.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

import mdfast.cli
from mdfast import StepPolicy
from mdfast.train.grpo import PolicyGRPOConfig, PolicyGRPOTrainer
from mdfast.train.policy_init import default_policy_start

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
    with pytest.raises(TypeError, match="suppress_tokens"):
        PolicyGRPOConfig(suppress_tokens=[4.0])
    assert PolicyGRPOConfig(budget=0.25).steps_for(256) == 64
    assert PolicyGRPOConfig(budget=0.25, block_length=32).steps_for(256) == 64
    assert PolicyGRPOConfig(budget=0.1, block_length=32).steps_for(256) == 24  # 3 steps per block


def main(argv):
    """``mdfast train grpo ARGV``'s exit status."""
    return mdfast.cli.main(["train", "grpo", *argv])


def command_line(tmp_path):
    """(model folder, data file, output folder, argv): what the command tests share, under tmp_path.

    A tiny BERT folder, a training JSONL, an output folder, and the ``mdfast train grpo`` arguments naming them.
    """
    folder = tmp_path / "model"
    tiny_bert().save_pretrained(folder)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dataset()))
    out = tmp_path / "policy"
    argv = ["--model", str(folder), "--data", str(data), "--reward", "train_fixtures:even_reward"]
    argv += ["--mask-token-id", str(MASK), "--device", "cpu", "--output-dir", str(out), "--backend", "torch"]
    argv += ["--num-generations", "2", "--per-device-train-batch-size", "2", "--max-completion-length", "4"]
    argv += ["--steps", "2", "--disable-tqdm", "--policy-hidden", "8"]
    return folder, data, out, argv


def test_the_command_trains_a_policy_end_to_end(tmp_path, capsys):
    folder, data, out, argv = command_line(tmp_path)
    argv += ["--max-steps", "2", "--logging-steps", "1"]
    assert main(argv) == 0
    policy = StepPolicy.load(out / "policy.safetensors")
    assert policy.hidden == 8
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert main([*argv, "--max-steps", "3", "--resume"]) == 0
    assert os.path.isdir(out / "checkpoint-3")
    assert main(["--model", str(folder), "--data", str(data), "--preset", "paper-code"]) == 2
    assert "--reward" in capsys.readouterr().err


def test_suppressed_tokens_never_reach_the_rewards(tmp_path):
    seen = []

    def recording_reward(prompts, completions, completion_ids, **columns):
        seen.extend(t for ids in completion_ids for t in ids)
        return [float(ids[0] % 2) for ids in completion_ids]

    free = trainer(tmp_path / "free", max_steps=1)
    free.reward_funcs = [recording_reward]
    free.train()
    suppressed = sorted(set(seen))[: max(1, len(set(seen)) // 2)]
    seen.clear()
    torch.manual_seed(0)
    run = PolicyGRPOTrainer(
        StepPolicy(8),
        tiny_bert(),
        recording_reward,
        dataset(),
        config(tmp_path / "suppressed", max_steps=1, suppress_tokens=suppressed),
        mask_token_id=MASK,
    )
    run.train()
    assert seen and not set(seen) & set(suppressed)


def test_the_command_starts_from_the_default_policy_and_blocks_the_mask(tmp_path, capsys):
    _, _, out, argv = command_line(tmp_path)
    argv += ["--max-steps", "1", "--suppress-mask"]
    assert main([*argv, "--policy", "default", "--policy-init-prompts", "2"]) == 0
    start = StepPolicy.load(out / "init_policy.safetensors")
    assert start.hidden == 8 and os.path.isfile(out / "policy.safetensors")
    # the start is policy_init's fit on the first examples of the run's seeded order, with the mask blocked
    order = torch.randperm(4, generator=torch.Generator().manual_seed(42))[:2]
    prompts = [torch.tensor(dataset()[int(i)]["prompt_ids"] + [MASK] * 4) for i in order]
    expected, _ = default_policy_start(
        tiny_bert(),
        prompts,
        config(tmp_path, num_generations=2, steps=2, suppress_tokens=[MASK]),
        hidden=8,
        mask_token_id=MASK,
    )
    assert all(torch.equal(a, b) for a, b in zip(start.parameters(), expected.parameters()))
    # resuming from a checkpoint does not fit again
    (out / "init_policy.safetensors").unlink()
    assert main([*argv, "--policy", "default", "--max-steps", "2", "--resume"]) == 0
    assert not (out / "init_policy.safetensors").exists() and os.path.isdir(out / "checkpoint-2")
    assert main([*argv, "--policy", "default", "--policy-init-prompts", "0"]) == 2
    assert "--policy-init-prompts" in capsys.readouterr().err
