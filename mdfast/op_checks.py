"""The checks of the ops' inputs: types, shapes, devices and ranges, and the finite-value checks.

``mdfast.ops`` calls these before it picks a backend; each raises ``TypeError`` (wrong type or
dtype) or ``ValueError`` (wrong shape, device, value, or non-finite entries) whose message starts
with the argument's name. ``InputChecks`` evaluates ``xflow_step``'s value checks on the device and
reads them back with the logits check in one host synchronisation.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef

from .backends.contract import MAX_POLICY_HIDDEN, MAX_ROWS, MAX_VOCABULARY
from .config import FlowConfig
from .errors import describe
from .policy import StepPolicy

__all__ = [
    "InputChecks",
    "check_k",
    "check_rows",
    "check_shape",
    "check_step_inputs",
    "check_tensor",
    "finite_tables",
    "raise_if_not_finite",
    "rho_tensor",
]


def check_tensor(name, x, *, dims=None, dtype=None, floating=False, device=None) -> None:
    """TypeError or ValueError unless ``x`` is a tensor of ``dims`` dimensions, ``dtype`` and ``device``."""
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


def check_shape(name, x: Tensor, shape: tuple, meaning: str) -> None:
    """ValueError unless ``x`` has ``shape``; ``meaning`` says where that shape comes from."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} = {meaning}, got {tuple(x.shape)}")


def check_k(k, V: int) -> None:
    """The top-k width k in [2, 8], within a vocabulary of V entries the kernels can index."""
    if not (isinstance(k, int) and 2 <= k <= 8):
        raise ValueError(f"k: expected an int in [2, 8], got {k!r}")
    if k > V:
        raise ValueError(f"logits: the vocabulary (last dimension, {V}) must hold at least k = {k} entries")
    if V > MAX_VOCABULARY:
        raise ValueError(f"logits: at most {MAX_VOCABULARY} vocabulary entries (int32 ids), got {V}")


def check_rows(rows: int) -> None:
    """No more logits rows than the kernels can index."""
    if rows > MAX_ROWS:
        raise ValueError(f"logits: at most {MAX_ROWS} rows (int32 row indices), got {rows}")


def check_policy(policy, config: FlowConfig, device: torch.device) -> None:
    """None, or a StepPolicy on ``device`` trained with ``config``'s k, a_min and a_max, within the kernels' width."""
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


def check_step_inputs(logits, X, t, embedding, mask_embedding, policy, config, sample, generator, action, inplace):
    """``xflow_step``'s checks of types, shapes, devices and argument combinations, in this order."""
    check_tensor("logits", logits, dims=3, floating=True)
    B, N, V = logits.shape
    device = logits.device
    check_tensor("X", X, dims=3, dtype=torch.float32, device=device)
    E = X.shape[-1]
    check_shape("X", X, (B, N, E), "(B, N, E) with (B, N) from logits")
    check_tensor("t", t, dims=2, dtype=torch.float32, device=device)
    check_shape("t", t, (B, N), "(B, N) from logits")
    check_tensor("embedding", embedding, dims=2, floating=True, device=device)
    check_shape("embedding", embedding, (V, E), "(V, E): a row per vocabulary entry of logits and X's width E")
    check_tensor("mask_embedding", mask_embedding, dims=1, floating=True, device=device)
    check_shape("mask_embedding", mask_embedding, (E,), "(E,) with E from X")
    if not isinstance(config, FlowConfig):
        raise TypeError(f"config: expected a FlowConfig, got {type(config).__name__}")
    check_k(config.k, V)
    check_rows(B * N)
    check_policy(policy, config, device)
    if sample and policy is None:
        raise ValueError("sample=True needs a policy: the heuristic action a_min^(1-c) a_max^c is deterministic")
    if generator is not None and not sample:
        raise ValueError("generator: only used with sample=True")
    if isinstance(generator, (list, tuple)) and (
        len(generator) != B or not all(isinstance(g, torch.Generator) for g in generator)
    ):
        raise ValueError(f"generator: expected a torch.Generator or a list of B = {B} of them (one per sequence)")
    if action is not None:
        check_tensor("action", action, dims=2, dtype=torch.float32, device=device)
        check_shape("action", action, (B, N), "(B, N) like t")
        if policy is not None or sample:
            raise ValueError("action: a given step size replaces the policy's: pass policy=None and sample=False")
    if inplace and not (X.is_contiguous() and t.is_contiguous()):
        raise ValueError("inplace=True needs contiguous X and t")


