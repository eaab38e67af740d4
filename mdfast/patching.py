"""``mdfast.patch`` / ``mdfast.unpatch``: mdfast's decoding installed on a model, above ``models`` and
``decode`` (it imports both; neither imports it).

A stand-in written by the decode branch so that it runs on its own; the top branch's module of the
same name is the one to keep.
"""

from __future__ import annotations

from torch import nn

from .decode import generate, infill
from .models import adapt, release

__all__ = ["patch", "unpatch"]

_METHODS = ("mdfast_generate", "mdfast_infill")


def patch(model: nn.Module, *, mask_token_id: int | None = None, backend: str = "auto") -> nn.Module:
    """Install mdfast's decoding loop on ``model`` in place and return it: afterwards
    ``model.mdfast_generate(input_ids, ...)`` is ``mdfast.generate(model, input_ids, ...)`` and
    ``model.mdfast_infill(input_ids, ...)`` is ``mdfast.infill(model, input_ids, ...)``."""
    adapter = adapt(model, mask_token_id)
    model.mdfast_adapter = adapter
    model.mdfast_backend = backend

    def mdfast_generate(input_ids, attention_mask=None, **kwargs):
        kwargs.setdefault("backend", model.mdfast_backend)
        return generate(model, input_ids, attention_mask, **kwargs)

    def mdfast_infill(input_ids, attention_mask=None, **kwargs):
        kwargs.setdefault("backend", model.mdfast_backend)
        return infill(model, input_ids, attention_mask, **kwargs)

    model.mdfast_generate = mdfast_generate
    model.mdfast_infill = mdfast_infill
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Undo ``patch``: the original output projection back, the mdfast attributes gone."""
    adapter = getattr(model, "mdfast_adapter", None)
    if adapter is None:
        return model
    release(adapter)
    for name in ("mdfast_adapter", "mdfast_backend", *_METHODS):
        if name in model.__dict__:
            delattr(model, name)
    return model
