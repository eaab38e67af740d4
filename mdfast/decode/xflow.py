"""SPEC 2 as a decoder: the x-prediction flow over each row's current block of masked positions.

SPEC 7: "x-flow's state (X, t) exists for positions in M only": X (B, W, E) float32 and t (B, W),
one row per slot of ``schedule.Schedule`` (row b's masked positions, left to right), starting at
the mask embedding m and 0. Each step is one ``mdfast.xflow_step`` (statistics, policy action, flow
update or re-edit, hard commit) on the (B, n) entries of each row's current block, with rho =
l / max(T - 1, 1) for step l of the T steps of that row's block (a per-row device table). SPEC 2:
"Semi-autoregressive blocks: the flow runs inside the current block only; earlier blocks keep their
final tokens as plain embeddings, later blocks stay at m, t = 0": when a row opens block j > 0, its
block j - 1 becomes X = E[token], t = 1 (``begin_step``). A position's token is the x_pred of the
last forward of its block (SPEC 2.8).

Padding entries of a block (``schedule.py``) start at X = m, t = 1 and see the fixed distribution
p(mask id) = 1: c = 1, no re-edit, t stays 1 (never hard-committed), X stays m, token = mask id.

Sampling (``sample=True``, a policy) appends each step's log pi(y) (B, n) to ``log_probs`` (padding
entries included), differentiable in the policy's weights. With ``record_rollout=True`` as well,
every step is recorded per slot for SPEC 6.2's policy-gradient training (``rollout``): the policy
state s_{l,i}, the draw y_{l,i}, log pi_old(y | s) (no graph), active_{l,i} = the token took the
flow update (in the row's current block, not re-edited, t before the step < 0.99), the re-edits,
the hard-committed slot, and t_final_i = t after the token's last step in its block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..config import FlowConfig
from ..policy import StepPolicy
from .base import Decoder


class XFlow(Decoder):
    """The x-prediction flow decoder (SPEC 2): per slot a continuous state X and a time t (see the module docstring)."""

    def __init__(
        self,
        adapter,
        schedule,
        *,
        policy: StepPolicy | None = None,
        config: FlowConfig | None = None,
        sample: bool = False,
        record_rollout: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(adapter, schedule, **kwargs)
        if config is None:
            config = (
                FlowConfig(k=policy.k, a_min=policy.a_min, a_max=policy.a_max) if policy is not None else FlowConfig()
            )
        self.policy, self.config, self.sample = policy, config, bool(sample)
        W_e = adapter.embedding
        self.mask_embedding = W_e[adapter.mask_token_id].detach()
        E = W_e.shape[1]
        self.X = self.mask_embedding.float().expand(self.B, self.W, E).clone()
        self.t = torch.where(schedule.valid, 0.0, 1.0)  # padding slots sit at t = 1
        self.ids = torch.full((self.B, self.W), adapter.mask_token_id, dtype=torch.long, device=self.device)
        self.log_probs: list[torch.Tensor] = []
        self.rollout = _RolloutRecord(self.B, schedule.steps, self.W, config, self.device) if record_rollout else None

    @property
    def capturable(self):
        return not self.sample and super().capturable

    @property
    def records_autograd(self):
        return self.sample

    def begin_step(self, block):
        """Finish the previous block of every row whose step opens block j > 0.

        Block j - 1 is fed as the plain embeddings of its tokens from now on (X = E[token], t = 1);
        every other slot keeps its state.
        """
        opening = self.schedule.now(self.schedule.opens_block)
        previous = self.schedule.block((self.block_index() - 1).clamp_min(0))
        finished = opening.unsqueeze(1) & previous.valid
        slots = previous.slots.unsqueeze(-1).expand(-1, -1, self.X.shape[-1])
        final = F.embedding(self.ids.gather(1, previous.slots), self.adapter.embedding.detach()).float()
        self.X.scatter_(1, slots, torch.where(finished.unsqueeze(-1), final, self.X.gather(1, slots)))
        self.t.scatter_(1, previous.slots, torch.where(finished, 1.0, self.t.gather(1, previous.slots)))

    def write_inputs(self, out):
        out.copy_(self.X * self.adapter.embed_scale)

    def update(self, logits, block):
        slots = block.slots.unsqueeze(-1).expand(-1, -1, self.X.shape[-1])
        X, t = self.X.gather(1, slots), self.t.gather(1, block.slots)
        t_before = t.clone() if self.rollout is not None else None
        result = ops.xflow_step(
            logits,
            X,
            t,
            self.adapter.embedding.detach(),
            self.mask_embedding,
            self.policy,
            self.schedule.now(self.schedule.rho),  # l / max(T - 1, 1) per row, on the device
            config=self.config,
            sample=self.sample,
            generator=self.generator if self.sample else None,
            inplace=True,
            backend=self.backend,
            check_finite=False,
        )
        self.flag_nonfinite(result.lse)
        self.X.scatter_(1, slots, X)
        self.t.scatter_(1, block.slots, t)
        self.ids.scatter_(1, block.slots, result.tokens)
        if result.log_prob is not None:
            self.log_probs.append(result.log_prob)
        if self.rollout is not None:
            self.rollout.add(block, result, t_before, t)

    def tokens(self):
        return self.ids

    def record(self):
        n = self.schedule.longest
        return {"tokens": self.ids[:, :n].clone(), "X": self.X[:, :n].clone(), "t": self.t[:, :n].clone()}


class _RolloutRecord:
    """SPEC 6.2's record of a sampled x-flow call, per row, step and slot (B, T, W).

    Filled step by step by ``XFlow.update`` (a sampled call is never captured in a CUDA graph, so a
    host counter numbers the steps); ``tensors`` gives it over the first ``n`` slots.
    """

    def __init__(self, B: int, T: int, W: int, config: FlowConfig, device: torch.device) -> None:
        self.step, self.threshold = 0, config.commit_threshold
        self.states = torch.zeros(B, T, W, config.k + 4, device=device)
        self.draws = torch.zeros(B, T, W, device=device)
        self.log_probs = torch.zeros(B, T, W, device=device)
        self.active = torch.zeros(B, T, W, dtype=torch.bool, device=device)
        self.reedited = torch.zeros(B, T, W, dtype=torch.bool, device=device)
        self.committed = torch.full((B, T), -1, dtype=torch.long, device=device)
        self.t_final = torch.zeros(B, W, device=device)

    def add(self, block, result, t_before: torch.Tensor, t_after: torch.Tensor) -> None:
        """One step on the (B, n) entries of each row's current block (``block.slots``)."""
        l, slots, valid = self.step, block.slots, block.valid
        width = self.states.shape[-1]
        state = torch.where(valid.unsqueeze(-1), result.state.detach(), 0.0)  # padding entries: empty
        self.states[:, l].scatter_(1, slots.unsqueeze(-1).expand(-1, -1, width), state)
        self.draws[:, l].scatter_(1, slots, torch.where(valid, result.draw, 0.0))
        self.log_probs[:, l].scatter_(1, slots, torch.where(valid, result.log_prob.detach(), 0.0))
        active = valid & ~result.reedited & (t_before < self.threshold)  # took the flow update
        self.active[:, l].scatter_(1, slots, active)
        self.reedited[:, l].scatter_(1, slots, result.reedited & valid)
        committed = slots.gather(1, result.committed.clamp_min(0).unsqueeze(1)).squeeze(1)
        self.committed[:, l] = torch.where(result.committed >= 0, committed, -1)
        self.t_final.scatter_(1, slots, torch.where(valid, t_after, self.t_final.gather(1, slots)))
        self.step += 1

    def tensors(self, n: int) -> dict[str, torch.Tensor]:
        """The record over slots 0 .. n - 1 (a slot index is the decoded position's rank in its row)."""
        return {
            "states": self.states[:, :, :n],
            "draws": self.draws[:, :, :n],
            "log_probs": self.log_probs[:, :, :n],
            "active": self.active[:, :, :n],
            "reedited": self.reedited[:, :, :n],
            "committed": torch.where(self.committed < n, self.committed, -1),
            "t_final": self.t_final[:, :n],
        }
