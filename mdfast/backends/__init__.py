"""The implementations behind ``mdfast.ops``, one ``Backend`` object per name.

    torch   the plain-PyTorch reference (``mdfast/reference.py``), any device, any float dtype
    cpu     C++ (``csrc/cpu``, rows over torch's inter-op pool), compiled with ninja on first use
    cuda    CUDA C++ (``csrc/cuda``), compiled with ninja on first use
    triton  Triton kernels (``triton_kernels/``, installed as ``mdfast.triton_kernels``)

``mdfast.ops`` validates every input, picks the backend and lays the tensors out; a backend trusts
them and returns plain dicts of tensors named like the fields of ``TokenStats`` and ``XFlowStep``.
Every backend has the same methods, with the signatures of the compiled extension and of
``mdfast.backends.triton`` (csrc/ops.h states the contract): ``token_stats``, ``xflow_step`` (its
inputs in one ``StepInputs``, its scalars in one ``StepScalars``), and, on the torch and Triton
backends, the LLaDA body's ``rms_norm``, ``rope_`` and ``swiglu``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .. import reference
from . import native
from .contract import (
    KERNEL_LOGITS_DTYPES,
    TOKEN_STATS_FIELDS,
    XFLOW_FIELDS,
    GivenStats,
    PolicyLayout,
    StepInputs,
    StepScalars,
)

__all__ = ["NAMES", "Backend", "GivenStats", "KernelBackend", "StepInputs", "StepScalars", "available", "get"]

NAMES = ("torch", "cpu", "cuda", "triton")


class Backend:
    """One implementation of the ops.

    name: one of NAMES; device_type: "cpu", "cuda" or None (any device); logits_dtypes: the dtypes it
    reads; body_ops: whether it has the LLaDA body's ``rms_norm``, ``rope_`` and ``swiglu``.
    """

    name: str
    device_type: str | None
    logits_dtypes: tuple[torch.dtype, ...]
    body_ops: bool

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else why it cannot."""
        raise NotImplementedError

    def token_stats(self, logits: Tensor, k: int, full_entropy: bool) -> dict[str, Tensor | None]:
        """SPEC 1 over logits (B, N, V), stride(2) == 1."""
        raise NotImplementedError

    def xflow_step(self, inputs: StepInputs) -> dict[str, Tensor]:
        """SPEC 2.2-2.7, csrc/ops.h ``xflow_step``."""
        raise NotImplementedError

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float, update: Tensor | None) -> tuple[Tensor | None, Tensor]:
        """(x + update or None, RMSNorm(x + update; weight)) for contiguous x, update (..., d) (SPEC 5)."""
        raise NotImplementedError

    def rope_(self, x: Tensor, theta: float, tables: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """RoPE on x (B, L, H, hd), last dimension dense, in place; returns x (SPEC 5).

        tables: (cos, sin) checked by ``ops.rope_``, or None (a backend that computes its angles ignores them).
        """
        raise NotImplementedError

    def swiglu(self, gate: Tensor, up: Tensor) -> Tensor:
        """SiLU(gate) * up for gate, up (rows, n) with stride(1) == 1: a new contiguous tensor (SPEC 5)."""
        raise NotImplementedError


class TorchBackend(Backend):
    """The reference itself in eager PyTorch, in float32 (float64 for float64 logits).

    Differentiable where the reference is (the body ops).
    """

    name, device_type, body_ops = "torch", None, True
    logits_dtypes = (*KERNEL_LOGITS_DTYPES, torch.float64)

    def unavailable_reason(self) -> str | None:
        return None

    def token_stats(self, logits, k, full_entropy):
        stats = reference.token_stats(logits, k, full_entropy)
        return {name: _as_float32(value) for name, value in stats.items()}

    def xflow_step(self, inputs):
        # The statistics are computed again (given or not): the reference is one function.
        scalars, policy = inputs.scalars, None
        if inputs.policy_weights is not None:
            layout = PolicyLayout(scalars.hidden, scalars.k)
            policy = layout.unpack(inputs.policy_weights, scalars.kappa_min, scalars.kappa_max)
        with torch.no_grad():  # inference: the policy's weights carry no graph into the state
            out = reference.xflow_step(
                inputs.logits,
                inputs.X,
                inputs.t,
                inputs.embedding,
                inputs.mask_embedding,
                policy,
                inputs.rho,
                a_min=scalars.a_min,
                a_max=scalars.a_max,
                reedit_margin=scalars.reedit_margin,
                commit_threshold=scalars.commit_threshold,
                k=scalars.k,
                action=inputs.action,
            )
        # The contract: no write when a row is not finite or the flag is set (decided on the device: no sync).
        write = torch.isfinite(out["lse"]).all()
        if inputs.bad is not None:
            write &= inputs.bad[0] == 0
            inputs.bad.copy_(~write)
        inputs.X_out.copy_(torch.where(write, out["X"], inputs.X))
        inputs.t_out.copy_(torch.where(write, out["t"], inputs.t))
        out["committed"] = torch.where(write, out["committed"], -1)
        return {name: _as_float32(out[name]) for name in XFLOW_FIELDS}

    def rms_norm(self, x, weight, eps, update):
        summed = x + update if update is not None else None
        return summed, reference.rms_norm(x if summed is None else summed, weight, eps)

    def rope_(self, x, theta, tables=None):
        return reference.rope(x, theta, tables, out=x)

    def swiglu(self, gate, up):
        return reference.swiglu(gate, up)


class KernelBackend(Backend):
    """A backend whose kernels are a module with the functions of csrc/ops.h.

    That module is a compiled extension or ``mdfast.backends.triton``; ``load()`` returns it or raises
    with the reason.
    """

    def __init__(self, name: str, device_type: str, load, body_ops: bool = False) -> None:
        self.name, self.device_type, self._load, self.body_ops = name, device_type, load, body_ops
        self.logits_dtypes = KERNEL_LOGITS_DTYPES
        self._kernels = None
        self._reason: str | None = None

    def kernels(self):
        if self._kernels is None and self._reason is None:
            try:
                self._kernels = self._load()
            except Exception as error:  # a missing toolchain or package is a reason, not a crash
                self._reason = str(error) or type(error).__name__
        if self._kernels is None:
            raise RuntimeError(f"mdfast backend {self.name!r} is unavailable: {self._reason}")
        return self._kernels

    def unavailable_reason(self) -> str | None:
        try:
            self.kernels()
        except RuntimeError:
            return self._reason
        return None

    # torch.compile runs it (a first load of the kernels: a lock, files, a compiler) as a constant instead of
    # tracing it: the mark torch.compiler.assume_constant_result sets, without importing torch._dynamo (5 s here)
    unavailable_reason._dynamo_marked_constant = True

    def token_stats(self, logits, k, full_entropy):
        stats = dict(zip(TOKEN_STATS_FIELDS, self.kernels().token_stats(logits, k, full_entropy)))
        if not full_entropy:
            stats["entropy_full"] = None
        return stats

    def xflow_step(self, inputs):
        return dict(zip(XFLOW_FIELDS, self.kernels().xflow_step(inputs)))

    def rms_norm(self, x, weight, eps, update):
        return self.kernels().rms_norm(x, weight, eps, update)

    def rope_(self, x, theta, tables=None):
        return self.kernels().rope_(x, theta)  # the kernel computes its angles itself

    def swiglu(self, gate, up):
        return self.kernels().swiglu(gate, up)


def triton_interpreter() -> bool:
    """TRITON_INTERPRET=1: the Triton kernels run on CPU tensors, under Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _load_triton():
    if not torch.cuda.is_available() and not triton_interpreter():
        raise RuntimeError("no CUDA device (set TRITON_INTERPRET=1 to run the Triton kernels on the CPU)")
    from . import triton  # optional extra: triton

    return triton


def _load_cuda():
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    return native.load(native.CUDA_EXTENSION)


_BACKENDS: dict[str, Backend] = {
    "torch": TorchBackend(),
    "cpu": KernelBackend("cpu", "cpu", lambda: native.load(native.CPU_EXTENSION)),
    "cuda": KernelBackend("cuda", "cuda", _load_cuda),
    "triton": KernelBackend("triton", "cuda", _load_triton, body_ops=True),
}


def get(name: str) -> Backend:
    """The backend called ``name`` (one of NAMES)."""
    if name not in _BACKENDS:
        raise ValueError(f"backend: expected one of {('auto', *NAMES)}, got {name!r}")
    return _BACKENDS[name]


def available() -> dict[str, str | None]:
    """Each backend's name and None where it runs here, else the reason it does not."""
    return {name: backend.unavailable_reason() for name, backend in _BACKENDS.items()}


def _as_float32(value: Tensor | None) -> Tensor | None:
    if value is None or not value.is_floating_point():
        return value
    return value.float()
