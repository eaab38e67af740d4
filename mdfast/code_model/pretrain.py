"""Train the code model: a LLaDA masked diffusion LM (``LLaDAModel``) on the Python standard library.

The objective is ``mdlm_loss`` (LLaDA's, mixed with span masking), the data ``windows`` over ``data``'s split; the
output is a LLaDA checkpoint ``mdfast.load_llada`` reads. The two recorded runs (``mdfast train mdlm --help``):

    # 2-core CPU, 2 hours: the defaults (6.9 M parameters, 13.8 MB in bfloat16); --threads 1 on a shared machine
    mdfast train mdlm --out code_model --minutes 120 --threads 2
    # one GPU, under 8 minutes: 11.8 M parameters, 23.6 MB in bfloat16
    mdfast train mdlm --out code_model --device cuda --minutes 7.5 --d-model 320 --n-layers 8 --n-heads 5 \
        --mlp-hidden 768 --batch-size 256 --warmup-steps 200

- The output folder holds at every checkpoint the model (``--save-dtype``), ``tokenizer.json`` and its config,
  ``training.json`` (command, options, data split, tokens seen, last held-out evaluation), ``log.jsonl`` and
  ``train_state.pt`` (float32 weights, AdamW, step: what ``--resume`` continues from). Shipping a run: copy all
  but the state, log and token cache into ``SHIPPED_MODEL_DIR`` (at most 25 MB of weights).
- Schedule: AdamW, linear warm-up, cosine to ``min_lr_ratio * lr`` (``lr_at``); without ``steps`` the first
  ``PLAN_AFTER`` steps after ``PLAN_SKIP`` are timed and the time budget sizes the schedule.
- Exact resume: batch k is a function of (seed, k), the learning rate of k; the state holds weights, AdamW's
  moments and k, so a resumed run computes the uninterrupted one bit for bit on the same machine and settings.
- Weights and AdamW stay float32; forward and backward run under ``torch.autocast`` in ``dtype``.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..atomic import atomic_torch_save, atomic_write_text, checked_torch_load, remove_temporaries, trim_jsonl
from ..models.llada import LLaDAConfig, LLaDAModel, save_llada
from . import data as code_data
from .mdlm_loss import mdlm_loss, sample_masks
from .options import TrainOptions
from .shipped import SHIPPED_MODEL_DIR
from .windows import EVAL_SEED, EVAL_SETTINGS, HeldoutSet, TokenWindows, heldout_set, token_streams

__all__ = [
    "EVAL_SEED",
    "EVAL_SETTINGS",
    "SHIPPED_MODEL_DIR",
    "HeldoutSet",
    "TokenWindows",
    "TrainOptions",
    "code_model_config",
    "evaluate",
    "heldout_set",
    "init_weights",
    "lr_at",
    "masked_logits",
    "token_streams",
    "train",
]

STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"
RUN_FILE = "training.json"
TOKENS_FILE = "tokens.npz"

PLAN_SKIP = 2  # steps before the timing starts (compilation, allocator warm-up)
PLAN_AFTER = 10  # steps timed to size the schedule
SAVE_SECONDS = 5.0  # time reserved per checkpoint when sizing the schedule


def code_model_config(options: TrainOptions, vocab_size: int = code_data.VOCAB_SIZE) -> LLaDAConfig:
    """The LLaDA config of the code model for ``options``.

    No weight tying, RoPE theta 10000, [MASK] and [EOS] of ``data``, ``max_sequence_length`` = the training length.
    """
    hidden = options.mlp_hidden or -(-8 * options.d_model // 3 // 64) * 64
    return LLaDAConfig.from_dict(
        {
            "d_model": options.d_model,
            "n_layers": options.n_layers,
            "n_heads": options.n_heads,
            "n_kv_heads": options.n_heads,
            "mlp_hidden_size": hidden,
            "vocab_size": vocab_size,
            "rope_theta": 10000.0,
            "rms_norm_eps": 1e-5,
            "include_bias": False,
            "weight_tying": False,
            "scale_logits": False,
            "input_emb_norm": False,
            "max_sequence_length": options.seq_len,
            "mask_token_id": code_data.MASK_ID,
            "eos_token_id": code_data.EOS_ID,
        }
    )


def init_weights(model: LLaDAModel, seed: int) -> None:
    """Initialize ``model`` from a generator seeded with ``seed``, in state-dict order.

    Norm weights 1; every matrix N(0, 0.02^2), the two that write into the residual stream (attn_out and the
    block's ff_out) N(0, (0.02 / sqrt(2 n_layers))^2) (GPT-2's scaling).
    """
    generator = torch.Generator().manual_seed(seed)
    std_out = 0.02 / math.sqrt(2 * model.config.n_layers)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0)
                continue
            writes_residual = ".blocks." in name and name.endswith(("attn_out.weight", "ff_out.weight"))
            std = std_out if writes_residual else 0.02
            p.copy_(torch.randn(p.shape, generator=generator) * std)


# ---------------------------------------------------------------------------------------------
# Forward, evaluation, schedule
# ---------------------------------------------------------------------------------------------


def masked_logits(model: LLaDAModel, inputs: Tensor, masked: Tensor, dtype: torch.dtype) -> Tensor:
    """The model's logits (N, V) at the N ``masked`` positions of ``inputs`` (B, L), row-major.

    The body runs on every position (under autocast in ``dtype`` unless float32, the embeddings cast to it), the
    head only on the masked rows (a forward hook on ``ln_f`` selects them).
    """
    rows = masked.to(inputs.device)
    hook = model.transformer["ln_f"].register_forward_hook(lambda module, args, out: out[rows])
    try:
        embeds = model.get_input_embeddings()(inputs)
        with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model(inputs_embeds=embeds.to(dtype)).logits
    finally:
        hook.remove()


def evaluate(model: LLaDAModel, heldout: HeldoutSet, batch_size: int, dtype: torch.dtype) -> dict[str, float]:
    """The model's held-out scores, eagerly (compiled blocks bypassed), in eval mode, without grad.

    - ``<setting>/ce``, ``/ppl``, ``/acc``: per setting of the held-out set, the cross-entropy per masked token
      (nats, mean over its masked tokens), its perplexity exp(ce) and the argmax accuracy.
    - ``loss``, ``ppl``: the mean of the settings' cross-entropies and its exp.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    result: dict[str, float] = {}
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        for name, batch in heldout.masks.items():
            ce_sum, correct, count = 0.0, 0, 0
            for lo in range(0, heldout.ids.shape[0], batch_size):
                ids = heldout.ids[lo : lo + batch_size].to(device)
                masked = batch.masked[lo : lo + batch_size].to(device)
                logits = masked_logits(model, ids.masked_fill(masked, code_data.MASK_ID), masked, dtype).float()
                targets = ids[masked]
                ce_sum += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
                correct += int((logits.argmax(-1) == targets).sum())
                count += targets.numel()
            result[f"{name}/ce"] = ce_sum / count
            result[f"{name}/ppl"] = math.exp(ce_sum / count)
            result[f"{name}/acc"] = correct / count
    loss = sum(result[f"{name}/ce"] for name in heldout.masks) / len(heldout.masks)
    result.update(loss=loss, ppl=math.exp(loss))
    model.train(was_training)
    return result


