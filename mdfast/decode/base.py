"""What every decoder shares: its place in the loop, and the discrete masked-token state."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import ops
from ..models import ModelAdapter
from .schedule import Block, Schedule, top_positions


class Decoder:
    """One decoding rule: the state of the decoded positions, per row in the (B, W) slots of ``schedule``.

    The loop (``loop.py``) owns the model; a decoder owns its state (``schedule.py``: the slots).

    Each step the loop takes the current block of every row (``block_index`` -> ``Schedule.block``),
    calls ``begin_step`` (bookkeeping before the forward), ``write_inputs`` (the input embeddings
    of every slot for the next forward) and ``step`` (the logits (B, n, V) of the block's entries);
    the loop ends when ``finished``. ``tokens`` gives the decoded tokens per slot.

    A step may be captured in a CUDA graph and replayed (``capturable``), so ``begin_step``,
    ``write_inputs`` and ``step`` only write into tensors that exist before the step (no attribute
    is rebound, nothing is read back to the host) and learn the step number from the device counter
    ``schedule.step_index``. Non-finite logits rows raise nowhere inside a step: they set the device
    flag ``nonfinite``, which ``check_finite`` turns into a ValueError once the loop is over.
    """

    full_entropy = False
    k = 4

    def __init__(
        self, adapter: ModelAdapter, schedule: Schedule, *, backend: str, generator, temperature: float
    ) -> None:
        self.adapter, self.schedule = adapter, schedule
        self.B, self.W = schedule.B, schedule.width
        if isinstance(generator, (list, tuple)) and len(generator) != self.B:
            raise ValueError(
                f"generator: expected one torch.Generator per row, {self.B}, got a list of {len(generator)}"
            )
        self.backend, self.generator, self.temperature = backend, generator, float(temperature)
        self.device = adapter.embedding.device
        self.nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)

    @property
    def capturable(self) -> bool:
        """Whether a step may be replayed from a CUDA graph.

        Not when it draws random numbers, nor on the torch backend (the reference reads values back
        to the host).
        """
        logits_dtype = self.adapter.head.linear.weight.dtype
        return self.temperature == 0.0 and ops.resolve_backend(self.backend, self.device, logits_dtype) != "torch"

    @property
    def records_autograd(self) -> bool:
        """Whether a step records autograd history (x-flow sampling keeps log pi(y)'s graph)."""
        return False

    @property
    def max_steps(self) -> int:
        """The most steps the call can take (the fixed schedules: exactly ``schedule.steps``)."""
        return self.schedule.steps

    def block_index(self) -> Tensor:
        """(B,) the block each row runs at the current step, on the device."""
        return self.schedule.now(self.schedule.block_of)

    def begin_step(self, block: Block) -> None:
        """Bookkeeping before the step's forward (x-flow finishes a row's previous block)."""

    def write_inputs(self, out: Tensor) -> None:
        """The input embedding of every slot (B, W, E) for the next forward (padding slots: any)."""
        raise NotImplementedError

    def step(self, logits: Tensor, block: Block) -> None:
        """One decoding step on the block's logits (B, n, V), then the step counter moves on."""
        self.update(logits, block)
        self.schedule.advance()

    def update(self, logits: Tensor, block: Block) -> None:
        raise NotImplementedError

    def finished(self, step: int) -> bool:
        """Whether decoding is done after ``step`` (0-based) of the call.

        The fixed schedules are done after ``schedule.steps`` steps, decided on the host with no device sync.
        """
        return step + 1 >= self.schedule.steps

    def blocks_at(self, step: int) -> list[int]:
        """Host: the block each row ran at ``step`` (-1: none), for ``GenerateOutput.graphed_blocks``."""
        return self.schedule.block_of_step(step)

    def tokens(self) -> Tensor:
        """(B, W) the token of every slot (the mask id where none is decoded yet, and at padding)."""
        raise NotImplementedError

    def record(self) -> dict[str, Tensor]:
        """The state after a step, for ``return_history``, over the first max |M_b| slots."""
        return {"tokens": self.tokens()[:, : self.schedule.longest].clone()}

    def stats(self, logits: Tensor) -> ops.TokenStats:
        stats = ops.token_stats(logits, self.k, self.full_entropy, backend=self.backend, check_finite=False)
        self.flag_nonfinite(stats.lse)
        return stats

    def flag_nonfinite(self, lse: Tensor) -> None:
        self.nonfinite |= ~torch.isfinite(lse).all()

    def check_finite(self) -> None:
        """Raise ValueError if any step's logits held a row that is not a finite distribution.

        One host synchronisation, after the loop: the tokens of such a run are never returned.
        """
        if bool(self.nonfinite):
            raise ValueError(
                "logits: the model produced a row that is not a finite distribution (a NaN or +inf entry, or "
                "every entry -inf); no tokens are returned"
            )


class MaskedTokens(Decoder):
    """Discrete decoders (SPEC 3): each slot holds a token id, [MASK] where not yet decoded.

    Each step predicts x0 for every entry of the block: with temperature 0, x0 = argmax and its
    confidence p(x0) = p(1); with temperature T > 0, Gumbel-max sampling x0 = argmax(z / T + g),
    g = -log(-log u), u ~ U(0, 1) drawn in float64 with the generator (for every entry of the
    (B, n, V) block logits, padding entries included; row b's with generator b when it is a list
    of one per row), and confidence p(x0) = exp(z_x0 - lse) under the untempered distribution
    (LLaDA's rule). ``confidence`` turns the statistics into the
    decoder's score; ``select`` picks the entries to commit among the still-masked real ones
    (padding entries count as decoded: score -inf, never selected).
    """

    def __init__(self, adapter, schedule, **kwargs) -> None:
        super().__init__(adapter, schedule, **kwargs)
        self.ids = torch.full((self.B, self.W), adapter.mask_token_id, dtype=torch.long, device=self.device)
        # Which slots hold a decoded token, kept apart from the ids so that a model predicting the
        # [MASK] id itself cannot make a decoded position look masked again.
        self.decoded = torch.zeros(self.B, self.W, dtype=torch.bool, device=self.device)

    def write_inputs(self, out: Tensor) -> None:
        out.copy_(self.adapter.embed(self.ids))

    def tokens(self) -> Tensor:
        return self.ids

    def masked(self, block: Block) -> Tensor:
        """(B, n) True where the block's entry is a real position not decoded yet."""
        return ~self.decoded.gather(1, block.slots) & block.valid

    def commit(self, block: Block, chosen: Tensor, x0: Tensor) -> None:
        """Decode the ``chosen`` (B, n) entries of the block as ``x0``; the others stay as they are."""
        self.ids.scatter_(1, block.slots, torch.where(chosen, x0, self.ids.gather(1, block.slots)))
        self.decoded.scatter_(1, block.slots, self.decoded.gather(1, block.slots) | chosen)

    def predict(self, logits: Tensor) -> tuple[Tensor, Tensor, ops.TokenStats]:
        """(x0, p(x0), statistics) for each entry of the block."""
        stats = self.stats(logits)
        if self.temperature == 0.0:
            return stats.argmax, stats.topk_probs[..., 0], stats
        u = self.uniform(logits.shape)
        x0 = torch.argmax(logits.double() / self.temperature - torch.log(-torch.log(u)), dim=-1)
        p_x0 = torch.exp(logits.gather(-1, x0.unsqueeze(-1)).squeeze(-1).float() - stats.lse)
        return x0, p_x0, stats

    def uniform(self, shape: torch.Size) -> Tensor:
        """u ~ U(0, 1) of ``shape`` (B, ...) in float64: with a list of generators, row b's from generator b."""
        if isinstance(self.generator, (list, tuple)):
            rows = [torch.rand(shape[1:], generator=g, dtype=torch.float64, device=self.device) for g in self.generator]
            return torch.stack(rows)
        return torch.rand(shape, generator=self.generator, dtype=torch.float64, device=self.device)

    def confidence(self, p_x0: Tensor, stats: ops.TokenStats) -> Tensor:
        return p_x0

    def update(self, logits: Tensor, block: Block) -> None:
        x0, p_x0, stats = self.predict(logits)
        masked = self.masked(block)
        score = torch.where(masked, self.confidence(p_x0, stats), torch.full_like(p_x0, -math.inf))
        chosen = self.select(score, masked)
        self.commit(block, chosen, x0)
        self.after_step(block, stats, masked & ~chosen)

    def select(self, score: Tensor, masked: Tensor) -> Tensor:
        """SPEC 3 (LLaDA): the counts[step] most confident still-masked tokens of each row's block."""
        return top_positions(score, self.schedule.now(self.schedule.counts).unsqueeze(1)) & masked

    def after_step(self, block: Block, stats: ops.TokenStats, still_masked: Tensor) -> None:
        """A hook after the commit; ``still_masked`` (B, n): the entries left masked.

        Soft-masking shapes the next inputs from it, threshold decoding moves a filled block on.
        """
