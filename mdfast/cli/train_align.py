"""``mdfast train align``: x-pred alignment (SPEC 6.1) of a model folder, fine-tuned on its own answers."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

from mdfast.atomic import atomic_write
from mdfast.cli.errors import CommandError, UsageError, usage_error
from mdfast.cli.model_args import add_model_arguments

# flag -> the least value it takes
LEAST = {
    "answer_length": 1,
    "generation_batch_size": 1,
    "block_length": 1,
    "lora_r": 1,
    "lora_alpha": 1,
    "max_steps": 1,
    "warmup_steps": 0,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "logging_steps": 1,
    "save_steps": 1,
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``align`` under ``mdfast train``."""
    parser = subparsers.add_parser(
        "align",
        help="x-pred alignment of a model on its own answers (SPEC 6.1)",
        description="x-pred alignment (SPEC 6.1): the model answers the --data prompts itself at full budget, then a "
        "full fine-tune (or LoRA) with the alignment loss; the model (LoRA merged), its tokenizer and "
        "alignment_log.jsonl are written to --output-dir.",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        required=True,
        help="JSONL: prompts ('prompt' text or 'prompt_ids') answered here with --answer-length tokens, templates "
        "('input_ids' with mask ids) infilled here, or finished records ('input_ids' + 'answer_mask') used as they are",
    )
    parser.add_argument("--answer-length", type=int, default=256, help="answer tokens per prompt (default 256)")
    parser.add_argument("--block-length", type=int, default=None, help="semi-autoregressive blocks while answering")
    parser.add_argument("--generation-batch-size", type=int, default=8)
    parser.add_argument("--chat", action="store_true", help="wrap text prompts in the tokenizer's chat template")
    parser.add_argument("--save-data", default=None, help="also write the answered records to this JSONL file")
    parser.add_argument("--output-dir", default="xpred-aligned", help="checkpoints, logs and the final model")
    parser.add_argument("--lora", action="store_true", help="LoRA through peft instead of a full fine-tune")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--lora-target-modules", nargs="+", default=["all-linear"])
    parser.add_argument("--max-steps", type=int, default=None, help="default 100 full / 400 LoRA (the paper's)")
    parser.add_argument("--learning-rate", type=float, default=None, help="default 1e-5 full / 1e-4 LoRA")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--per-device-train-batch-size", type=int, default=4)
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--logging-steps", type=int, default=1)
    parser.add_argument("--save-steps", type=int, default=None, help="checkpoint every N steps (default: none)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-base-ce", action="store_true", help="do not log the frozen base model's ce_masked")
    parser.add_argument("--report-to", default="none", help="a transformers reporting integration, e.g. tensorboard")
    parser.set_defaults(run=run)
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Every check that needs no model: numbers, files, the extras."""
    for name, least in LEAST.items():
        value = getattr(args, name)
        if value is not None and value < least:
            raise UsageError(f"--{name.replace('_', '-')}: expected at least {least}, got {value}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise UsageError(f"--learning-rate: expected a positive number, got {args.learning_rate}")
    if args.mask_token_id is not None and args.mask_token_id < 0:
        raise UsageError(f"--mask-token-id: expected a token id >= 0, got {args.mask_token_id}")
    if not Path(args.model, "config.json").is_file():
        raise UsageError(f"--model: {args.model} is no model folder (no config.json there)")
    if not Path(args.data).is_file():
        raise UsageError(f"--data: no such file: {args.data}")
    needed = ["accelerate", *(["peft"] if args.lora else [])]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise CommandError(f'x-pred alignment needs {", ".join(missing)}: pip install "mdfast[train]"')


def run(args: argparse.Namespace) -> int:
    """Answer --data with the model itself, fine-tune with the alignment loss, write the model to --output-dir."""
    check_arguments(args)
    # the tree imports every verb: implementations load when their verb runs
    from mdfast.loading import load_model, load_tokenizer  # loads when the verb runs
    from mdfast.train import align, distributed, records  # loads when the verb runs

    try:
        data = records.read_jsonl(args.data)
    except ValueError as error:
        raise UsageError(f"--data: {error}") from None
    world = distributed.init_from_env(args.device)
    model = load_model(args.model, device=world.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    mask_token_id = args.mask_token_id
    for source in (getattr(model, "config", None), tokenizer):
        if mask_token_id is None:
            mask_token_id = getattr(source, "mask_token_id", None)
    if mask_token_id is None:
        raise CommandError("no mask token id in the model's config or tokenizer; pass --mask-token-id")
    try:
        answered = align.alignment_records(
            data,
            model,
            tokenizer,
            mask_token_id=mask_token_id,
            answer_length=args.answer_length,
            chat=args.chat,
            batch_size=args.generation_batch_size,
            block_length=args.block_length,
            backend=args.backend,
        )
    except ValueError as error:
        if str(error).startswith("data: "):
            raise usage_error(error) from None
        raise
    if args.save_data and world.is_main:
        with atomic_write(args.save_data) as f:
            f.writelines(json.dumps(r) + "\n" for r in answered)
    trainer = alignment_trainer(args, align, model, tokenizer, answered, mask_token_id, world)
    trainer.train()
    if world.is_main:
        save_aligned(args, trainer, tokenizer)
    return 0


def alignment_trainer(args: argparse.Namespace, align, model, tokenizer, answered: list[dict], mask_token_id, world):
    """The ``XPredAlignmentTrainer`` the flags describe, on the answered records."""
    lora_config = None
    if args.lora:
        from peft import LoraConfig  # optional extra: train

        targets = args.lora_target_modules
        lora_config = LoraConfig(
            r=args.lora_r,
            lora_alpha=args.lora_alpha,
            target_modules=targets[0] if targets == ["all-linear"] else targets,
        )
    overrides = {
        "warmup_steps": args.warmup_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "logging_steps": args.logging_steps,
        "seed": args.seed,
        "report_to": args.report_to,
        "use_cpu": world.device.type == "cpu",
    }
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    if args.save_steps is not None:
        overrides.update(save_strategy="steps", save_steps=args.save_steps)
    training_args = align.alignment_training_arguments(args.output_dir, lora=args.lora, **overrides)
    model.train()
    return align.XPredAlignmentTrainer(
        model,
        training_args,
        answered,
        mask_token_id=mask_token_id,
        lora_config=lora_config,
        base_model=not args.no_base_ce,
        data_collator=align.AlignmentCollator(getattr(tokenizer, "pad_token_id", None) or 0),
    )


def save_aligned(args: argparse.Namespace, trainer, tokenizer) -> None:
    """Write the trained model (LoRA merged into it), its tokenizer and the log history to --output-dir."""
    from mdfast.loading import save_model  # the tree imports every verb: implementations load when it runs

    trained = trainer.model.merge_and_unload() if args.lora else trainer.model
    save_model(trained, args.output_dir, tokenizer)
    with atomic_write(os.path.join(args.output_dir, "alignment_log.jsonl")) as f:
        f.writelines(json.dumps(entry) + "\n" for entry in trainer.state.log_history)
    print(f"mdfast train align: model written to {args.output_dir}", file=sys.stderr)
