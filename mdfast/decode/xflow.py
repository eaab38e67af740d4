"""SPEC 2 as a decoder: the x-prediction flow over the current block of the response.

Every token of the block keeps an embedding X_i (float32) and a progress t_i, starting at the mask
embedding m and 0; each step is one ``mdfast.xflow_step`` (statistics, policy action, flow update
or re-edit, hard commit) on the block's logits, with rho = l / max(T - 1, 1) for step l of the T
steps of the block. The block's tokens are the x_pred of its last forward (SPEC 2.8); earlier
blocks are then fed as the plain embeddings of those tokens, later blocks stay at m.
"""

from __future__ import annotations

import torch

from .. import ops
from ..config import FlowConfig
from ..policy import StepPolicy
from .base import Decoder


class XFlow(Decoder):
    def __init__(
        self,
        adapter,
        B,
        N,
        *,
        policy: StepPolicy | None = None,
        config: FlowConfig | None = None,
        sample: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(adapter, B, N, **kwargs)
        if self.temperature != 0.0:
            raise ValueError(
                "temperature: the x-flow decoder has no temperature (its randomness is sample=True with a policy)"
            )
        if config is None:
            config = (
                FlowConfig(k=policy.k, a_min=policy.a_min, a_max=policy.a_max) if policy is not None else FlowConfig()
            )
        self.policy, self.config, self.sample = policy, config, bool(sample)
        W_e = adapter.embedding
        self.mask_embedding = W_e[adapter.mask_token_id].detach()
        E = W_e.shape[1]
        self.X = self.mask_embedding.float().expand(B, N, E).clone()
        self.t = torch.zeros(B, N, device=self.device)
        self.ids = torch.full((B, N), adapter.mask_token_id, dtype=torch.long, device=self.device)
        self.log_probs: list[torch.Tensor] = []

    def start_block(self, start, stop, steps):
        previous = getattr(self, "block", None)
        if previous is not None:  # the finished block is fed as the plain embeddings of its tokens
            self.X[:, previous] = self.adapter.embedding.detach()[self.ids[:, previous]].float()
            self.t[:, previous] = 1.0
        super().start_block(start, stop, steps)
        self.X_block = self.X[:, self.block].contiguous()
        self.t_block = self.t[:, self.block].contiguous()

    @property
    def graphable(self):
        return not self.sample and super().graphable

    @property
    def keeps_graph(self):
        return self.sample

    def write_inputs(self, out):
        out.copy_(self.X * self.adapter.embed_scale)

    def update(self, logits):
        rho = self.step_index / max(self.steps - 1, 1)  # l / max(T - 1, 1), on the device
        result = ops.xflow_step(
            logits,
            self.X_block,
            self.t_block,
            self.adapter.embedding.detach(),
            self.mask_embedding,
            self.policy,
            rho,
            config=self.config,
            sample=self.sample,
            generator=self.generator if self.sample else None,
            inplace=True,
            backend=self.backend,
            check_finite=False,
        )
        self.flag_nonfinite(result.lse)
        self.ids[:, self.block] = result.tokens
        self.X[:, self.block] = self.X_block
        self.t[:, self.block] = self.t_block
        if result.log_prob is not None:
            self.log_probs.append(result.log_prob)

    def tokens(self):
        return self.ids

    def record(self):
        return {"tokens": self.ids.clone(), "X": self.X.clone(), "t": self.t.clone()}
