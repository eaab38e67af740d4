"""How the kernels of an x-flow step after the statistics pass are launched, and where its action comes from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .stats_launch import multiprocessors

__all__ = ["GIVEN", "HEURISTIC", "POLICY", "StepLaunch", "step_launch"]

# Where the action comes from (SPEC 2.5 and the default policy without trained weights): a kernel's MODE.
GIVEN = tl.constexpr(0)
POLICY = tl.constexpr(1)
HEURISTIC = tl.constexpr(2)


@dataclass(frozen=True)
class StepLaunch:
    """Launch parameters of the kernels of a step after the statistics pass."""

    action_rows: int  # rows per program of the action kernel (the policy weights load once per block)
    policy_chunk: int  # outputs of W2 h1 per step of the policy's second layer
    commit_tile: int  # t values per tile of the commit scan
    update_cols: int  # embedding columns per tile of the update
    sequence_programs: int  # Y: programs per sequence of the commit-and-update kernel


def step_launch(B: int, N: int, E: int, hidden: int, device: torch.device) -> StepLaunch:
    """The one place that tunes kernels 2-3 of a step.

    16 rows per action program (128 programs for 2048 rows); its second layer multiplies (16, chunk,
    d) tiles of 4096 products (32 per thread of 4 warps). About 8 commit-and-update programs of 4
    warps per multiprocessor in all (32 warps, as many as the update kernel it replaces kept busy;
    not yet measured on a GPU), at most one per row, each reading its sequence's 2N floats of t and c
    from L2 to recompute the commit and writing its rows in tiles of up to 1024 columns (8 floats per
    thread).
    """
    action_rows = 16
    return StepLaunch(
        action_rows=action_rows,
        policy_chunk=max(1, 4096 // (action_rows * triton.next_power_of_2(max(hidden, 1)))),
        commit_tile=1024,
        update_cols=min(1024, triton.next_power_of_2(E)),
        sequence_programs=max(1, min(N, triton.cdiv(8 * multiprocessors(device), B))),
    )
