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

    A step may be captured in a CUDA graph and replayed (``graphable``), so ``write_inputs`` and
    ``step`` only write into tensors that exist before the step (no attribute is rebound, nothing
    is read back to the host) and learn the step number from the device counter ``step_index``.
    Non-finite logits rows raise nowhere inside a step: they set the device flag ``nonfinite``,
    which ``check_finite`` turns into a ValueError once the loop is over.
    """

    full_entropy = False
    k = 4

    def __init__(self, adapter: ModelAdapter, B: int, N: int, *, backend: str, generator, temperature: float) -> None:
        self.adapter, self.B, self.N = adapter, B, N
        self.backend, self.generator, self.temperature = backend, generator, float(temperature)
        self.device = adapter.embedding.device
        self.step_index = torch.zeros((), dtype=torch.long, device=self.device)  # 0-based step of the block
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    @property
    def graphable(self) -> bool:
        """Whether a step may be replayed from a CUDA graph: not when it draws random numbers, nor on
        the torch backend (the reference reads values back to the host)."""
        logits_dtype = self.adapter.head.linear.weight.dtype
        return self.temperature == 0.0 and ops.resolve_backend(self.backend, self.device, logits_dtype) != "torch"

    @property
    def keeps_graph(self) -> bool:
        """Whether a step records autograd history (x-flow sampling keeps log pi(y)'s graph)."""
        return False

    def start_block(self, start: int, stop: int, steps: int) -> None:
        self.block, self.steps = slice(start, stop), steps
        self.step_index.zero_()

    def write_inputs(self, out: Tensor) -> None:
        raise NotImplementedError

    def step(self, logits: Tensor) -> None:
        """One decoding step on the block's logits (B, block, V), then the step counter moves on."""
        self.update(logits)
        self.step_index.add_(1)

    def update(self, logits: Tensor) -> None:
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
        stats = ops.token_stats(logits, self.k, self.full_entropy, backend=self.backend, check_finite=False)
        self.flag_nonfinite(stats.lse)
        return stats

    def flag_nonfinite(self, lse: Tensor) -> None:
        self.nonfinite |= ~torch.isfinite(lse).all()

    def check_finite(self) -> None:
        """Raise ValueError if any step's logits held a row that is not a finite distribution (one
        host synchronisation, after the loop: the tokens of such a run are never returned)."""
        if bool(self.nonfinite):
            raise ValueError(
                "logits: the model produced a row that is not a finite distribution (a NaN or +inf entry, or "
                "every entry -inf); no tokens are returned"
            )

    def at_step(self, schedule: Tensor) -> Tensor:
        """``schedule[step]`` for the current step, as a (1,) tensor read on the device."""
        return schedule.gather(0, self.step_index.view(1))


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
        self.counts = self.schedule(stop - start, steps)

    def schedule(self, n_masked: int, steps: int) -> Tensor:
        """``transfer_counts`` as a device tensor, made once: every block has the same length and
        number of steps, and a host-to-device copy waits for the device."""
        cached = getattr(self, "_schedule", None)
        if cached is None or cached[0] != (n_masked, steps):
            counts = torch.tensor(transfer_counts(n_masked, steps), dtype=torch.long, device=self.device)
            self._schedule = cached = ((n_masked, steps), counts)
        return cached[1]

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

    def update(self, logits: Tensor) -> None:
        x0, p_x0, stats = self.predict(logits)
        masked = self.masked()
        score = torch.where(masked, self.confidence(p_x0, stats), torch.full_like(p_x0, -math.inf))
        chosen = self.select(score, masked)
        self.commit(chosen, x0)
        self.after_step(stats, masked & ~chosen)

    def select(self, score: Tensor, masked: Tensor) -> Tensor:
        """SPEC 3 (LLaDA): the counts[step] most confident still-masked tokens of the block."""
        return top_positions(score, self.at_step(self.counts)) & masked

    def after_step(self, stats: ops.TokenStats, still_masked: Tensor) -> None:
        """A hook for decoders that shape the next inputs (soft-masking)."""