def lr_at(step: int, total_steps: int | None, options: TrainOptions) -> float:
    """The learning rate of step ``step`` (0-based).

    lr (step + 1) / warmup_steps during the warm-up, then a cosine from lr to min_lr_ratio * lr at total_steps
    (lr while total_steps is not yet known).
    """
    if step < options.warmup_steps:
        return options.lr * (step + 1) / options.warmup_steps
    if total_steps is None:
        return options.lr
    progress = min(1.0, (step - options.warmup_steps) / max(1, total_steps - options.warmup_steps))
    floor = options.min_lr_ratio * options.lr
    return floor + (options.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


class _Log:
    """log.jsonl: one JSON object per line, flushed as written."""

    def __init__(self, path: Path, keep_through_step: int | None) -> None:
        self.path = path
        if keep_through_step is None:
            atomic_write_text(path, "")
        else:  # resume: drop what the interrupted run logged after its last checkpoint, and a line cut short
            trim_jsonl(path, keep_through_step)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _progress(step: int, total: int | None, loss: float, lr: float, rate: float, eta: float | None) -> None:
    total_text = "?" if total is None else str(total)
    eta_text = "" if eta is None else f"  eta {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}"
    line = f"\r[mdlm] step {step}/{total_text}  loss {loss:.3f}  lr {lr:.2e}  {rate / 1000:.1f}k tok/s{eta_text}"
    print(line, end="", file=sys.stderr, flush=True)


def _save_model(model: LLaDAModel, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """Write the LLaDA checkpoint in ``dtype`` (save_llada) and the tokenizer into ``out``."""
    export = LLaDAModel(model.config, device="meta")
    state = {key: value.detach().to("cpu", dtype) for key, value in model.state_dict().items()}
    export.load_state_dict(state, assign=True)
    save_llada(export, out)
    code_data.save_tokenizer(tokenizer, out, model.config.max_sequence_length)


def _saved_state(out: Path, resume: bool) -> dict[str, Any] | None:
    """The state file of the run in ``out`` when resuming, None for a new run (whose folder holds none)."""
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise ValueError(f"resume: {state_path} does not exist")
        remove_temporaries(out)  # what a killed run's writes left
        return checked_torch_load(state_path, map_location="cpu", weights_only=False)
    if state_path.exists():
        raise ValueError(f"out: {out} already holds a run ({STATE_FILE}); pass resume=True or another folder")
    return None


def _check_schedule(options: TrainOptions, state: dict[str, Any] | None, minutes: float | None) -> None:
    """The schedule's length is set (steps) or a time budget sizes it, after enough timed warm-up steps."""
    if minutes is None and (options.steps if state is None else state["total_steps"]) is None:
        raise ValueError("minutes: the schedule's length is not set (steps), so a time budget must size it")
    if options.steps is None and options.warmup_steps < PLAN_SKIP + PLAN_AFTER:
        raise ValueError(f"warmup_steps: at least {PLAN_SKIP + PLAN_AFTER} when the time budget sizes the schedule")


def _model_and_optimizer(
    config: LLaDAConfig, options: TrainOptions, device: torch.device
) -> tuple[LLaDAModel, torch.optim.Optimizer]:
    """The freshly initialized model on ``device`` in train mode, and its AdamW (no weight decay on the norms)."""
    model = LLaDAModel(config)
    init_weights(model, options.seed)
    model.to(device).train()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=options.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=True,
    )
    return model, optimizer


def _run_record(run: _Run, state: dict[str, Any] | None, command: str | None, compile: bool, streams) -> dict:
    """What ``training.json`` records before the first checkpoint (the checkpoints add step, tokens, evaluation)."""
    return {
        "command": state["command"] if state is not None else command,
        "resumed_with": [*state["resumed_with"], command] if state is not None else [],
        "options": asdict(run.options),
        "model_config": run.model.config.to_dict(),
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "device": run.device_name,
        "compile": compile,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "heldout_list": code_data.HELDOUT_FILE.name,
        "heldout_list_sha256": hashlib.sha256(code_data.HELDOUT_FILE.read_bytes()).hexdigest(),
        "train_tokens": len(streams[0]),
        "heldout_tokens": len(streams[1]),
    }


class _Run:
    """One training run in progress: model, optimizer, step, schedule, held-out set, log and record."""

    def __init__(
        self,
        out: Path,
        options: TrainOptions,
        state: dict[str, Any] | None,
        *,
        tokenizer,
        streams,
        device: str,
        compile: bool,
        save_dtype: str,
        command: str | None,
        started: float,
    ) -> None:
        self.out, self.options, self.tokenizer, self.started = out, options, tokenizer, started
        self.device_name, self.device = device, torch.device(device)
        self.dtype, self.save_dtype = getattr(torch, options.dtype), getattr(torch, save_dtype)
        config = code_model_config(options, len(tokenizer))
        self.model, self.optimizer = _model_and_optimizer(config, options, self.device)
        self.step, self.total_steps, self.prior_seconds, self.eval_seconds = 0, options.steps, 0.0, None
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.total_steps = state["step"], state["total_steps"]
            self.prior_seconds, self.eval_seconds = state["elapsed_s"], state["eval_seconds"]
        if compile:
            for block in self.model.transformer["blocks"]:
                block.compile()
        self.windows = TokenWindows(streams[0], options.seq_len, options.seed)
        self.heldout = heldout_set(streams[1], options.seq_len, options.eval_windows)
        self.log = _Log(out / LOG_FILE, self.step if state is not None else None)
        self.tokens_per_step = options.batch_size * options.seq_len
        self.record = _run_record(self, state, command, compile, streams)
        self.last_eval: dict[str, float] | None = None
        self.eval_step = -1

    def evaluate(self) -> None:
        """Evaluate on the held-out set now and log it; the first (slowest) evaluation's time sizes the schedule."""
        t = time.perf_counter()
        self.last_eval = evaluate(self.model, self.heldout, self.options.batch_size, self.dtype)
        self.eval_step = self.step
        self.eval_seconds = self.eval_seconds or time.perf_counter() - t
        self.log.write({"step": self.step, "tokens": self.step * self.tokens_per_step, "eval": self.last_eval})

    def save(self) -> None:
        """Write the checkpoint: the state file, the model and tokenizer, and ``training.json``."""
        elapsed = self.prior_seconds + time.perf_counter() - self.started
        state = {
            "options": asdict(self.options),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "elapsed_s": elapsed,
            "eval_seconds": self.eval_seconds,
            "command": self.record["command"],
            "resumed_with": self.record["resumed_with"],
        }
        atomic_torch_save(state, self.out / STATE_FILE)
        _save_model(self.model, self.tokenizer, self.out, self.save_dtype)
        self.record.update(
            step=self.step,
            total_steps=self.total_steps,
            tokens_seen=self.step * self.tokens_per_step,
            elapsed_s=round(elapsed, 1),
            heldout_eval=self.last_eval,
        )
        atomic_write_text(self.out / RUN_FILE, json.dumps(self.record, indent=2) + "\n")

    def eval_due(self) -> bool:
        """Whether this step is one of the schedule's ``evals`` evenly spaced evaluations."""
        total = self.total_steps
        return total is not None and self.step % max(1, total // self.options.evals) == 0

    def train_step(self):
        """One optimizer step on batch ``step``; returns (per-sequence loss, its MaskedBatch, lr, grad norm)."""
        options = self.options
        lr = lr_at(self.step, self.total_steps, options)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ids = self.windows.batch(self.step, options.batch_size)
        batch = sample_masks(
            options.batch_size,
            options.seq_len,
            span_prob=options.span_prob,
            span_min=options.span_min,
            span_max=options.span_max,
            generator=torch.Generator().manual_seed(options.seed * 2**32 + self.step),
        )
        ids = ids.to(self.device)
        logits = masked_logits(self.model, batch.inputs(ids, code_data.MASK_ID), batch.masked, self.dtype)
        per_sequence = mdlm_loss(logits, ids[batch.masked.to(self.device)], batch)
        loss = per_sequence.mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), options.grad_clip)
        self.optimizer.step()
        self.step += 1
        return per_sequence, batch, lr, grad_norm

    def plan(self, per_step: float, deadline: float, save_minutes: float) -> None:
        """Size the schedule: the steps that the time left allows after the evaluations and checkpoints."""
        remaining = deadline - time.perf_counter() - self.options.evals * (self.eval_seconds or 0.0)
        remaining -= SAVE_SECONDS * (2 + remaining / (60.0 * save_minutes))
        self.total_steps = max(self.step, self.step + int(remaining / per_step))
        self.log.write({"step": self.step, "plan": {"seconds_per_step": per_step, "total_steps": self.total_steps}})

    def log_step(self, per_sequence: Tensor, batch, lr: float, grad_norm: Tensor, rate_mark, progress: bool):
        """Log the step (losses by region kind, lr, grad norm, throughput); returns the new throughput mark."""
        now = time.perf_counter()
        rate = (self.step - rate_mark[1]) * self.tokens_per_step / max(now - rate_mark[0], 1e-9)
        losses = per_sequence.detach().cpu()
        kinds = {"iid": losses[~batch.span], "span": losses[batch.span]}
        record = {
            "step": self.step,
            "tokens": self.step * self.tokens_per_step,
            "loss": float(losses.mean()),
            **{f"loss_{kind}": float(values.mean()) for kind, values in kinds.items() if values.numel()},
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": rate,
            "elapsed_s": self.prior_seconds + now - self.started,
        }
        self.log.write(record)
        if progress:
            total = self.total_steps
            eta = None if total is None else (total - self.step) * self.tokens_per_step / max(rate, 1e-9)
            _progress(self.step, total, record["loss"], lr, rate, eta)
        return now, self.step

    def loop(self, deadline: float | None, stop_at: int | None, save_minutes: float, log_every: int, progress: bool):
        """Train until total_steps, ``stop_at`` or the deadline, logging, evaluating and checkpointing on the way."""
        last_save = time.perf_counter()
        plan_start, plan_mark = self.step + PLAN_SKIP, 0.0
        rate_mark = (time.perf_counter(), self.step)
        while self.step < (self.total_steps or math.inf) and (stop_at is None or self.step < stop_at):
            if deadline is not None and time.perf_counter() > deadline:
                break
            per_sequence, batch, lr, grad_norm = self.train_step()
            if self.total_steps is None and self.step == plan_start:
                plan_mark = time.perf_counter()
            if self.total_steps is None and self.step == plan_start + PLAN_AFTER:
                self.plan((time.perf_counter() - plan_mark) / PLAN_AFTER, deadline, save_minutes)
            if self.step % log_every == 0 or self.step == self.total_steps:
                rate_mark = self.log_step(per_sequence, batch, lr, grad_norm, rate_mark, progress)
            if self.eval_due() and self.step < (self.total_steps or 0):
                self.evaluate()
            if time.perf_counter() - last_save > 60.0 * save_minutes:
                self.save()
                last_save = time.perf_counter()


