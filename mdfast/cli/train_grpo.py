"""``mdfast train grpo``: GRPO for the x-flow step policy on a model folder, the model frozen (SPEC 6.2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdfast.cli.errors import UsageError, usage_error
from mdfast.cli.model_args import add_model_arguments
from mdfast.train.grpo_config import LR_SCHEDULES, PolicyGRPOConfig
from mdfast.train.policy_loss import SCALE_REWARDS

PRESETS: dict[str, dict] = {
    # The paper's code recipe (SPEC 6.2): MBPP prompts the base model already solves, 8 prompts x G = 8 per step,
    # 256 tokens decoded in T = 256 steps, lambda = 0.2, 6,000 steps, AdamW 3e-4, eps 0.2, beta 0, 2 epochs per
    # rollout batch, prompts in the chat template. --data: a JSONL of problems {"prompt", "test", "entry_point"}
    # whose fields reach the reward function as columns; --reward: the sandboxed test runner (1.0 when the
    # completion passes the problem's tests, else 0.0); the trainer adds lambda * t_final.
    "paper-code": {
        "num_generations": 8,
        "per_device_train_batch_size": 8,
        "max_completion_length": 256,
        "steps": 256,
        "lam": 0.2,
        "max_steps": 6000,
        "learning_rate": 3e-4,
        "epsilon": 0.2,
        "beta": 0.0,
        "num_iterations": 2,
        "chat": True,
    },
}

# The PolicyGRPOConfig fields the command exposes (flag = the field name with dashes).
CONFIG_FLAGS = {
    "num_generations": int,
    "per_device_train_batch_size": int,
    "max_completion_length": int,
    "steps": int,
    "budget": float,
    "block_length": int,
    "lam": float,
    "beta": float,
    "epsilon": float,
    "num_iterations": int,
    "learning_rate": float,
    "max_grad_norm": float,
    "lr_scheduler_type": str,
    "warmup_steps": int,
    "max_steps": int,
    "scale_rewards": str,
    "logging_steps": int,
    "eval_steps": int,
    "save_steps": int,
    "seed": int,
    "groups_per_rollout_batch": int,
}
CONFIG_CHOICES = {"lr_scheduler_type": LR_SCHEDULES, "scale_rewards": SCALE_REWARDS}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``grpo`` under ``mdfast train``."""
    parser = subparsers.add_parser(
        "grpo",
        help="GRPO for the x-flow step policy, the model frozen (SPEC 6.2)",
        description="Train an x-flow step policy with GRPO (SPEC 6.2), the model frozen. Writes metrics.jsonl, "
        "checkpoint-<step>/ and the final policy.safetensors under --output-dir; under torchrun every process "
        "takes its share of the prompts.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        required=True,
        help="JSONL of training examples: 'input_ids' (ids with mask ids to fill), 'prompt_ids', or 'prompt' (text); "
        "other fields reach the reward functions as columns",
    )
    parser.add_argument("--eval-data", default=None, help="JSONL of held-out examples, scored every --eval-steps")
    parser.add_argument(
        "--reward",
        action="append",
        default=None,
        help="a reward function's import path 'package.module:function' (repeat for several)",
    )
    parser.add_argument("--reward-weights", type=float, nargs="+", default=None)
    parser.add_argument(
        "--policy",
        default=None,
        help="the StepPolicy file to start from (default: a fresh one), or 'default': a fresh one fitted first to "
        "SPEC 2's default policy on its own rollouts of --policy-init-prompts training examples",
    )
    parser.add_argument("--policy-hidden", type=int, default=64, help="width d of a fresh policy")
    parser.add_argument(
        "--policy-init-prompts", type=int, default=16, help="--policy default: the training examples it decodes (16)"
    )
    parser.add_argument(
        "--suppress-mask",
        action="store_true",
        help="block the [MASK] logit in every decoding step, rollouts and evaluation (SPEC 7; suppress_tokens)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="paper-code: the paper's code recipe")
    parser.add_argument("--chat", action="store_true", default=None, help="wrap text prompts in the chat template")
    parser.add_argument("--output-dir", default="policy-grpo")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    parser.add_argument(
        "--disable-tqdm", "--quiet", action="store_true", help="no progress display (steps done, elapsed, left)"
    )
    defaults = PolicyGRPOConfig()
    for name, kind in CONFIG_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            type=kind,
            default=None,
            choices=CONFIG_CHOICES.get(name),
            help=f"PolicyGRPOConfig.{name} ({getattr(defaults, name)})",
        )
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Train as the flags say; the command line is checked before anything loads."""
    config, chat = _checked_config(args)
    _check_files(args)
    from mdfast.cli import model_loading  # the tree imports every verb: implementations load when their verb runs
    from mdfast.train import grpo_setup  # the tree imports every verb: implementations load when their verb runs

    model_loading.check_model_folder(args.model)
    model_loading.check_device(args.device)

    try:
        reward_funcs = grpo_setup.import_rewards(args.reward)
    except (ImportError, ValueError) as error:
        raise UsageError(f"--reward: {error}") from None
    resume = False
    if args.resume:
        try:
            resume = grpo_setup.latest_checkpoint(config.output_dir)
        except FileNotFoundError:
            raise UsageError(f"--resume: no checkpoint-<step> folder in --output-dir {config.output_dir}") from None
    world, model, tokenizer = grpo_setup.load_model_folder(
        args.model, device=args.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code
    )
    train = grpo_setup.read_examples(args.data, tokenizer, chat)
    mask_token_id = grpo_setup.find_mask_token_id(args.mask_token_id, model, tokenizer)
    if mask_token_id is None:
        raise UsageError(f"--mask-token-id: neither the model nor the tokenizer in {args.model} names one; pass it")
    if args.suppress_mask:
        config.suppress_tokens = [mask_token_id]
    policy = grpo_setup.start_policy(
        args.policy,
        model=model,
        examples=train,
        config=config,
        world=world,
        hidden=args.policy_hidden,
        init_prompts=args.policy_init_prompts,
        tokenizer=tokenizer,
        mask_token_id=mask_token_id,
        resume=bool(resume),
    )
    eval_fn = None
    if args.eval_data:
        held_out = grpo_setup.read_examples(args.eval_data, tokenizer, chat)
        eval_fn = grpo_setup.held_out_reward(model, held_out, reward_funcs, config, tokenizer, mask_token_id)
    written = grpo_setup.train_policy(
        policy,
        model,
        reward_funcs,
        train,
        config,
        eval_fn=eval_fn,
        tokenizer=tokenizer,
        mask_token_id=mask_token_id,
        resume=resume,
    )
    if world.is_main:
        print(f"[mdfast grpo] policy written to {written}", file=sys.stderr)
    return 0


def _checked_config(args: argparse.Namespace) -> tuple[PolicyGRPOConfig, bool]:
    """The run's PolicyGRPOConfig (the preset, then the flags given) and whether prompts take the chat template."""
    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    if not args.reward:
        raise UsageError(
            "--reward: required: the import path of a function f(prompts, completions, completion_ids, **columns) "
            "-> list[float]" + (" (paper-code: the sandboxed test runner, 1.0 when the tests pass)" if preset else "")
        )
    if args.policy_init_prompts < 1:
        raise UsageError(f"--policy-init-prompts: expected >= 1, got {args.policy_init_prompts}")
    if args.policy_hidden < 1:
        raise UsageError(f"--policy-hidden: expected >= 1, got {args.policy_hidden}")
    values = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    try:
        config = PolicyGRPOConfig(
            output_dir=args.output_dir,
            reward_weights=args.reward_weights,
            backend=args.backend,
            disable_tqdm=args.disable_tqdm,
            **{**{k: v for k, v in preset.items() if k in CONFIG_FLAGS}, **values},
        )
    except (TypeError, ValueError) as error:
        raise usage_error(error) from None
    if args.reward_weights is not None and len(args.reward_weights) != len(args.reward):
        raise UsageError(f"--reward-weights: {len(args.reward_weights)} weights for {len(args.reward)} --reward")
    chat = args.chat if args.chat is not None else preset.get("chat", False)
    return config, chat


def _check_files(args: argparse.Namespace) -> None:
    """--data, --eval-data and a --policy file exist."""
    for flag, path in (("--data", args.data), ("--eval-data", args.eval_data)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag}: no such file: {path}")
    if args.policy not in (None, "default") and not Path(args.policy).is_file():
        raise UsageError(f"--policy: no such file: {args.policy} (or 'default')")
