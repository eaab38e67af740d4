"""``mdfast infill``: fill the masked positions of a text with a model folder saved by transformers or mdfast."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys

from mdfast import decode

from .errors import CommandError, UsageError, usage_error
from .model_args import add_decode_arguments, add_model_arguments

DESCRIPTION = r"""Fill the masked positions of --text with the model in --model (a local folder: mdfast never
reaches the hub) and print the whole text, filled. Every other token is kept. A position to fill is
the tokenizer's mask token written in the text (e.g. [MASK]), or the shorthand <mask:N> for N mask
tokens in a row. In --text, \n stands for a newline, \t for a tab and \\ for a backslash.

Every argument, and the tokenizer against the model's vocabulary, is checked before the weights
load. The filled text goes to stdout, the forwards and tokens/s to stderr.

example:
  mdfast infill --model mdfast/data/code_model --text "def f(x):\n    return <mask:8>\n"
"""

MASK_SHORTHAND = re.compile(r"<mask:(\d+)>")
ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
ESCAPE = re.compile(r"\\([nt\\])")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """The ``infill`` verb's parser."""
    parser = subparsers.add_parser(
        "infill",
        help="fill the masked positions of a text (<mask:N>) with a model whose weights are on disk",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--text", required=True, help="the text, with <mask:N> or mask tokens where to fill")
    add_decode_arguments(parser, steps_help="model forwards in all (default: one per masked position)")
    parser.set_defaults(run=run, steps=None)
    return parser


def expand_text(text: str, mask_token: str) -> tuple[str, int]:
    """``text`` with its escapes read and every ``<mask:N>`` written as N mask tokens, and how many it holds."""
    text = ESCAPE.sub(lambda match: ESCAPES[match.group(1)], text)
    count = 0
    pieces = []
    for i, piece in enumerate(MASK_SHORTHAND.split(text)):
        if i % 2:
            n = int(piece)
            if n < 1:
                raise UsageError(f"--text: <mask:{piece}> fills no position; write <mask:N> with N >= 1")
            pieces.append(mask_token * n)
            count += n
        else:
            pieces.append(piece)
            count += piece.count(mask_token)
    if count == 0:
        raise UsageError(f"--text: no position to fill; write <mask:N> or the mask token {mask_token!r} there")
    return "".join(pieces), count


def run(args: argparse.Namespace) -> int:
    """Check every argument, load the model, fill the masks, print the text."""
    from . import model_loading as checks  # the tree imports every verb: implementations load when their verb runs

    options = checks.decode_options(args, steps=1 if args.steps is None else None)  # None: one per mask, counted below
    device = checks.check_device(args.device)
    dtype = checks.resolve_dtype(args.dtype, device)
    checks.check_backend(args.backend, device, dtype)
    options = checks.load_policy(args.policy, options, device)
    opened = checks.open_folder(args)
    model = None
    if opened.mask_token_id is None:  # the config names no vocabulary size: the weights tell it
        model = checks.load_patched_model(args, opened, device, dtype)
    ids, masked = encode_text(opened.tokenizer, args.text, opened.mask_token_id)
    checks.check_prompt(opened.tokenizer, ids[0].tolist(), opened.folder, flag="--text")
    suppress = [opened.mask_token_id] if args.suppress_mask else None
    options = dataclasses.replace(options, steps=masked if args.steps is None else args.steps, suppress_tokens=suppress)
    try:
        options.validate(masked=[masked])
    except (ValueError, TypeError) as error:
        raise usage_error(error) from None
    if model is None:
        model = checks.load_patched_model(args, opened, device, dtype)
    out = decode.infill_with_options(model, ids.to(device), options, mask_token_id=opened.mask_token_id)
    print(opened.tokenizer.decode(out.sequences[0], skip_special_tokens=True))
    print(checks.report_speed(out, masked), file=sys.stderr)
    return 0


def encode_text(tokenizer, text: str, mask_token_id: int):
    """The token ids (1, L) of ``--text`` with its masks as ``mask_token_id``, and how many masks it holds."""
    mask_token = tokenizer.convert_ids_to_tokens(mask_token_id)
    if not isinstance(mask_token, str):
        raise CommandError(f"the tokenizer has no token for the mask id {mask_token_id}; pass --mask-token-id")
    expanded, count = expand_text(text, mask_token)
    ids = tokenizer(expanded, return_tensors="pt")["input_ids"]
    found = int((ids == mask_token_id).sum())
    if found != count:
        raise CommandError(
            f"the tokenizer reads the {count} mask tokens {mask_token!r} of --text as {found} mask ids "
            f"{mask_token_id}: it does not keep the mask token whole; check --mask-token-id"
        )
    return ids, count
