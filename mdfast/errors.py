"""How mdfast names what it was given when it refuses an argument (one wording everywhere)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["describe"]


def describe(x: object) -> str:
    """ "a torch.float32 tensor of shape (2, 3) on cpu" for a tensor, else the type's name."""
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)} on {x.device}"
    return type(x).__name__
