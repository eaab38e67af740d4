"""What every decoder shares: its place in the loop, and the discrete masked-token state."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import ops
from ..models import ModelAdapter
from .schedule import top_positions, transfer_counts


class Decoder:
    """One decoding rule. The loop (``loop.py``) owns the model; a decoder owns the response state.

    Per block ``[start, stop)`` of the response the loop calls ``start_block``, then for each step
    ``write_inputs`` (the response's input embeddings for the next forward) and ``step`` (the
    logits of the block's rows), until ``block_finished``; ``tokens`` gives the response tokens.
    """

    full_entropy = False
    k = 4

    def __init__(self, adapter: ModelAdapter, B: int, N: int, *, backend: str, generator, temperature: float) -> None:
        self.adapter, self.B, self.N = adapter, B, N
        self.backend, self.generator, self.temperature = backend, generator, float(temperature)
        self.device = adapter.embedding.device

    def start_block(self, start: int, stop: int, steps: int) -> None:
        self.block, self.steps = slice(start, stop), steps

    def write_inputs(self, out: Tensor) -> None:
        raise NotImplementedError

    def step(self, logits: Tensor, step: int) -> None:
        raise NotImplementedError

    def block_finished(self, step: int) -> bool:
        """After ``step`` (0-based) of the current block: is the block done? The fixed-schedule
        decoders are done after their steps, decided on the host with no device sync."""
        return step + 1 >= self.steps

    def tokens(self) -> Tensor:
        raise NotImplementedError

    def record(self) -> dict[str, Tensor]:
        """The state after a step, for ``return_history``."""
        return {"tokens": self.tokens().clone()}

    def stats(self, logits: Tensor) -> ops.TokenStats:
        return ops.token_stats(logits, self.k, self.full_entropy, backend=self.backend)


class MaskedTokens(Decoder):
    """Discrete decoders (SPEC 3): the response is token ids, [MASK] where not yet decoded.

    Each step predicts x0 for every row of the block: with temperature 0, x0 = argmax and its
    confidence p(x0) = p(1); with temperature T > 0, Gumbel-max sampling x0 = argmax(z / T + g),
    g = -log(-log u), u ~ U(0, 1) drawn in float64 with the generator, and confidence p(x0) =
    exp(z_x0 - lse) under the untempered distribution (LLaDA's rule). ``confidence`` turns the
    statistics into the decoder's score; ``select`` picks the positions to commit.
    """

    def __init__(self, adapter, B, N, **kwargs) -> None:
        super().__init__(adapter, B, N, **kwargs)
        self.ids = torch.full((B, N), adapter.mask_token_id, dtype=torch.long, device=self.device)
        # Which positions hold a decoded token, kept apart from the ids so that a model predicting
        # the [MASK] id itself cannot make a decoded position look masked again.
        self.decoded = torch.zeros(B, N, dtype=torch.bool, device=self.device)

    def start_block(self, start, stop, steps) -> None:
        super().start_block(start, stop, steps)
        n_masked = stop - start
        self.counts = transfer_counts(n_masked, steps)

    def write_inputs(self, out: Tensor) -> None:
        out.copy_(self.adapter.embed(self.ids))

    def tokens(self) -> Tensor:
        return self.ids

    def masked(self) -> Tensor:
        """(B, block) True where the block's token is not decoded yet."""
        return ~self.decoded[:, self.block]

    def commit(self, chosen: Tensor, x0: Tensor) -> None:
        """Decode the ``chosen`` (B, block) positions as ``x0``; the others stay as they are."""
        self.ids[:, self.block] = torch.where(chosen, x0, self.ids[:, self.block])
        self.decoded[:, self.block] |= chosen

    def predict(self, logits: Tensor) -> tuple[Tensor, Tensor, ops.TokenStats]:
        """(x0, p(x0), statistics) for each row of the block."""
        stats = self.stats(logits)
        if self.temperature == 0.0:
            return stats.argmax, stats.topk_probs[..., 0], stats
        u = torch.rand(logits.shape, generator=self.generator, dtype=torch.float64, device=logits.device)
        x0 = torch.argmax(logits.double() / self.temperature - torch.log(-torch.log(u)), dim=-1)
        p_x0 = torch.exp(logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1).float() - stats.lse)
        return x0, p_x0, stats

    def confidence(self, p_x0: Tensor, stats: ops.TokenStats) -> Tensor:
        return p_x0

    def step(self, logits: Tensor, step: int) -> None:
        x0, p_x0, stats = self.predict(logits)
        masked = self.masked()
        score = torch.where(masked, self.confidence(p_x0, stats), torch.full_like(p_x0, -math.inf))
        chosen = self.select(score, masked, step)
        self.commit(chosen, x0)
        self.after_step(stats, masked & ~chosen)

    def select(self, score: Tensor, masked: Tensor, step: int) -> Tensor:
        """SPEC 3 (LLaDA): the counts[step] most confident still-masked tokens of the block."""
        return top_positions(score, self.counts[step]) & masked

    def after_step(self, stats: ops.TokenStats, still_masked: Tensor) -> None:
        """A hook for decoders that shape the next inputs (soft-masking)."""
