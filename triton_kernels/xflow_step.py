"""SPEC 2.2-2.7, one x-prediction flow step, in Triton (csrc/ops.h ``xflow_step``).

No host synchronisation: a fixed sequence of launches on one workspace allocation (every
intermediate and output is a view of it), so a whole step can be captured in a CUDA graph.

0. the one-element "bad" flag zeroed (unless ``mdfast.ops`` gives it, holding its input checks);
1. the statistics pass of ``row_stats.py`` (``_step_kernel`` of ``step_kernel.py``, one program per
   row, after the chunk kernel of ``token_stats.py`` on the split path), whose rows' epilogue sets
   the flag for a row whose lse is not finite and, when no policy is needed, does the row's step:
   x_pred, c = p(1), the action (given, or the heuristic a_min^(1-c) a_max^c), the re-edit decision
   and t after SPEC 2.6 (into the workspace); skipped when the statistics are given
   (``sample=True``: ops drew the action from them);
2. with a policy, or given statistics: ``_action_kernel`` (``action_kernel.py``), grid (row
   blocks,): c, the policy state, the step policy MLP (``step_policy.py``: broadcast-multiply-reduce
   over a block of rows, its weights loaded once per block), the action, the re-edit decision and t
   after SPEC 2.6; with given statistics it sets the flag from their lse;
3. ``_commit_update_kernel`` (``commit_update.py``), grid (B x Y,): program (b, y) chooses sequence
   b's hard commit (every program of the sequence computes the same choice from the same data in
   the same order), then writes t_out and X_out for the rows n = y, y + Y, ... of sequence b;
   nothing when the flag is set.
So a step is 3 launches (4 with a policy, one more on the split path), the same design as
csrc/cuda/xflow_step.cu. This module holds the launcher; ``step_launch.py`` tunes it.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from mdfast.backends.contract import PolicyLayout, StepInputs

from .action_kernel import _action_kernel
from .commit_update import _commit_update_kernel
from .stats_launch import StatsLaunch, partials, stats_launch
from .step_kernel import _step_kernel
from .step_launch import GIVEN, HEURISTIC, POLICY, StepLaunch, step_launch
from .token_stats import launch_chunks, row_program
from .workspace import carve

__all__ = ["StepLaunch", "step_launch", "xflow_step"]


def xflow_step(inputs: StepInputs) -> list[Tensor]:
    """SPEC 2.2-2.7, one fused x-flow step: the contract of csrc/ops.h ``xflow_step``.

    inputs: as ``mdfast.ops`` validated them (B * N >= 1).
    Returns [tokens (B,N) int64, confidence (B,N) f32, action (B,N) f32, reedited (B,N) bool,
    committed (B,) int64, lse (B,N) f32]: views of the workspace, or the given tensors themselves.
    """
    B, N, V = inputs.logits.shape
    scalars, device = inputs.scalars, inputs.X.device
    mode = GIVEN if inputs.action is not None else POLICY if inputs.policy_weights is not None else HEURISTIC
    launch = step_launch(B, N, inputs.X.shape[2], scalars.hidden, device)
    stats = stats_launch(B * N, V, device) if inputs.given is None else None
    ws = _workspace(inputs, stats)
    log_range = math.log(scalars.a_max / scalars.a_min)
    if inputs.given is None:
        _launch_statistics(inputs, stats, ws, mode, log_range)
    if mode == POLICY or inputs.given is not None:
        _launch_action(inputs, launch, ws, mode, log_range)
    _launch_commit_update(inputs, launch, ws)
    return [ws["tokens"], ws["confidence"], ws["action"], ws["reedited"], ws["committed"], ws["lse"]]


def _workspace(inputs: StepInputs, stats: StatsLaunch | None) -> dict[str, Tensor]:
    """The tensors of a step by name: views of one allocation, or the given ones; the flag zeroed."""
    B, N, _ = inputs.logits.shape
    k = inputs.scalars.k
    f32, i64 = torch.float32, torch.int64
    specs = {
        "committed": ((B,), i64),
        "reedited": ((B, N), torch.bool),
        "t_new": ((B, N), f32),
        "bad": ((1,) if inputs.bad is None else (0,), torch.int32),
        "action": ((B, N) if inputs.action is None else (0,), f32),
    }
    if inputs.given is None:
        specs.update(
            tokens=((B, N), i64),
            probs=((B, N, k), f32),
            ids=((B, N, k), i64),
            lse=((B, N), f32),
            margin=((B, N), f32),
            entropy_topk=((B, N), f32),
            confidence=((B, N), f32),
        )
        if stats.chunks > 1:
            specs.update(zip(("part", "part_v", "part_i"), partials(B * N, k, stats)))
    ws = dict(zip(specs, carve(inputs.X.device, *specs.values())))
    ws["bad"] = ws["bad"].zero_() if inputs.bad is None else inputs.bad
    if inputs.action is not None:
        ws["action"] = inputs.action
    if inputs.given is not None:
        ws.update(zip(("tokens", "confidence", "lse"), inputs.given))
    return ws


def _launch_statistics(
    inputs: StepInputs, stats: StatsLaunch, ws: dict[str, Tensor], mode: tl.constexpr, log_range: float
) -> None:
    """Kernel 1 (after the chunk kernel on the split path): the rows' statistics and, without a policy, their step."""
    logits, scalars, k = inputs.logits, inputs.scalars, inputs.scalars.k
    parts = [ws[name] for name in ("part", "part_v", "part_i") if name in ws]
    if stats.chunks > 1:
        launch_chunks(logits, k, False, stats, *parts)
    arguments, constants = row_program(logits, k, stats, parts)
    stats_out = (ws["tokens"], ws["probs"], ws["ids"], ws["lse"], ws["margin"], ws["entropy_topk"], 1.0 / math.log(k))
    step = (
        inputs.t,
        ws["action"],
        ws["confidence"],
        ws["reedited"],
        ws["t_new"],
        ws["bad"],
        scalars.a_min,
        log_range,
        scalars.reedit_margin,
    )
    _step_kernel[(logits.shape[0] * logits.shape[1],)](*arguments, *stats_out, *step, MODE=mode, **constants)


