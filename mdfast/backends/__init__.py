"""The implementations behind ``mdfast.ops``, one ``Backend`` object per name.

    torch   the plain-PyTorch reference (``mdfast/reference.py``), any device, any float dtype
    cpu     C++ with OpenMP (``csrc/cpu``), compiled with ninja on first use
    cuda    CUDA C++ (``csrc/cuda``), compiled with ninja on first use
    triton  Triton kernels (``triton_kernels/``, installed as ``mdfast.triton_kernels``)

Every backend takes already-validated arguments (``mdfast.ops`` checks them) and returns plain
dicts of tensors named like the fields of ``TokenStats`` and ``XFlowStep``. The compiled and
Triton backends share one calling convention, stated in ``csrc/ops.h``.
"""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import reference
from . import native

__all__ = ["NAMES", "Backend", "XFlowArgs", "available", "get", "resolve"]

NAMES = ("torch", "cpu", "cuda", "triton")

TOKEN_STATS_FIELDS = ("argmax", "topk_probs", "topk_ids", "lse", "margin", "entropy_topk", "entropy_full")
XFLOW_FIELDS = ("tokens", "confidence", "action", "reedited", "committed", "lse")
KERNEL_LOGITS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class XFlowArgs:
    """The validated inputs of one x-flow step, in the order of ``xflow_step`` in csrc/ops.h."""

    logits: Tensor  # (B, N, V), stride(-1) == 1
    X: Tensor  # (B, N, E) float32, contiguous
    t: Tensor  # (B, N) float32, contiguous
    embedding: Tensor  # (V, E), stride(-1) == 1
    mask_embedding: Tensor  # (E,) float32, contiguous
    rho: Tensor  # (B,) float32
    policy: object | None  # a StepPolicy, or None for the heuristic action
    action: Tensor | None  # (B, N) float32: the action to apply instead of the policy's
    a_min: float
    a_max: float
    reedit_margin: float
    commit_threshold: float
    k: int
    kummer_terms: int
    X_out: Tensor  # (B, N, E) float32, may be X
    t_out: Tensor  # (B, N) float32, may be t

    def kernel_arguments(self) -> tuple:
        """The positional arguments of the compiled and Triton ``xflow_step``."""
        policy = self.policy
        weights = policy.packed_weights(self.logits.device) if policy is not None else None
        hidden, kappa_min, kappa_max = (
            (policy.hidden, policy.kappa_min, policy.kappa_max) if policy is not None else (0, 0.0, 0.0)
        )
        return (
            self.logits,
            self.X,
            self.t,
            self.embedding,
            self.mask_embedding,
            self.rho,
            weights,
            hidden,
            kappa_min,
            kappa_max,
            self.action,
            self.a_min,
            self.a_max,
            self.reedit_margin,
            self.commit_threshold,
            self.k,
            self.kummer_terms,
            self.X_out,
            self.t_out,
        )


