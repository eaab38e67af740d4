"""SPEC 6.2: GRPO for the step policy, the model frozen; only StepPolicy's weights train.

``PolicyGRPOTrainer(policy, model, reward_funcs, train_dataset, args=PolicyGRPOConfig(...))``
follows TRL's GRPOTrainer where the two meet (field names, the reward-function signature
``f(prompts, completions, completion_ids, **columns) -> list[float]``, metric names) and SPEC 6.2
where they differ: the policy acts per token and step, the reward is per token
(R_{g,i} = R_task_g + lambda t_final_{g,i}), and the update reads the stored states and draws,
so ``num_iterations`` epochs per rollout batch cost no model forward.

One step: this rank's prompts (``per_device_train_batch_size``), G = ``num_generations``
trajectories each (``collect_rollouts``), task rewards, advantages per group and token position,
then ``num_iterations`` AdamW steps of the PPO-clip loss (``policy_grpo_loss``) on the whole
batch. Under ``torchrun`` every rank takes its share of the prompts and the per-group gradients
are summed over all ranks in one fixed order (``distributed.py``): N ranks train exactly the
policy one process trains on the same data and seeds.

Also a command: ``mdfast train grpo ...`` / ``python -m mdfast.train.grpo ...`` (``--help``).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..config import FlowConfig
from ..policy import StepPolicy
from . import distributed
from .metrics_log import MetricsLog
from .policy_loss import SCALE_REWARDS, group_advantages, policy_grpo_loss, policy_log_prob, token_rewards
from .rollouts import Rollouts, collect_rollouts

__all__ = ["PolicyGRPOConfig", "PolicyGRPOTrainer", "add_arguments", "main", "run"]

POLICY_FILE = "policy.safetensors"
REF_POLICY_FILE = "ref_policy.safetensors"
STATE_FILE = "trainer_state.pt"
HISTOGRAM_BINS = 8
LR_SCHEDULES = ("constant", "linear", "cosine")
# Policy-loss metrics averaged over the active entries (weighted by their count across groups).
LOSS_METRICS = (
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "approx_kl",
    "entropy",
    "mu_mean",
    "kappa_mean",
    "ratio_mean",
)


@dataclass
class PolicyGRPOConfig:
    """The run's settings: TRL's GRPOConfig names where TRL has the knob, SPEC 6.2's defaults.

    num_generations: G trajectories per prompt (8). per_device_train_batch_size: prompts per rank
    per step (8; the paper's 8 prompts x G = 8 on one device). max_completion_length: N, the masks
    appended to an example given as "prompt_ids" or "prompt" (256). steps: T forwards per
    trajectory; None takes ``budget`` x N (1.0: the paper's T = N = 256), rounded to whole steps
    per block. block_length: decoded tokens per semi-autoregressive block (None: one block).
    lam: lambda of R_{g,i} = R_task_g + lambda t_final_{g,i} (0.2). beta: weight of
    KL(pi_theta || pi_initial) (0). epsilon: the PPO clip (0.2). num_iterations: policy epochs per
    rollout batch (2). learning_rate (3e-4), adam_beta1/2, adam_epsilon, weight_decay (0, as TRL),
    max_grad_norm (1.0, as TRL; 0 disables clipping): AdamW. lr_scheduler_type "constant",
    "linear" or "cosine" after warmup_steps linear warm-up. max_steps: GRPO steps (6,000 as the
    paper). reward_weights: one per reward function (default 1 each). scale_rewards: "group"
    (SPEC 6.2's division by std + 1e-4) or "none". logging_steps, eval_steps (None: no eval),
    save_steps: every how many steps to log, call eval_fn, save a checkpoint. seed: the data
    order and every draw derive from it. groups_per_rollout_batch: prompts decoded together in
    one batch of G x that many rows (must divide per_device_train_batch_size; the result depends
    on it, not on the number of ranks). backend: mdfast's backend for the steps.
    disable_tqdm: no progress bar. suppress_tokens: ids whose logits are set to -inf in every
    decoding step of the rollouts and the evaluation (``mdfast.infill``'s ``suppress_tokens``; SPEC 7
    blocks the [MASK] logit when decoding), None for none.
    """

    output_dir: str = "policy-grpo"
    num_generations: int = 8
    per_device_train_batch_size: int = 8
    max_completion_length: int = 256
    steps: int | None = None
    budget: float = 1.0
    block_length: int | None = None
    lam: float = 0.2
    beta: float = 0.0
    epsilon: float = 0.2
    num_iterations: int = 2
    learning_rate: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    max_steps: int = 6000
    reward_weights: list[float] | None = None
    scale_rewards: str = "group"
    logging_steps: int = 10
    eval_steps: int | None = None
    save_steps: int | None = 500
    seed: int = 42
    groups_per_rollout_batch: int = 1
    backend: str = "auto"
    disable_tqdm: bool = False
    suppress_tokens: list[int] | None = None

    def __post_init__(self) -> None:
        positive = (
            "num_generations",
            "per_device_train_batch_size",
            "max_completion_length",
            "num_iterations",
            "max_steps",
            "logging_steps",
            "groups_per_rollout_batch",
        )
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"PolicyGRPOConfig.{name}: expected a positive int, got {value!r}")
        for name in ("steps", "block_length", "eval_steps", "save_steps"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"PolicyGRPOConfig.{name}: expected a positive int or None, got {value!r}")
        if self.num_generations < 2:
            raise ValueError("PolicyGRPOConfig.num_generations: a group needs at least 2 trajectories (a std)")
        if self.per_device_train_batch_size % self.groups_per_rollout_batch:
            raise ValueError(
                f"PolicyGRPOConfig.groups_per_rollout_batch: {self.groups_per_rollout_batch} must divide "
                f"per_device_train_batch_size={self.per_device_train_batch_size}"
            )
        if self.suppress_tokens is not None and not (
            isinstance(self.suppress_tokens, (list, tuple)) and all(isinstance(i, int) for i in self.suppress_tokens)
        ):
            raise TypeError(
                f"PolicyGRPOConfig.suppress_tokens: expected a list of token ids or None, got {self.suppress_tokens!r}"
            )
        if not self.budget > 0:
            raise ValueError(f"PolicyGRPOConfig.budget: expected > 0, got {self.budget}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(
                f"PolicyGRPOConfig.scale_rewards: expected one of {SCALE_REWARDS}, got {self.scale_rewards!r}"
            )
        if self.lr_scheduler_type not in LR_SCHEDULES:
            raise ValueError(
                f"PolicyGRPOConfig.lr_scheduler_type: expected one of {LR_SCHEDULES}, got {self.lr_scheduler_type!r}"
            )
        if not (self.epsilon >= 0 and self.beta >= 0 and self.lam >= 0 and self.learning_rate > 0):
            raise ValueError("PolicyGRPOConfig: epsilon, beta and lam must be >= 0 and learning_rate > 0")

    def steps_for(self, n_decoded: int) -> int:
        """T for a trajectory decoding ``n_decoded`` tokens: ``steps``, else ``budget`` x N rounded
        to a whole number (>= 1) of steps per block."""
        if self.steps is not None:
            return self.steps
        blocks = math.ceil(n_decoded / (self.block_length or n_decoded))
        return blocks * max(1, round(self.budget * n_decoded / blocks))


RewardFunction = Callable[..., Sequence[float | None]]


class PolicyGRPOTrainer:
    """GRPO for ``policy`` (a StepPolicy, trained in place) on ``model`` (frozen: put in eval mode,
    its parameters' requires_grad set to False, and run under no_grad; it is patched with
    ``mdfast.patch`` for the run).

    ``train_dataset``: a sequence of dicts (a list, or a datasets.Dataset). Each example gives
    what to decode as "input_ids" (token ids, the mask id at the positions to fill: infilling),
    or "prompt_ids" (ids; N = max_completion_length masks are appended), or "prompt" (text,
    tokenized with ``processing_class``; masks appended). Its other fields are passed to the
    reward functions as keyword columns, one value per trajectory, as TRL does.
    ``reward_funcs``: one function or a list, each ``f(prompts=..., completions=...,
    completion_ids=..., **columns) -> list[float | None]`` (None: not applicable, as TRL);
    completions are decoded text when ``processing_class`` is given, else the id lists. The task
    reward is their ``reward_weights``-weighted sum (NaN-skipping), and token i of trajectory g
    gets R_task_g + lam t_final_{g,i} (SPEC 6.2).

    ``eval_fn(policy) -> dict[str, float]`` runs every eval_steps (and before the first step) on
    every rank (it may split its own work); rank 0's result is logged as "eval/<name>".
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
        self.reward_funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not self.reward_funcs or not all(callable(f) for f in self.reward_funcs):
            raise TypeError("reward_funcs: expected a reward function or a non-empty list of them")
        weights = args.reward_weights if args.reward_weights is not None else [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights: {len(weights)} weights for {len(self.reward_funcs)} reward functions")
        if len(train_dataset) == 0:
            raise ValueError("train_dataset: empty")
        self.policy, self.model, self.args, self.eval_fn = policy, model, args, eval_fn
        self.train_dataset, self.processing_class = train_dataset, processing_class
        self.reward_names = [getattr(f, "__name__", type(f).__name__) for f in self.reward_funcs]
        self.device = policy.fc1.weight.device
        model_device = model.get_input_embeddings().weight.device
        if model_device != self.device:
            raise ValueError(f"policy: expected its weights on the model's device {model_device}, got {self.device}")
        self.world = distributed.world(self.device)
        self.reward_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        self.mask_token_id = _first_set(
            mask_token_id,
            getattr(getattr(model, "config", None), "mask_token_id", None),
            getattr(processing_class, "mask_token_id", None),
        )
        if self.mask_token_id is None:
            raise ValueError("mask_token_id: neither the model's config nor the processing_class names one; pass it")
        self.pad_token_id = _first_set(
            getattr(processing_class, "pad_token_id", None),
            getattr(getattr(model, "config", None), "pad_token_id", None),
            0,
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
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(args))
        self.global_step = 0
        self.history: list[dict] = []
        self._orders: dict[int, Tensor] = {}

    # -- the loop -----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: bool | str | None = None) -> list[dict]:
        """Run until ``max_steps``; returns the logged records (rank 0; others get []).
        ``resume_from_checkpoint``: True for the latest checkpoint in output_dir, or a
        checkpoint folder."""
        from .. import patch, unpatch

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
        window: list[dict] = []
        try:
            if args.eval_steps and self.global_step == 0:
                self._evaluate(log)
            while self.global_step < args.max_steps:
                metrics, histogram = self.training_step()
                self.global_step += 1
                window.append(metrics)
                if log is not None:
                    log.advance({"reward": metrics["reward"]})
                if self.global_step % args.logging_steps == 0 or self.global_step == args.max_steps:
                    record = _average(window)
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
            if self.world.is_main:
                self.policy.save(os.path.join(args.output_dir, POLICY_FILE))
        finally:
            if log is not None:
                log.close()
            if not patched:
                unpatch(self.model)
        return self.history if self.world.is_main else []

    def training_step(self) -> tuple[dict, Tensor]:
        """One GRPO step (rollouts, rewards, advantages, num_iterations policy updates) on this
        rank's prompts; returns the step's metrics (identical on every rank) and the log2 a of the
        active draws (this rank's, for a histogram)."""
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
        metrics = {**self._rollout_metrics(groups, per_func, task), **update, "learning_rate": learning_rate}
        y = torch.cat([rollouts.draws[rollouts.active] for rollouts in groups])
        return metrics, math.log2(self.flow_config.a_min) + y * math.log2(
            self.flow_config.a_max / self.flow_config.a_min
        )

    # -- pieces of a step ---------------------------------------------------------------------

    def _example(self, index: int) -> dict:
        """The example at position ``index`` of the endless stream: the dataset in a fresh
        seeded order every pass (the same order on every rank)."""
        n = len(self.train_dataset)
        epoch, position = divmod(index, n)
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(self.args.seed + epoch))}
        return self.train_dataset[int(self._orders[epoch][position])]

    def _rollouts(self, examples: list[dict], first_group: int) -> Rollouts:
        """G trajectories of each example, decoded as one batch (left-padded), drawn with a
        generator seeded by (seed, the global index of the batch's first group)."""
        templates = [
            example_template(e, self.mask_token_id, self.args.max_completion_length, self.processing_class)
            for e in examples
        ]
        width = max(len(t) for t in templates)
        ids = torch.tensor([[self.pad_token_id] * (width - len(t)) + t for t in templates], device=self.device)
        mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in templates], device=self.device)
        n_decoded = int((ids == self.mask_token_id).logical_and(mask.bool()).sum(1).max())
        generator = torch.Generator(device=self.device).manual_seed(_seed(self.args.seed, first_group))
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
        prompts, completion_ids, columns = [], [], {}
        for example, rollouts in zip(examples, groups):
            rows = rollouts.completion_ids.tolist()
            prompt = example.get("prompt", example.get("prompt_ids", example.get("input_ids")))
            for row in rows:
                prompts.append(prompt)
                completion_ids.append(row)
                for key, value in example.items():
                    if key != "prompt":
                        columns.setdefault(key, []).append(value)
        completions = (
            self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
            if self.processing_class is not None
            else completion_ids
        )
        table = []
        for name, f in zip(self.reward_names, self.reward_funcs):
            values = list(f(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns))
            if len(values) != len(completion_ids):
                raise ValueError(f"reward function {name}: returned {len(values)} rewards for {len(completion_ids)}")
            table.append([math.nan if v is None else float(v) for v in values])
        return torch.tensor(table, dtype=torch.float32, device=self.device).T.contiguous()

    def _update(self, groups: list[Rollouts], advantages: list[Tensor]) -> dict[str, float]:
        """num_iterations AdamW steps of the PPO-clip loss over every rank's groups.

        log pi_old is recomputed from the stored (s, y) by ``policy_log_prob`` before the first
        epoch, the very computation the loss makes, so the first epoch's ratio is exactly 1 (the
        recorded ``Rollouts.log_probs`` agree to float32 rounding: same law, other batch shapes).
        Each group's gradient is taken alone, with the loss normalised by the global count of
        active entries; the gradients of all groups (gathered from every rank) are summed in the
        global group order, so the result does not depend on the number of ranks.
        """
        args = self.args
        params = list(self.policy.parameters())
        local_active = sum(int(rollouts.active.sum()) for rollouts in groups)
        total_active = int(distributed.all_reduce_sum(torch.tensor([local_active], device=self.device)).item())
        normalizer = max(total_active, 1)
        old = []
        with torch.no_grad():
            for rollouts in groups:
                log_prob = torch.zeros_like(rollouts.draws)
                log_prob[rollouts.active] = policy_log_prob(
                    self.policy, rollouts.states[rollouts.active], rollouts.draws[rollouts.active]
                )
                old.append(log_prob)
        names = ["loss", "num_active", *LOSS_METRICS, *(["kl"] if self.ref_policy is not None else [])]
        sums = torch.zeros(len(names), device=self.device, dtype=torch.float64)
        grad_norms = []
        for _ in range(args.num_iterations):
            flat, rows = [], []
            for rollouts, old_log_probs, A in zip(groups, old, advantages):
                loss, metrics = policy_grpo_loss(
                    self.policy,
                    rollouts.states,
                    rollouts.draws,
                    old_log_probs,
                    A.unsqueeze(1),
                    rollouts.active,
                    epsilon=args.epsilon,
                    beta=args.beta,
                    ref_policy=self.ref_policy,
                    normalizer=normalizer,
                )
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                flat.append(
                    torch.cat(
                        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
                    )
                )
                n = metrics["num_active"]
                rows.append(torch.stack([loss.detach(), n, *(metrics[name] * n for name in names[2:])]))
            gradient = distributed.all_gather_rows(torch.stack(flat)).sum(0)
            offset = 0
            for p in params:
                p.grad = gradient[offset : offset + p.numel()].view_as(p).clone()
                offset += p.numel()
            max_norm = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
            grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, max_norm)))
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            sums += distributed.all_gather_rows(torch.stack(rows).double()).sum(0)
        epochs, count = args.num_iterations, max(float(sums[1]), 1.0)
        out = {"loss": float(sums[0]) / epochs, "grad_norm": sum(grad_norms) / epochs}
        for i, name in enumerate(names[2:], start=2):
            key = name if name.startswith(("clip_ratio", "approx_kl", "kl")) else f"policy/{name}"
            out[key] = float(sums[i]) / count
        out["policy/active_tokens"] = float(sums[1]) / epochs
        return out

    def _rollout_metrics(self, groups: list[Rollouts], per_func: Tensor, task: Tensor) -> dict:
        """The rewards' and trajectories' metrics over all ranks' trajectories (gathered)."""
        G, threshold = self.args.num_generations, self.flow_config.commit_threshold
        rows = []
        for rollouts in groups:
            rows.append(
                torch.stack(
                    [
                        rollouts.t_final.sum(1),
                        (rollouts.t_final < threshold).sum(1).float(),
                        torch.full((G,), float(rollouts.t_final.shape[1]), device=self.device),
                        rollouts.reedited.sum((1, 2)).float(),
                        (rollouts.committed >= 0).sum(1).float(),
                        torch.full((G,), float(rollouts.nfe), device=self.device),
                    ],
                    dim=1,
                )
            )
        table = distributed.all_gather_rows(torch.cat([task.unsqueeze(1), per_func, torch.cat(rows)], dim=1))
        task_all, per_func_all = table[:, 0], table[:, 1 : 1 + per_func.shape[1]]
        trajectories = table[:, 1 + per_func.shape[1] :]
        group_std = task_all.view(-1, G).std(1)
        hist = torch.zeros(HISTOGRAM_BINS, device=self.device)
        for rollouts in groups:
            y = rollouts.draws[rollouts.active]
            hist += torch.bincount((y * HISTOGRAM_BINS).long().clamp(0, HISTOGRAM_BINS - 1), minlength=HISTOGRAM_BINS)
        hist = distributed.all_reduce_sum(hist)
        out = {
            "reward": float(task_all.mean()),
            "reward_std": float(group_std.mean()),
            "frac_reward_zero_std": float(torch.isclose(group_std, torch.zeros_like(group_std)).float().mean()),
        }
        for j, name in enumerate(self.reward_names):
            values = per_func_all[:, j]
            values = values[~values.isnan()]
            out[f"rewards/{name}/mean"] = float(values.mean()) if values.numel() else math.nan
            out[f"rewards/{name}/std"] = float(values.std()) if values.numel() > 1 else math.nan
        tokens = float(trajectories[:, 2].sum())
        out["completions/t_final_mean"] = float(trajectories[:, 0].sum()) / tokens
        out["completions/frac_t_below_commit"] = float(trajectories[:, 1].sum()) / tokens
        out["rollout/reedits_per_trajectory"] = float(trajectories[:, 3].mean())
        out["rollout/hard_commits_per_trajectory"] = float(trajectories[:, 4].mean())
        out["rollout/nfe"] = float(trajectories[:, 5].mean())
        out["policy/log2_action_hist"] = [int(c) for c in hist.tolist()]
        return out

    def _evaluate(self, log: MetricsLog | None) -> None:
        results = self.eval_fn(self.policy) if self.eval_fn is not None else {}
        if results:
            record = {f"eval/{name}": float(value) for name, value in results.items()}
            self.history.append({"step": self.global_step, **record})
            if log is not None:
                log.write(self.global_step, record)

    # -- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self) -> str:
        """``<output_dir>/checkpoint-<step>/``: the policy (``StepPolicy.save``), the initial
        policy when beta > 0, and trainer_state.pt (optimizer, scheduler, step, config)."""
        path = os.path.join(self.args.output_dir, f"checkpoint-{self.global_step}")
        if self.world.is_main:
            os.makedirs(path, exist_ok=True)
            self.policy.save(os.path.join(path, POLICY_FILE))
            if self.ref_policy is not None:
                self.ref_policy.save(os.path.join(path, REF_POLICY_FILE))
            state = {
                "global_step": self.global_step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "args": asdict(self.args),
            }
            torch.save(state, os.path.join(path, STATE_FILE))
        distributed.barrier()
        return path

    def latest_checkpoint(self) -> str:
        found = _checkpoints(self.args.output_dir)
        if not found:
            raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint-<step> folder in {self.args.output_dir}")
        return os.path.join(self.args.output_dir, max(found)[1])

    def load_checkpoint(self, path: str) -> None:
        """Restore the policy, the initial policy, the optimizer, the scheduler and the step."""
        saved = StepPolicy.load(os.path.join(path, POLICY_FILE))
        if saved.constants() != self.policy.constants():
            raise ValueError(f"{path}: the checkpoint's policy {saved.constants()} is not {self.policy.constants()}")
        self.policy.load_state_dict(saved.state_dict())
        if self.ref_policy is not None:
            self.ref_policy.load_state_dict(StepPolicy.load(os.path.join(path, REF_POLICY_FILE)).state_dict())
        state = torch.load(os.path.join(path, STATE_FILE), map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])


