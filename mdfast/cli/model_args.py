"""The command-line flags of a verb that decodes with a model folder: the model, the device, the decoding budget.

``generate`` and ``infill`` add both groups; a training verb's ``--model`` may add the first. The checks and
loaders behind these flags are in ``model_loading.py``, imported when a verb runs (it pulls transformers);
the decoder and backend names come from ``import mdfast``, which every ``mdfast.cli`` import runs first.
"""

from __future__ import annotations

import argparse

from mdfast.backends import NAMES as BACKEND_NAMES
from mdfast.decode import DECODERS

__all__ = ["BACKEND_CHOICES", "DECODER_CHOICES", "DTYPE_CHOICES", "add_decode_arguments", "add_model_arguments"]

DECODER_CHOICES = sorted(DECODERS)
BACKEND_CHOICES = ["auto", *BACKEND_NAMES]
DTYPE_CHOICES = ["float32", "bfloat16", "float16"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --trust-remote-code, --mask-token-id, --device, --dtype and --backend."""
    parser.add_argument("--model", required=True, help="a local model folder with config.json (no hub)")
    parser.add_argument("--trust-remote-code", action="store_true", help="needed by Dream checkpoints (own code)")
    parser.add_argument("--mask-token-id", type=int, default=None, help="default: the tokenizer's mask token")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where there is one)")
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto", help="the kernels (default: auto)")


def add_decode_arguments(parser: argparse.ArgumentParser, *, steps_help: str) -> None:
    """The decoding flags: --decoder, --steps, --block-length, --temperature, --factor, --policy, --cache, ... ."""
    parser.add_argument("--decoder", choices=DECODER_CHOICES, default="xflow", help="default: xflow")
    parser.add_argument("--steps", type=int, default=64, help=steps_help)
    parser.add_argument("--block-length", type=int, default=None, help="decoded positions per block (default: all)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (the xflow decoder takes none)")
    parser.add_argument(
        "--factor",
        type=float,
        default=None,
        metavar="F",
        help="--decoder factor: each step commits the n most confident masked tokens, n the largest with "
        "c(n) >= 1 - F / (n + 1) (default 1.0)",
    )
    parser.add_argument("--policy", default=None, help="a StepPolicy file (xflow; default: the heuristic step)")
    parser.add_argument(
        "--cache",
        choices=["dual", "prefix"],
        default=None,
        help="a KV cache (native LLaDA bodies only): each block's first step is a full forward that fills it, the "
        "other steps recompute only the block (dual) or the block and everything after it (prefix); faster, "
        "approximate (default: none, exact)",
    )
    parser.add_argument(
        "--cache-refresh",
        type=int,
        default=None,
        metavar="K",
        help="with --cache: also refresh every K-th step inside a block (1 is exact decoding)",
    )
    parser.add_argument(
        "--cache-vicinity",
        type=int,
        default=0,
        metavar="W",
        help="with --cache: also recompute the W positions on each side of the block at every cached step "
        "(dInfer's vicinity refresh; closer to exact decoding for a little more work; default 0)",
    )
    parser.add_argument(
        "--suppress-mask",
        action="store_true",
        help="block the mask token's logit in every decoded row (a model that predicts its own [MASK])",
    )
