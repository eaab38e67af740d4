"""PolicyGRPOConfig: the settings of a GRPO run for the step policy (SPEC 6.2), TRL's GRPOConfig names."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .policy_loss import SCALE_REWARDS

__all__ = ["LR_SCHEDULES", "PolicyGRPOConfig", "lr_factor"]

LR_SCHEDULES = ("constant", "linear", "cosine")
POSITIVE_INTS = (
    "num_generations",
    "per_device_train_batch_size",
    "max_completion_length",
    "num_iterations",
    "max_steps",
    "logging_steps",
    "groups_per_rollout_batch",
)
OPTIONAL_POSITIVE_INTS = ("steps", "block_length", "eval_steps", "save_steps")


@dataclass
class PolicyGRPOConfig:
    """The run's settings: TRL's GRPOConfig names where TRL has the knob, SPEC 6.2's defaults.

    - num_generations: G trajectories per prompt (8; at least 2).
    - per_device_train_batch_size: prompts per rank per step (8: the paper's 8 prompts x G = 8).
    - max_completion_length: N, the masks appended to an example given as "prompt_ids" or "prompt" (256).
    - steps: T forwards per trajectory; None takes ``budget`` x N, whole steps per block (``steps_for``).
    - budget: T / N when ``steps`` is None (1.0).
    - block_length: decoded tokens per semi-autoregressive block (None: one block).
    - lam: lambda of R_{g,i} = R_task_g + lambda t_final_{g,i} (0.2).
    - beta: weight of KL(pi_theta || pi_initial) (0). epsilon: the PPO clip (0.2).
    - num_iterations: policy epochs per rollout batch (2).
    - learning_rate (3e-4), adam_beta1/2, adam_epsilon, weight_decay (0), max_grad_norm (1.0; 0: no clipping): AdamW.
    - lr_scheduler_type: "constant", "linear" or "cosine", after warmup_steps of linear warm-up.
    - max_steps: GRPO steps (6,000 as the paper).
    - reward_weights: one per reward function (default 1 each).
    - scale_rewards: "group" (SPEC 6.2's division by std + 1e-4) or "none".
    - logging_steps, eval_steps (None: no eval), save_steps (None: at the end only): every how many steps.
    - seed: the data order and every draw derive from it.
    - groups_per_rollout_batch: prompts decoded together, G x that many rows (divides the per-device batch).
    - backend: mdfast's backend for the decoding steps.
    - disable_tqdm: no progress display.
    - suppress_tokens: ids whose logits are -inf in every decoding step of rollouts and evaluation (None: none).
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
        for name in POSITIVE_INTS:
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        for name in OPTIONAL_POSITIVE_INTS:
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name}: expected a positive int or None, got {value!r}")
        if self.num_generations < 2:
            raise ValueError("num_generations: a group needs at least 2 trajectories (a std)")
        if self.per_device_train_batch_size % self.groups_per_rollout_batch:
            raise ValueError(
                f"groups_per_rollout_batch: {self.groups_per_rollout_batch} must divide "
                f"per_device_train_batch_size={self.per_device_train_batch_size}"
            )
        if self.suppress_tokens is not None and not (
            isinstance(self.suppress_tokens, (list, tuple)) and all(isinstance(i, int) for i in self.suppress_tokens)
        ):
            raise TypeError(f"suppress_tokens: expected a list of token ids or None, got {self.suppress_tokens!r}")
        if not self.budget > 0:
            raise ValueError(f"budget: expected > 0, got {self.budget}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards: expected one of {SCALE_REWARDS}, got {self.scale_rewards!r}")
        if self.lr_scheduler_type not in LR_SCHEDULES:
            raise ValueError(f"lr_scheduler_type: expected one of {LR_SCHEDULES}, got {self.lr_scheduler_type!r}")
        for name in ("epsilon", "beta", "lam"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate: expected > 0, got {self.learning_rate}")

    def steps_for(self, n_decoded: int) -> int:
        """T for a trajectory decoding ``n_decoded`` tokens: ``steps``, else ``budget`` x N, whole steps per block."""
        if self.steps is not None:
            return self.steps
        blocks = math.ceil(n_decoded / (self.block_length or n_decoded))
        return blocks * max(1, round(self.budget * n_decoded / blocks))


def lr_factor(config: PolicyGRPOConfig) -> Callable[[int], float]:
    """The learning-rate factor per step, as transformers' schedules.

    Linear warm-up from 0 over ``warmup_steps``, then constant, a linear decay to 0, or a half cosine to 0 at
    ``max_steps`` (``lr_scheduler_type``).
    """

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return step / max(1, config.warmup_steps)
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        if config.lr_scheduler_type == "linear":
            return max(0.0, 1.0 - progress)
        if config.lr_scheduler_type == "cosine":
            return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return 1.0

    return factor
