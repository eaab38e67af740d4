"""What a decoding call is asked to do: ``DecodeOptions``, the table of decoders, and every check of them."""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass

import torch

from ..backends import NAMES as BACKEND_NAMES
from ..config import FlowConfig
from ..policy import StepPolicy
from .base import Decoder
from .remasking import (
    Entropy,
    Factor,
    LowConfidence,
    MaskGitPlus,
    RunningConfidenceRemasking,
    Threshold,
    TopKMargin,
)
from .soft_mask import SoftMask
from .xflow import XFlow

__all__ = ["CACHE_MODES", "DECODERS", "DECODER_FIELDS", "DecodeOptions"]

# SPEC 8's cache modes: S = the current block ("dual"), or everything from its first position ("prefix").
CACHE_MODES = ("dual", "prefix")

DECODERS: dict[str, type[Decoder]] = {
    "xflow": XFlow,
    "low_confidence": LowConfidence,
    "maskgit_plus": MaskGitPlus,
    "topk_margin": TopKMargin,
    "entropy": Entropy,
    "rcr": RunningConfidenceRemasking,
    "soft_mask": SoftMask,
    "threshold": Threshold,
    "factor": Factor,
}

# The per-decoder fields of DecodeOptions: the one decoder that reads each.
DECODER_FIELDS: dict[str, str] = {
    "config": "xflow",
    "sample": "xflow",
    "record_rollout": "xflow",
    "tau": "threshold",
    "factor": "factor",
    "k": "soft_mask",
    "w_s": "soft_mask",
    "w_a": "soft_mask",
    "w_b": "soft_mask",
}


