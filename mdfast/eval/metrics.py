"""A pooled fraction over items (genes, problems) and its standard error over those items.

The antibody benchmark scores "the fraction of masked residues equal to the gene's" (SPEC 7): residues are
pooled over genes, and since genes, not residues, are the independent draws, the standard error is the ratio
estimator's, taken over genes:

    A  = sum_g c_g / sum_g m_g
    SE = sqrt( sum_g (c_g - A m_g)^2 / (n (n - 1)) ) / mean_g m_g

(c_g: hits of item g, m_g: its count, n items). With every m_g = 1 (HumanEval's pass@1 over problems) this is
the usual sqrt(p (1 - p) / (n - 1)). One item gives SE = nan (no spread to measure).
"""

from __future__ import annotations

import math


def pooled_fraction(hits: list[float], counts: list[float]) -> tuple[float, float]:
    """(A, SE) of the module docstring for per-item ``hits`` and ``counts`` (same length, counts > 0)."""
    if len(hits) != len(counts) or not hits:
        raise ValueError(f"hits, counts: expected two non-empty lists of one length, got {len(hits)} and {len(counts)}")
    if min(counts) <= 0:
        raise ValueError(f"counts: expected positive counts, got {min(counts)}")
    n = len(hits)
    total = sum(counts)
    value = sum(hits) / total
    if n == 1:
        return value, math.nan
    spread = sum((c - value * m) ** 2 for c, m in zip(hits, counts))
    return value, math.sqrt(spread / (n * (n - 1))) / (total / n)


def finite_or_none(x: float) -> float | None:
    """A standard error, or None where a single item leaves it undefined (JSON has no NaN)."""
    return x if math.isfinite(x) else None
