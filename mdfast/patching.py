"""Patching a model with mdfast's decoding loop: ``patch`` and ``unpatch``.

This module sits on top of both ``mdfast.decode`` (the loop) and ``mdfast.models`` (the adapter,
SPEC 4), the way Liger-Kernel keeps its ``monkey_patch.py`` apart from its ops: nothing below
imports it, so the arrows run one way (patching -> decode -> models).

``patch(model, mask_token_id=..., backend=...)`` adapts the model once (``mdfast.models.adapt``:
the family recognised, the output projection swapped for a row-selecting head) and installs on it

- ``model.mdfast_generate(input_ids, attention_mask=None, **kw)``: ``mdfast.generate(model, ...)``
- ``model.mdfast_infill(input_ids, attention_mask=None, **kw)``: ``mdfast.infill(model, ...)``
  (SPEC 7)

with ``backend`` as the default of ``kw["backend"]``, and the adapter itself as
``model.mdfast_adapter`` (the decoding loop reuses it instead of adapting the model at every call).
``unpatch(model)`` puts the model's own output projection back and removes every attribute that
``patch`` installed.
"""

from __future__ import annotations

from torch import nn

from . import decode
from .backends import NAMES as BACKEND_NAMES
from .models import adapt, release

__all__ = ["patch", "unpatch"]

# Every attribute ``patch`` sets on a model (``unpatch`` removes exactly these).
INSTALLED = ("mdfast_adapter", "mdfast_backend", "mdfast_generate", "mdfast_infill")


def patch(model: nn.Module, *, mask_token_id: int | None = None, backend: str = "auto") -> nn.Module:
    """Install mdfast's decoding loop on ``model`` in place and return it.

    Afterwards ``model.mdfast_generate(input_ids, ...)`` is ``mdfast.generate(model, input_ids, ...)``
    and ``model.mdfast_infill(input_ids, ...)`` is ``mdfast.infill(model, input_ids, ...)``, both with
    ``backend`` by default.

    - mask_token_id: the [MASK] id (None: the model config's ``mask_token_id``).
    - backend: one of "auto", "triton", "cuda", "cpu", "torch".

    Patching a patched model again with the same mask
    id (None: the config's, where it names one) and backend returns it unchanged; another mask id or
    backend is a ValueError naming both (``unpatch`` it first to change them). Raises ValueError,
    saying why, for a model mdfast cannot drive.
    """
    if backend not in ("auto", *BACKEND_NAMES):
        raise ValueError(f"backend: expected one of {('auto', *BACKEND_NAMES)}, got {backend!r}")
    installed = getattr(model, "mdfast_adapter", None)
    if installed is not None:
        _check_same_patch(model, installed.mask_token_id, mask_token_id, backend)
        return model
    adapter = adapt(model, mask_token_id)
    model.mdfast_adapter = adapter
    model.mdfast_backend = backend

    def mdfast_generate(input_ids, attention_mask=None, **kwargs):
        kwargs.setdefault("backend", model.mdfast_backend)
        return decode.generate(model, input_ids, attention_mask, **kwargs)

    def mdfast_infill(input_ids, attention_mask=None, **kwargs):
        kwargs.setdefault("backend", model.mdfast_backend)
        return decode.infill(model, input_ids, attention_mask, **kwargs)

    model.mdfast_generate = mdfast_generate
    model.mdfast_infill = mdfast_infill
    return model


def _check_same_patch(model: nn.Module, installed_id: int, mask_token_id: int | None, backend: str) -> None:
    """A second ``patch`` must ask for what the first installed (see ``patch``)."""
    name = type(model).__name__
    if mask_token_id is None:
        mask_token_id = getattr(getattr(model, "config", None), "mask_token_id", None)
    if mask_token_id is not None and int(mask_token_id) != installed_id:
        raise ValueError(
            f"mask_token_id: {name} is already patched with mask_token_id={installed_id}, got "
            f"mask_token_id={int(mask_token_id)}; call mdfast.unpatch(model) first to change it"
        )
    if backend != model.mdfast_backend:
        raise ValueError(
            f"backend: {name} is already patched with backend={model.mdfast_backend!r}, got backend={backend!r}; "
            "call mdfast.unpatch(model) first to change it, or pass backend= to mdfast_generate / mdfast_infill"
        )


def unpatch(model: nn.Module) -> nn.Module:
    """Undo ``patch``: the model's own output projection back, every attribute ``patch`` set gone.

    A model that is not patched is returned as it is.
    """
    adapter = getattr(model, "mdfast_adapter", None)
    if adapter is None:
        return model
    release(adapter)
    for name in INSTALLED:
        if name in model.__dict__:
            delattr(model, name)
    return model