@dataclass(frozen=True)
class DecodeOptions:
    """The options of one ``generate`` / ``infill`` call (SPEC 7); ``validate`` checks them all.

    - steps: model forwards in all, split over the blocks.
    - decoder: a name of ``DECODERS``.
    - block_length: decoded positions per block (None: one block per row).
    - policy: a ``StepPolicy`` for the xflow decoder (None: the heuristic step size).
    - temperature: >= 0; 0 is greedy (xflow takes none: its randomness is ``sample``).
    - eos_token_id: an id or a list of ids; decoded positions after the first EOS become it.
    - suppress_tokens: ids whose logits are -inf before any decoder sees them.
    - backend: "auto" or a name of ``mdfast.backends.NAMES``.
    - cuda_graph: replay one captured step on CUDA where the decoder allows it.
    - return_history, progress: the state after every step; a step counter on stderr.
    - generator: drives the draws (temperature > 0, or xflow with ``sample``): one torch.Generator
      for the call (a row's draws then depend on the other rows of the batch), or a list of B
      generators, one per row (row b draws from generator b alone: its sampled tokens are those of
      its solo run with that generator, on the CPU; GPU kernels may differ in the last bit).
    - config, sample, record_rollout (xflow): the flow constants (None: from the policy, else the
      defaults); draw the policy's actions; record the sampled trajectory (SPEC 6.2).
    - tau (threshold): the confidence to commit above (None: 0.9).
    - factor (factor): f of SPEC 8's rule, commit the largest n with c(n) >= 1 - f / (n + 1) (None: 1.0).
    - k, w_s, w_a, w_b (soft_mask): tokens mixed and the mixing weights (None: 3, 0.25, 5, -1).
    - cache: SPEC 8's approximate KV cache, "dual" or "prefix" (None: none, every step a full
      forward); only the native LLaDA body keeps one.
    - cache_refresh: k >= 1, with a cache also refresh at every k-th step inside a block (None: at
      each block's first step only; k = 1 is exact decoding).
    - cache_vicinity: w >= 0, with a cache also recompute up to w real positions on each side of
      the block at every cached step (dInfer's vicinity refresh; "prefix" already covers the side
      after the block). 0: none.
    """

    steps: int
    decoder: str = "xflow"
    block_length: int | None = None
    policy: StepPolicy | None = None
    temperature: float = 0.0
    eos_token_id: int | list[int] | None = None
    suppress_tokens: list[int] | None = None
    backend: str = "auto"
    cuda_graph: bool = True
    return_history: bool = False
    progress: bool = False
    generator: torch.Generator | list[torch.Generator] | None = None
    config: FlowConfig | None = None
    sample: bool = False
    record_rollout: bool = False
    tau: float | None = None
    factor: float | None = None
    k: int | None = None
    w_s: float | None = None
    w_a: float | None = None
    w_b: float | None = None
    cache: str | None = None
    cache_refresh: int | None = None
    cache_vicinity: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs) -> DecodeOptions:
        """The options named by ``generate`` / ``infill`` keywords; an unknown name is a TypeError."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise TypeError(f"{unknown[0]}: not a decoding option; expected one of {names}")
        return cls(**kwargs)

    def validate(
        self, *, max_new_tokens: int | None = None, vocab_size: int | None = None, masked: list[int] | None = None
    ) -> DecodeOptions:
        """Check every option (ValueError / TypeError starting with the field's name) and return self.

        - max_new_tokens: ``generate``'s response length; then block_length must divide it, steps
          must split evenly over its blocks and be at most max_new_tokens.
        - vocab_size: the model's; then eos and suppressed ids must lie in [0, vocab_size) and not
          every id may be suppressed. Without it every other check still runs.
        - masked: how many positions each row decodes (``infill``); then steps must be at most the
          largest count and at least every row's number of blocks (a block needs one step).
        """
        self._check_budget(max_new_tokens)
        self._check_masked(masked)
        self._check_decoder()
        _check_cache(self.cache, self.cache_refresh, self.cache_vicinity)
        _check_eos(self.eos_token_id, vocab_size)
        _check_suppress(self.suppress_tokens, vocab_size)
        if self.backend not in ("auto", *BACKEND_NAMES):
            raise ValueError(f"backend: expected one of {('auto', *BACKEND_NAMES)}, got {self.backend!r}")
        for name in ("cuda_graph", "return_history", "progress", "sample", "record_rollout"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected True or False, got {getattr(self, name)!r}")
        _check_generator(self.generator, None if masked is None else len(masked))
        return self

    def _check_budget(self, max_new_tokens: int | None) -> None:
        """steps and block_length, and with ``max_new_tokens`` how they split the response."""
        steps, block_length = self.steps, self.block_length
        if not (_is_int(steps) and steps >= 1):
            raise ValueError(f"steps: expected a positive int, got {steps!r}")
        if block_length is not None and not (_is_int(block_length) and block_length >= 1):
            raise ValueError(f"block_length: expected a positive int or None, got {block_length!r}")
        if max_new_tokens is None:
            return
        N = max_new_tokens
        if not (_is_int(N) and N >= 1):
            raise ValueError(f"max_new_tokens: expected a positive int, got {N!r}")
        if steps > N:
            raise ValueError(f"steps: expected at most max_new_tokens = {N} steps (one token each), got {steps}")
        block_length = N if block_length is None else block_length
        if N % block_length != 0:
            raise ValueError(f"block_length: expected a positive divisor of max_new_tokens={N}, got {block_length!r}")
        n_blocks = N // block_length
        if steps % n_blocks != 0:
            raise ValueError(
                f"steps: {steps} steps do not split evenly over {n_blocks} blocks of {block_length} tokens"
            )

    def _check_masked(self, masked: list[int] | None) -> None:
        """steps against the positions each row decodes (no row decoding anything is the inputs' error)."""
        longest = max(masked or [], default=0)
        if longest == 0:
            return
        steps = self.steps
        if steps > longest:
            raise ValueError(
                f"steps: expected at most {longest} steps (the most masked positions of any sequence), got {steps}"
            )
        n = longest if self.block_length is None else min(self.block_length, longest)
        for b, m in enumerate(masked):
            blocks = -(-m // n)
            if steps < blocks:
                raise ValueError(
                    f"steps: sequence {b} has {m} masked positions in {blocks} blocks of {n}, more blocks "
                    f"than the {steps} steps (each block needs at least one step)"
                )

    def _check_decoder(self) -> None:
        """The decoder's name, temperature, policy and the per-decoder fields."""
        name = self.decoder
        if not isinstance(name, str) or name not in DECODERS:
            raise ValueError(f"decoder: expected one of {sorted(DECODERS)}, got {name!r}")
        temperature = self.temperature
        if not (_is_number(temperature) and temperature >= 0):
            raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
        if self.policy is not None:
            if name != "xflow":
                raise ValueError(f"policy: only the xflow decoder takes a step policy, not {name!r}")
            if not isinstance(self.policy, StepPolicy):
                raise TypeError(f"policy: expected a mdfast.StepPolicy or None, got {type(self.policy).__name__}")
        for field, reader in DECODER_FIELDS.items():
            if reader != name and getattr(self, field) != _DEFAULTS[field]:
                raise TypeError(f"{field}: only the {reader} decoder reads {field}, not decoder {name!r}")
        if name == "xflow":
            self._check_xflow()
        if self.tau is not None and not (_is_number(self.tau) and 0.0 <= self.tau <= 1.0):
            raise ValueError(f"tau: expected a confidence threshold in [0, 1], got {self.tau!r}")
        if self.factor is not None and not (_is_number(self.factor) and self.factor > 0):
            raise ValueError(f"factor: expected a number > 0, got {self.factor!r}")
        if self.k is not None and not (_is_int(self.k) and 2 <= self.k <= 8):
            raise ValueError(f"k: expected an int in [2, 8] tokens to mix, got {self.k!r}")
        for field in ("w_s", "w_a", "w_b"):
            if getattr(self, field) is not None and not _is_number(getattr(self, field)):
                raise TypeError(f"{field}: expected a number, got {getattr(self, field)!r}")

    def _check_xflow(self) -> None:
        if self.temperature != 0:
            raise ValueError(
                "temperature: the x-flow decoder has no temperature (its randomness is sample=True with a policy)"
            )
        if self.config is not None and not isinstance(self.config, FlowConfig):
            raise TypeError(f"config: expected a mdfast.FlowConfig or None, got {type(self.config).__name__}")
        if self.record_rollout and not self.sample:
            raise ValueError("record_rollout: records sampled trajectories; pass sample=True and a policy")
        if self.sample and self.policy is None:
            raise ValueError("sample: draws the policy's actions; pass a policy (the heuristic step is deterministic)")

    def decoder_kwargs(self) -> dict:
        """The keywords of the decoder's constructor beyond the common ones: its own fields that are set."""
        kwargs = {f: getattr(self, f) for f, reader in DECODER_FIELDS.items() if reader == self.decoder}
        if self.decoder == "xflow":
            kwargs["policy"] = self.policy
        return {name: value for name, value in kwargs.items() if value is not None}

    def eos_ids(self) -> list[int] | None:
        """``eos_token_id`` as a list of ids (None: no EOS)."""
        if self.eos_token_id is None:
            return None
        return list(self.eos_token_id) if isinstance(self.eos_token_id, (list, tuple)) else [self.eos_token_id]

    def suppressed_ids(self) -> list[int] | None:
        """``suppress_tokens`` sorted without repeats (None: nothing suppressed)."""
        if self.suppress_tokens is None:
            return None
        return sorted(set(self.suppress_tokens)) or None


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DecodeOptions)}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _check_generator(generator, B: int | None) -> None:
    """None, a torch.Generator, or a non-empty list of them, one per row (B of them where B is known)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not (
        isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator)
    ):
        raise TypeError(
            f"generator: expected a torch.Generator, a list of them (one per row) or None, got {generator!r}"
        )
    if B is not None and len(generator) != B:
        raise ValueError(f"generator: expected one torch.Generator per row, {B}, got a list of {len(generator)}")


def _check_cache(cache, cache_refresh, cache_vicinity) -> None:
    """SPEC 8's cache mode, refresh period k (an int >= 1) and vicinity w (an int >= 0); k and w need a cache."""
    if cache is not None and cache not in CACHE_MODES:
        raise ValueError(f"cache: expected one of {CACHE_MODES} or None, got {cache!r}")
    if not (_is_int(cache_vicinity) and cache_vicinity >= 0):
        raise ValueError(
            f"cache_vicinity: expected an int >= 0 (positions recomputed beside the block), got {cache_vicinity!r}"
        )
    if cache_vicinity and cache is None:
        raise ValueError("cache_vicinity: widens a KV cache's steps, but cache is None; pass cache='dual' or 'prefix'")
    if cache_refresh is None:
        return
    if not (_is_int(cache_refresh) and cache_refresh >= 1):
        raise ValueError(
            f"cache_refresh: expected an int >= 1 (every k-th step of a block refreshes), got {cache_refresh!r}"
        )
    if cache is None:
        raise ValueError("cache_refresh: refreshes a KV cache, but cache is None; pass cache='dual' or 'prefix'")


def _check_eos(eos_token_id, V: int | None) -> None:
    """An id or a non-empty list of ids, in [0, V) where V is known (else >= 0)."""
    if eos_token_id is None:
        return
    ids = list(eos_token_id) if isinstance(eos_token_id, (list, tuple)) else [eos_token_id]
    if not ids or not all(_is_int(i) for i in ids):
        raise TypeError(f"eos_token_id: expected a token id (int) or a non-empty list of ids, got {eos_token_id!r}")
    if not all(0 <= i < (V if V is not None else float("inf")) for i in ids):
        where = f"[0, {V}) (the model's vocabulary)" if V is not None else ">= 0"
        raise ValueError(f"eos_token_id: expected ids in {where}, got {eos_token_id!r}")


def _check_suppress(suppress_tokens, V: int | None) -> None:
    """None or a list of ids, in [0, V) where V is known, at least one id of the vocabulary left."""
    if suppress_tokens is None:
        return
    ids = list(suppress_tokens) if isinstance(suppress_tokens, (list, tuple)) else None
    if ids is None or not all(_is_int(i) for i in ids):
        raise TypeError(f"suppress_tokens: expected a list of token ids (int) or None, got {suppress_tokens!r}")
    if not all(0 <= i < (V if V is not None else float("inf")) for i in ids):
        where = f"[0, {V}) (the model's vocabulary)" if V is not None else ">= 0"
        raise ValueError(f"suppress_tokens: expected ids in {where}, got {ids!r}")
    if V is not None and len(set(ids)) >= V:
        raise ValueError(f"suppress_tokens: every one of the {V} ids of the vocabulary is suppressed; none is left")