def rho_tensor(rho, B: int, device: torch.device) -> Tensor:
    """rho (a number in [0, 1], or a tensor () or (B,)) as a float32 (B,) tensor; a number is range-checked."""
    if isinstance(rho, Tensor):
        if rho.dim() > 1 or (rho.dim() == 1 and rho.shape[0] != B):
            raise ValueError(f"rho: expected a number or a tensor of shape () or ({B},), got shape {tuple(rho.shape)}")
        return rho.to(device=device, dtype=torch.float32).expand(B).contiguous()
    if not isinstance(rho, (int, float)):
        raise TypeError(f"rho: expected a number or a tensor, got {type(rho).__name__}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho: expected a number in [0, 1] (l / max(T - 1, 1)), got {rho}")
    return torch.full((B,), float(rho), dtype=torch.float32, device=device)


def raise_if_not_finite(lse: Tensor, name: str) -> None:
    """ValueError naming the rows of ``name`` whose ``lse`` is not finite (reads ``lse`` back: a sync)."""
    bad = ~torch.isfinite(lse)
    if bool(bad.any()):
        where = bad.nonzero()
        first = tuple(where[0].tolist())
        raise ValueError(
            f"{name}: {where.shape[0]} row(s) are not a finite distribution (a NaN or +inf entry, or every "
            f"entry -inf), the first at row index {first}; no state was written"
        )


INPUT_PROBLEMS = {
    "X": "X: holds a NaN or infinite entry",
    "t": "t: expected token progress in [0, 1], got a NaN or a value outside",
    "rho": "rho: expected values in [0, 1] (l / max(T - 1, 1)), got a NaN or a value outside",
    "mask_embedding": "mask_embedding: holds a NaN or infinite entry",
    "embedding": "embedding: holds a NaN or infinite entry",
    "action": "action: expected step sizes in [a_min, a_max] (config), got a NaN or a value outside",
}


class InputChecks:
    """``xflow_step``'s value checks with ``check_finite=True``, evaluated on the device.

    Their flags become the backend's ``bad`` flag (a set flag makes the step write no state) and are
    read back together with the logits check, in one host synchronisation.
    """

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
        if not finite_tables.known(embedding):
            self.failed["embedding"] = ~torch.isfinite(embedding).all()

    def flag(self) -> Tensor:
        """The backend's int32 (1,) flag: nonzero when an input failed."""
        return torch.stack(list(self.failed.values())).any().to(torch.int32).reshape(1)

    def raise_if_failed(self, lse: Tensor) -> None:
        """Raises the ValueError of the first failed check, else the logits' (``lse`` not finite)."""
        flags = torch.stack([*self.failed.values(), (~torch.isfinite(lse)).any()]).tolist()  # the one sync
        failed = dict(zip(self.failed, flags))
        if "embedding" in failed and not failed["embedding"]:
            finite_tables.remember(self.embedding)
        for name, bad in failed.items():
            if bad:
                raise ValueError(f"{INPUT_PROBLEMS[name]}; no state was written")
        if flags[-1]:
            raise_if_not_finite(lse, "logits")


class FiniteTables:
    """Embedding tables known to be finite, per storage, view and version (autograd's counter of in-place changes).

    Checking a (V, E) table reads it whole, so it is checked once, not every step. A weak reference
    to the storage keeps a freed table from passing for a new one.
    """

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


finite_tables = FiniteTables()
