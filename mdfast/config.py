"""Small typed configs of the decoding steps."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FlowConfig"]


@dataclass(frozen=True)
class FlowConfig:
    """Constants of the x-prediction flow step (SPEC 2.5-2.7).

    a_min, a_max: range of the step size a; L = log2(a_max / a_min) (SPEC 2.5).
    reedit_margin: re-edit when c_i - t_i < -reedit_margin (SPEC 2.6, 0.1).
    commit_threshold: the hard commit picks among tokens with t_i < commit_threshold (SPEC 2.7, 0.99).
    k: width of the top-k statistics; the policy state is [p(1..k), H_k, margin, t, rho], 8-wide
       for the default k = 4 (SPEC 2.3).
    """

    a_min: float = 1 / 256
    a_max: float = 1.0
    reedit_margin: float = 0.1
    commit_threshold: float = 0.99
    k: int = 4

    def __post_init__(self) -> None:
        if not (0.0 < self.a_min < self.a_max <= 1.0):
            raise ValueError(f"FlowConfig: need 0 < a_min < a_max <= 1, got a_min={self.a_min}, a_max={self.a_max}")
        if not self.reedit_margin >= 0.0:
            raise ValueError(f"FlowConfig: reedit_margin must be >= 0, got {self.reedit_margin}")
        if not (0.0 < self.commit_threshold <= 1.0):
            raise ValueError(f"FlowConfig: commit_threshold must be in (0, 1], got {self.commit_threshold}")
        if not (isinstance(self.k, int) and 2 <= self.k <= 8):
            raise ValueError(f"FlowConfig: k must be an int in [2, 8], got {self.k!r}")

    @property
    def kummer_terms(self) -> int:
        """Terms of Kummer's series 1F1(alpha; alpha+beta; z), z = ln(a_max/a_min), a kernel sums for float32.

        The n-th term is at most z^n / n! and the sum is at least 1, so stop at the first n > 2z with
        z^n / n! < 2^-30 (29 terms for the default z = ln 256).
        """
        z = math.log(self.a_max / self.a_min)
        n = 1
        while n <= 2 * z or n * math.log(z) - math.lgamma(n + 1) > -30 * math.log(2):
            n += 1
        return n
