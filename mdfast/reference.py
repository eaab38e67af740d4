"""The oracle: one plain-PyTorch function per formula of SPEC.md.

Every backend (C++, CUDA, Triton) is tested against these functions evaluated in float64, and the
``"torch"`` backend runs them as they are. Each function computes in the dtype its inputs promote
to, never below float32: pass float64 tensors to evaluate SPEC exactly enough to test a kernel.
This module imports nothing of mdfast; the section numbers below are SPEC.md's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "compute_dtype",
    "draw_action",
    "draw_log_prob",
    "entropy_full",
    "entropy_topk",
    "expected_action",
    "flow_update",
    "hard_commit",
    "heuristic_action",
    "kummer_1f1",
    "policy_state",
    "reedit",
    "rms_norm",
    "rope",
    "rope_inv_freq",
    "rope_tables",
    "sample_action",
    "sample_draw",
    "step_policy",
    "swiglu",
    "token_stats",
    "top_k",
    "xflow_step",
]


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float32, or float64 when any input is float64 ("all per-token math in float32", SPEC)."""
    dtype = torch.float32
    for x in tensors:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


# --------------------------------------------------------------------------------------------
# SPEC 1. Token statistics
# --------------------------------------------------------------------------------------------


def top_k(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest logits of each row and their ids, descending, ties broken by smaller index.

    SPEC 1: "top-k: the k largest p, descending, ties broken by smaller index". p is monotone in
    z, so ranking the logits ranks the probabilities, and stays exact where two tiny
    probabilities round to the same float.

    ``torch.topk`` returns the right values but leaves the order of equal values unspecified, so
    rows whose k+1 largest values hold a tie are ranked again with a stable sort.
    """
    width = min(k + 1, logits.shape[-1])
    values, ids = torch.topk(logits, width, dim=-1)
    tied = (values[..., 1:] == values[..., :-1]).any(-1)
    if bool(tied.any()):
        rows = tied.nonzero(as_tuple=True)
        ids[rows] = torch.sort(logits[rows], dim=-1, descending=True, stable=True).indices[..., :width]
        values[rows] = logits[rows].gather(-1, ids[rows])
    return values[..., :k], ids[..., :k]


def entropy_topk(topk_probs: Tensor) -> Tensor:
    """H_k = -(1/log k) * sum_{j<=k} q_j log q_j,  q_j = p(j) / sum_{i<=k} p(i)  (0 log 0 = 0)."""
    k = topk_probs.shape[-1]
    q = topk_probs / topk_probs.sum(-1, keepdim=True)
    q_log_q = torch.where(q > 0, q * torch.log(q), torch.zeros_like(q))
    return -q_log_q.sum(-1) / math.log(k)


def entropy_full(logits: Tensor) -> Tensor:
    """H_full = lse - sum_v p_v z_v  (entries with z_v = -inf have p_v = 0 and add nothing).

    Evaluated as log s - sum_v p_v (z_v - m), m = max z, s = sum_v exp(z_v - m): the same value
    (lse = m + log s, sum p = 1) without subtracting two numbers of size |z|, which at |z| ~ 1e38
    loses all of H_full even in float64.
    """
    shifted = logits - logits.amax(-1, keepdim=True)
    e = torch.exp(shifted)
    total = e.sum(-1, keepdim=True)
    p_z = torch.where(torch.isneginf(shifted), torch.zeros_like(e), e / total * shifted)  # -inf: p = 0
    return torch.log(total).squeeze(-1) - p_z.sum(-1)


def token_stats(logits: Tensor, k: int = 4, full_entropy: bool = False) -> dict[str, Tensor | None]:
    """SPEC 1, per row z of ``logits`` (..., V).

    lse = log sum_v exp(z_v); p_v = exp(z_v - lse); argmax x = smallest index among the maximal z;
    the k largest p descending (ties -> smaller index); margin = p(1) - p(2); H_k; optionally
    H_full. Probabilities and entropies come back in float32 (float64 for float64 logits).

    p(j) is evaluated as exp(z(j) - z(1)) / sum_v exp(z_v - z(1)), the same value as exp(z(j) - lse):
    in float32, lse's rounding at large |z| (an ulp of 4e-6 at |z| ~ 50) would otherwise be a
    relative error of p, e.g. c = 1 instead of 1 - 2e-6.
    """
    z = logits.to(compute_dtype(logits))
    lse = torch.logsumexp(z, dim=-1)
    top_logits, topk_ids = top_k(z, k)
    top = top_logits[..., :1]
    topk_probs = torch.exp(top_logits - top) / torch.exp(z - top).sum(-1, keepdim=True)
    return {
        "argmax": topk_ids[..., 0].clone(),
        "topk_probs": topk_probs,
        "topk_ids": topk_ids,
        "lse": lse,
        "margin": topk_probs[..., 0] - topk_probs[..., 1],
        "entropy_topk": entropy_topk(topk_probs),
        "entropy_full": entropy_full(z) if full_entropy else None,
    }


# --------------------------------------------------------------------------------------------
# SPEC 2. x-prediction flow step
# --------------------------------------------------------------------------------------------


def policy_state(topk_probs: Tensor, entropy_topk: Tensor, margin: Tensor, t: Tensor, rho: Tensor | float) -> Tensor:
    """SPEC 2.3, the policy state: s_i = [p(1), p(2), p(3), p(4), H_4, margin, t_i, rho], in this order.

    k = 4 gives the 8-wide state, another k gives [p(1..k), H_k, margin, t_i, rho].
    ``rho`` = l / max(T - 1, 1) is a number, or a tensor () or (B,) with one value per sequence.
    """
    dtype = compute_dtype(topk_probs, t)
    rho = torch.as_tensor(rho, dtype=dtype, device=t.device)
    if rho.dim() == 1:
        rho = rho.unsqueeze(-1)
    columns = [
        topk_probs,
        entropy_topk.unsqueeze(-1),
        margin.unsqueeze(-1),
        t.unsqueeze(-1),
        rho.expand(t.shape).unsqueeze(-1),
    ]
    return torch.cat([c.to(dtype) for c in columns], dim=-1)


def step_policy(policy, state: Tensor) -> tuple[Tensor, Tensor]:
    """SPEC 2.4, the step policy: (alpha, beta) of the Beta law of each state.

    ``policy`` is any module with ``fc1``, ``fc2``, ``mu_head``, ``kappa_head`` (``nn.Linear``) and
    ``kappa_min``, ``kappa_max``:

        h = SiLU(W2 SiLU(W1 s + b1) + b2)
        mu = 0.05 + 0.9 sigmoid(w_mu.h + b_mu);  kappa = kmin + (kmax - kmin) sigmoid(w_k.h + b_k)
        alpha = mu kappa,  beta = (1 - mu) kappa

    Evaluated in the dtype of ``state`` (the weights are cast to it), so it stays differentiable.
    """

    def linear(layer, x):
        return F.linear(x, layer.weight.to(x.dtype), layer.bias.to(x.dtype))

    h = F.silu(linear(policy.fc2, F.silu(linear(policy.fc1, state))))
    mu = 0.05 + 0.9 * torch.sigmoid(linear(policy.mu_head, h).squeeze(-1))
    kappa = policy.kappa_min + (policy.kappa_max - policy.kappa_min) * torch.sigmoid(
        linear(policy.kappa_head, h).squeeze(-1)
    )
    return mu * kappa, (1 - mu) * kappa


def kummer_1f1(a: Tensor, b: Tensor, z: float, max_terms: int = 1000) -> Tensor:
    """Kummer's confluent hypergeometric series 1F1(a; b; z) = sum_n (a)_n / (b)_n z^n / n!.

    Summed term by term, term_{n+1} = term_n (a + n) / (b + n) z / (n + 1), until every term
    falls below the dtype's resolution of the partial sum (all terms are positive for a, b, z > 0).
    A NaN or infinite argument gives a NaN or infinite sum, like every other formula here (it is
    not a failure to converge).
    """
    term = torch.ones_like(a)
    total = torch.ones_like(a)
    eps = torch.finfo(a.dtype).eps
    for n in range(max_terms):
        term = term * (a + n) / (b + n) * (z / (n + 1))
        total = total + term
        if bool(((term <= eps * total) | ~torch.isfinite(total)).all()):
            return total
    raise RuntimeError(f"kummer_1f1: series did not converge in {max_terms} terms (z={z})")


def expected_action(alpha: Tensor, beta: Tensor, a_min: float, a_max: float) -> Tensor:
    """SPEC 2.5, deterministic action: a = E[a_min 2^(y L)] = a_min * 1F1(alpha; alpha+beta; L ln 2).

    L = log2(a_max / a_min); the action is clamped to [a_min, a_max].
    """
    z = math.log(a_max / a_min)  # = L ln 2
    return (a_min * kummer_1f1(alpha, alpha + beta, z)).clamp(a_min, a_max)


def sample_draw(
    alpha: Tensor, beta: Tensor, generator: torch.Generator | list[torch.Generator] | None = None
) -> Tensor:
    """SPEC 2.5, sampling: y ~ Beta(alpha, beta), the first coordinate of Dirichlet(alpha, beta).

    Drawn with ``generator``, so the same generator state gives the same draws in every backend
    (they all sample through here). y carries no autograd graph (a draw, not a reparameterisation).

    - generator: one torch.Generator for every draw, or a list of B generators, one per sequence
      (alpha (B, ...)): sequence b's draws then come from generator b alone, whatever the batch.
    """
    concentration = torch.stack([alpha, beta], dim=-1).detach()
    if isinstance(generator, (list, tuple)):
        rows = [torch._sample_dirichlet(c, generator=g) for c, g in zip(concentration, generator, strict=True)]
        return torch.stack(rows)[..., 0]
    return torch._sample_dirichlet(concentration, generator=generator)[..., 0]


def draw_action(y: Tensor, a_min: float, a_max: float) -> Tensor:
    """SPEC 2.5: a = a_min * 2^(y L), L = log2(a_max / a_min), for draws y in [0, 1]."""
    return a_min * torch.exp2(y * math.log2(a_max / a_min))


def draw_log_prob(alpha: Tensor, beta: Tensor, y: Tensor) -> Tensor:
    """SPEC 2.5: log pi(y) = log Beta(y; alpha, beta), differentiable in alpha and beta.

    The log-scale map a(y) has a Jacobian that cancels in every ratio of two policies' densities.
    """
    return torch.distributions.Beta(alpha, beta, validate_args=False).log_prob(y)


def sample_action(
    alpha: Tensor, beta: Tensor, a_min: float, a_max: float, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """SPEC 2.5, sampling: y ~ Beta(alpha, beta); a = a_min * 2^(y L); returns (a, log pi(y)).

    ``sample_draw``, ``draw_action``, ``draw_log_prob`` in turn. log pi(y) keeps its graph to alpha
    and beta (for policy-gradient training); y does not.
    """
    y = sample_draw(alpha, beta, generator)
    return draw_action(y, a_min, a_max), draw_log_prob(alpha, beta, y)


def heuristic_action(confidence: Tensor, a_min: float, a_max: float) -> Tensor:
    """SPEC 2, the default policy without trained weights: a = a_min^(1 - c) * a_max^c."""
    return a_min ** (1 - confidence) * a_max**confidence


def flow_update(X: Tensor, t: Tensor, target: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
    """SPEC 2.6, the flow update: X_i += (E[x_pred_i] - X_i) * a_i ;  t_i += a_i (1 - t_i)."""
    return X + (target - X) * action.unsqueeze(-1), t + action * (1 - t)


def reedit(confidence: Tensor, target: Tensor, mask_embedding: Tensor) -> tuple[Tensor, Tensor]:
    """SPEC 2.6, re-edit: X_i = c_i * E[x_pred_i] + (1 - c_i) * m and t_i = c_i."""
    c = confidence.unsqueeze(-1)
    return c * target + (1 - c) * mask_embedding, confidence


def hard_commit(
    X: Tensor, t: Tensor, target: Tensor, confidence: Tensor, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """SPEC 2.7, hard commit: among a sequence's tokens with t_i < threshold, the most confident is committed.

    The one with the largest c_i (smallest index on ties) gets X_i = E[x_pred_i], t_i = 1. Returns
    (X, t, committed), where committed (B,) is that token's index, or -1 when every t_i >= threshold.
    """
    still_open = t < threshold
    score = torch.where(still_open, confidence, torch.full_like(confidence, -1.0))
    best = score.argmax(-1)  # first maximum: smallest index on ties
    committed = torch.where(still_open.any(-1), best, torch.full_like(best, -1))
    chosen = torch.arange(t.shape[-1], device=t.device) == committed.unsqueeze(-1)
    X = torch.where(chosen.unsqueeze(-1), target, X)
    t = torch.where(chosen, torch.ones_like(t), t)
    return X, t, committed


def xflow_step(
    logits: Tensor,
    X: Tensor,
    t: Tensor,
    embedding: Tensor,
    mask_embedding: Tensor,
    policy=None,
    rho: Tensor | float = 0.0,
    *,
    a_min: float = 1 / 256,
    a_max: float = 1.0,
    reedit_margin: float = 0.1,
    commit_threshold: float = 0.99,
    k: int = 4,
    action: Tensor | None = None,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor | None]:
    """One x-prediction flow step, SPEC 2.2-2.7, for logits (B, N, V), X (B, N, E), t (B, N).

    The action comes from ``action`` when given, else from ``policy`` (its Beta mean through
    Kummer's series, or a draw when ``sample``), else from the heuristic a_min^(1-c) a_max^c.
    Re-edit uses t before this step's update; the commit follows the update.
    """
    dtype = compute_dtype(logits, X)
    stats = token_stats(logits, k)
    x_pred = stats["argmax"]
    c = stats["topk_probs"][..., 0]
    X, t = X.to(dtype), t.to(dtype)
    log_prob = None
    if action is None:
        if policy is None:
            if sample:
                raise ValueError("sample=True needs a policy: the heuristic action is deterministic")
            action = heuristic_action(c, a_min, a_max)
        else:
            state = policy_state(stats["topk_probs"], stats["entropy_topk"], stats["margin"], t, rho)
            alpha, beta = step_policy(policy, state)
            if sample:
                action, log_prob = sample_action(alpha, beta, a_min, a_max, generator)
            else:
                action = expected_action(alpha, beta, a_min, a_max)
    action = action.to(dtype)
    target = embedding[x_pred].to(dtype)
    mask = mask_embedding.to(dtype)

    reedited = (c - t) < -reedit_margin
    X_flow, t_flow = flow_update(X, t, target, action)
    X_edit, t_edit = reedit(c, target, mask)
    X_new = torch.where(reedited.unsqueeze(-1), X_edit, X_flow)
    t_new = torch.where(reedited, t_edit, t_flow)
    X_new, t_new, committed = hard_commit(X_new, t_new, target, c, commit_threshold)
    return {
        "X": X_new,
        "t": t_new,
        "tokens": x_pred,
        "confidence": c,
        "action": action,
        "reedited": reedited,
        "committed": committed,
        "log_prob": log_prob,
        "lse": stats["lse"],
    }


# --------------------------------------------------------------------------------------------
# SPEC 5. The LLaDA body: the pieces the fused kernels implement
# --------------------------------------------------------------------------------------------


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm(x; w): y = x in float32 times rsqrt(mean(y^2 over d) + eps), cast back to x's dtype, times w."""
    y = x.to(compute_dtype(x))
    y = y * y.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()  # in place on the (..., 1) mean: same bits
    return y.to(x.dtype) * weight


def rope_inv_freq(head_dim: int, theta: float, device=None, dtype=torch.float32) -> Tensor:
    """RoPE's inv_freq_j = theta^(-2j/hd) for j < hd/2, evaluated as 1 / theta^(2j/hd).

    That is how LLaDA's remote code evaluates it (the two can differ in the last bit in float32).
    """
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)


def rope_tables(
    positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    """RoPE's tables (cos, sin_rot) at ``positions`` (any shape S): each (*S, 1, hd) in ``dtype``.

    SPEC 5: angles a = pos * inv_freq repeated twice (cat(a, a)), inv_freq as ``rope_inv_freq``;
    cos = cos(cat(a, a)), sin_rot = cat(-sin a, sin a) (the sign of rot(u) = cat(-u[hd/2:], u[:hd/2])
    moved into the table, exact). The 1 broadcasts over the heads. ``rope`` (positions 0..L-1) and
    ``llada_cache.rope_at_`` (given positions) both build them here, so the same position gets the same bits.
    """
    angles = positions.to(dtype).unsqueeze(-1) * rope_inv_freq(head_dim, theta, positions.device, dtype)
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(-2)
    sin_rot = torch.sin(angles)
    sin_rot[..., : head_dim // 2].neg_()
    return torch.cos(angles), sin_rot


def rope(x: Tensor, theta: float, tables: tuple[Tensor, Tensor] | None = None, *, out: Tensor | None = None) -> Tensor:
    """RoPE on x (B, L, H, hd), positions 0..L-1: u' = u cos + rot(u) sin, rot(u) = cat(-u[hd/2:], u[:hd/2]).

    In float32 (float64 for float64 x), cast back: inv_freq_j = theta^(-2j/hd) for j < hd/2, angles
    a = pos * inv_freq repeated twice (cat(a, a)). Evaluated as u cos + roll(u, hd/2) sin_rot with
    sin_rot = cat(-sin a, sin a): the same products and sums, so the same bits.

    - tables: (cos, sin_rot) from ``rope_tables`` in that dtype, (L, 1, hd) or (B, L, 1, hd), to share
      across calls (default: built here from positions 0..L-1).
    - out: a tensor of x's shape to write u' into, x itself for RoPE in place (x is read first), and
      returned (default: a new tensor).
    """
    hd = x.shape[-1]
    dtype = compute_dtype(x)
    if tables is None:
        tables = rope_tables(torch.arange(x.shape[1], device=x.device), hd, theta, dtype)
    cos, sin_rot = tables
    u = x.to(dtype)
    product, rotated = u * cos, u.roll(hd // 2, dims=-1).mul_(sin_rot)
    if out is None:
        return product.add_(rotated).to(x.dtype)
    if out.dtype == dtype and not (torch.is_grad_enabled() and (u.requires_grad or out.requires_grad)):
        return torch.add(product, rotated, out=out)  # no temporary (out= has no autograd)
    return out.copy_(product.add_(rotated))


def swiglu(gate: Tensor, up: Tensor) -> Tensor:
    """SiLU(ff_proj h) * up_proj h, each product rounded to the inputs' dtype as eager torch does."""
    return F.silu(gate) * up