def example_template(example: dict, mask_token_id: int, max_completion_length: int, tokenizer=None) -> list[int]:
    """The ids to decode for a training example: its "input_ids" (the mask id at the positions to
    fill), or its "prompt_ids" / "prompt" (text, tokenized with ``tokenizer``) followed by
    ``max_completion_length`` mask ids."""
    if "input_ids" in example:
        return list(example["input_ids"])
    if "prompt_ids" in example:
        prompt = list(example["prompt_ids"])
    elif "prompt" in example and tokenizer is not None:
        prompt = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    else:
        raise ValueError(
            "train_dataset: each example needs 'input_ids' (with mask ids), 'prompt_ids', or 'prompt' (text, "
            f"with a processing_class); got keys {sorted(example)}"
        )
    return prompt + [mask_token_id] * max_completion_length


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, folder name) of every complete checkpoint-<step> folder in ``output_dir``."""
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(r"checkpoint-(\d+)", name)
            if match and os.path.isfile(os.path.join(output_dir, name, STATE_FILE)):
                found.append((int(match.group(1)), name))
    return found


def _first_set(*values):
    return next((v for v in values if v is not None), None)


def _seed(seed: int, index: int) -> int:
    """A 63-bit seed for the draws of the rollout batch that starts at global group ``index``."""
    digest = hashlib.sha256(f"mdfast-grpo:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _lr_factor(args: PolicyGRPOConfig) -> Callable[[int], float]:
    """transformers' schedules: linear warm-up from 0 over warmup_steps, then constant, linear
    decay to 0, or a half cosine to 0 at max_steps."""

    def factor(step: int) -> float:
        if step < args.warmup_steps:
            return step / max(1, args.warmup_steps)
        progress = (step - args.warmup_steps) / max(1, args.max_steps - args.warmup_steps)
        if args.lr_scheduler_type == "linear":
            return max(0.0, 1.0 - progress)
        if args.lr_scheduler_type == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return 1.0

    return factor


def _average(window: list[dict]) -> dict:
    """Numbers averaged over the logged steps, lists (histogram counts) summed."""
    out = {}
    for name in window[-1]:
        values = [m[name] for m in window if name in m]
        if isinstance(values[0], list):
            out[name] = [sum(column) for column in zip(*values)]
        else:
            out[name] = sum(values) / len(values)
    return out


# ---------------------------------------------------------------------------------------------
# The command: mdfast train grpo / python -m mdfast.train.grpo
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, dict] = {
    # The paper's code recipe (SPEC 6.2): MBPP prompts the base model already solves, 8 prompts x
    # G = 8 per step, 256 tokens decoded in T = 256 steps, lambda = 0.2, 6,000 steps, AdamW 3e-4,
    # eps 0.2, beta 0, 2 epochs per rollout batch; prompts in the chat template. Wiring: --data is a
    # JSONL of problems {"prompt": ..., "test": ..., "entry_point": ...} (HumanEval / MBPP style)
    # whose fields reach the reward function as columns; --reward names the sandboxed test runner
    # (mdfast.eval's, once merged: a function f(prompts, completions, completion_ids, **columns)
    # giving 1.0 when the completion passes the problem's tests, else 0.0); the policy's own
    # lambda * t_final term is added by the trainer.
    "paper-code": {
        "num_generations": 8,
        "per_device_train_batch_size": 8,
        "max_completion_length": 256,
        "steps": 256,
        "lam": 0.2,
        "max_steps": 6000,
        "learning_rate": 3e-4,
        "epsilon": 0.2,
        "beta": 0.0,
        "num_iterations": 2,
        "chat": True,
    },
}

# The config fields the command exposes (flag = the field name with dashes).
CONFIG_FLAGS = {
    "num_generations": int,
    "per_device_train_batch_size": int,
    "max_completion_length": int,
    "steps": int,
    "budget": float,
    "block_length": int,
    "lam": float,
    "beta": float,
    "epsilon": float,
    "num_iterations": int,
    "learning_rate": float,
    "max_grad_norm": float,
    "lr_scheduler_type": str,
    "warmup_steps": int,
    "max_steps": int,
    "scale_rewards": str,
    "logging_steps": int,
    "eval_steps": int,
    "save_steps": int,
    "seed": int,
    "groups_per_rollout_batch": int,
}


def add_arguments(parser) -> None:
    """The flags of ``mdfast train grpo``."""
    from .loading import add_model_arguments

    add_model_arguments(parser)
    parser.add_argument(
        "--data",
        required=True,
        help="JSONL of training examples: 'input_ids' (ids with mask ids to fill), 'prompt_ids', or 'prompt' (text); "
        "other fields reach the reward functions as columns",
    )
    parser.add_argument("--eval-data", default=None, help="JSONL of held-out examples, scored every --eval-steps")
    parser.add_argument(
        "--reward",
        action="append",
        default=None,
        help="a reward function's import path 'package.module:function' (repeat for several)",
    )
    parser.add_argument("--reward-weights", type=float, nargs="+", default=None)
    parser.add_argument(
        "--policy",
        default=None,
        help="the StepPolicy file to start from (default: a fresh one), or 'default': a fresh one fitted first to "
        "SPEC 2's default policy on its own rollouts of --policy-init-prompts training examples "
        "(mdfast.train.policy_init)",
    )
    parser.add_argument("--policy-hidden", type=int, default=64, help="width d of a fresh policy")
    parser.add_argument(
        "--policy-init-prompts", type=int, default=16, help="--policy default: the training examples it decodes (16)"
    )
    parser.add_argument(
        "--suppress-mask",
        action="store_true",
        help="block the [MASK] logit in every decoding step, rollouts and evaluation (SPEC 7; suppress_tokens)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None, help="paper-code: the paper's code recipe")
    parser.add_argument("--chat", action="store_true", default=None, help="wrap text prompts in the chat template")
    parser.add_argument("--output-dir", default="policy-grpo")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --output-dir")
    parser.add_argument("--disable-tqdm", action="store_true")
    defaults = PolicyGRPOConfig()
    for name, kind in CONFIG_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=None, help=f"PolicyGRPOConfig.{name} ({getattr(defaults, name)})")


def run(args) -> int:
    """Train a step policy with GRPO as the flags say; writes the checkpoints, metrics.jsonl and
    the final policy.safetensors under --output-dir."""
    from ..loading import load_model, load_tokenizer
    from .loading import import_function, read_jsonl

    preset = PRESETS.get(args.preset, {}) if args.preset else {}
    values = {name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None}
    config = PolicyGRPOConfig(
        output_dir=args.output_dir,
        reward_weights=args.reward_weights,
        backend=args.backend,
        disable_tqdm=args.disable_tqdm,
        **{**{k: v for k, v in preset.items() if k in CONFIG_FLAGS}, **values},
    )
    if args.policy_init_prompts < 1:
        raise SystemExit(f"mdfast train grpo: --policy-init-prompts: expected >= 1, got {args.policy_init_prompts}")
    chat = args.chat if args.chat is not None else preset.get("chat", False)
    if not args.reward:
        raise SystemExit(
            "mdfast train grpo: --reward is required: the import path of a function f(prompts, completions, "
            "completion_ids, **columns) -> list[float]"
            + (" (paper-code: the sandboxed test runner, 1.0 when the tests pass)" if args.preset else "")
        )
    reward_funcs = [import_function(spec) for spec in args.reward]
    world = distributed.init_from_env(args.device)
    model = load_model(args.model, device=world.device, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    train = _prepare(read_jsonl(args.data), tokenizer, chat)
    mask_token_id = _first_set(
        args.mask_token_id,
        getattr(getattr(model, "config", None), "mask_token_id", None),
        getattr(tokenizer, "mask_token_id", None),
    )
    if args.suppress_mask:
        if mask_token_id is None:
            raise SystemExit(
                "mdfast train grpo: --suppress-mask: no mask id in the model or tokenizer; pass --mask-token-id"
            )
        config.suppress_tokens = [mask_token_id]
    if args.policy == "default" and not (args.resume and _checkpoints(config.output_dir)):
        policy = _default_start(model, train, config, args, tokenizer, mask_token_id, world)
    elif args.policy and args.policy != "default":
        policy = StepPolicy.load(args.policy, world.device)
    else:
        torch.manual_seed(config.seed)
        policy = StepPolicy(args.policy_hidden).to(world.device)
    eval_fn = None
    if args.eval_data:
        eval_fn = _reward_eval(
            model, _prepare(read_jsonl(args.eval_data), tokenizer, chat), reward_funcs, config, tokenizer, mask_token_id
        )
    trainer = PolicyGRPOTrainer(
        policy,
        model,
        reward_funcs,
        train,
        args=config,
        eval_fn=eval_fn,
        processing_class=tokenizer,
        mask_token_id=mask_token_id,
    )
    trainer.train(resume_from_checkpoint=args.resume or None)
    if world.is_main:
        print(f"[mdfast grpo] policy written to {os.path.join(config.output_dir, POLICY_FILE)}", file=sys.stderr)
    return 0


def _default_start(model, train, config, args, tokenizer, mask_token_id, world) -> StepPolicy:
    """--policy default: ``policy_init.default_policy_start`` on the first --policy-init-prompts
    training examples of the run's seeded order; the fitted start is written beside the run as
    init_policy.safetensors."""
    from .policy_init import default_policy_start

    if mask_token_id is None:
        raise SystemExit(
            "mdfast train grpo: --policy default: no mask id in the model or tokenizer; pass --mask-token-id"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(config.seed))
    prompts = [
        torch.tensor(
            example_template(train[int(i)], mask_token_id, config.max_completion_length, tokenizer), device=world.device
        )
        for i in order[: args.policy_init_prompts]
    ]
    policy, fits = default_policy_start(model, prompts, config, hidden=args.policy_hidden, mask_token_id=mask_token_id)
    if world.is_main:
        os.makedirs(config.output_dir, exist_ok=True)
        policy.save(os.path.join(config.output_dir, "init_policy.safetensors"))
        shown = ", ".join(f"{f.rms_log2_before:.2f} -> {f.rms_log2_after:.2f}" for f in fits)
        print(f"[mdfast grpo] start fitted to the default policy (rms log2 error per round: {shown})", file=sys.stderr)
    return policy


def _prepare(records: list[dict], tokenizer, chat: bool) -> list[dict]:
    """Text prompts tokenized here (in the chat template with ``chat``) into "prompt_ids"; the
    text stays as "prompt" for the reward functions."""
    out = []
    for record in records:
        if "prompt" in record and "prompt_ids" not in record and "input_ids" not in record:
            if tokenizer is None:
                raise ValueError("--data: text prompts need a tokenizer in the --model folder; give 'prompt_ids'")
            if chat:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": record["prompt"]}], add_generation_prompt=True, tokenize=False
                )
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = tokenizer(record["prompt"])["input_ids"]
            record = {**record, "prompt_ids": ids}
        out.append(record)
    return out


def _reward_eval(model, examples, reward_funcs, config, tokenizer, mask_token_id):
    """eval_fn: the mean weighted task reward of the held-out examples decoded with the policy's
    deterministic (mean) action, x-flow at the training budget. Held-out examples given as
    'input_ids' templates are infilled (mdfast.infill), the others generated (mdfast.generate)."""
    import mdfast

    weights = config.reward_weights or [1.0] * len(reward_funcs)

    def evaluate(policy: StepPolicy) -> dict[str, float]:
        total = []
        for example in examples:
            options = {"decoder": "xflow", "policy": policy, "block_length": config.block_length}
            options.update(backend=config.backend, mask_token_id=mask_token_id, suppress_tokens=config.suppress_tokens)
            if "input_ids" in example:
                ids = torch.tensor([example["input_ids"]], device=policy.fc1.weight.device)
                n = int((ids == mask_token_id).sum())
                out = mdfast.infill(model, ids, steps=config.steps_for(n), **options)
                positions = (ids[0] == mask_token_id).nonzero()[:, 0]
                completion = out.sequences[0, positions].tolist()
            else:
                ids = torch.tensor([example["prompt_ids"]], device=policy.fc1.weight.device)
                n = config.max_completion_length
                out = mdfast.generate(model, ids, max_new_tokens=n, steps=config.steps_for(n), **options)
                completion = out.sequences[0, ids.shape[1] :].tolist()
            text = tokenizer.decode(completion, skip_special_tokens=True) if tokenizer is not None else completion
            columns = {key: [value] for key, value in example.items() if key != "prompt"}
            prompt = example.get("prompt", example.get("prompt_ids", example.get("input_ids")))
            values = [
                f(prompts=[prompt], completions=[text], completion_ids=[completion], **columns)[0] for f in reward_funcs
            ]
            total.append(sum(w * v for w, v in zip(weights, values) if v is not None))
        return {"reward": sum(total) / len(total)}

    return evaluate


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="mdfast train grpo", description="Train an x-flow step policy with GRPO (SPEC 6.2), the model frozen."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
