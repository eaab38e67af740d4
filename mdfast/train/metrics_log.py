"""Where a training run's metrics go: a JSONL file (always), TensorBoard (when installed), a progress bar."""

from __future__ import annotations

import json
import os
import sys

__all__ = ["MetricsLog"]


class MetricsLog:
    """Appends one JSON object per logged step to ``<output_dir>/metrics.jsonl`` and, where the
    ``tensorboard`` package is installed, writes the scalars (and histograms given as raw values)
    under ``<output_dir>/runs``. ``progress`` shows a tqdm bar (or one line per log on stderr when
    tqdm is missing) over ``total`` steps. Only the main process of a distributed run should make
    one."""

    def __init__(self, output_dir: str, *, total: int, initial: int = 0, progress: bool = True) -> None:
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            self._tensorboard = None
        else:
            self._tensorboard = SummaryWriter(os.path.join(output_dir, "runs"))
        self._bar = None
        self._progress = progress
        if progress:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, initial=initial, desc="grpo", dynamic_ncols=True)

    def advance(self, postfix: dict[str, float] | None = None) -> None:
        """One step done."""
        if self._bar is not None:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix({name: f"{value:.4g}" for name, value in postfix.items()}, refresh=False)

    def write(self, step: int, metrics: dict, histograms: dict | None = None) -> None:
        """One record: ``metrics`` (numbers or lists of numbers) at ``step``; ``histograms`` maps a
        name to a tensor of raw values (TensorBoard only)."""
        record = {"step": step, **metrics}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tensorboard is not None:
            for name, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(name, value, step)
            for name, values in (histograms or {}).items():
                if values.numel():
                    self._tensorboard.add_histogram(name, values, step)
        if self._progress and self._bar is None:
            shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            print(f"[mdfast grpo] step {step}: {shown}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._bar is not None:
            self._bar.close()
