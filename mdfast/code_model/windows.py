"""The code model's token windows: the split's token streams, the training windows and the fixed held-out set."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_write
from . import data as code_data
from .mdlm_loss import MaskedBatch, sample_masks

__all__ = ["EVAL_SEED", "EVAL_SETTINGS", "HeldoutSet", "TokenWindows", "heldout_set", "token_streams"]

# The held-out evaluation: name -> (mask ratio, span length or None for i.i.d.), fixed masks (seed EVAL_SEED).
EVAL_SETTINGS: dict[str, tuple[float, int | None]] = {
    "iid_r0.15": (0.15, None),
    "iid_r0.50": (0.50, None),
    "iid_r0.85": (0.85, None),
    "span64": (1.0, 64),
}
EVAL_SEED = 1234


def token_streams(tokenizer, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (training, held-out) token streams of the standard library's split: files in path order, each + [EOS].

    - tokenizer: the code tokenizer (``data.load_tokenizer``).
    - cache: an .npz file keyed by the tokenizer and the files' paths and sizes, so a resumed run skips the
      encoding (about a minute on a loaded 2-core CPU).
    """
    train, held = code_data.split_files(code_data.source_files())
    key = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode())
    for side in (train, held):
        for path in sorted(side):
            key.update(f"{path}:{len(side[path])};".encode())
    key.update(b"|")
    if cache is not None and cache.is_file():
        with np.load(cache) as stored:
            if str(stored["key"]) == key.hexdigest():
                return stored["train"], stored["heldout"]
    streams = tuple(code_data.encode_files(tokenizer, [side[p] for p in sorted(side)]) for side in (train, held))
    if cache is not None:
        with atomic_write(cache, "wb") as f:  # a kill mid-write leaves no damaged cache
            np.savez(f, key=key.hexdigest(), train=streams[0], heldout=streams[1])
    return streams


class TokenWindows:
    """Training windows of ``seq_len`` tokens from a token stream, in seeded epochs.

    Epoch e starts at a seeded offset o_e in [0, seq_len) and visits the windows stream[o_e + j L : o_e + (j + 1) L],
    j < (len - L) // L, in a seeded random order. Sample s of the run (s = step * batch_size + b) is window
    perm_e[s mod n] of epoch e = s // n: a function of (seed, s) alone, so a resumed run reads what the
    uninterrupted one would.
    """

    def __init__(self, stream: np.ndarray, seq_len: int, seed: int) -> None:
        self.stream, self.seq_len, self.seed = stream, seq_len, seed
        self.per_epoch = (len(stream) - seq_len) // seq_len
        if self.per_epoch < 1:
            raise ValueError(f"stream: {len(stream)} tokens hold no window of {seq_len} after an offset")
        self._epoch: tuple[int, int, np.ndarray] | None = None

    def _order(self, epoch: int) -> tuple[int, np.ndarray]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(self.seq_len))
            self._epoch = (epoch, offset, rng.permutation(self.per_epoch))
        return self._epoch[1], self._epoch[2]

    def batch(self, step: int, batch_size: int) -> Tensor:
        """The (batch_size, seq_len) int64 token ids of training step ``step`` (0-based)."""
        rows = []
        for s in range(step * batch_size, (step + 1) * batch_size):
            offset, order = self._order(s // self.per_epoch)
            start = offset + int(order[s % self.per_epoch]) * self.seq_len
            rows.append(self.stream[start : start + self.seq_len])
        return torch.from_numpy(np.stack(rows).astype(np.int64))


@dataclass
class HeldoutSet:
    """The fixed held-out evaluation, the same for every run with one tokenizer, seq_len and K (so runs compare).

    - ids (K, L): K windows evenly spaced over the held-out stream.
    - masks: per setting of ``EVAL_SETTINGS``, a MaskedBatch over them drawn with seed ``EVAL_SEED`` at the
      setting's fixed ratio (i.i.d. over the window, or one span of the given length).
    """

    ids: Tensor
    masks: dict[str, MaskedBatch]


def heldout_set(stream: np.ndarray, seq_len: int, windows: int) -> HeldoutSet:
    """The ``HeldoutSet`` of ``windows`` windows of ``seq_len`` tokens of the held-out ``stream``."""
    starts = np.linspace(0, len(stream) - seq_len, windows).astype(np.int64)
    ids = torch.from_numpy(np.stack([stream[s : s + seq_len] for s in starts]).astype(np.int64))
    generator = torch.Generator().manual_seed(EVAL_SEED)
    masks = {}
    for name, (ratio, span) in EVAL_SETTINGS.items():
        masks[name] = sample_masks(
            windows,
            seq_len,
            span_prob=0.0 if span is None else 1.0,
            span_min=span or 1,
            span_max=span or 1,
            generator=generator,
            ratio=torch.full((windows,), ratio),
        )
    return HeldoutSet(ids, masks)
