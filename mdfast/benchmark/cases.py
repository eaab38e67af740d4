"""What a benchmark times: one ``Case`` per operation and shape, its call per backend and the copy beside it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import mdfast
from mdfast import ops, reference

__all__ = [
    "CPU_SHAPES",
    "DTYPES",
    "GPU_SHAPES",
    "Case",
    "body_cases",
    "default_backends",
    "probe_backend",
    "random_policy",
    "step_cases",
]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (B, N, V, E) of step_cases: the defaults of `mdfast bench` per device
CPU_SHAPES = [(1, 256, 32000, 1024), (1, 64, 126464, 4096)]
GPU_SHAPES = [(1, 512, 126464, 4096), (8, 512, 126464, 4096), (1, 2048, 152064, 3584), (1, 64, 157184, 2048)]


@dataclass
class Case:
    """One operation at one shape: a call per backend, the bytes it must move, and the copy beside it.

    - copy, copy_bytes: a device-to-device copy and the bytes it moves (read plus write).
    - runs: backend name -> a call of the operation.
    - reference: (function, arguments) that ``torch.compile`` compiles for the compiled baseline, if any.
    """

    op: str
    shape: str
    dtype: str
    variant: str
    nbytes: int
    copy: Callable[[], object]
    copy_bytes: int
    runs: dict[str, Callable[[], object]]
    reference: tuple[Callable, tuple] | None = None


def probe_backend(name: str, device: torch.device) -> str | None:
    """None where backend ``name`` runs on ``device``, else why not.

    One tiny token_stats call through the public API, which builds a compiled backend on first use.
    """
    try:
        mdfast.token_stats(torch.randn(1, 2, 8, device=device), 2, backend=name, check_finite=False)
    except (RuntimeError, ValueError, TypeError) as error:
        return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return None


def default_backends(device: torch.device) -> list[str]:
    """The torch reference plus the device's kernel backends: Triton and CUDA on a GPU, the C++ one on the CPU.

    Only those are probed, so a GPU machine never builds the CPU extension.
    """
    return ["torch", *(("triton", "cuda") if device.type == "cuda" else ("cpu",))]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _copy_of(x: torch.Tensor) -> tuple[Callable[[], object], int]:
    """A device-to-device copy of as many bytes as ``x`` holds (contiguous), and its bytes moved."""
    source = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
    target = torch.empty_like(source)
    return (lambda: target.copy_(source)), 2 * source.numel() * source.element_size()


def random_policy(device: torch.device, seed: int = 0) -> mdfast.StepPolicy:
    """A StepPolicy with weights spread enough to cover the kappa range (not its near-zero init)."""
    generator = torch.Generator().manual_seed(seed)
    policy = mdfast.StepPolicy()
    with torch.no_grad():
        for p in policy.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return policy.to(device)


def step_cases(B, N, V, E, dtype, device, backends, policies=("heuristic", "random")) -> list[Case]:
    """token_stats (k = 4) and xflow_step per policy kind at logits (B, N, V), X (B, N, E)."""
    logits = (torch.randn(B, N, V, device=device) * 3).to(dtype)
    X = torch.randn(B, N, E, device=device)
    t = torch.rand(B, N, device=device)
    embedding = torch.randn(V, E, device=device).to(dtype)
    mask_embedding = torch.randn(E, device=device)
    rho = torch.full((B,), 0.5, device=device)
    shape, name = f"{B}x{N}x{V}x{E}", _dtype_name(dtype)
    logits_bytes = logits.numel() * logits.element_size()
    copy, copy_bytes = _copy_of(logits)
    cases = [
        Case(
            "token_stats",
            shape,
            name,
            "k=4",
            logits_bytes,
            copy,
            copy_bytes,
            {b: (lambda b=b: mdfast.token_stats(logits, 4, backend=b, check_finite=False)) for b in backends},
            (reference.token_stats, (logits, 4)),
        )
    ]
    # the logits read once; X read and written, t read and written, the gathered embedding rows
    step_bytes = logits_bytes + B * N * (2 * E * 4 + 2 * 4 + E * embedding.element_size())
    for kind in policies:
        policy = random_policy(device) if kind == "random" else None
        runs = {
            b: (
                lambda b=b, policy=policy: mdfast.xflow_step(
                    logits, X, t, embedding, mask_embedding, policy, rho, backend=b, check_finite=False
                )
            )
            for b in backends
        }
        compile_args = (logits, X, t, embedding, mask_embedding, policy, rho)
        cases.append(
            Case(
                "xflow_step",
                shape,
                name,
                kind,
                step_bytes,
                copy,
                copy_bytes,
                runs,
                (reference.xflow_step, compile_args),
            )
        )
    return cases


def body_cases(B, L, d, heads, F, dtype, device, backends) -> list[Case]:
    """The LLaDA body kernels at batch B, L tokens, width d, ``heads`` heads, MLP width F.

    RMSNorm alone and fused with the residual add, RoPE in place on the q heads of a fused qkv
    product (strided), SwiGLU on the two halves of a fused gate/up product (strided). Backends:
    "triton", "torch" (the body kernels have no other).
    """
    backends = [b for b in backends if b in ("triton", "torch")]
    name = _dtype_name(dtype)
    x = torch.randn(B, L, d, device=device).to(dtype)
    update = torch.randn(B, L, d, device=device).to(dtype)
    weight = (1 + 0.1 * torch.randn(d, device=device)).to(dtype)
    x_bytes = x.numel() * x.element_size()
    copy_x, copy_x_bytes = _copy_of(x)
    qkv = torch.randn(B, L, 3 * d, device=device).to(dtype)
    q = qkv[..., :d].unflatten(-1, (heads, d // heads))
    gate_up = torch.randn(B, L, 2 * F, device=device).to(dtype)
    gate, up = gate_up[..., :F], gate_up[..., F:]
    copy_gate, copy_gate_bytes = _copy_of(gate)
    return [
        Case(
            "rms_norm",
            f"{B}x{L}x{d}",
            name,
            "plain",
            2 * x_bytes,
            copy_x,
            copy_x_bytes,
            {b: (lambda b=b: ops.rms_norm(x, weight, 1e-5, backend=b)) for b in backends},
        ),
        Case(
            "rms_norm",
            f"{B}x{L}x{d}",
            name,
            "+ residual",
            4 * x_bytes,  # x and update read, sum and norm written
            copy_x,
            copy_x_bytes,
            {b: (lambda b=b: ops.rms_norm(x, weight, 1e-5, update=update, backend=b)) for b in backends},
        ),
        Case(
            "rope_",
            f"{B}x{L}x{heads}x{d // heads}",
            name,
            "q of fused qkv",
            2 * x_bytes,  # the q heads read and written in place
            copy_x,
            copy_x_bytes,
            {b: (lambda b=b: ops.rope_(q, 500000.0, backend=b)) for b in backends},
        ),
        Case(
            "swiglu",
            f"{B}x{L}x{F}",
            name,
            "halves of gate/up",
            3 * gate.numel() * gate.element_size(),
            copy_gate,
            copy_gate_bytes,
            {b: (lambda b=b: ops.swiglu(gate, up, backend=b)) for b in backends},
        ),
    ]
