"""``mdfast train``: train what x-flow needs (align, grpo), the code model (mdlm) and the recipes on real weights."""

from __future__ import annotations

import argparse

from mdfast.cli import train_align, train_grpo, train_mdlm, train_recipe

VERBS = {"align": train_align, "grpo": train_grpo, "mdlm": train_mdlm, "recipe": train_recipe}


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``train`` under ``mdfast``, with one sub-verb per module of ``VERBS``."""
    parser = subparsers.add_parser(
        "train",
        help="train what x-flow needs: align, grpo, mdlm, recipe",
        description="Train what x-flow needs: x-pred alignment of a model (align), GRPO for the step policy (grpo), "
        "the small code model (mdlm), and the recipes on real weights (recipe).",
    )
    verbs = parser.add_subparsers(dest="train_verb", metavar="{" + ",".join(VERBS) + "}", required=True)
    for module in VERBS.values():
        module.add_parser(verbs)
    return parser