def train(
    out: str | Path,
    options: TrainOptions,
    *,
    streams: tuple[np.ndarray, np.ndarray],
    tokenizer,
    minutes: float | None = None,
    device: str = "cpu",
    resume: bool = False,
    stop_at: int | None = None,
    compile: bool = False,
    save_minutes: float = 10.0,
    save_dtype: str = "bfloat16",
    log_every: int = 10,
    progress: bool = False,
    command: str | None = None,
) -> dict[str, Any]:
    """Train (or with ``resume`` continue) the code model in folder ``out``; returns what ``training.json`` records.

    - options: ignored on resume (the state file's are used).
    - streams: the (training, held-out) token streams (``token_streams``); tokenizer: the code tokenizer.
    - minutes, stop_at: stop when the time is spent or at that step (else at total_steps), with a checkpoint
      and a held-out evaluation; save_minutes: the checkpoint interval.
    - command: the command line recorded (the first run's; a resumed run's in ``resumed_with``).
    """
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _saved_state(out, resume)
    if state is not None:
        options = TrainOptions(**state["options"])
    _check_schedule(options, state, minutes)
    run = _Run(
        out,
        options,
        state,
        tokenizer=tokenizer,
        streams=streams,
        device=device,
        compile=compile,
        save_dtype=save_dtype,
        command=command,
        started=started,
    )
    if not resume:
        run.evaluate()
    deadline = None if minutes is None else started + 60.0 * minutes
    run.loop(deadline, stop_at, save_minutes, log_every, progress)
    if progress:
        print(file=sys.stderr)
    if run.eval_step != run.step:
        run.evaluate()
    run.save()
    return run.record
