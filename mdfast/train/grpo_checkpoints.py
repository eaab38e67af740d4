"""A GRPO run's checkpoint folders: ``<output_dir>/checkpoint-<step>/``, written, found and read back.

A folder holds the policy (``StepPolicy.save``), the initial policy when the run has a KL term, and
trainer_state.pt (optimizer, scheduler, step, config); it counts as complete once trainer_state.pt is there.
Every file is written atomically (``mdfast.atomic``) and trainer_state.pt last, so a run killed at any point
leaves complete checkpoints and at most one incomplete folder, which resuming ignores. Resuming also cuts
``metrics.jsonl`` back to the checkpoint's step, so the resumed run's records follow on as the uninterrupted
run's would; a damaged state file raises ``CorruptFileError`` naming it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict

from ..atomic import atomic_torch_save, checked_torch_load, remove_temporaries, trim_jsonl
from ..policy import StepPolicy
from . import distributed

__all__ = [
    "METRICS_FILE",
    "POLICY_FILE",
    "REF_POLICY_FILE",
    "STATE_FILE",
    "find_checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "trim_metrics",
]

POLICY_FILE = "policy.safetensors"
REF_POLICY_FILE = "ref_policy.safetensors"
STATE_FILE = "trainer_state.pt"
METRICS_FILE = "metrics.jsonl"  # MetricsLog's file in the run's folder


def find_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, folder name) of every complete checkpoint-<step> folder in ``output_dir``."""
    found = []
    if os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            match = re.fullmatch(r"checkpoint-(\d+)", name)
            if match and os.path.isfile(os.path.join(output_dir, name, STATE_FILE)):
                found.append((int(match.group(1)), name))
    return found


def latest_checkpoint(output_dir: str) -> str:
    """The folder of the highest-step complete checkpoint in ``output_dir``; FileNotFoundError if none."""
    found = find_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"resume_from_checkpoint: no checkpoint-<step> folder in {output_dir}")
    return os.path.join(output_dir, max(found)[1])


def save_checkpoint(trainer) -> str:
    """Write ``trainer``'s (a PolicyGRPOTrainer) checkpoint at its global step (rank 0 writes; all ranks wait)."""
    path = os.path.join(trainer.args.output_dir, f"checkpoint-{trainer.global_step}")
    if trainer.world.is_main:
        os.makedirs(path, exist_ok=True)
        remove_temporaries(path)  # a checkpoint a kill left incomplete is written again
        trainer.policy.save(os.path.join(path, POLICY_FILE))
        if trainer.ref_policy is not None:
            trainer.ref_policy.save(os.path.join(path, REF_POLICY_FILE))
        state = {
            "global_step": trainer.global_step,
            "optimizer": trainer.optimizer.state_dict(),
            "scheduler": trainer.scheduler.state_dict(),
            "args": asdict(trainer.args),
        }
        atomic_torch_save(state, os.path.join(path, STATE_FILE))
    distributed.barrier()
    return path


def load_checkpoint(trainer, path: str) -> None:
    """Restore ``trainer``'s policy, initial policy, optimizer, scheduler and step from the folder ``path``."""
    saved = StepPolicy.load(os.path.join(path, POLICY_FILE))
    if saved.constants() != trainer.policy.constants():
        raise ValueError(f"{path}: the checkpoint's policy {saved.constants()} is not {trainer.policy.constants()}")
    trainer.policy.load_state_dict(saved.state_dict())
    if trainer.ref_policy is not None:
        trainer.ref_policy.load_state_dict(StepPolicy.load(os.path.join(path, REF_POLICY_FILE)).state_dict())
    state = checked_torch_load(os.path.join(path, STATE_FILE), map_location=trainer.device, weights_only=True)
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.global_step = int(state["global_step"])
    if trainer.world.is_main:
        remove_temporaries(trainer.args.output_dir)
        trim_metrics(os.path.join(trainer.args.output_dir, METRICS_FILE), trainer.global_step)


def trim_metrics(path: str, step: int) -> None:
    """Keep the records of ``path`` (a metrics.jsonl) up to ``step``: a resumed run logs the later ones again.

    A last line cut short by a kill is dropped too; the file is rewritten atomically (untouched if missing).
    """
    trim_jsonl(path, step)
