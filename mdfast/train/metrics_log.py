"""Where a training run's metrics go: a JSONL file (always), TensorBoard (when installed), a progress display."""

from __future__ import annotations

import json
import os
import sys
import time

__all__ = ["MetricsLog"]


class MetricsLog:
    """One JSON object per logged step in ``<output_dir>/metrics.jsonl``, and TensorBoard scalars where installed.

    - output_dir: the run's folder (made if missing); TensorBoard writes under ``<output_dir>/runs``.
    - total, initial: the run's steps, and those done before (a resumed run).
    - progress: show steps done / total with the elapsed and remaining time (a tqdm bar, or one line per logged
      step on stderr where tqdm is not installed).
    - desc: the name the progress display starts with.
    Only the main process of a distributed run should make one.
    """

    def __init__(
        self, output_dir: str, *, total: int, initial: int = 0, progress: bool = True, desc: str = "grpo"
    ) -> None:
        os.makedirs(output_dir, exist_ok=True)
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: the tensorboard package
        except ImportError:
            self._tensorboard = None
        else:
            self._tensorboard = SummaryWriter(os.path.join(output_dir, "runs"))
        self._bar = None
        self._progress, self._desc = progress, desc
        self._total, self._initial, self._done, self._start = total, initial, initial, time.monotonic()
        if progress:
            try:
                from tqdm.auto import tqdm  # optional extra: train (without it, a line per logged step)
            except ImportError:
                pass
            else:
                self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

    def advance(self, postfix: dict[str, float] | None = None) -> None:
        """One step done; ``postfix``: numbers shown beside the bar."""
        self._done += 1
        if self._bar is not None:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix({name: f"{value:.4g}" for name, value in postfix.items()}, refresh=False)

    def write(self, step: int, metrics: dict, histograms: dict | None = None) -> None:
        """One record at ``step``.

        - metrics: numbers or lists of numbers, written to the JSONL file (numbers to TensorBoard too).
        - histograms: a name to a tensor of raw values (TensorBoard only).
        """
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
            print(f"[mdfast {self._desc}] {self.progress_line()}: {shown}", file=sys.stderr, flush=True)

    def progress_line(self) -> str:
        """``step <done>/<total>, <elapsed> elapsed, <remaining> left`` (the rate of this process's steps)."""
        elapsed = time.monotonic() - self._start
        done_here = self._done - self._initial
        left = (self._total - self._done) * elapsed / done_here if done_here else None
        remaining = _clock(left) if left is not None else "?"
        return f"step {self._done}/{self._total}, {_clock(elapsed)} elapsed, {remaining} left"

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._bar is not None:
            self._bar.close()


def _clock(seconds: float) -> str:
    """``h:mm:ss`` (``m:ss`` under an hour)."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
