"""One stage of ``bench/gpu_check.sh`` (the shell script only orchestrates), chosen by ``--stage``.

    python bench/gpu_check.py --stage NAME [--tiny] [--budget SECONDS] [--results DIR]

  cuda_build  build the CUDA extension through the public API        (gpu_stages_kernels.py)
  triton      the Triton kernels at production shapes against the float64 reference on the GPU
  cuda        the CUDA kernels, the same token_stats and xflow_step cases
  graphs      whole decoding steps replayed from CUDA graphs == eager   (gpu_stages_decoding.py)
  e2e         LLaDA-8B shape end to end: native body + graphs against the eager loops
  bench       the kernel benchmark: graph-replayed and eager times      (gpu_stages_bench.py)
  cache       SPEC 8's KV cache: refresh-every-step == no cache; none / prefix / dual at LLaDA-8B widths
                                                                        (gpu_stages_cache.py)
  compile     torch.compile of the reference next to the Triton step (only if time is left)
  targets     the table of the GPU targets from what the stages above measured (gpu_targets.py)

``--tiny`` runs every stage at toy shapes on the CPU (the Triton interpreter; the torch backend stands in for
CUDA; no graph is captured there, so the graph stage checks the comparisons only). A stage prints what it does
as it goes and ends with one line ``KEY: <its key figure>``; its exit status is 0 (pass), 1 (fail) or 3
(skipped, the KEY line says why). Stages that measure write ``<results>/<stage>.json``, which ``targets``
reads. Each module's docstring says what its stages check.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never the hub

from gpu_stages_bench import key_figures, stage_bench, stage_compile
from gpu_stages_cache import Lengths, plan_runs, split_steps, stage_cache
from gpu_stages_decoding import choose_layers, stage_e2e, stage_graphs
from gpu_stages_kernels import StatsCase, plant_ties, random_logits, stage_correct, stage_cuda_build
from gpu_targets import Target, format_targets, stage_targets, targets

# what tests/test_gpu_check.py reaches through this module
__all__ = ["StatsCase", "Target", "choose_layers", "format_targets", "key_figures", "main", "plant_ties"]
__all__ += ["Lengths", "plan_runs", "random_logits", "split_steps", "targets"]

STAGES = {
    "cuda_build": stage_cuda_build,
    "triton": lambda args: stage_correct(args, "triton"),
    "graphs": stage_graphs,
    "cuda": lambda args: stage_correct(args, "cuda"),
    "bench": stage_bench,
    "e2e": stage_e2e,
    "cache": stage_cache,
    "compile": stage_compile,
    "targets": stage_targets,
}


def main(argv: list[str] | None = None) -> int:
    """Run the stage ``--stage`` and return its exit status; warn when a GPU run built the CPU extension."""
    parser = argparse.ArgumentParser(
        prog="bench/gpu_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--stage", choices=STAGES, required=True)
    parser.add_argument("--tiny", action="store_true", help="toy shapes on the CPU")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds this stage may take")
    parser.add_argument("--results", default=None, help="folder for the stages' JSON results")
    args = parser.parse_args(argv)
    cpu_build = Path(os.environ.get("MDFAST_BUILD_DIR") or ".") / "mdfast_cpu"
    built_before = cpu_build.exists()
    status = STAGES[args.stage](args)
    if not args.tiny and not built_before and cpu_build.exists():
        print(f"WARNING: stage {args.stage} built the CPU extension on this GPU machine (time lost for nothing)")
    return status


if __name__ == "__main__":
    sys.exit(main())
