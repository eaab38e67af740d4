"""The antibody-policy recipe: its stages run in order, each writing under ``--out``.

- align (SPEC 6.1): x-pred alignment of AntiBERTy on training genes (``align_stage``).
- grpo (SPEC 6.2): GRPO for a StepPolicy at ``--budget`` on training genes, the learning curve on held-out
  genes (``grpo_stage``).
- evaluate: {default, trained} policy x {base, aligned} model beside low_confidence (``evaluate_stage``).
- ship: the trained policy and its card as a named example (``ship_stage``).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import mdfast

from .align_stage import run_align
from .common import STAGES, clock, say
from .evaluate_stage import run_evaluate
from .grpo_stage import run_grpo
from .ship_stage import run_ship

RUNNERS = {"align": run_align, "grpo": run_grpo, "evaluate": run_evaluate, "ship": run_ship}


def run_recipe(args, stages: list[str]) -> int:
    """Run ``stages`` (names of STAGES) in STAGES' order with the options of ``args``; 0 when done.

    args: the parsed command line (``mdfast train recipe antibody-policy --help`` lists it); ``args.command``
    is the command as the results record it.
    """
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    chosen = [stage for stage in STAGES if stage in stages]
    say("antibody-policy", f"mdfast {mdfast.__version__}, {torch.get_num_threads()} thread(s), out {out}")
    started = time.perf_counter()
    for n, stage in enumerate(chosen, 1):
        tick = time.perf_counter()
        RUNNERS[stage](args, out)
        say(
            "antibody-policy",
            f"{stage} done in {clock(time.perf_counter() - tick)} ({n}/{len(chosen)} stages, "
            f"{clock(time.perf_counter() - started)} in all)",
        )
    return 0
