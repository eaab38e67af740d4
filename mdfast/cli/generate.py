"""``mdfast generate``: decode a response to a prompt with a model folder saved by transformers or mdfast."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mdfast import decode

from .model_args import add_decode_arguments, add_model_arguments

DESCRIPTION = """Decode --max-new-tokens tokens after --prompt with the model in --model (a local folder:
mdfast never reaches the hub). Every argument, and the tokenizer against the model's vocabulary, is
checked before the weights load. The response goes to stdout, the forwards and tokens/s to stderr.

example:
  mdfast generate --model mdfast/data/code_model --prompt "def add(a, b):" --steps 32 --max-new-tokens 32
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``generate`` verb's parser."""
    parser = subparsers.add_parser(
        "generate",
        help="decode a prompt with a model whose weights are on disk",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="response length (default 64)")
    add_decode_arguments(parser, steps_help="model forwards in all, at most --max-new-tokens (default 64)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Check every argument, load the model, decode, print the response."""
    from . import model_loading as checks  # the tree imports every verb: implementations load when their verb runs

    options = checks.decode_options(args, max_new_tokens=args.max_new_tokens)
    device = checks.check_device(args.device)
    dtype = checks.resolve_dtype(args.dtype, device)
    checks.check_backend(args.backend, device, dtype)
    options = checks.load_policy(args.policy, options, device)
    opened = checks.open_folder(args)
    tokenizer = opened.tokenizer
    text = args.prompt
    if args.chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=not args.chat)["input_ids"]
    checks.check_prompt(tokenizer, ids[0].tolist(), opened.folder)
    model = checks.load_patched_model(args, opened, device, dtype)
    suppress = [opened.mask_token_id] if args.suppress_mask else None
    options = dataclasses.replace(options, eos_token_id=tokenizer.eos_token_id, suppress_tokens=suppress)
    out = decode.generate_with_options(
        model, ids.to(device), options, max_new_tokens=args.max_new_tokens, mask_token_id=opened.mask_token_id
    )
    print(tokenizer.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True))
    print(checks.report_speed(out, args.max_new_tokens), file=sys.stderr)
    return 0