def _launch_action(
    inputs: StepInputs, launch: StepLaunch, ws: dict[str, Tensor], mode: tl.constexpr, log_range: float
) -> None:
    """Kernel 2: the policy's action (POLICY) or the flag of the given statistics, then SPEC 2.6 on t."""
    B, N, _ = inputs.logits.shape
    scalars, given, k = inputs.scalars, inputs.given, inputs.scalars.k
    d = scalars.hidden if mode == POLICY else 1
    layout = PolicyLayout(d, k)
    _action_kernel[(triton.cdiv(B * N, launch.action_rows),)](
        ws["confidence"] if given is not None else ws["probs"],
        1 if given is not None else k,
        ws.get("probs", ws["confidence"]),
        ws.get("entropy_topk", ws["confidence"]),
        ws.get("margin", ws["confidence"]),
        ws["lse"],
        inputs.t,
        inputs.rho,
        inputs.rho.stride(0),
        inputs.t if inputs.policy_weights is None else inputs.policy_weights,
        ws["action"],
        ws["confidence"],
        ws["reedited"],
        ws["t_new"],
        ws["bad"],
        B * N,
        N,
        scalars.kappa_min,
        scalars.kappa_max - scalars.kappa_min,
        scalars.a_min,
        scalars.a_max,
        log_range,
        scalars.reedit_margin,
        scalars.kummer_terms,
        MODE=mode,
        BLOCK_R=launch.action_rows,
        K=k,
        D=d,
        DP=triton.next_power_of_2(d),
        DJ=launch.policy_chunk,
        B1=layout.b1,
        W2=layout.W2,
        B2=layout.b2,
        W_MU=layout.w_mu,
        W_KAPPA=layout.w_kappa,
        B_MU=layout.b_mu,
        B_KAPPA=layout.b_kappa,
        num_warps=4,
    )


def _launch_commit_update(inputs: StepInputs, launch: StepLaunch, ws: dict[str, Tensor]) -> None:
    """Kernel 3: each sequence's hard commit (SPEC 2.7), then t_out and X_out; nothing when the flag is set."""
    B, N, _ = inputs.logits.shape
    E, Y = inputs.X.shape[2], launch.sequence_programs
    _commit_update_kernel[(B * Y,)](
        ws["tokens"],
        ws["confidence"],
        ws["action"],
        ws["reedited"],
        ws["t_new"],
        inputs.X,
        inputs.X_out,
        inputs.t_out,
        inputs.embedding,
        inputs.embedding.stride(0),
        inputs.mask_embedding,
        ws["committed"],
        ws["bad"],
        N,
        E,
        Y,
        inputs.scalars.commit_threshold,
        BLOCK_N=launch.commit_tile,
        BLOCK_E=launch.update_cols,
        num_warps=4,
    )
