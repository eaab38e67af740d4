"""A GRPO run set up from files, as ``mdfast train grpo`` does: the model, the examples, the start, the evaluation.

- ``load_model_folder``: the process group (``torchrun``), the frozen model and its tokenizer.
- ``read_examples``: a JSONL file of examples, text prompts tokenized (``grpo_examples``).
- ``start_policy``: a fresh StepPolicy, a saved one, or one fitted to SPEC 2's default policy (``policy_init``).
- ``held_out_reward``: an ``eval_fn`` scoring held-out examples decoded with the policy's mean action.
- ``import_rewards``, ``train_policy``: the reward functions by import path; the trainer run to its end.
- ``latest_checkpoint`` (``grpo_checkpoints``'): the folder a resumed run continues from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Sequence

import torch

from ..decode import DecodeOptions, generate_with_options, infill_with_options
from ..loading import load_model, load_tokenizer
from ..policy import StepPolicy
from . import distributed
from .grpo import PolicyGRPOTrainer, first_set
from .grpo_checkpoints import POLICY_FILE, find_checkpoints, latest_checkpoint
from .grpo_config import PolicyGRPOConfig
from .grpo_examples import RewardFunction, example_template, prepare_examples, reward_table
from .policy_init import default_policy_start
from .records import import_function, read_jsonl

__all__ = [
    "INIT_POLICY_FILE",
    "find_mask_token_id",
    "held_out_reward",
    "import_rewards",
    "latest_checkpoint",
    "load_model_folder",
    "read_examples",
    "start_policy",
    "train_policy",
]

INIT_POLICY_FILE = "init_policy.safetensors"


def load_model_folder(path: str, *, device: str | None, dtype: str | None, trust_remote_code: bool):
    """(world, model, tokenizer): this process's place in the run, then the folder's model on its device."""
    world = distributed.init_from_env(device)
    model = load_model(path, device=world.device, dtype=dtype, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    return world, model, tokenizer


def read_examples(path: str, tokenizer, chat: bool) -> list[dict]:
    """The examples of a JSONL file, text prompts tokenized (in the chat template with ``chat``)."""
    return prepare_examples(read_jsonl(path), tokenizer, chat)


def import_rewards(specs: Sequence[str]) -> list[RewardFunction]:
    """The reward functions named by import paths "package.module:function"."""
    return [import_function(spec) for spec in specs]


def find_mask_token_id(explicit: int | None, model, tokenizer) -> int | None:
    """``explicit``, else the model config's mask id, else the tokenizer's (None: none names one)."""
    return first_set(
        explicit,
        getattr(getattr(model, "config", None), "mask_token_id", None),
        getattr(tokenizer, "mask_token_id", None),
    )


def start_policy(
    choice: str | None,
    *,
    model,
    examples: list[dict],
    config: PolicyGRPOConfig,
    world: distributed.World,
    hidden: int = 64,
    init_prompts: int = 16,
    tokenizer=None,
    mask_token_id: int | None = None,
    resume: bool = False,
) -> StepPolicy:
    """The policy the run starts from, on the run's device.

    - choice: None for a fresh StepPolicy(``hidden``) seeded by config.seed; a StepPolicy file; or "default":
      ``policy_init.default_policy_start`` on the first ``init_prompts`` examples of the run's seeded order, the
      fit written beside the run as init_policy.safetensors (a fresh one when ``resume`` finds a checkpoint: the
      checkpoint's weights replace it).
    """
    if choice == "default" and not (resume and find_checkpoints(config.output_dir)):
        return _default_start(model, examples, config, world, hidden, init_prompts, tokenizer, mask_token_id)
    if choice and choice != "default":
        return StepPolicy.load(choice, world.device)
    torch.manual_seed(config.seed)
    return StepPolicy(hidden).to(world.device)


def _default_start(model, examples, config, world, hidden, init_prompts, tokenizer, mask_token_id) -> StepPolicy:
    """start_policy's "default": the fit, written to init_policy.safetensors, its error per round on stderr."""
    if mask_token_id is None:
        raise ValueError(
            "mask_token_id: the default start decodes masks; neither the model nor the tokenizer names one"
        )
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed))
    prompts = [
        torch.tensor(
            example_template(examples[int(i)], mask_token_id, config.max_completion_length, tokenizer),
            device=world.device,
        )
        for i in order[:init_prompts]
    ]
    policy, fits = default_policy_start(model, prompts, config, hidden=hidden, mask_token_id=mask_token_id)
    if world.is_main:
        os.makedirs(config.output_dir, exist_ok=True)
        policy.save(os.path.join(config.output_dir, INIT_POLICY_FILE))
        shown = ", ".join(f"{f.rms_log2_before:.2f} -> {f.rms_log2_after:.2f}" for f in fits)
        print(f"[mdfast grpo] start fitted to the default policy (rms log2 error per round: {shown})", file=sys.stderr)
    return policy


