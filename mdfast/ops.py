"""The public operations and the one place that validates their input and picks their backend.

``token_stats`` (SPEC 1), ``xflow_step`` (SPEC 2) and the LLaDA body's ``rms_norm``, ``rope_`` and
``swiglu`` (SPEC 5) validate their inputs, choose a backend (``backend="auto" | "triton" | "cuda" |
"cpu" | "torch"``, ``resolve_backend`` says which one a name gives) and lay the tensors out for it;
the backends (``mdfast.backends``) and their kernels trust what they get. Bad input raises
``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, device, value, or non-finite
logits) naming the argument and what was expected.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

from . import backends, reference
from .config import FlowConfig
from .errors import describe
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

# The kernels index the vocabulary and the rows with int32 (the top-k's empty slots sit just below
# 2^31), and keep the policy's first layer in shared memory.
MAX_VOCABULARY = 2**31 - 65
MAX_ROWS = 2**31 - 1
MAX_POLICY_HIDDEN = 4096


@dataclass
class TokenStats:
    """SPEC 1 statistics of each logits row; batch shape = ``logits.shape[:-1]``.

    argmax (int64): smallest index among the maximal logits; topk_probs (..., k) float32: the k
    largest probabilities, descending, ties -> smaller index; topk_ids (..., k) int64: their ids;
    lse = log sum_v exp(z_v); margin = p(1) - p(2); entropy_topk = H_k; entropy_full = H_full =
    lse - sum_v p_v z_v (None unless asked). Float fields are float32.
    """

    argmax: Tensor
    topk_probs: Tensor
    topk_ids: Tensor
    lse: Tensor
    margin: Tensor
    entropy_topk: Tensor
    entropy_full: Tensor | None = None


@dataclass
class XFlowStep:
    """The result of one x-flow step (SPEC 2) for B sequences of N tokens.

    X (B, N, E), t (B, N): the new state (the inputs themselves when ``inplace``); tokens: x_pred
    = argmax; confidence: c = p(1); action: the step size a each token drew or was given (also
    for re-edited tokens, which do not use it); reedited (bool): c - t < -reedit_margin;
    committed (B,) int64: the token hard-committed this step, -1 if none; lse (B, N): log sum_v
    exp(z_v) (not finite for a row that is no distribution, seen only with ``check_finite=False``);
    log_prob: log pi(y) of the sampled actions (only when ``sample``; differentiable in the
    policy's weights); state (B, N, k + 4): the policy state s = [p(1..k), H_k, margin, t, rho] the
    draws were made from, and draw (B, N): the draws y ~ Beta(alpha, beta), a = a_min 2^(y L) (both
    only when ``sample``: what a policy-gradient update needs to recompute log pi(y | s)).
    """

    X: Tensor
    t: Tensor
    tokens: Tensor
    confidence: Tensor
    action: Tensor
    reedited: Tensor
    committed: Tensor
    lse: Tensor
    log_prob: Tensor | None = None
    state: Tensor | None = None
    draw: Tensor | None = None


def resolve_backend(backend: str, device: torch.device, logits_dtype: torch.dtype) -> str:
    """The name of the backend that ``backend`` ("auto" | "triton" | "cuda" | "cpu" | "torch") runs
    ``token_stats`` and ``xflow_step`` with for logits of ``logits_dtype`` on ``device``.

    "auto" picks Triton, then CUDA, on CUDA tensors and the C++ backend on CPU tensors, each only
    where it runs (else "torch", the eager reference, with a one-time warning that says why); an
    explicit name that cannot run there raises, as the ops would. A step on "torch" cannot be
    captured in a CUDA graph (the reference synchronises).
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
    _check_tensor("logits", logits, dims=None, floating=True)
    if logits.dim() == 0:
        raise ValueError("logits: expected shape (..., V), got a 0-d tensor")
    _check_k(k, logits.shape[-1])
    batch_shape = logits.shape[:-1]
    _check_rows(math.prod(batch_shape))
    impl = _resolve(backend, logits.device, logits.dtype)
    rows = _as_rows(logits)
    if rows.numel() == 0:
        return _empty_stats(batch_shape, k, full_entropy, logits.device)
    stats = impl.token_stats(rows, k, bool(full_entropy))
    if check_finite:
        _raise_if_not_finite(stats["lse"].reshape(batch_shape), "logits")
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
    generator: torch.Generator | None = None,
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
    tensors (which must then be contiguous). ``sample`` needs a policy; ``generator`` drives its
    draws (the statistics are computed once: the step starts from them and reads the logits once).
    ``action`` (B, N) float32 in [a_min, a_max] is applied as the step size instead of a policy's or
    the heuristic's (with ``policy=None``): replaying a sampled step's ``action`` on the same inputs
    gives that step's results bit for bit.

    ``check_finite=True`` (the default) raises a ValueError naming what is wrong, and writes no state,
    when X or mask_embedding holds a NaN or inf, when an ``action`` is not in [a_min, a_max], when
    embedding does (checked once per table and
    version: an in-place change is seen, a change that bypasses autograd's version counter is not),
    when t or rho holds a NaN or a value outside [0, 1], or when a logits row is not a finite
    distribution (a NaN or +inf, or every entry -inf). That costs one host synchronisation per
    call. With ``check_finite=False`` nothing synchronises (what the decoding loop and CUDA graphs
    need) and only a number ``rho`` is checked: NaN, inf or out-of-range values in X, t, a tensor
    rho, embedding or mask_embedding go into the step unnoticed; a non-finite logits row still
    makes the step write no state, and shows in the result's ``lse``.
    """
    _check_tensor("logits", logits, dims=3, floating=True)
    B, N, V = logits.shape
    device = logits.device
    _check_tensor("X", X, dims=3, dtype=torch.float32, device=device)
    E = X.shape[-1]
    _check_shape("X", X, (B, N, E), "(B, N, E) with (B, N) from logits")
    _check_tensor("t", t, dims=2, dtype=torch.float32, device=device)
    _check_shape("t", t, (B, N), "(B, N) from logits")
    _check_tensor("embedding", embedding, dims=2, floating=True, device=device)
    _check_shape("embedding", embedding, (V, E), "(V, E): a row per vocabulary entry of logits and X's width E")
    _check_tensor("mask_embedding", mask_embedding, dims=1, floating=True, device=device)
    _check_shape("mask_embedding", mask_embedding, (E,), "(E,) with E from X")
    if not isinstance(config, FlowConfig):
        raise TypeError(f"config: expected a FlowConfig, got {type(config).__name__}")
    _check_k(config.k, V)
    _check_rows(B * N)
    _check_policy(policy, config, device)
    if sample and policy is None:
        raise ValueError("sample=True needs a policy: the heuristic action a_min^(1-c) a_max^c is deterministic")
    if generator is not None and not sample:
        raise ValueError("generator: only used with sample=True")
    if action is not None:
        _check_tensor("action", action, dims=2, dtype=torch.float32, device=device)
        _check_shape("action", action, (B, N), "(B, N) like t")
        if policy is not None or sample:
            raise ValueError("action: a given step size replaces the policy's: pass policy=None and sample=False")
    if inplace and not (X.is_contiguous() and t.is_contiguous()):
        raise ValueError("inplace=True needs contiguous X and t")
    rho_checked = not isinstance(rho, Tensor)
    rho = _rho_tensor(rho, B, device)
    impl = _resolve(backend, device, logits.dtype)
    if embedding.dtype not in impl.logits_dtypes:
        raise TypeError(
            f"embedding: backend {impl.name!r} reads {', '.join(map(str, impl.logits_dtypes))}, got {embedding.dtype}"
        )
    constants = (policy.hidden, policy.kappa_min, policy.kappa_max) if policy is not None else (0, 0.0, 0.0)
    scalars = _step_scalars(config, *constants)

    X_in, t_in = X.contiguous(), t.contiguous()
    X_out, t_out = (X, t) if inplace else (torch.empty_like(X_in), torch.empty_like(t_in))
    if B * N == 0:
        return _empty_step(X_out, t_out, B, N, sample, config.k + 4)

    logits = _as_rows(logits)
    mask_embedding = mask_embedding.float().contiguous()
    checks = None
    if check_finite:
        checks = _InputChecks(X_in, t_in, None if rho_checked else rho, embedding, mask_embedding, action, config)
    embedding = _unit_stride(embedding)
    log_prob = given = weights = bad = state = draw = None
    if action is not None:
        action = action.contiguous()
    if sample:
        # The draws come from torch with ``generator`` in every backend (SPEC 2.5, sampling), from
        # statistics the step then starts from (the logits are read once).
        stats = impl.token_stats(logits, config.k, False)
        if checks is not None:
            checks.raise_if_failed(stats["lse"])  # before the draws: nothing is written
        state = reference.policy_state(stats["topk_probs"], stats["entropy_topk"], stats["margin"], t_in, rho)
        alpha, beta = policy(state)
        draw = reference.sample_draw(alpha, beta, generator)
        action = reference.draw_action(draw, config.a_min, config.a_max).detach().float().contiguous()
        log_prob = reference.draw_log_prob(alpha, beta, draw)
        given = backends.GivenStats(stats["argmax"], stats["topk_probs"][..., 0].contiguous(), stats["lse"])
    else:
        if policy is not None:
            weights = policy.packed_weights(device, reference.compute_dtype(logits))
        if checks is not None:
            bad = checks.flag()
    out = impl.xflow_step(
        backends.StepInputs(
            logits, X_in, t_in, embedding, mask_embedding, rho, weights, action, given, bad, X_out, t_out, scalars
        )
    )
    if checks is not None and not sample:
        checks.raise_if_failed(out["lse"])
    return XFlowStep(
        X=X_out,
        t=t_out,
        tokens=out["tokens"],
        confidence=out["confidence"],
        action=out["action"],
        reedited=out["reedited"],
        committed=out["committed"],
        lse=out["lse"],
        log_prob=log_prob,
        state=state,
        draw=draw,
    )


# --------------------------------------------------------------------------------------------
# SPEC 5: the fused pieces of the LLaDA body (Triton on CUDA tensors, the reference elsewhere)
# --------------------------------------------------------------------------------------------


def rms_norm(x: Tensor, weight: Tensor, eps: float, *, update: Tensor | None = None, backend: str = "auto"):
    """RMSNorm(x; w) = (x in float32 times rsqrt(mean(x^2 over d) + eps), cast back to x's dtype) * w.

    With ``update``, fused with the residual add: returns (x + update, RMSNorm(x + update; w)).
    """
    _check_tensor("x", x, floating=True)
    _check_tensor("weight", weight, dims=1, floating=True, device=x.device)
    _check_shape("weight", weight, (x.shape[-1],), "(d,) with d = x.shape[-1]")
    if update is not None:
        _check_tensor("update", update, dtype=x.dtype, device=x.device)
        _check_shape("update", update, tuple(x.shape), "x's shape")
    impl = _resolve_body(backend, x, weight, update)
    summed, normed = impl.rms_norm(
        x.contiguous(), weight.contiguous(), float(eps), update.contiguous() if update is not None else None
    )
    return (summed, normed) if update is not None else normed


def rope_(x: Tensor, theta: float, *, backend: str = "auto") -> Tensor:
    """RoPE applied in place to x (B, L, H, hd), positions 0..L-1, in float32 (SPEC 5):
    u' = u cos + rot(u) sin, angles cat(a, a), a = pos * theta^(-2j/hd). Returns x."""
    _check_tensor("x", x, dims=4, floating=True)
    if x.shape[-1] % 2 or x.stride(-1) != 1:
        raise ValueError(
            f"x: expected (B, L, H, hd) with an even hd and a dense last dimension, got shape {tuple(x.shape)}, "
            f"strides {x.stride()}"
        )
    return _resolve_body(backend, x).rope_(x, float(theta))


def swiglu(gate: Tensor, up: Tensor, *, backend: str = "auto") -> Tensor:
    """SiLU(gate) * up (SPEC 5: SiLU(ff_proj h) * up_proj h), a new contiguous tensor.

    gate and up may be strided views, e.g. the two halves ``gu[..., :F]``, ``gu[..., F:]`` of one
    fused gate/up product: with a dense last dimension and leading dimensions that flatten to rows
    of one stride, the Triton kernel reads them in place (no copy).
    """
    _check_tensor("gate", gate, floating=True)
    _check_tensor("up", up, dtype=gate.dtype, device=gate.device)
    _check_shape("up", up, tuple(gate.shape), "gate's shape")
    impl = _resolve_body(backend, gate, up)

    def rows(x: Tensor) -> Tensor:  # (..., n) as (rows, n), a copy only where the layout needs one
        return _unit_stride(torch.atleast_2d(x)).flatten(0, -2)

    return impl.swiglu(rows(gate), rows(up)).view(gate.shape)


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
    """The backend called ``name`` (not "auto") where it runs on ``device``'s tensors (and reads
    ``logits_dtype``), else an error."""
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
    """The body kernels exist in Triton only, forward only: "auto" takes them on CUDA tensors where
    Triton runs and no gradient is wanted (else the reference, which autograd differentiates)."""
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
# validation and layout
# --------------------------------------------------------------------------------------------


def _check_tensor(name, x, *, dims=None, dtype=None, floating=False, device=None) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {describe(x)}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{name}: expected a {dims}-d tensor, got shape {tuple(x.shape)}")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the device of logits), got {x.device}")


def _check_shape(name, x: Tensor, shape: tuple, meaning: str) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} = {meaning}, got {tuple(x.shape)}")


def _check_k(k, V: int) -> None:
    if not (isinstance(k, int) and 2 <= k <= 8):
        raise ValueError(f"k: expected an int in [2, 8], got {k!r}")
    if k > V:
        raise ValueError(f"logits: the vocabulary (last dimension, {V}) must hold at least k = {k} entries")
    if V > MAX_VOCABULARY:
        raise ValueError(f"logits: at most {MAX_VOCABULARY} vocabulary entries (int32 ids), got {V}")


def _check_rows(rows: int) -> None:
    if rows > MAX_ROWS:
        raise ValueError(f"logits: at most {MAX_ROWS} rows (int32 row indices), got {rows}")


def _check_policy(policy, config: FlowConfig, device: torch.device) -> None:
    if policy is None:
        return
    if not isinstance(policy, StepPolicy):
        raise TypeError(f"policy: expected a mdfast.StepPolicy or None, got {type(policy).__name__}")
    if policy.fc1.weight.device != device:
        raise ValueError(
            f"policy: expected its weights on {device} (the device of logits), got {policy.fc1.weight.device}"
        )
    if (policy.k, policy.a_min, policy.a_max) != (config.k, config.a_min, config.a_max):
        raise ValueError(
            f"policy: trained with k={policy.k}, a_min={policy.a_min}, a_max={policy.a_max} but config has "
            f"k={config.k}, a_min={config.a_min}, a_max={config.a_max}; pass "
            "config=FlowConfig(k=policy.k, a_min=policy.a_min, a_max=policy.a_max)"
        )
    if policy.hidden > MAX_POLICY_HIDDEN:
        raise ValueError(f"policy: hidden width at most {MAX_POLICY_HIDDEN} (the kernels' limit), got {policy.hidden}")


@functools.lru_cache(maxsize=64)
def _step_scalars(config: FlowConfig, hidden: int, kappa_min: float, kappa_max: float) -> backends.StepScalars:
    """The kernels' scalars for a (config, policy constants) pair, built once."""
    return backends.StepScalars(
        a_min=config.a_min,
        a_max=config.a_max,
        reedit_margin=config.reedit_margin,
        commit_threshold=config.commit_threshold,
        k=config.k,
        kummer_terms=config.kummer_terms,
        hidden=hidden,
        kappa_min=kappa_min,
        kappa_max=kappa_max,
    )


def _rho_tensor(rho, B: int, device: torch.device) -> Tensor:
    if isinstance(rho, Tensor):
        if rho.dim() > 1 or (rho.dim() == 1 and rho.shape[0] != B):
            raise ValueError(f"rho: expected a number or a tensor of shape () or ({B},), got shape {tuple(rho.shape)}")
        return rho.to(device=device, dtype=torch.float32).expand(B).contiguous()
    if not isinstance(rho, (int, float)):
        raise TypeError(f"rho: expected a number or a tensor, got {type(rho).__name__}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho: expected a number in [0, 1] (l / max(T - 1, 1)), got {rho}")
    return torch.full((B,), float(rho), dtype=torch.float32, device=device)


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


def _raise_if_not_finite(lse: Tensor, name: str) -> None:
    bad = ~torch.isfinite(lse)
    if bool(bad.any()):
        where = bad.nonzero()
        first = tuple(where[0].tolist())
        raise ValueError(
            f"{name}: {where.shape[0]} row(s) are not a finite distribution (a NaN or +inf entry, or every "
            f"entry -inf), the first at row index {first}; no state was written"
        )


_INPUT_PROBLEMS = {
    "X": "X: holds a NaN or infinite entry",
    "t": "t: expected token progress in [0, 1], got a NaN or a value outside",
    "rho": "rho: expected values in [0, 1] (l / max(T - 1, 1)), got a NaN or a value outside",
    "mask_embedding": "mask_embedding: holds a NaN or infinite entry",
    "embedding": "embedding: holds a NaN or infinite entry",
    "action": "action: expected step sizes in [a_min, a_max] (config), got a NaN or a value outside",
}


class _InputChecks:
    """``xflow_step``'s input checks with ``check_finite=True``, evaluated on the device: their
    flags become the backend's ``bad`` flag (a set flag makes the step write no state) and are read
    back together with the logits check, in one host synchronisation."""

    def __init__(
        self,
        X: Tensor,
        t: Tensor,
        rho: Tensor | None,
        embedding: Tensor,
        mask_embedding: Tensor,
        action: Tensor | None,
        config: FlowConfig,
    ) -> None:
        self.embedding = embedding
        self.failed = {
            "X": ~torch.isfinite(X).all(),
            "t": ~((t >= 0) & (t <= 1)).all(),
            "mask_embedding": ~torch.isfinite(mask_embedding).all(),
        }
        if rho is not None:  # a number was checked on the host already
            self.failed["rho"] = ~((rho >= 0) & (rho <= 1)).all()
        if action is not None:
            self.failed["action"] = ~((action >= config.a_min) & (action <= config.a_max)).all()
        if not _finite_tables.known(embedding):
            self.failed["embedding"] = ~torch.isfinite(embedding).all()

    def flag(self) -> Tensor:
        """The backend's int32 (1,) flag: nonzero when an input failed."""
        return torch.stack(list(self.failed.values())).any().to(torch.int32).reshape(1)

    def raise_if_failed(self, lse: Tensor) -> None:
        """Raises the ValueError of the first failed check, else the logits' (``lse`` not finite)."""
        flags = torch.stack([*self.failed.values(), (~torch.isfinite(lse)).any()]).tolist()  # the one sync
        failed = dict(zip(self.failed, flags))
        if "embedding" in failed and not failed["embedding"]:
            _finite_tables.remember(self.embedding)
        for name, bad in failed.items():
            if bad:
                raise ValueError(f"{_INPUT_PROBLEMS[name]}; no state was written")
        if flags[-1]:
            _raise_if_not_finite(lse, "logits")


class _FiniteTables:
    """Embedding tables known to be finite, per storage, view and version (autograd's counter of
    in-place changes): checking a (V, E) table reads it whole, so it is checked once, not every step.
    A weak reference to the storage keeps a freed table from passing for a new one."""

    def __init__(self) -> None:
        self._tables: dict[tuple, tuple[StorageWeakRef, int]] = {}

    @staticmethod
    def _key(x: Tensor) -> tuple:
        return (x.untyped_storage()._cdata, x.storage_offset(), tuple(x.shape), x.stride(), x.dtype, x.device)

    def known(self, x: Tensor) -> bool:
        if x.is_inference():  # no version counter: checked every time
            return False
        entry = self._tables.get(self._key(x))
        return entry is not None and not entry[0].expired() and entry[1] == x._version

    def remember(self, x: Tensor) -> None:
        if x.is_inference():
            return
        self._tables = {key: entry for key, entry in self._tables.items() if not entry[0].expired()}
        self._tables[self._key(x)] = (StorageWeakRef(x.untyped_storage()), x._version)


_finite_tables = _FiniteTables()


def _empty_stats(batch_shape, k: int, full_entropy: bool, device) -> TokenStats:
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    return TokenStats(
        argmax=torch.empty(batch_shape, **i64),
        topk_probs=torch.empty(*batch_shape, k, **f32),
        topk_ids=torch.empty(*batch_shape, k, **i64),
        lse=torch.empty(batch_shape, **f32),
        margin=torch.empty(batch_shape, **f32),
        entropy_topk=torch.empty(batch_shape, **f32),
        entropy_full=torch.empty(batch_shape, **f32) if full_entropy else None,
    )


def _empty_step(X_out: Tensor, t_out: Tensor, B: int, N: int, sample: bool, width: int) -> XFlowStep:
    """N = 0 (or B = 0): nothing to update, nothing to commit."""
    device = t_out.device
    zeros = torch.zeros(B, N, dtype=torch.float32, device=device)
    return XFlowStep(
        X=X_out,
        t=t_out,
        tokens=torch.zeros(B, N, dtype=torch.int64, device=device),
        confidence=zeros,
        action=zeros.clone(),
        reedited=torch.zeros(B, N, dtype=torch.bool, device=device),
        committed=torch.full((B,), -1, dtype=torch.int64, device=device),
        lse=zeros.clone(),
        log_prob=zeros.clone() if sample else None,
        state=torch.zeros(B, N, width, device=device) if sample else None,
        draw=zeros.clone() if sample else None,
    )
