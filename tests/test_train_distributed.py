"""Data-parallel GRPO (mdfast/train/distributed.py): 2 CPU processes (gloo) train exactly 1 process's policy.

The same data and seeds; a tiny native LLaDA (the workers need no transformers).

What is equal, and why: each prompt's G trajectories are decoded from a generator seeded by
(seed, the prompt's global index) in a batch of the same composition (groups_per_rollout_batch
groups, aligned globally), so every rank records the rollouts the single process records, bitwise;
each group's gradient is computed alone from its own stored states, and every rank sums all
groups' gradients in the global group order, the same float32 sum the single process forms. So the
policy weights after N steps are bitwise equal (and equal on both ranks); the logged metrics agree
to float rounding (some are sums gathered in another order).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_fixtures import MASK, even_reward, prompt_ids, tiny_llada

from mdfast import StepPolicy
from mdfast.train.grpo import PolicyGRPOConfig, PolicyGRPOTrainer

PROMPTS_PER_STEP = 2


def _train(output_dir: str, per_device: int) -> tuple[dict, list[dict]]:
    torch.manual_seed(0)
    policy = StepPolicy(8)
    data = [{"prompt_ids": ids, "parity": i % 2} for i, ids in enumerate(prompt_ids(6, seed=5))]
    args = PolicyGRPOConfig(
        output_dir=output_dir,
        num_generations=3,
        per_device_train_batch_size=per_device,
        max_completion_length=5,
        steps=3,
        max_steps=2,
        logging_steps=1,
        save_steps=None,
        disable_tqdm=True,
        backend="torch",
        learning_rate=1e-2,
        beta=0.05,
    )
    trainer = PolicyGRPOTrainer(policy, tiny_llada(), even_reward, data, args, mask_token_id=MASK)
    history = trainer.train()
    return {name: p.detach().clone() for name, p in policy.state_dict().items()}, history


def _worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        weights, history = _train(os.path.join(out_dir, "run"), PROMPTS_PER_STEP // world_size)
        torch.save({"weights": weights, "history": history}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_the_single_process_policy(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers run one thread each: the same kernels, the same sums
    try:
        single, single_history = _train(str(tmp_path / "single"), PROMPTS_PER_STEP)
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for name, value in single.items():
        assert torch.equal(ranks[0]["weights"][name], value), name
        assert torch.equal(ranks[1]["weights"][name], value), name
    assert ranks[1]["history"] == []  # only rank 0 logs
    for got, want in zip(ranks[0]["history"], single_history):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, list):
                assert got[key] == value, key
            else:
                assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
