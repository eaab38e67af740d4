"""What a code-model training run computes: ``TrainOptions`` (plain Python: the parser loads no tokenizers)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TrainOptions"]


@dataclass
class TrainOptions:
    """The options of one run, kept in its state file (``--resume`` reads them from there).

    - seq_len, d_model, n_layers, n_heads, mlp_hidden: the model (``mlp_hidden`` 0: 8/3 d_model rounded up to 64).
    - span_prob, span_min, span_max: the masking (``mdlm_loss.sample_masks``).
    - batch_size, lr, min_lr_ratio, warmup_steps, weight_decay, grad_clip: AdamW and its schedule.
    - steps: the schedule's length (None: sized from the time budget); seed; dtype: the autocast dtype.
    - evals, eval_windows: held-out evaluations per run and windows per evaluation.
    """

    seq_len: int = 256
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp_hidden: int = 0
    span_prob: float = 0.5
    span_min: int = 8
    span_max: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    steps: int | None = None
    seed: int = 0
    dtype: str = "bfloat16"
    evals: int = 10
    eval_windows: int = 64

    def __post_init__(self) -> None:
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype: expected 'bfloat16' or 'float32', got {self.dtype!r}")
        if not 1 <= self.span_min <= self.span_max <= self.seq_len:
            raise ValueError(f"span_min, span_max: need 1 <= {self.span_min} <= {self.span_max} <= seq_len")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps: expected a positive number of steps, got {self.steps}")
