"""Step schedules shared by the decoders (SPEC 2 and 3)."""

from __future__ import annotations

import torch
from torch import Tensor


def transfer_counts(n_masked: int, steps: int) -> list[int]:
    """SPEC 3, LLaDA's linear schedule: tokens committed at each of ``steps`` steps for a block of
    ``n_masked`` masked tokens: base = n_masked // steps, the first n_masked % steps steps get one
    more. Known on the host, so no step waits on the device to learn it."""
    base, extra = divmod(n_masked, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def top_positions(score: Tensor, count: int | Tensor) -> Tensor:
    """A (B, n) boolean mask of each row's ``count`` largest scores, ties -> smaller index (a
    stable descending sort: the rule every decoder's selection follows).

    ``count`` is an int or an int64 tensor of shape (1,) (the same count for every row), so a
    step can read it from a device-side schedule without a host synchronisation.
    """
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, positions)  # rank[i]: place of score i in the order
    return rank < count
