"""The public operations and the one place that validates their input and picks their backend.

``token_stats`` (SPEC 1), ``xflow_step`` (SPEC 2) and the LLaDA body's ``rms_norm``, ``rope_`` and
``swiglu`` (SPEC 5) validate their inputs, choose a backend (``backend="auto" | "triton" | "cuda" |
"cpu" | "torch"``, ``resolve_backend`` says which one a name gives) and lay the tensors out for it;
the backends (``mdfast.backends``) and their kernels trust what they get. Each calls its custom
operator (``torch.ops.mdfast.*``, ``mdfast/custom_ops.py``: fake kernels and autograd formulas, for
``torch.compile``) with the backend's name, after the checks. Bad input raises
``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, device, value, or non-finite
logits) naming the argument and what was expected.

The checks themselves are in ``mdfast/op_checks.py`` (called from here only), the result types
``TokenStats`` and ``XFlowStep`` in ``mdfast/op_results.py``.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from . import backends, custom_ops, reference  # noqa: F401 - custom_ops registers torch.ops.mdfast.*
from .backends.contract import TOKEN_STATS_FIELDS, XFLOW_FIELDS, GivenStats
from .config import FlowConfig
from .errors import describe
from .op_checks import (
    InputChecks,
    check_k,
    check_rows,
    check_shape,
    check_step_inputs,
    check_tensor,
    raise_if_not_finite,
    rho_tensor,
)
from .op_results import TokenStats, XFlowStep, empty_stats, empty_step
from .policy import StepPolicy

__all__ = [
    "TokenStats",
    "XFlowStep",
    "resolve_backend",
    "rms_norm",
    "rope_",
    "swiglu",
    "token_stats",
    "xflow_step",
]


def resolve_backend(backend: str, device: torch.device, logits_dtype: torch.dtype) -> str:
    """The name of the backend that ``backend`` ("auto" | "triton" | "cuda" | "cpu" | "torch") picks.

    That is the backend running ``token_stats`` and ``xflow_step`` for logits of ``logits_dtype`` on
    ``device``. "auto" picks Triton, then CUDA, on CUDA tensors and the C++ backend on CPU tensors,
    each only where it runs (else "torch", the eager reference, with a one-time warning that says
    why); an explicit name that cannot run there raises, as the ops would. A step on "torch" cannot
    be captured in a CUDA graph (the reference synchronises).
    """
    return _resolve(backend, torch.device(device), logits_dtype).name


def token_stats(
    logits: Tensor,
    k: int = 4,
    full_entropy: bool = False,
    *,
    backend: str = "auto",
    check_finite: bool = True,
) -> TokenStats:
    """SPEC 1 over the last dimension of ``logits`` (..., V): one streaming pass per row.

    lse = log sum_v exp(z_v); p_v = exp(z_v - lse); argmax; the top-k probabilities (2 <= k <= 8);
    margin = p(1) - p(2); H_k = -(1/log k) sum_{j<=k} q_j log q_j, q_j = p(j) / sum_{i<=k} p(i);
    H_full = lse - sum_v p_v z_v when ``full_entropy``.

    ``check_finite`` raises ValueError for rows holding a NaN or +inf, or only -inf (a host
    synchronisation on CUDA); with False such rows come back with a non-finite ``lse``.
    """
    check_tensor("logits", logits, dims=None, floating=True)
    if logits.dim() == 0:
        raise ValueError("logits: expected shape (..., V), got a 0-d tensor")
    check_k(k, logits.shape[-1])
    batch_shape = logits.shape[:-1]
    check_rows(math.prod(batch_shape))
    impl = _resolve(backend, logits.device, logits.dtype)
    rows = _as_rows(logits)
    if rows.numel() == 0:
        return empty_stats(batch_shape, k, full_entropy, logits.device)
    stats = _stats(rows, k, bool(full_entropy), impl.name)
    if check_finite:
        raise_if_not_finite(stats["lse"].reshape(batch_shape), "logits")
    return TokenStats(
        **{
            name: None if value is None else value.reshape((*batch_shape, *value.shape[2:]))
            for name, value in stats.items()
        }
    )


def xflow_step(
    logits: Tensor,
    X: Tensor,
    t: Tensor,
    embedding: Tensor,
    mask_embedding: Tensor,
    policy: StepPolicy | None = None,
    rho: float | Tensor = 0.0,
    *,
    config: FlowConfig = FlowConfig(),
    sample: bool = False,
    generator: torch.Generator | list[torch.Generator] | None = None,
    action: Tensor | None = None,
    inplace: bool = False,
    backend: str = "auto",
    check_finite: bool = True,
) -> XFlowStep:
    """One x-prediction flow step (SPEC 2.2-2.7) from the logits of the N response rows.

    For each token i: x_pred = argmax, c = p(1), state s = [p(1..4), H_4, margin, t_i, rho];
    action a from ``policy`` (its mean a_min 1F1(alpha; alpha+beta; L ln 2), or a draw y ~
    Beta(alpha, beta), a = a_min 2^(y L), when ``sample``) or, with ``policy=None``, the heuristic
    a = a_min^(1-c) a_max^c. Then, with t before the update:
      re-edit if c - t < -0.1:  X = c E[x_pred] + (1 - c) m,  t = c
      else the flow update:     X += (E[x_pred] - X) a,       t += a (1 - t)
    and per sequence the hard commit: among tokens with t < 0.99 the most confident (smallest
    index on ties) gets X = E[x_pred], t = 1.

    Shapes: logits (B, N, V) float32/bfloat16/float16 (float64 with the torch backend); X (B, N, E)
    float32; t (B, N) float32 in [0, 1]; embedding (V, E) (the model's input embeddings; float32,
    bfloat16 or float16 on the kernel backends); mask_embedding (E,); rho = l / max(T-1, 1) in
    [0, 1], a number or a tensor () or (B,). ``inplace`` writes the new X and t into the given
    tensors (which must then be contiguous). ``sample`` needs a policy; ``generator`` (or a list of
    B generators, one per sequence) drives its draws (the statistics are computed once: the step
    starts from them and reads the logits once).
    ``action`` (B, N) float32 in [a_min, a_max] is applied as the step size instead of a policy's or
    the heuristic's (with ``policy=None``): replaying a sampled step's ``action`` on the same inputs
    gives that step's results bit for bit.

    ``check_finite=True`` (the default) raises a ValueError naming what is wrong, and writes no state,
    when X or mask_embedding holds a NaN or inf, when an ``action`` is not in [a_min, a_max], when
    embedding does (checked once per table and version: an in-place change is seen, a change that
    bypasses autograd's version counter is not), when t or rho holds a NaN or a value outside [0, 1],
    or when a logits row is not a finite distribution (a NaN or +inf, or every entry -inf). That
    costs one host synchronisation per call. With ``check_finite=False`` nothing synchronises (what
    the decoding loop and CUDA graphs need) and only a number ``rho`` is checked: NaN, inf or
    out-of-range values in X, t, a tensor rho, embedding or mask_embedding go into the step
    unnoticed; a non-finite logits row still makes the step write no state, and shows in the
    result's ``lse``.
    """
    check_step_inputs(logits, X, t, embedding, mask_embedding, policy, config, sample, generator, action, inplace)
    B, N, _ = logits.shape
    rho_checked = not isinstance(rho, Tensor)  # a number was range-checked on the host
    rho = rho_tensor(rho, B, logits.device)
    impl = _resolve(backend, logits.device, logits.dtype)
    _check_embedding_dtype(embedding, impl)
    # the op updates X_out, t_out in place: the given tensors (inplace) or copies of them
    X_out, t_out = (X, t) if inplace else (X.contiguous().clone(), t.contiguous().clone())
    if B * N == 0:
        return empty_step(X_out, t_out, B, N, sample, config.k + 4)
    step = _StepArgs(_as_rows(logits), _unit_stride(embedding), mask_embedding.float().contiguous(), rho)
    checks = None
    if check_finite:
        checks = InputChecks(X_out, t_out, None if rho_checked else rho, embedding, step.mask_embedding, action, config)
    drawn, policy_weights, bad = None, None, None
    if sample:
        drawn = _draw_actions(impl, step, t_out, policy, config, generator, checks)
        action = drawn.action
    else:
        if policy is not None:
            policy_weights = policy.packed_weights(logits.device, reference.compute_dtype(step.logits))
        if checks is not None:
            bad = checks.flag()
    action = None if action is None else action.contiguous()
    out = _step_op(impl, step, X_out, t_out, policy, policy_weights, action, drawn, bad, config)
    if checks is not None and not sample:
        checks.raise_if_failed(out["lse"])  # the one host synchronisation
    return _step_result(out, X_out, t_out, drawn)


def _step_op(impl, step: _StepArgs, X_out, t_out, policy, policy_weights, action, drawn, bad, config):
    """``torch.ops.mdfast.xflow_step_`` on the laid-out inputs (X_out, t_out updated in place): a dict by field."""
    constants = (policy.hidden, policy.kappa_min, policy.kappa_max) if policy is not None else (0, 0.0, 0.0)
    given = [] if drawn is None else list(drawn.given)
    scalars = _step_scalars(config, *constants)
    out = torch.ops.mdfast.xflow_step_.default(
        step.logits,
        X_out,
        t_out,
        step.embedding,
        step.mask_embedding,
        step.rho,
        policy_weights,
        action,
        given,
        bad,
        scalars,
        impl.name,
    )
    return dict(zip(XFLOW_FIELDS, out))


def _check_embedding_dtype(embedding: Tensor, impl: backends.Backend) -> None:
    if embedding.dtype not in impl.logits_dtypes:
        raise TypeError(
            f"embedding: backend {impl.name!r} reads {', '.join(map(str, impl.logits_dtypes))}, got {embedding.dtype}"
        )


class _StepArgs(NamedTuple):
    """A step's inputs laid out as the backends take them: rows with a dense last dimension, the rest contiguous."""

    logits: Tensor
    embedding: Tensor
    mask_embedding: Tensor
    rho: Tensor


def _stats(rows: Tensor, k: int, full_entropy: bool, backend: str) -> dict[str, Tensor | None]:
    """``torch.ops.mdfast.token_stats`` on logits rows (B, N, V) as a dict by field (entropy_full None unless asked)."""
    stats = dict(zip(TOKEN_STATS_FIELDS, torch.ops.mdfast.token_stats.default(rows, k, full_entropy, backend)))
    if not full_entropy:
        stats["entropy_full"] = None
    return stats


class _Draws(NamedTuple):
    """A sampled step's actions, the statistics they were drawn from, and what policy-gradient training needs."""

    action: Tensor
    given: GivenStats
    log_prob: Tensor
    state: Tensor
    draw: Tensor


def _draw_actions(
    impl, step: _StepArgs, t: Tensor, policy: StepPolicy, config: FlowConfig, generator, checks
) -> _Draws:
    """SPEC 2.5, sampling: y ~ Beta(alpha, beta), a = a_min 2^(y L), drawn by torch with ``generator``.

    The same in every backend: the draws come from statistics the step then starts from (the logits
    are read once). With ``checks`` the inputs are checked before the draws: nothing is written.
    """
    stats = _stats(step.logits, config.k, False, impl.name)
    if checks is not None:
        checks.raise_if_failed(stats["lse"])
    state = reference.policy_state(stats["topk_probs"], stats["entropy_topk"], stats["margin"], t, step.rho)
    alpha, beta = policy(state)
    draw = reference.sample_draw(alpha, beta, generator)
    action = reference.draw_action(draw, config.a_min, config.a_max).detach().float().contiguous()
    log_prob = reference.draw_log_prob(alpha, beta, draw)
    given = GivenStats(stats["argmax"], stats["topk_probs"][..., 0].contiguous(), stats["lse"])
    return _Draws(action, given, log_prob, state, draw)


def _step_result(out: dict[str, Tensor], X_out: Tensor, t_out: Tensor, drawn: _Draws | None) -> XFlowStep:
    return XFlowStep(
        X=X_out,
        t=t_out,
        tokens=out["tokens"],
        confidence=out["confidence"],
        action=out["action"],
        reedited=out["reedited"],
        committed=out["committed"],
        lse=out["lse"],
        log_prob=None if drawn is None else drawn.log_prob,
        state=None if drawn is None else drawn.state,
        draw=None if drawn is None else drawn.draw,
    )


# --------------------------------------------------------------------------------------------
# SPEC 5: the fused pieces of the LLaDA body (Triton on CUDA tensors, the reference elsewhere)
# --------------------------------------------------------------------------------------------


def rms_norm(x: Tensor, weight: Tensor, eps: float, *, update: Tensor | None = None, backend: str = "auto"):
    """RMSNorm(x; w) = (x in float32 times rsqrt(mean(x^2 over d) + eps), cast back to x's dtype) * w.

    With ``update``, fused with the residual add: returns (x + update, RMSNorm(x + update; w)).
    """
    check_tensor("x", x, floating=True)
    check_tensor("weight", weight, dims=1, floating=True, device=x.device)
    check_shape("weight", weight, (x.shape[-1],), "(d,) with d = x.shape[-1]")
    if update is not None:
        check_tensor("update", update, dtype=x.dtype, device=x.device)
        check_shape("update", update, tuple(x.shape), "x's shape")
    name = _resolve_body(backend, x, weight, update).name
    if update is None:
        return torch.ops.mdfast.rms_norm.default(x.contiguous(), weight.contiguous(), float(eps), name)
    return torch.ops.mdfast.add_rms_norm.default(
        x.contiguous(), update.contiguous(), weight.contiguous(), float(eps), name
    )


def rope_(x: Tensor, theta: float, *, tables: tuple[Tensor, Tensor] | None = None, backend: str = "auto") -> Tensor:
    """RoPE applied in place to x (B, L, H, hd), positions 0..L-1, in float32 (SPEC 5); returns x.

    u' = u cos + rot(u) sin, angles cat(a, a), a = pos * theta^(-2j/hd).

    - tables: (cos, sin_rot) = ``reference.rope_tables(arange(L), hd, theta, dtype)``, dtype float32
      (float64 for float64 x), each (L, 1, hd) or (B, L, 1, hd): built once and shared by the calls of
      one forward (default: built in every call). The reference reads them; the Triton kernel
      computes its angles itself and ignores them.
    """
    check_tensor("x", x, dims=4, floating=True)
    if x.shape[-1] % 2 or x.stride(-1) != 1:
        raise ValueError(
            f"x: expected (B, L, H, hd) with an even hd and a dense last dimension, got shape {tuple(x.shape)}, "
            f"strides {x.stride()}"
        )
    if tables is not None:
        _check_rope_tables(tables, x)
    name = _resolve_body(backend, x).name
    cos, sin_rot = (None, None) if tables is None else tables
    if torch.is_grad_enabled() and x.requires_grad:  # a mutation has no autograd formula: the functional op, copied
        return x.copy_(torch.ops.mdfast.rope.default(x, float(theta), cos, sin_rot, name))
    torch.ops.mdfast.rope_.default(x, float(theta), cos, sin_rot, name)
    return x


def _check_rope_tables(tables, x: Tensor) -> None:
    """TypeError or ValueError, naming ``tables``, unless it is (cos, sin_rot) in x's compute dtype, fitting x."""
    if not (isinstance(tables, (tuple, list)) and len(tables) == 2 and all(isinstance(t, Tensor) for t in tables)):
        raise TypeError(f"tables: expected a pair (cos, sin_rot) of tensors, got {describe(tables)}")
    B, L, _H, hd = x.shape
    dtype = reference.compute_dtype(x)
    for name, table in zip(("cos", "sin_rot"), tables):
        if table.dtype != dtype:
            raise TypeError(f"tables: {name} must be {dtype} (x's compute dtype), got {table.dtype}")
        if table.device != x.device:
            raise ValueError(f"tables: {name} must be on {x.device} (x's device), got {table.device}")
        if tuple(table.shape) not in ((L, 1, hd), (B, L, 1, hd)):
            raise ValueError(
                f"tables: {name} must have shape (L, 1, hd) = {(L, 1, hd)} or (B, L, 1, hd) = {(B, L, 1, hd)}, "
                f"got {tuple(table.shape)}"
            )


def swiglu(gate: Tensor, up: Tensor, *, backend: str = "auto") -> Tensor:
    """SiLU(gate) * up (SPEC 5: SiLU(ff_proj h) * up_proj h), a new contiguous tensor.

    gate and up may be strided views, e.g. the two halves ``gu[..., :F]``, ``gu[..., F:]`` of one
    fused gate/up product: with a dense last dimension and leading dimensions that flatten to rows
    of one stride, the Triton kernel reads them in place (no copy).
    """
    check_tensor("gate", gate, floating=True)
    check_tensor("up", up, dtype=gate.dtype, device=gate.device)
    check_shape("up", up, tuple(gate.shape), "gate's shape")
    name = _resolve_body(backend, gate, up).name

    def rows(x: Tensor) -> Tensor:  # (..., n) as (rows, n), a copy only where the layout needs one
        return _unit_stride(torch.atleast_2d(x)).flatten(0, -2)

    return torch.ops.mdfast.swiglu.default(rows(gate), rows(up), name).view(gate.shape)


# --------------------------------------------------------------------------------------------
# backend choice
# --------------------------------------------------------------------------------------------

_warned: set[str] = set()


def _resolve(name: str, device: torch.device, logits_dtype: torch.dtype) -> backends.Backend:
    """``resolve_backend``'s backend itself."""
    if name == "auto":
        if logits_dtype not in backends.KERNEL_LOGITS_DTYPES:
            return backends.get("torch")
        candidates = ("triton", "cuda") if device.type == "cuda" else ("cpu",) if device.type == "cpu" else ()
        reasons = []
        for candidate in candidates:
            reason = backends.get(candidate).unavailable_reason()
            if reason is None:
                return backends.get(candidate)
            reasons.append(f"{candidate}: {reason}")
        if reasons and device.type not in _warned:
            _warned.add(device.type)
            warnings.warn(
                f"mdfast: using the eager torch backend on {device.type} ({'; '.join(reasons)})",
                RuntimeWarning,
                stacklevel=3,
            )
        return backends.get("torch")
    return _available(name, device, logits_dtype)


def _available(name: str, device: torch.device, logits_dtype: torch.dtype | None = None) -> backends.Backend:
    """The backend called ``name`` (not "auto") where it runs on ``device``'s tensors, else an error.

    With ``logits_dtype``, it must also read that dtype.
    """
    backend = backends.get(name)
    if (
        backend.device_type is not None
        and backend.device_type != device.type
        and not (name == "triton" and backends.triton_interpreter())
    ):
        raise ValueError(f"backend={name!r} runs on {backend.device_type} tensors, but the inputs are on {device}")
    if logits_dtype is not None and logits_dtype not in backend.logits_dtypes:
        raise TypeError(
            f"logits: backend {name!r} reads {', '.join(str(d) for d in backend.logits_dtypes)}, got {logits_dtype}"
        )
    reason = backend.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"mdfast backend {name!r} is unavailable: {reason}")
    return backend


