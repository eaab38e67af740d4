"""StepPolicy: the learned, confidence-dependent step size of the x-prediction flow (SPEC 2.4-2.5)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from . import reference
from .atomic import atomic_save_safetensors, checked_safe_open
from .backends.contract import PolicyLayout
from .errors import describe

__all__ = ["StepPolicy"]

_FORMAT = "mdfast.StepPolicy/1"
# Trained policies shipped with the package: <name>.safetensors (StepPolicy.save) and its card <name>.json.
EXAMPLE_POLICIES = Path(__file__).parent / "data" / "policies"


class StepPolicy(nn.Module):
    """The step policy of SPEC 2.4: a two-layer SiLU MLP over the token state giving a Beta law.

        h = SiLU(W2 SiLU(W1 s + b1) + b2)
        mu = 0.05 + 0.9 sigmoid(w_mu.h + b_mu);  kappa = kmin + (kmax - kmin) sigmoid(w_k.h + b_k)
        alpha = mu kappa,  beta = (1 - mu) kappa

    over s = [p(1), p(2), p(3), p(4), H_4, margin, t, rho] (k + 4 wide; 8 for k = 4). The action
    a = a_min * 2^(y L), y ~ Beta(alpha, beta), L = log2(a_max / a_min) (SPEC 2.5): its mean
    through Kummer's series at inference, a draw with its log-probability in training.

    Layers ``fc1`` (Linear k+4 -> d), ``fc2`` (Linear d -> d), ``mu_head`` and ``kappa_head``
    (Linear d -> 1). ``kappa_min``, ``kappa_max``, ``a_min``, ``a_max`` are constants saved with
    the weights.
    """

    def __init__(
        self,
        hidden: int = 64,
        *,
        k: int = 4,
        kappa_min: float = 2.0,
        kappa_max: float = 100.0,
        a_min: float = 1 / 256,
        a_max: float = 1.0,
    ) -> None:
        super().__init__()
        if not (isinstance(hidden, int) and hidden >= 1):
            raise ValueError(f"StepPolicy: hidden must be a positive int, got {hidden!r}")
        if not (isinstance(k, int) and 2 <= k <= 8):
            raise ValueError(f"StepPolicy: k must be an int in [2, 8], got {k!r}")
        if not (0.0 < kappa_min < kappa_max):
            raise ValueError(f"StepPolicy: need 0 < kappa_min < kappa_max, got {kappa_min}, {kappa_max}")
        if not (0.0 < a_min < a_max <= 1.0):
            raise ValueError(f"StepPolicy: need 0 < a_min < a_max <= 1, got {a_min}, {a_max}")
        self.hidden, self.k = hidden, k
        self.kappa_min, self.kappa_max = float(kappa_min), float(kappa_max)
        self.a_min, self.a_max = float(a_min), float(a_max)
        self.fc1 = nn.Linear(k + 4, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mu_head = nn.Linear(hidden, 1)
        self.kappa_head = nn.Linear(hidden, 1)
        self._packed: dict[tuple, tuple[tuple, Tensor]] = {}  # (device, dtype) -> (weight versions, vector)

    @property
    def state_dim(self) -> int:
        return self.k + 4

    @property
    def layout(self) -> PolicyLayout:
        """Where ``packed_weights`` puts each weight."""
        return PolicyLayout(self.hidden, self.k)

    def constants(self) -> dict[str, float | int]:
        return {
            "hidden": self.hidden,
            "k": self.k,
            "kappa_min": self.kappa_min,
            "kappa_max": self.kappa_max,
            "a_min": self.a_min,
            "a_max": self.a_max,
        }

    def extra_repr(self) -> str:
        return ", ".join(f"{name}={value}" for name, value in self.constants().items())

    def _check_state(self, state: Tensor) -> None:
        if not isinstance(state, Tensor) or not state.is_floating_point():
            raise TypeError(f"state: expected a floating-point tensor (..., {self.state_dim}), got {describe(state)}")
        if state.dim() == 0 or state.shape[-1] != self.state_dim:
            raise ValueError(f"state: expected shape (..., {self.state_dim}), got {tuple(state.shape)}")

    def forward(self, state: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha, beta) of the Beta law of y for each state (..., k+4).

        Computed in float32, or float64 for a float64 state.
        """
        self._check_state(state)
        return reference.step_policy(self, state.to(reference.compute_dtype(state)))

    def expected_action(self, state: Tensor) -> Tensor:
        """a = a_min * 1F1(alpha; alpha+beta; L ln 2), clamped to [a_min, a_max] (SPEC 2.5)."""
        alpha, beta = self(state)
        return reference.expected_action(alpha, beta, self.a_min, self.a_max)

    def sample(self, state: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(a, log pi(y)) with y ~ Beta(alpha, beta), a = a_min * 2^(y L) (SPEC 2.5).

        The log-probability keeps its graph to the policy's weights (for policy-gradient training).
        """
        alpha, beta = self(state)
        return reference.sample_action(alpha, beta, self.a_min, self.a_max, generator)

    def packed_weights(self, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weights as one vector of ``dtype`` (float32 for the kernels), each at its place in ``self.layout``.

        [W1 (d, k+4) row-major, b1 (d), W2 (d, d), b2 (d), w_mu (d), w_kappa (d), b_mu, b_kappa].
        Cached per device and dtype until a parameter changes (in place or replaced).
        """
        layout = self.layout
        pieces = (
            (layout.W1, self.fc1.weight),
            (layout.b1, self.fc1.bias),
            (layout.W2, self.fc2.weight),
            (layout.b2, self.fc2.bias),
            (layout.w_mu, self.mu_head.weight),
            (layout.w_kappa, self.kappa_head.weight),
            (layout.b_mu, self.mu_head.bias),
            (layout.b_kappa, self.kappa_head.bias),
        )
        where = (torch.device(device), dtype)
        versions = tuple((p.data_ptr(), p._version) for _, p in pieces)
        cached = self._packed.get(where)
        if cached is None or cached[0] != versions:
            flat = torch.empty(layout.size, device=device, dtype=dtype)
            with torch.no_grad():
                for at, p in pieces:
                    flat[at : at + p.numel()] = p.detach().reshape(-1)
            cached = self._packed[where] = (versions, flat)
        return cached[1]

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and constants as a plain safetensors file (no pickled code), atomically."""
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.state_dict().items()}
        metadata = {"format": _FORMAT, "constants": json.dumps(self.constants())}
        atomic_save_safetensors(tensors, path, metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> StepPolicy:
        """Read a file written by ``save``; a missing or unexpected weight is an error.

        A truncated or damaged file raises ``mdfast.atomic.CorruptFileError`` (a ValueError) naming it.
        """
        with checked_safe_open(path) as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != _FORMAT:
                raise ValueError(
                    f"{os.fspath(path)}: not a StepPolicy file "
                    f"(metadata format {metadata.get('format')!r}, expected {_FORMAT!r})"
                )
            constants = json.loads(metadata["constants"])
            state = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        hidden = constants.pop("hidden")
        policy = cls(hidden, **constants)
        policy.load_state_dict(state, strict=True)
        return policy.to(device)

    @staticmethod
    def examples() -> list[str]:
        """The names of the trained policies shipped with mdfast, sorted.

        Each is ``mdfast/data/policies/<name>.safetensors`` with a card ``<name>.json``: what it was
        trained on, the command, the date, its measured accuracy.
        """
        if not EXAMPLE_POLICIES.is_dir():
            return []
        return sorted(path.stem for path in EXAMPLE_POLICIES.glob("*.safetensors"))

    @classmethod
    def example(cls, name: str, device: torch.device | str = "cpu") -> StepPolicy:
        """The shipped policy ``name`` (one of ``StepPolicy.examples()``).

        E.g. ``StepPolicy.example("antiberty-suffix")``; an unknown name raises ValueError listing the known ones.
        """
        return cls.load(_example_file(name, ".safetensors"), device)

    @staticmethod
    def example_card(name: str) -> dict:
        """The card of the shipped policy ``name``: a dict read from ``mdfast/data/policies/<name>.json``."""
        return json.loads(_example_file(name, ".json").read_text(encoding="utf-8"))


def _example_file(name: str, suffix: str) -> Path:
    known = StepPolicy.examples()
    if not isinstance(name, str) or name not in known:
        shipped = ", ".join(repr(n) for n in known) if known else "none (this install ships no example policy)"
        raise ValueError(f"name: no example policy {name!r}; the shipped ones are: {shipped}")
    path = EXAMPLE_POLICIES / f"{name}{suffix}"
    if not path.is_file():
        raise FileNotFoundError(f"example policy {name!r}: {path} is missing")
    return path
