"""Model families (SPEC 4): how to feed embeddings to a model and read only the logits rows needed.

``adapt(model)`` recognises the family and returns a ``ModelAdapter``; ``release`` undoes it
(``mdfast.patch``, in ``mdfast/patching.py`` above this package, keeps one on a model). The
vocabulary projection is captured by swapping the output-embedding ``nn.Linear`` of the module
that computes the logits (the adapter's ``model``) for a ``RowSelectingHead`` that projects only
the hidden rows the current step needs (the current block's positions of each sequence, never the
prompt's), so every family's own forward runs unchanged otherwise. Nothing here knows the decoding
loop: ``mdfast.decode`` imports this package, never the other way round.

Families:
- ``llada`` (``config.model_type == "llada"``): no position ids, always ``use_cache=False``
  (transformers 5 no longer sets ``config.use_cache``). A native ``LLaDAModel`` is driven as it
  is. For any other LLaDA model (LLaDA's remote code) the adapter drives a native body instead,
  ``llada.from_remote(model)``: the same weights, not a second copy (the remote model's
  projection parameters become views of the native fused weights, and its own forward still gives
  the same logits); ``mdfast.patch`` still installs its methods on the remote model itself. The
  body is built by each ``adapt`` (its fused weights concatenated anew): patch a remote model to
  build it once rather than at every ``mdfast.generate`` call. Where the native body cannot take
  the model (its config or state dict is not SPEC 5's), mdfast drives the remote model's own
  forward and says why in a warning.
- ``dream``: Dream remote code (``config.model_type == "Dream"``, a Qwen2 body): shifted logits,
  row j predicts position j + 1.
- ``masked_lm``: native transformers masked LMs (BERT, RoBERTa, ModernBERT, DistilBERT, ...):
  any model with input and output embeddings whose forward takes ``inputs_embeds``; absolute
  position ids skip the left padding. A causal LM (a ``...ForCausalLM`` or ``...LMHeadModel`` class, or a config
  with ``is_decoder``) is refused: it cannot fill masked positions.
LLaDA2.0 (MoE block diffusion, remote code) is recognised and refused: its forward needs a
block-causal attention mask mdfast does not build yet.
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .llada import LLaDAModel, from_remote

__all__ = ["ModelAdapter", "RowSelectingHead", "adapt", "causal_lm_message", "is_causal_lm", "release"]

# model_type values of the remote-code families (SPEC 4).
LLADA_TYPES = ("llada",)
DREAM_TYPES = ("Dream", "dream")
LLADA2_TYPES = ("llada2_moe", "llada2", "bailing_moe")
# the class-name endings of transformers' causal LMs (GPT2LMHeadModel, LlamaForCausalLM, ...): refused
CAUSAL_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class RowSelectingHead(nn.Module):
    """The model's output ``nn.Linear``, projecting only the hidden rows ``rows`` names when set.

    ``rows`` is None (the original projection, so the patched model's own forward gives the same
    logits as before) or an int64 tensor (B, n): row ``rows[b, j]`` of sequence b becomes logits row
    (b, j), a gather on the device (no host synchronisation, so a CUDA graph can replay it with new
    indices written into the same tensor).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self.rows: Tensor | None = None

    @property
    def weight(self) -> Tensor:  # code that reads the head's weight (tying, resizing) still works
        return self.linear.weight

    @property
    def bias(self) -> Tensor | None:
        return self.linear.bias

    def forward(self, hidden: Tensor) -> Tensor:
        if self.rows is not None:
            hidden = hidden.gather(1, self.rows.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return F.linear(hidden, self.linear.weight, self.linear.bias)


@dataclass
class ModelAdapter:
    """What the decoding loop needs to know about a model.

    model: the module whose forward computes the logits (the patched model itself, or for a
    LLaDA remote-code model the native body sharing its weights); family: "llada", "dream" or
    "masked_lm"; mask_token_id: the [MASK] id; shifted: logits row j predicts position j + 1
    (Dream); embed_scale: the factor the input embedding module applies to its table rows; head:
    the RowSelectingHead installed in ``model``; accepts_position_ids: the forward takes
    ``position_ids`` (absolute positions that skip left padding are passed); max_positions: the
    longest sequence the model takes (``config.max_position_embeddings``, LLaDA's
    ``max_sequence_length``), None where the config names none.
    """

    model: nn.Module
    family: str
    mask_token_id: int
    shifted: bool
    embed_scale: float
    head: RowSelectingHead
    accepts_position_ids: bool
    max_positions: int | None = None

    @property
    def embedding(self) -> Tensor:
        """W_e (V, E): the input embedding table."""
        return self.model.get_input_embeddings().weight

    @property
    def vocab_size(self) -> int:
        """V: the rows of the input embedding table (token ids are in [0, V))."""
        return self.model.get_input_embeddings().num_embeddings

    def embed(self, token_ids: Tensor) -> Tensor:
        """The model's input embeddings of ``token_ids`` (the embedding module, scale included)."""
        return self.model.get_input_embeddings()(token_ids)

    def logits(
        self, inputs_embeds: Tensor, attention_mask: Tensor | None, positions: Tensor, cache=None, cache_rows=None
    ) -> Tensor:
        """Logits (B, n, V) predicting the token at each position of ``positions`` (B, n) int64.

        One forward on ``inputs_embeds`` (B, L, E), the projection applied to those rows only (for
        Dream the row before each position; a position 0 there reads row 0, which callers never ask
        for a real token). ``cache``: the native LLaDA body's ``KVCache``, which this forward (a
        refresh, SPEC 8) also fills; None: none. ``cache_rows`` (B,) int64: the cache rows these B
        rows refresh, when they are some of the cache's rows (the body's ``forward(cache_rows=)``).
        """
        rows = (positions - 1).clamp_min(0) if self.shifted else positions
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if self.accepts_position_ids and attention_mask is not None:
            kwargs["position_ids"] = position_ids(attention_mask)
        if self.family == "llada":
            kwargs["use_cache"] = False
        if cache is not None:
            kwargs["cache"] = cache
        if cache_rows is not None:
            kwargs["cache_rows"] = cache_rows
        self.head.rows = rows
        try:
            out = self.model(**kwargs)
        finally:
            self.head.rows = None
        logits = out.logits if hasattr(out, "logits") else out[0]
        return logits

    def cached_logits(
        self,
        cache,
        positions: Tensor,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None,
        rows: Tensor,
        write: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, m, V) of the rows ``rows`` (B, m) of S = ``positions`` (B, n), over a filled KV cache.

        The native LLaDA body's ``forward_cached`` (SPEC 8) on ``inputs_embeds`` (B, n, E), S's inputs;
        ``attention_mask`` (B, L): the refresh's. S's indices are not read back (no device synchronisation):
        the caller makes them distinct and in range. ``write`` (B, n) bool: the entries whose K, V are
        written (None: all).
        """
        self.head.rows = rows
        try:
            out = self.model.forward_cached(
                cache,
                positions,
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                write=write,
                check_range=False,
            )
        finally:
            self.head.rows = None
        return out.logits


def position_ids(attention_mask: Tensor) -> Tensor:
    """Absolute positions that skip left padding: 0, 1, 2, ... from each sequence's first real token.

    Pads get 0, so a padded row sees the positions of its solo run.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def adapt(model: nn.Module, mask_token_id: int | None = None) -> ModelAdapter:
    """Recognise ``model``'s family and capture its output projection (see the module docstring).

    Raises ValueError, saying why, for a model mdfast cannot drive. A model that already carries an
    adapter (``mdfast.patch``) keeps it: a ``mask_token_id`` other than its own is a ValueError.
    """
    adapter = getattr(model, "mdfast_adapter", None)
    if adapter is not None:
        if mask_token_id is not None and int(mask_token_id) != adapter.mask_token_id:
            raise ValueError(
                f"mask_token_id: {mask_token_id} disagrees with the id {adapter.mask_token_id} that "
                f"{type(model).__name__} was patched with; leave it out, or unpatch and patch again"
            )
        return adapter
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type in LLADA2_TYPES:
        raise ValueError(
            f"mdfast.patch: {type(model).__name__} (model_type {model_type!r}, LLaDA2.0 block diffusion) is not "
            "supported yet: its forward needs a block-causal attention mask"
        )
    family = "llada" if model_type in LLADA_TYPES else "dream" if model_type in DREAM_TYPES else "masked_lm"
    if family == "masked_lm" and is_causal_lm(model):
        raise ValueError(f"mdfast.patch: {causal_lm_message(type(model).__name__)}")
    if family == "llada":
        model = _llada_body(model)
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    embedding = get_in() if callable(get_in) else None
    output = get_out() if callable(get_out) else None
    if not isinstance(embedding, nn.Embedding):
        raise ValueError(
            f"mdfast.patch: {type(model).__name__} has no input embedding table "
            "(get_input_embeddings() -> nn.Embedding)"
        )
    if isinstance(output, RowSelectingHead):
        output = output.linear
    if not isinstance(output, nn.Linear):
        raise ValueError(
            f"mdfast.patch: {type(model).__name__} has no output projection (get_output_embeddings() -> nn.Linear); "
            f"got {type(output).__name__}"
        )
    parameters = inspect.signature(model.forward).parameters
    if "inputs_embeds" not in parameters:
        raise ValueError(f"mdfast.patch: {type(model).__name__}.forward takes no inputs_embeds")
    if mask_token_id is None:
        mask_token_id = getattr(config, "mask_token_id", None)
    if mask_token_id is None:
        raise ValueError(f"mdfast.patch: {type(model).__name__}'s config has no mask_token_id; pass mask_token_id=")
    if not (0 <= int(mask_token_id) < embedding.num_embeddings):
        raise ValueError(
            f"mask_token_id: {mask_token_id} is outside the vocabulary of {embedding.num_embeddings} embeddings"
        )
    if output.out_features != embedding.num_embeddings:
        raise ValueError(
            f"mdfast.patch: the output projection has {output.out_features} rows but the input embedding table "
            f"{embedding.num_embeddings}: the x-flow step needs one embedding per vocabulary entry"
        )
    head = RowSelectingHead(output)
    _replace_module(model, output, head)
    scale = getattr(embedding, "embed_scale", 1.0)
    return ModelAdapter(
        model=model,
        family=family,
        mask_token_id=int(mask_token_id),
        shifted=family == "dream",
        embed_scale=float(scale) if not torch.is_tensor(scale) else float(scale.item()),
        head=head,
        accepts_position_ids=family != "llada" and "position_ids" in parameters,
        max_positions=_max_positions(config, family),
    )


def is_causal_lm(model: nn.Module) -> bool:
    """A causal (left-to-right) LM: a transformers causal-LM class (``...ForCausalLM``, ``...LMHeadModel``) or decoder.

    Only asked of the ``masked_lm`` family (LLaDA and Dream are recognised by their model_type first).
    """
    name = type(model).__name__
    return name.endswith(CAUSAL_CLASS_SUFFIXES) or bool(getattr(getattr(model, "config", None), "is_decoder", False))


def causal_lm_message(name: str) -> str:
    """The ValueError message for causal LM class ``name`` (``mdfast.patch`` and the CLI's model folders say it)."""
    return (
        f"{name} is a causal (left-to-right) LM, but mdfast decodes masked (bidirectional) LMs: "
        "LLaDA, Dream, or a masked LM such as BERT (...ForMaskedLM); a causal LM cannot fill masked positions"
    )


def _max_positions(config, family: str) -> int | None:
    """The longest sequence the model takes, where its config says so.

    LLaDA's ``max_sequence_length``, every other family's ``max_position_embeddings``.
    """
    value = getattr(config, "max_sequence_length" if family == "llada" else "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def _llada_body(model: nn.Module) -> nn.Module:
    """The module to drive for a LLaDA model: a native LLaDAModel as it is, else a native body sharing its weights.

    The native body over a remote model's weights is ``llada.from_remote``'s; where its config or
    weights are not SPEC 5's, the model's own forward, with the reason in a warning (Python shows it
    once per call site).
    """
    if isinstance(model, LLaDAModel):
        return model
    try:
        return from_remote(model)
    except ValueError as error:
        warnings.warn(
            f"mdfast: driving {type(model).__name__}'s own forward, not mdfast's native LLaDA body: {error}",
            stacklevel=4,
        )
        return model


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for _name, module in model.named_modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise ValueError(f"mdfast.patch: could not find the output projection inside {type(model).__name__}")


def release(adapter: ModelAdapter) -> None:
    """Put the model's own output projection back in place of the RowSelectingHead."""
    _replace_module(adapter.model, adapter.head, adapter.head.linear)
