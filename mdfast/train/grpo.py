"""PolicyGRPOTrainer: GRPO for the step policy, the model frozen; only StepPolicy's weights train (SPEC 6.2).

It follows TRL's GRPOTrainer where the two meet (config names, the reward signature
``f(prompts, completions, completion_ids, **columns) -> list[float]``, metric names) and SPEC 6.2 where they differ:
the policy acts per token and step, the reward is per token (R_{g,i} = R_task_g + lambda t_final_{g,i}), and the
update reads the stored states and draws, so ``num_iterations`` epochs per rollout batch cost no model forward.
One step: this rank's prompts, G trajectories each (``collect_rollouts``), task rewards, advantages per group and
token position, then ``num_iterations`` AdamW steps of ``policy_grpo_loss``. Under ``torchrun`` every rank takes
its share of the prompts and the per-group gradients are summed over all ranks in one fixed order
(``distributed.py``): N ranks train exactly the policy one process trains on the same data and seeds.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..config import FlowConfig
from ..patching import patch, unpatch
from ..policy import StepPolicy
from . import distributed, grpo_checkpoints
from .grpo_config import PolicyGRPOConfig, lr_factor
from .grpo_examples import RewardFunction, example_template, reward_name, reward_table
from .grpo_metrics import LOSS_METRICS, average, log2_actions, loss_metrics, rollout_metrics
from .metrics_log import MetricsLog
from .policy_loss import group_advantages, policy_grpo_loss, policy_log_prob, token_rewards
from .rollouts import Rollouts, collect_rollouts

__all__ = ["PolicyGRPOConfig", "PolicyGRPOTrainer"]


class PolicyGRPOTrainer:
    """GRPO for ``policy`` (a StepPolicy, trained in place) on ``model``, frozen.

    - model: put in eval mode, its parameters' requires_grad set to False, run under no_grad, patched with
      ``mdfast.patch`` for the run.
    - reward_funcs: one function or a list, each ``f(prompts=..., completions=..., completion_ids=...,
      **columns) -> list[float | None]`` (None: not applicable, as TRL); completions are decoded text when
      ``processing_class`` is given, else the id lists. The task reward is their ``reward_weights``-weighted sum
      (NaN-skipping); token i of trajectory g gets R_task_g + lam t_final_{g,i}.
    - train_dataset: a sequence of dicts (a list, or a datasets.Dataset), the examples of ``grpo_examples``.
    - args: a PolicyGRPOConfig (default: its defaults).
    - eval_fn: ``eval_fn(policy) -> dict[str, float]``, run every eval_steps (and before the first step) on every
      rank (it may split its own work); rank 0's result is logged as "eval/<name>".
    - processing_class: the tokenizer of text prompts and completions (optional).
    - mask_token_id: default the model config's, else the processing_class's.
    - flow_config: x-flow's constants (default: the policy's k, a_min, a_max).
    """

    def __init__(
        self,
        policy: StepPolicy,
        model,
        reward_funcs: RewardFunction | Sequence[RewardFunction],
        train_dataset,
        args: PolicyGRPOConfig | None = None,
        eval_fn: Callable[[StepPolicy], dict[str, float]] | None = None,
        *,
        processing_class=None,
        mask_token_id: int | None = None,
        flow_config: FlowConfig | None = None,
    ) -> None:
        if not isinstance(policy, StepPolicy):
            raise TypeError(f"policy: expected a mdfast.StepPolicy, got {type(policy).__name__}")
        args = PolicyGRPOConfig() if args is None else args
        if not isinstance(args, PolicyGRPOConfig):
            raise TypeError(f"args: expected a PolicyGRPOConfig, got {type(args).__name__}")
        self.reward_funcs, weights = _checked_rewards(reward_funcs, args)
        if len(train_dataset) == 0:
            raise ValueError("train_dataset: empty")
        self.policy, self.model, self.args, self.eval_fn = policy, model, args, eval_fn
        self.train_dataset, self.processing_class = train_dataset, processing_class
        self.reward_names = [reward_name(f) for f in self.reward_funcs]
        self.device = policy.fc1.weight.device
        model_device = model.get_input_embeddings().weight.device
        if model_device != self.device:
            raise ValueError(f"policy: expected its weights on the model's device {model_device}, got {self.device}")
        self.world = distributed.world(self.device)
        self.reward_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        model_config = getattr(model, "config", None)
        self.mask_token_id = first_set(
            mask_token_id,
            getattr(model_config, "mask_token_id", None),
            getattr(processing_class, "mask_token_id", None),
        )
        if self.mask_token_id is None:
            raise ValueError("mask_token_id: neither the model's config nor the processing_class names one; pass it")
        self.pad_token_id = first_set(
            getattr(processing_class, "pad_token_id", None), getattr(model_config, "pad_token_id", None), 0
        )
        self.flow_config = flow_config or FlowConfig(k=policy.k, a_min=policy.a_min, a_max=policy.a_max)
        model.requires_grad_(False)
        model.eval()
        self.ref_policy = copy.deepcopy(policy).requires_grad_(False) if args.beta > 0 else None
        self.optimizer = torch.optim.AdamW(
            policy.parameters(),
            lr=args.learning_rate,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(args))
        self.global_step = 0
        self.history: list[dict] = []
        self._orders: dict[int, Tensor] = {}

    # -- the loop -----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: bool | str | None = None) -> list[dict]:
        """Run until ``max_steps``; returns the logged records (rank 0; the other ranks get []).

        resume_from_checkpoint: True for the latest checkpoint in output_dir, or a checkpoint folder.
        """
        args = self.args
        if resume_from_checkpoint:
            path = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else self.latest_checkpoint()
            self.load_checkpoint(path)
        patched = getattr(self.model, "mdfast_adapter", None) is not None
        if not patched:
            patch(self.model, mask_token_id=self.mask_token_id, backend=args.backend)
        log = None
        if self.world.is_main:
            log = MetricsLog(
                args.output_dir, total=args.max_steps, initial=self.global_step, progress=not args.disable_tqdm
            )
        try:
            self._loop(log)
            if self.world.is_main:
                self.policy.save(os.path.join(args.output_dir, grpo_checkpoints.POLICY_FILE))
        finally:
            if log is not None:
                log.close()
            if not patched:
                unpatch(self.model)
        return self.history if self.world.is_main else []

    def _loop(self, log: MetricsLog | None) -> None:
        """The steps from global_step to max_steps, with their logging, evaluation and checkpoints."""
        args, window = self.args, []
        if args.eval_steps and self.global_step == 0:
            self._evaluate(log)
        while self.global_step < args.max_steps:
            metrics, histogram = self.training_step()
            self.global_step += 1
            window.append(metrics)
            if log is not None:
                log.advance({"reward": metrics["reward"]})
            if self.global_step % args.logging_steps == 0 or self.global_step == args.max_steps:
                record = average(window)
                window = []
                self.history.append({"step": self.global_step, **record})
                if log is not None:
                    log.write(self.global_step, record, {"policy/log2_action": histogram})
            if args.eval_steps and self.global_step % args.eval_steps == 0:
                self._evaluate(log)
            if args.save_steps and self.global_step % args.save_steps == 0:
                self.save_checkpoint()
        if not (args.save_steps and self.global_step % args.save_steps == 0):
            self.save_checkpoint()

    def training_step(self) -> tuple[dict, Tensor]:
        """One GRPO step on this rank's prompts: rollouts, rewards, advantages, num_iterations policy updates.

        Returns the step's metrics (identical on every rank) and the log2 a of this rank's active draws.
        """
        args, G = self.args, self.args.num_generations
        share = args.per_device_train_batch_size
        first = (self.global_step * self.world.size + self.world.rank) * share  # global index of our first group
        examples = [self._example(first + j) for j in range(share)]
        groups: list[Rollouts] = []
        for start in range(0, share, args.groups_per_rollout_batch):
            part = examples[start : start + args.groups_per_rollout_batch]
            rollouts = self._rollouts(part, first + start)
            groups += [rollouts.rows(slice(g * G, (g + 1) * G)) for g in range(len(part))]
        per_func = self._task_rewards(examples, groups)  # (share * G, F)
        task = (per_func * self.reward_weights).nansum(1)
        advantages = [
            group_advantages(
                token_rewards(task[g * G : (g + 1) * G], rollouts.t_final, args.lam),
                G,
                scale_rewards=args.scale_rewards,
            )
            for g, rollouts in enumerate(groups)
        ]
        learning_rate = self.scheduler.get_last_lr()[0]
        update = self._update(groups, advantages)
        self.scheduler.step()
        metrics = {
            **rollout_metrics(groups, per_func, task, self.reward_names, self.flow_config),
            **update,
            "learning_rate": learning_rate,
        }
        return metrics, log2_actions(groups, self.flow_config)

    # -- pieces of a step ---------------------------------------------------------------------

    def _example(self, index: int) -> dict:
        """The example at ``index`` of the endless stream: the dataset in a fresh seeded order every pass."""
        n = len(self.train_dataset)
        epoch, position = divmod(index, n)
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch))}
        return self.train_dataset[int(self._orders[epoch][position])]

    def _rollouts(self, examples: list[dict], first_group: int) -> Rollouts:
        """G trajectories of each example, decoded as one left-padded batch.

        The draws come from a generator seeded by (seed, the global index of the batch's first group).
        """
        templates = [
            example_template(e, self.mask_token_id, self.args.max_completion_length, self.processing_class)
            for e in examples
        ]
        width = max(len(t) for t in templates)
        ids = torch.tensor([[self.pad_token_id] * (width - len(t)) + t for t in templates], device=self.device)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in templates], device=self.device)
        n_decoded = int((ids == self.mask_token_id).logical_and(mask.bool()).sum(1).max())
        generator = torch.Generator(device=self.device).manual_seed(rollout_seed(self.args.seed, first_group))
        return collect_rollouts(
            self.model,
            self.policy,
            ids,
            None if bool(mask.all()) else mask,
            num_generations=self.args.num_generations,
            steps=self.args.steps_for(n_decoded),
            block_length=self.args.block_length,
            config=self.flow_config,
            generator=generator,
            mask_token_id=self.mask_token_id,
            backend=self.args.backend,
            suppress_tokens=self.args.suppress_tokens,
        )

    def _task_rewards(self, examples: list[dict], groups: list[Rollouts]) -> Tensor:
        """(trajectories, reward functions): each function's reward of each trajectory (NaN for None)."""
        completion_ids = [rollouts.completion_ids.tolist() for rollouts in groups]
        table = reward_table(self.reward_funcs, examples, completion_ids, self.processing_class)
        return torch.tensor(table, dtype=torch.float32, device=self.device).T.contiguous()

    def _update(self, groups: list[Rollouts], advantages: list[Tensor]) -> dict[str, float]:
        """num_iterations AdamW steps of the PPO-clip loss over every rank's groups.

        log pi_old is recomputed from the stored (s, y) by ``policy_log_prob`` before the first epoch, the very
        computation the loss makes, so the first epoch's ratio is exactly 1 (``Rollouts.log_probs`` agree to
        float32 rounding). Each group's gradient is taken alone, the loss normalised by the global count of active
        entries; all groups' gradients (gathered from every rank) are summed in the global group order, so the
        result does not depend on the number of ranks.
        """
        local_active = sum(int(rollouts.active.sum()) for rollouts in groups)
        total_active = int(distributed.all_reduce_sum(torch.tensor([local_active], device=self.device)).item())
        old = [self._old_log_probs(rollouts) for rollouts in groups]
        names = [*LOSS_METRICS, *(["kl"] if self.ref_policy is not None else [])]
        sums = torch.zeros(2 + len(names), device=self.device, dtype=torch.float64)
        grad_norms = []
        for _ in range(self.args.num_iterations):
            flat, rows = [], []
            for rollouts, old_log_probs, A in zip(groups, old, advantages):
                gradient, row = self._group_gradient(rollouts, old_log_probs, A, max(total_active, 1), names)
                flat.append(gradient)
                rows.append(row)
            grad_norms.append(self._apply(distributed.all_gather_rows(torch.stack(flat)).sum(0)))
            sums += distributed.all_gather_rows(torch.stack(rows).double()).sum(0)
        return loss_metrics(sums, names, self.args.num_iterations, grad_norms)

    def _old_log_probs(self, rollouts: Rollouts) -> Tensor:
        """log pi_old(y | s) of the active entries (0 elsewhere), the policy as it is now."""
        with torch.no_grad():
            log_prob = torch.zeros_like(rollouts.draws)
            log_prob[rollouts.active] = policy_log_prob(
                self.policy, rollouts.states[rollouts.active], rollouts.draws[rollouts.active]
            )
        return log_prob

    def _group_gradient(
        self, rollouts: Rollouts, old_log_probs: Tensor, advantages: Tensor, normalizer: int, names: list[str]
    ) -> tuple[Tensor, Tensor]:
        """One group's loss gradient, flat, and its metric row [loss, active entries, each of ``names`` x entries]."""
        args, params = self.args, list(self.policy.parameters())
        loss, metrics = policy_grpo_loss(
            self.policy,
            rollouts.states,
            rollouts.draws,
            old_log_probs,
            advantages.unsqueeze(1),
            rollouts.active,
            epsilon=args.epsilon,
            beta=args.beta,
            ref_policy=self.ref_policy,
            normalizer=normalizer,
        )
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        flat = torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])
        n = metrics["num_active"]
        return flat, torch.stack([loss.detach(), n, *(metrics[name] * n for name in names)])

    def _apply(self, gradient: Tensor) -> float:
        """One AdamW step with the summed flat ``gradient``, clipped to max_grad_norm; returns the norm before."""
        params = list(self.policy.parameters())
        offset = 0
        for p in params:
            p.grad = gradient[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        max_norm = self.args.max_grad_norm if self.args.max_grad_norm > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _evaluate(self, log: MetricsLog | None) -> None:
        results = self.eval_fn(self.policy) if self.eval_fn is not None else {}
        if results:
            record = {f"eval/{name}": float(value) for name, value in results.items()}
            self.history.append({"step": self.global_step, **record})
            if log is not None:
                log.write(self.global_step, record)

    # -- checkpoints (grpo_checkpoints.py) ----------------------------------------------------

    def save_checkpoint(self) -> str:
        """Write ``<output_dir>/checkpoint-<step>/``; returns its path."""
        return grpo_checkpoints.save_checkpoint(self)

    def latest_checkpoint(self) -> str:
        """The latest complete checkpoint folder in output_dir."""
        return grpo_checkpoints.latest_checkpoint(self.args.output_dir)

    def load_checkpoint(self, path: str) -> None:
        """Restore the policy, the initial policy, the optimizer, the scheduler and the step from ``path``."""
        grpo_checkpoints.load_checkpoint(self, path)


def _checked_rewards(reward_funcs, args: PolicyGRPOConfig) -> tuple[list[RewardFunction], list[float]]:
    """The reward functions as a list, and their weights (default 1 each)."""
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    if not funcs or not all(callable(f) for f in funcs):
        raise TypeError("reward_funcs: expected a reward function or a non-empty list of them")
    weights = args.reward_weights if args.reward_weights is not None else [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise ValueError(f"reward_weights: {len(weights)} weights for {len(funcs)} reward functions")
    return funcs, list(weights)


def first_set(*values):
    """The first of ``values`` that is not None (None if all are)."""
    return next((v for v in values if v is not None), None)


def rollout_seed(seed: int, index: int) -> int:
    """A 63-bit seed for the draws of the rollout batch that starts at global group ``index``."""
    digest = hashlib.sha256(f"mdfast-grpo:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


if __name__ == "__main__":  # the command this module used to be
    sys.exit("python -m mdfast.train.grpo: no longer a command; run `mdfast train grpo` (the same flags)")
