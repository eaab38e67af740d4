"""mdfast's operations as PyTorch custom operators: ``torch.ops.mdfast.*``, with fake kernels and autograd formulas.

Defined in the ``mdfast`` namespace with ``torch.library`` (an explicit schema each, a kernel for every
device, ``register_fake``, ``register_autograd``), so that ``torch.compile`` (with ``fullgraph=True``)
and FakeTensor tracing see each one as a single opaque node of known output shapes instead
of tracing into (or breaking the graph at) the backends:

    token_stats(logits, k, full_entropy, backend)              SPEC 1, 7 tensors (entropy_full empty unless asked)
    xflow_step_(logits, X!, t!, embedding, ..., backend)        SPEC 2.2-2.7, X and t updated in place, 6 tensors
    rms_norm(x, weight, eps, backend)                           SPEC 5 RMSNorm, differentiable
    add_rms_norm(x, update, weight, eps, backend)               (x + update, RMSNorm(x + update)), differentiable
    rope(x, theta, cos, sin_rot, backend)                       SPEC 5 RoPE, a new tensor, differentiable
    rope_(x!, theta, cos, sin_rot, backend)                     the same in place (no autograd: a mutation)
    swiglu(gate, up, backend)                                   SiLU(gate) * up, differentiable
    cached_attention(q, k, v, keys!, values!, positions, ...)   SPEC 8: K, V written into the cache at S, attention

(! = mutated in place.) ``mdfast.ops`` stays the one place that validates the inputs and picks the backend:
its public functions check, resolve ``backend`` to a name ("torch", "cpu", "cuda", "triton") and call these
ops with that name; an op's body calls ``mdfast.backends.get(name)``'s method, and trusts its inputs. The
fake kernels give the exact output shapes and dtypes; the autograd formulas are those of the torch
reference (``mdfast.reference``), evaluated explicitly.

Why ``Library.define`` and not the ``torch.library.custom_op`` decorator: the decorator wraps every call in
Python layers (an alias check of the results, a dynamo guard, and for a mutating op a version-counter
kernel that walks the schema): 15 to 65 us more per call than the backend itself on the CPU, against 7 to
14 us here. The schemas, fake kernels, autograd formulas and ``torch.library.opcheck`` are the same.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import backends, reference
from .backends.contract import TOKEN_STATS_FIELDS, XFLOW_FIELDS, GivenStats, StepInputs, StepScalars

__all__ = ["OPS", "SCHEMAS"]

# The schema of every op registered here (torch.ops.mdfast.<name>); "(a!)" marks a tensor written in place.
SCHEMAS = {
    "token_stats": (
        "(Tensor logits, int k, bool full_entropy, str backend) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor)"
    ),
    "xflow_step_": (
        "(Tensor logits, Tensor(a!) X, Tensor(b!) t, Tensor embedding, Tensor mask_embedding, Tensor rho, "
        "Tensor? policy_weights, Tensor? action, Tensor[] given, Tensor? bad, float[] scalars, str backend) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)"
    ),
    "rms_norm": "(Tensor x, Tensor weight, float eps, str backend) -> Tensor",
    "add_rms_norm": "(Tensor x, Tensor update, Tensor weight, float eps, str backend) -> (Tensor, Tensor)",
    "rope": "(Tensor x, float theta, Tensor? cos, Tensor? sin_rot, str backend) -> Tensor",
    "rope_": "(Tensor(a!) x, float theta, Tensor? cos, Tensor? sin_rot, str backend) -> ()",
    "swiglu": "(Tensor gate, Tensor up, str backend) -> Tensor",
    "cached_attention": (
        "(Tensor q, Tensor k, Tensor v, Tensor(a!) keys, Tensor(b!) values, Tensor positions, Tensor? write, "
        "Tensor? bias) -> Tensor"
    ),
}
OPS = tuple(SCHEMAS)

_LIB = torch.library.Library("mdfast", "DEF")


def _define(name: str, kernel, fake, backward=None, setup_context=None) -> None:
    """torch.ops.mdfast.<name>: its schema, ``kernel`` on every device, ``fake``, and ``backward`` where given."""
    _LIB.define(name + SCHEMAS[name], tags=(torch.Tag.pt2_compliant_tag,))
    _LIB.impl(name, kernel, "CompositeExplicitAutograd")
    torch.library.register_fake(f"mdfast::{name}", fake, lib=_LIB)
    if backward is not None:
        torch.library.register_autograd(f"mdfast::{name}", backward, setup_context=setup_context, lib=_LIB)


def _fresh(outputs, *inputs: Tensor | None) -> tuple[Tensor, ...]:
    """``outputs`` contiguous (as the fake kernels say), each one that is one of ``inputs`` copied.

    An op's results may not alias its inputs.
    """
    taken = {x.data_ptr() for x in inputs if x is not None and x.numel()}
    return tuple(out.clone() if out.numel() and out.data_ptr() in taken else out.contiguous() for out in outputs)


# --------------------------------------------------------------------------------------------
# SPEC 1 and 2: token_stats, xflow_step_
# --------------------------------------------------------------------------------------------


def _token_stats(logits: Tensor, k: int, full_entropy: bool, backend: str) -> tuple[Tensor, ...]:
    """SPEC 1 over logits (B, N, V), stride(2) == 1, on the backend called ``backend``.

    Returns argmax, topk_probs, topk_ids, lse, margin, entropy_topk, entropy_full (``TOKEN_STATS_FIELDS``);
    entropy_full is an empty (0,) tensor unless ``full_entropy``.
    """
    stats = backends.get(backend).token_stats(logits, k, full_entropy)
    if stats["entropy_full"] is None:
        stats["entropy_full"] = logits.new_empty(0, dtype=torch.float32)
    return _fresh((stats[name] for name in TOKEN_STATS_FIELDS), logits)


def _token_stats_fake(logits, k, full_entropy, backend):
    B, N, _V = logits.shape
    f32, i64 = {"dtype": torch.float32}, {"dtype": torch.int64}
    return (
        logits.new_empty(B, N, **i64),
        logits.new_empty(B, N, k, **f32),
        logits.new_empty(B, N, k, **i64),
        logits.new_empty(B, N, **f32),
        logits.new_empty(B, N, **f32),
        logits.new_empty(B, N, **f32),
        logits.new_empty((B, N) if full_entropy else (0,), **f32),
    )


@functools.lru_cache(maxsize=64)
def _scalars(values: tuple[float, ...]) -> StepScalars:
    """The kernels' ``StepScalars`` from the op's ``scalars`` list (built once per tuple of values)."""
    a_min, a_max, reedit_margin, commit_threshold, k, kummer_terms, hidden, kappa_min, kappa_max = values
    return StepScalars(
        a_min, a_max, reedit_margin, commit_threshold, int(k), int(kummer_terms), int(hidden), kappa_min, kappa_max
    )


def _xflow_step_(
    logits: Tensor,
    X: Tensor,
    t: Tensor,
    embedding: Tensor,
    mask_embedding: Tensor,
    rho: Tensor,
    policy_weights: Tensor | None,
    action: Tensor | None,
    given: list[Tensor],
    bad: Tensor | None,
    scalars: list[float],
    backend: str,
) -> tuple[Tensor, ...]:
    """SPEC 2.2-2.7 on the backend called ``backend``: X (B, N, E) and t (B, N) updated in place.

    The tensors as ``StepInputs`` describes them, with X_out = X and t_out = t; ``given``: the
    ``GivenStats`` (tokens, confidence, lse) or []; ``bad``: the input checks' flag (read, not
    written: the backend gets a copy); ``scalars``: the values of ``StepScalars``' fields, in order
    (the ints as floats). Returns tokens, confidence, action, reedited, committed, lse (``XFLOW_FIELDS``).
    """
    stats = GivenStats(*given) if given else None
    flag = None if bad is None else bad.clone()
    inputs = StepInputs(
        logits,
        X,
        t,
        embedding,
        mask_embedding,
        rho,
        policy_weights,
        action,
        stats,
        flag,
        X,
        t,
        _scalars(tuple(scalars)),
    )
    out = backends.get(backend).xflow_step(inputs)
    return _fresh((out[name] for name in XFLOW_FIELDS), logits, X, t, rho, action, *given)


def _xflow_step_fake(logits, X, t, *args):
    B, N = t.shape
    f32 = {"dtype": torch.float32}
    return (
        t.new_empty(B, N, dtype=torch.int64),
        t.new_empty(B, N, **f32),
        t.new_empty(B, N, **f32),
        t.new_empty(B, N, dtype=torch.bool),
        t.new_empty(B, dtype=torch.int64),
        t.new_empty(B, N, **f32),
    )


_define("token_stats", _token_stats, _token_stats_fake)
_define("xflow_step_", _xflow_step_, _xflow_step_fake)


# --------------------------------------------------------------------------------------------
# SPEC 5: the body's RMSNorm, RoPE and SwiGLU
# --------------------------------------------------------------------------------------------


def _rms_norm(x: Tensor, weight: Tensor, eps: float, backend: str) -> Tensor:
    """RMSNorm(x; weight) (SPEC 5) for contiguous x (..., d), weight (d,), on the backend called ``backend``."""
    return backends.get(backend).rms_norm(x, weight, eps, None)[1]


def _rms_norm_fake(x, weight, eps, backend):
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))


def _add_rms_norm(x: Tensor, update: Tensor, weight: Tensor, eps: float, backend: str) -> tuple[Tensor, Tensor]:
    """(x + update, RMSNorm(x + update; weight)) (SPEC 5, the residual add fused), on the backend called ``backend``."""
    summed, normed = backends.get(backend).rms_norm(x, weight, eps, update)
    return summed, normed


def _add_rms_norm_fake(x, update, weight, eps, backend):
    return x.new_empty(x.shape), x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))


def _rms_norm_grads(y: Tensor, weight: Tensor, eps: float, grad: Tensor, weight_grad: bool):
    """The gradients of RMSNorm(y; weight) in y and weight for the output gradient ``grad``.

    n = y r (in the compute dtype, cast back), r = rsqrt(mean(y^2) + eps); out = n w:
    dL/dy = r (g_n - y r^2 mean(g_n y)), g_n = g w; dL/dw = sum over rows of g n.
    """
    dtype = reference.compute_dtype(y)
    yc = y.to(dtype)
    r = yc.pow(2).mean(-1, keepdim=True).add(eps).rsqrt()
    g_n = (grad * weight).to(dtype)
    g_y = r * (g_n - yc * (r * r) * (g_n * yc).mean(-1, keepdim=True))
    g_w = None
    if weight_grad:
        g_w = (grad * (yc * r).to(y.dtype)).reshape(-1, y.shape[-1]).sum(0).to(weight.dtype)
    return g_y.to(y.dtype), g_w


def _rms_norm_setup(ctx, inputs, output) -> None:
    x, weight, eps, _backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _rms_norm_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    g_x, g_w = _rms_norm_grads(x, weight, ctx.eps, grad, ctx.needs_input_grad[1])
    return g_x, g_w, None, None


def _add_rms_norm_setup(ctx, inputs, output) -> None:
    _x, _update, weight, eps, _backend = inputs
    ctx.save_for_backward(output[0], weight)
    ctx.eps = eps


def _add_rms_norm_backward(ctx, grad_summed, grad_normed):
    summed, weight = ctx.saved_tensors
    g_s, g_w = _rms_norm_grads(summed, weight, ctx.eps, grad_normed, ctx.needs_input_grad[2])
    g_s = g_s + grad_summed
    return g_s, g_s, g_w, None, None


_define("rms_norm", _rms_norm, _rms_norm_fake, _rms_norm_backward, _rms_norm_setup)
_define("add_rms_norm", _add_rms_norm, _add_rms_norm_fake, _add_rms_norm_backward, _add_rms_norm_setup)


def _tables(cos: Tensor | None, sin_rot: Tensor | None) -> tuple[Tensor, Tensor] | None:
    return None if cos is None else (cos, sin_rot)


def _rope(x: Tensor, theta: float, cos: Tensor | None, sin_rot: Tensor | None, backend: str) -> Tensor:
    """RoPE (SPEC 5) of x (B, L, H, hd), positions 0..L-1, as a new tensor, on the backend called ``backend``.

    cos, sin_rot: ``reference.rope_tables``' (both or neither), read by the reference only.
    """
    out = x.clone()
    backends.get(backend).rope_(out, theta, _tables(cos, sin_rot))
    return out


def _rope_fake(x, theta, cos, sin_rot, backend):
    return torch.empty_like(x)


def _rope_(x: Tensor, theta: float, cos: Tensor | None, sin_rot: Tensor | None, backend: str) -> None:
    """RoPE (SPEC 5) of x (B, L, H, hd) in place (last dimension dense), on the backend called ``backend``."""
    backends.get(backend).rope_(x, theta, _tables(cos, sin_rot))


def _rope__fake(x, theta, cos, sin_rot, backend):
    return None


def _rope_setup(ctx, inputs, output) -> None:
    x, theta, cos, sin_rot, _backend = inputs
    ctx.save_for_backward(cos, sin_rot)
    ctx.theta, ctx.shape, ctx.dtype = theta, x.shape, x.dtype


def _rope_backward(ctx, grad):
    """u' = u cos + roll(u, hd/2) sin_rot, so dL/du = g cos + roll(g sin_rot, -hd/2), in the compute dtype."""
    cos, sin_rot = ctx.saved_tensors
    hd, dtype = ctx.shape[-1], reference.compute_dtype(grad)
    if cos is None:
        positions = torch.arange(ctx.shape[1], device=grad.device)
        cos, sin_rot = reference.rope_tables(positions, hd, ctx.theta, dtype)
    g = grad.to(dtype)
    g_x = g * cos + (g * sin_rot).roll(-(hd // 2), dims=-1)
    return g_x.to(ctx.dtype), None, None, None, None


_define("rope", _rope, _rope_fake, _rope_backward, _rope_setup)
_define("rope_", _rope_, _rope__fake)


def _swiglu(gate: Tensor, up: Tensor, backend: str) -> Tensor:
    """SiLU(gate) * up (SPEC 5) for gate, up (rows, n), stride(1) == 1: a new contiguous tensor."""
    return backends.get(backend).swiglu(gate, up)


def _swiglu_fake(gate, up, backend):
    return gate.new_empty(gate.shape)


def _swiglu_setup(ctx, inputs, output) -> None:
    gate, up, _backend = inputs
    ctx.save_for_backward(gate, up)


def _swiglu_backward(ctx, grad):
    """eager autograd's own formula for F.silu(gate) * up: silu_backward(g up, gate) and g SiLU(gate)."""
    gate, up = ctx.saved_tensors
    g_gate = torch.ops.aten.silu_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
    g_up = grad * F.silu(gate) if ctx.needs_input_grad[1] else None
    return g_gate, g_up, None


_define("swiglu", _swiglu, _swiglu_fake, _swiglu_backward, _swiglu_setup)


# --------------------------------------------------------------------------------------------
# SPEC 8: a cached step's attention
# --------------------------------------------------------------------------------------------


def _cached_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    keys: Tensor,
    values: Tensor,
    positions: Tensor,
    write: Tensor | None,
    bias: Tensor | None,
) -> Tensor:
    """S's k, v written into a layer's cache at ``positions``, then S's q attending over all L cached keys (SPEC 8).

    q (B, H, n, hd), k, v (B, H_kv, n, hd) (after RoPE); keys, values (B, L, H_kv, hd): the layer's cache,
    written in place (a scatter at ``positions`` (B, n) int64; where ``write`` (B, n) bool is False the
    cache keeps its own K, V there); kv head g serves query heads g*r .. g*r + r - 1 (``repeat_interleave``);
    bidirectional attention, scale 1/sqrt(hd), plus ``bias`` (B, 1, 1, L), the padding mask over the cache.
    Returns the merged heads (B, n, H hd).
    """
    B, H, n, hd = q.shape
    index = positions[:, :, None, None].expand(-1, -1, *keys.shape[2:])
    k, v = k.transpose(1, 2), v.transpose(1, 2)
    if write is not None:  # entries that only query keep the cache's K, V
        keep = ~write[:, :, None, None]
        k, v = torch.where(keep, keys.gather(1, index), k), torch.where(keep, values.gather(1, index), v)
    keys.scatter_(1, index, k)
    values.scatter_(1, index, v)
    k, v = keys.transpose(1, 2), values.transpose(1, 2)
    repeats = H // k.shape[1]
    if repeats > 1:
        k, v = k.repeat_interleave(repeats, dim=1), v.repeat_interleave(repeats, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=False, scale=1.0 / math.sqrt(hd))
    return out.transpose(1, 2).reshape(B, n, H * hd)


def _cached_attention_fake(q, k, v, keys, values, positions, write, bias):
    B, H, n, hd = q.shape
    return q.new_empty(B, n, H * hd)


_define("cached_attention", _cached_attention, _cached_attention_fake)