class Backend:
    """One implementation of the ops. ``device_type`` is "cpu", "cuda" or None (any device)."""

    name: str
    device_type: str | None
    logits_dtypes: tuple[torch.dtype, ...]

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else why it cannot."""
        raise NotImplementedError

    def token_stats(self, logits: Tensor, k: int, full_entropy: bool) -> dict[str, Tensor | None]:
        raise NotImplementedError

    def xflow_step(self, args: XFlowArgs) -> dict[str, Tensor]:
        raise NotImplementedError


class TorchBackend(Backend):
    """The reference itself, in float32 (float64 for float64 logits), eager PyTorch."""

    name, device_type = "torch", None
    logits_dtypes = (*KERNEL_LOGITS_DTYPES, torch.float64)

    def unavailable_reason(self) -> str | None:
        return None

    def token_stats(self, logits, k, full_entropy):
        stats = reference.token_stats(logits, k, full_entropy)
        return {name: _as_float32(value) for name, value in stats.items()}

    def xflow_step(self, args):
        with torch.no_grad():  # inference: the policy's weights carry no graph into the state
            out = reference.xflow_step(
                args.logits,
                args.X,
                args.t,
                args.embedding,
                args.mask_embedding,
                args.policy,
                args.rho,
                a_min=args.a_min,
                a_max=args.a_max,
                reedit_margin=args.reedit_margin,
                commit_threshold=args.commit_threshold,
                k=args.k,
                action=args.action,
            )
        finite = torch.isfinite(out["lse"]).all()  # the contract: no write when a row is not finite
        args.X_out.copy_(torch.where(finite, out["X"], args.X))  # (decided on the device: no sync)
        args.t_out.copy_(torch.where(finite, out["t"], args.t))
        return {name: _as_float32(out[name]) for name in XFLOW_FIELDS}


class KernelBackend(Backend):
    """A backend whose kernels follow csrc/ops.h: the compiled extensions and the Triton kernels."""

    def __init__(self, name: str, device_type: str, load) -> None:
        self.name, self.device_type, self._load = name, device_type, load
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

    def token_stats(self, logits, k, full_entropy):
        values = self.kernels().token_stats(logits, k, full_entropy)
        stats = dict(zip(TOKEN_STATS_FIELDS, values))
        if not full_entropy:
            stats["entropy_full"] = None
        return stats

    def xflow_step(self, args):
        return dict(zip(XFLOW_FIELDS, self.kernels().xflow_step(*args.kernel_arguments())))


def _load_triton():
    if not torch.cuda.is_available() and not _triton_interpreter():
        raise RuntimeError("no CUDA device (set TRITON_INTERPRET=1 to run the Triton kernels on the CPU)")
    token_stats = importlib.import_module("mdfast.triton_kernels.token_stats")
    xflow = importlib.import_module("mdfast.triton_kernels.xflow")
    return _Kernels(token_stats=token_stats.token_stats, xflow_step=xflow.xflow_step)


def _load_cuda():
    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device")
    return native.load(native.CUDA_EXTENSION)


def _triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@dataclass(frozen=True)
class _Kernels:
    token_stats: object
    xflow_step: object


_BACKENDS: dict[str, Backend] = {
    "torch": TorchBackend(),
    "cpu": KernelBackend("cpu", "cpu", lambda: native.load(native.CPU_EXTENSION)),
    "cuda": KernelBackend("cuda", "cuda", _load_cuda),
    "triton": KernelBackend("triton", "cuda", _load_triton),
}


def get(name: str) -> Backend:
    if name not in _BACKENDS:
        raise ValueError(f"backend: expected one of {('auto', *NAMES)}, got {name!r}")
    return _BACKENDS[name]


def available() -> dict[str, str | None]:
    """Each backend's name and None where it runs here, else the reason it does not."""
    return {name: backend.unavailable_reason() for name, backend in _BACKENDS.items()}


_warned: set[str] = set()


def resolve(name: str, device: torch.device, logits_dtype: torch.dtype) -> Backend:
    """The backend for ``name`` on ``device``: "auto" picks Triton, then CUDA, on CUDA tensors and
    the C++ backend on CPU tensors, each only where it runs (else the torch reference, with a
    one-time warning that says why). An explicit name that cannot run raises."""
    if name == "auto":
        if logits_dtype not in KERNEL_LOGITS_DTYPES:
            return _BACKENDS["torch"]
        candidates = ("triton", "cuda") if device.type == "cuda" else ("cpu",) if device.type == "cpu" else ()
        reasons = []
        for candidate in candidates:
            reason = _BACKENDS[candidate].unavailable_reason()
            if reason is None:
                return _BACKENDS[candidate]
            reasons.append(f"{candidate}: {reason}")
        if reasons and device.type not in _warned:
            _warned.add(device.type)
            warnings.warn(
                f"mdfast: using the eager torch backend on {device.type} ({'; '.join(reasons)})",
                RuntimeWarning,
                stacklevel=3,
            )
        return _BACKENDS["torch"]
    backend = get(name)
    if (
        backend.device_type is not None
        and backend.device_type != device.type
        and not (name == "triton" and _triton_interpreter())
    ):
        raise ValueError(f"backend={name!r} runs on {backend.device_type} tensors, but the inputs are on {device}")
    if logits_dtype not in backend.logits_dtypes:
        raise TypeError(
            f"logits: backend {name!r} reads {', '.join(str(d) for d in backend.logits_dtypes)}, got {logits_dtype}"
        )
    reason = backend.unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"mdfast backend {name!r} is unavailable: {reason}")
    return backend


def _as_float32(value: Tensor | None) -> Tensor | None:
    if value is None or not value.is_floating_point():
        return value
    return value.float()