def held_out_reward(
    model,
    examples: list[dict],
    reward_funcs: Sequence[RewardFunction],
    config: PolicyGRPOConfig,
    tokenizer,
    mask_token_id: int,
) -> Callable[[StepPolicy], dict[str, float]]:
    """An eval_fn: {"reward": the mean weighted task reward of ``examples``}, decoded with the policy's mean action.

    x-flow at the training budget (``config.steps_for``), block_length, backend and suppress_tokens; an example
    given as an 'input_ids' template is infilled, the others generated after their prompt.
    """
    weights = config.reward_weights or [1.0] * len(reward_funcs)
    options = DecodeOptions(
        steps=1,
        decoder="xflow",
        block_length=config.block_length,
        backend=config.backend,
        suppress_tokens=config.suppress_tokens,
    )

    def evaluate(policy: StepPolicy) -> dict[str, float]:
        device = policy.fc1.weight.device
        total = []
        for example in examples:
            if "input_ids" in example:
                ids = torch.tensor([example["input_ids"]], device=device)
                steps = config.steps_for(int((ids == mask_token_id).sum()))
                chosen = dataclasses.replace(options, steps=steps, policy=policy)
                out = infill_with_options(model, ids, chosen, mask_token_id=mask_token_id)
                completion = out.sequences[0, (ids[0] == mask_token_id).nonzero()[:, 0]].tolist()
            else:
                ids = torch.tensor([example["prompt_ids"]], device=device)
                n = config.max_completion_length
                chosen = dataclasses.replace(options, steps=config.steps_for(n), policy=policy)
                out = generate_with_options(model, ids, chosen, max_new_tokens=n, mask_token_id=mask_token_id)
                completion = out.sequences[0, ids.shape[1] :].tolist()
            values = [row[0] for row in reward_table(reward_funcs, [example], [[completion]], tokenizer)]
            total.append(sum(w * v for w, v in zip(weights, values) if not math.isnan(v)))
        return {"reward": sum(total) / len(total)}

    return evaluate


def train_policy(
    policy: StepPolicy,
    model,
    reward_funcs: Sequence[RewardFunction],
    examples: list[dict],
    config: PolicyGRPOConfig,
    *,
    eval_fn: Callable[[StepPolicy], dict[str, float]] | None = None,
    tokenizer=None,
    mask_token_id: int | None = None,
    resume: bool | str = False,
) -> str:
    """Train ``policy`` with a PolicyGRPOTrainer to config.max_steps; returns the final policy's path.

    resume: a checkpoint folder to continue from, or True for the latest in config.output_dir.
    """
    trainer = PolicyGRPOTrainer(
        policy, model, reward_funcs, examples, config, eval_fn, processing_class=tokenizer, mask_token_id=mask_token_id
    )
    trainer.train(resume_from_checkpoint=resume or None)
    return os.path.join(config.output_dir, POLICY_FILE)