def _resolve_body(name: str, *tensors: Tensor | None) -> backends.Backend:
    """The backend of the body ops: the body kernels exist in Triton only, forward only.

    "auto" takes them on CUDA tensors where Triton runs and no gradient is wanted (else the
    reference, which autograd differentiates).
    """
    if name not in ("auto", "triton", "torch"):
        raise ValueError(f"backend: the body kernels run on 'auto', 'triton' or 'torch', got {name!r}")
    wants_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    device = tensors[0].device
    if name == "auto":
        triton = backends.get("triton")
        on_gpu = device.type == "cuda" and triton.unavailable_reason() is None
        return triton if on_gpu and not wants_grad else backends.get("torch")
    backend = _available(name, device)
    if name == "triton" and wants_grad:
        raise ValueError(
            "backend='triton': the body kernels have no backward; "
            "use backend='auto' or 'torch' when gradients are needed"
        )
    return backend


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _step_scalars(config: FlowConfig, hidden: int, kappa_min: float, kappa_max: float) -> list[float]:
    """The op's ``scalars`` for a (config, policy constants) pair: ``StepScalars``' fields in order, built once."""
    values = (config.a_min, config.a_max, config.reedit_margin, config.commit_threshold, config.k, config.kummer_terms)
    return [float(value) for value in (*values, hidden, kappa_min, kappa_max)]


def _unit_stride(x: Tensor) -> Tensor:
    """The kernels walk rows with any stride but need the last dimension dense."""
    return x if x.stride(-1) == 1 else x.contiguous()


def _as_rows(logits: Tensor) -> Tensor:
    """A (B, N, V) view of ``logits`` (..., V) with a dense last dimension (a copy only if needed)."""
    logits = _unit_stride(logits)
    if logits.dim() == 1:
        return logits.view(1, 1, -1)
    if logits.dim() == 2:
        return logits.unsqueeze(0)
    return logits.flatten(0, -3) if logits.dim() > 3 else logits
