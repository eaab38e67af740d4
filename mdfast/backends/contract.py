"""The calling convention the kernels and the backends share: what goes in, what comes out, the limits.

- ``StepInputs`` (a step's tensors and its ``StepScalars``) and ``GivenStats``: the same fields as the
  structs of csrc/ops.h (csrc/bindings.cpp converts one into the other by name);
- ``PolicyLayout``: where each weight of the packed step policy sits (csrc/ops.h ``PolicyView``);
- ``TOKEN_STATS_FIELDS``, ``XFLOW_FIELDS``: the order of the tensors a kernel module returns;
- ``KERNEL_LOGITS_DTYPES`` and the ``MAX_*`` limits the kernels are built for.

Nothing here imports the rest of mdfast, so the kernels (``triton_kernels/``) and the backends above
them both depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "KERNEL_LOGITS_DTYPES",
    "MAX_POLICY_HIDDEN",
    "MAX_ROWS",
    "MAX_VOCABULARY",
    "TOKEN_STATS_FIELDS",
    "XFLOW_FIELDS",
    "GivenStats",
    "PolicyLayout",
    "StepInputs",
    "StepScalars",
]

# The tensors a kernel module's ``token_stats`` and ``xflow_step`` return, in this order.
TOKEN_STATS_FIELDS = ("argmax", "topk_probs", "topk_ids", "lse", "margin", "entropy_topk", "entropy_full")
XFLOW_FIELDS = ("tokens", "confidence", "action", "reedited", "committed", "lse")
# The logits (and embedding) dtypes every kernel reads.
KERNEL_LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The kernels index the vocabulary and the rows with int32 (the top-k's empty slots sit just below
# 2^31), and keep the policy's first layer in shared memory.
MAX_VOCABULARY = 2**31 - 65
MAX_ROWS = 2**31 - 1
MAX_POLICY_HIDDEN = 4096


@dataclass(frozen=True)
class StepScalars:
    """The scalar arguments of one x-flow step: ``StepScalars`` of csrc/ops.h, field by field, by name.

    a_min, a_max, reedit_margin, commit_threshold, k: ``FlowConfig``'s (SPEC 2.5-2.7);
    kummer_terms: the terms of Kummer's series a kernel sums (``FlowConfig.kummer_terms``);
    hidden, kappa_min, kappa_max: the step policy's width d and kappa range (0 without a policy).
    """

    a_min: float
    a_max: float
    reedit_margin: float
    commit_threshold: float
    k: int
    kummer_terms: int
    hidden: int = 0
    kappa_min: float = 0.0
    kappa_max: float = 0.0


class GivenStats(NamedTuple):
    """The statistics a step needs of each row, computed before it, so that it reads no logits again.

    With ``sample=True`` ``mdfast.ops`` drew the actions from them; given with an action.
    tokens: x_pred = argmax (B, N) int64; confidence: c = p(1) (B, N) float32 contiguous; lse (B, N) float32.
    """

    tokens: Tensor
    confidence: Tensor
    lse: Tensor


@dataclass
class StepInputs:
    """The inputs of one x-flow step (SPEC 2.2-2.7) as ``mdfast.ops`` validated and laid them out.

    ``StepInputs`` of csrc/ops.h field by field (csrc/bindings.cpp converts one into the other by
    name). B * N >= 1.
    logits (B, N, V), stride(2) == 1 (not read when ``given``); X, X_out (B, N, E) float32
    contiguous; t, t_out (B, N) float32 contiguous (X_out may be X, t_out may be t); embedding
    (V, E), stride(1) == 1; mask_embedding (E,) float32 contiguous; rho (B,) float32; policy_weights:
    the packed step policy (``PolicyLayout``) or None; action (B, N) float32 contiguous, or None;
    given: the rows' statistics (with an action), or None; bad: an int32 (1,) flag, or None.
    """

    logits: Tensor
    X: Tensor
    t: Tensor
    embedding: Tensor
    mask_embedding: Tensor
    rho: Tensor
    policy_weights: Tensor | None
    action: Tensor | None
    given: GivenStats | None
    bad: Tensor | None
    X_out: Tensor
    t_out: Tensor
    scalars: StepScalars


@dataclass(frozen=True)
class PolicyLayout:
    """Where each weight of a StepPolicy (hidden width d, top-k width k) sits in the kernels' one vector.

    ``StepPolicy.packed_weights`` writes it; csrc/ops.h ``PolicyView`` is the same layout in C++:

        [W1 (d, k+4) row-major, b1 (d), W2 (d, d) row-major, b2 (d), w_mu (d), w_kappa (d), b_mu, b_kappa]

    The fields below are the element offsets of each piece; ``size`` is the whole vector's length.
    """

    hidden: int
    k: int

    @property
    def width(self) -> int:
        """The policy state's width k + 4 (SPEC 2.3)."""
        return self.k + 4

    @property
    def W1(self) -> int:
        return 0

    @property
    def b1(self) -> int:
        return self.hidden * self.width

    @property
    def W2(self) -> int:
        return self.b1 + self.hidden

    @property
    def b2(self) -> int:
        return self.W2 + self.hidden * self.hidden

    @property
    def w_mu(self) -> int:
        return self.b2 + self.hidden

    @property
    def w_kappa(self) -> int:
        return self.w_mu + self.hidden

    @property
    def b_mu(self) -> int:
        return self.w_kappa + self.hidden

    @property
    def b_kappa(self) -> int:
        return self.b_mu + 1

    @property
    def size(self) -> int:
        return self.b_kappa + 1

    def unpack(self, packed: Tensor, kappa_min: float, kappa_max: float) -> SimpleNamespace:
        """Views of ``packed`` shaped like a StepPolicy's layers, with kappa_min and kappa_max.

        ``fc1.weight`` (d, k+4), ...: what ``mdfast.reference.step_policy`` evaluates.
        """
        d, w = self.hidden, self.width

        def layer(weight_at: int, rows: int, cols: int, bias_at: int) -> SimpleNamespace:
            weight = packed[weight_at : weight_at + rows * cols].view(rows, cols)
            return SimpleNamespace(weight=weight, bias=packed[bias_at : bias_at + rows])

        return SimpleNamespace(
            fc1=layer(self.W1, d, w, self.b1),
            fc2=layer(self.W2, d, d, self.b2),
            mu_head=layer(self.w_mu, 1, d, self.b_mu),
            kappa_head=layer(self.w_kappa, 1, d, self.b_kappa),
            kappa_min=kappa_min,
            kappa_max=kappa_max,
        )
