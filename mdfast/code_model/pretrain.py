"""Train the code model of issue 13: a LLaDA-architecture masked diffusion LM (SPEC 5, ``LLaDAModel``) on the
Python standard library (``code_data``) with LLaDA's masked-diffusion objective mixed with span masking
(``mdlm_loss``), saved as a LLaDA checkpoint ``mdfast.load_llada`` reads.

The two runs (``mdfast train mdlm`` and ``python -m mdfast.code_model.pretrain`` take the same options):

    # 2-core CPU, 2 hours: the defaults (6.9 M parameters, 13.8 MB in bfloat16). --threads 2 on an otherwise
    # idle machine; --threads 1 on a shared one (two threads that wait for each other ran 4x slower than one).
    python -m mdfast.code_model.pretrain --out code_model --minutes 120 --threads 2
    # one GPU, under 8 minutes: 11.8 M parameters, 23.6 MB in bfloat16
    mdfast train mdlm --out code_model --device cuda --minutes 7.5 --d-model 320 --n-layers 8 --n-heads 5 \
        --mlp-hidden 768 --batch-size 256 --warmup-steps 200

Shipping a run (at most 25 MB of weights): copy ``config.json``, ``model-*.safetensors``,
``model.safetensors.index.json``, ``tokenizer.json``, ``tokenizer_config.json`` and ``training.json`` (command,
data split, evaluation) from the output folder into ``SHIPPED_MODEL_DIR`` (``mdfast/data/code_model``).

The output folder ``DIR`` holds, at every checkpoint: the model (``config.json``, safetensors shards and index,
in ``--save-dtype``), ``tokenizer.json`` with its ``tokenizer_config.json``, ``training.json`` (command, options,
data split, tokens seen, the last held-out evaluation), ``log.jsonl`` (one JSON object per logged step or
evaluation) and ``train_state.pt`` (float32 weights, optimizer, step: what ``--resume`` continues from).

Schedule: AdamW (no weight decay on the norm weights), linear warm-up over ``warmup_steps``, then a cosine from
``lr`` down to ``min_lr_ratio * lr`` at ``total_steps``; ``--steps`` fixes total_steps, else ``--minutes`` sizes
it: the first ``PLAN_AFTER`` steps are timed (after ``PLAN_SKIP`` warm-up steps, during the warm-up, whose rate
does not depend on total_steps) and total_steps is what the remaining time allows after the evaluations. The
budget also stops the run (with a checkpoint) if the machine slows down.

Exact resume: batch k of the run is a function of (seed, k) only (``TokenWindows``; masks from a generator seeded
with (seed, k)); the learning rate is a function of k; the state file holds the weights, AdamW's moments and k.
A resumed run therefore computes what the uninterrupted run would have, bit for bit on the same machine and
settings (the log's lines after the checkpoint's step are dropped).

Device and dtype: the weights and AdamW stay float32 on ``--device``; forward and backward run under
``torch.autocast`` in ``--dtype`` (bfloat16 by default, on the CPU too: 1.6x faster than float32 on this 2-core
AVX512-BF16 machine), with the residual stream in that dtype (the embeddings are cast before the first block, as
in a bfloat16 LLaDA). ``--compile`` compiles each block (``nn.Module.compile``; the default on CUDA only: no gain
measured on this CPU; the evaluation always runs eagerly).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..models.llada import LLaDAConfig, LLaDAModel, save_llada
from . import data as code_data
from .mdlm_loss import MaskedBatch, mdlm_loss, sample_masks
from .shipped import SHIPPED_MODEL_DIR

__all__ = [
    "SHIPPED_MODEL_DIR",
    "HeldoutSet",
    "TokenWindows",
    "TrainOptions",
    "add_arguments",
    "code_model_config",
    "evaluate",
    "heldout_set",
    "init_weights",
    "lr_at",
    "main",
    "masked_logits",
    "run",
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

# The held-out evaluation: name -> (mask ratio, span length or None for i.i.d.), fixed masks (seed EVAL_SEED).
EVAL_SETTINGS: dict[str, tuple[float, int | None]] = {
    "iid_r0.15": (0.15, None),
    "iid_r0.50": (0.50, None),
    "iid_r0.85": (0.85, None),
    "span64": (1.0, 64),
}
EVAL_SEED = 1234


@dataclass
class TrainOptions:
    """What a run computes (kept in the state file; ``--resume`` takes them from there). ``mlp_hidden`` 0 means
    8/3 d_model rounded up to a multiple of 64; ``steps`` None means sized from the time budget."""

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


def code_model_config(options: TrainOptions, vocab_size: int = code_data.VOCAB_SIZE) -> LLaDAConfig:
    """The LLaDA config (SPEC 5) of the code model: no weight tying, RoPE theta 10000, [MASK] and [EOS] of
    ``code_data``, ``max_sequence_length`` = the training length."""
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
    """Norm weights 1; every matrix N(0, 0.02^2), the two that write into the residual stream (attn_out and
    the block's ff_out) N(0, (0.02 / sqrt(2 n_layers))^2) (GPT-2's scaling); drawn from a generator seeded
    with ``seed``, in state-dict order."""
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
# Data
# ---------------------------------------------------------------------------------------------


def token_streams(tokenizer, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) token streams of the standard library's split (``code_data``): the files in path
    order, each followed by [EOS]. Cached in ``cache`` (an .npz file) under a key of the tokenizer and the
    files' paths and sizes, so a resumed run skips the encoding (about a minute on a loaded 2-core CPU)."""
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
        np.savez(cache, key=key.hexdigest(), train=streams[0], heldout=streams[1])
    return streams


class TokenWindows:
    """Training windows of ``seq_len`` tokens from a token stream, in epochs: epoch e starts at a seeded offset
    o_e in [0, seq_len) and visits the windows stream[o_e + j L : o_e + (j + 1) L], j < (len - L) // L, in a
    seeded random order. Sample s of the run (s = step * batch_size + b) is window perm_e[s mod n] of epoch
    e = s // n: a function of (seed, s) alone, so a resumed run reads what the uninterrupted one would."""

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
    """The fixed held-out evaluation: ``ids`` (K, L), K windows evenly spaced over the held-out stream, and per
    setting of ``EVAL_SETTINGS`` a MaskedBatch over them drawn with seed ``EVAL_SEED`` at the setting's fixed
    ratio (i.i.d. over the window, or one span of the given length). The same for every run with the same
    tokenizer, seq_len and K, so its numbers compare across runs."""

    ids: Tensor
    masks: dict[str, MaskedBatch]


def heldout_set(stream: np.ndarray, seq_len: int, windows: int) -> HeldoutSet:
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


# ---------------------------------------------------------------------------------------------
# Forward, evaluation, schedule
# ---------------------------------------------------------------------------------------------


def masked_logits(model: LLaDAModel, inputs: Tensor, masked: Tensor, dtype: torch.dtype) -> Tensor:
    """The model's logits (N, V) at the N ``masked`` positions of ``inputs`` (B, L), row-major: the body runs on
    every position (under autocast in ``dtype`` unless float32, the embeddings cast to it), the head only on
    the masked rows (a forward hook on ``ln_f`` selects them)."""
    rows = masked.to(inputs.device)
    hook = model.transformer["ln_f"].register_forward_hook(lambda module, args, out: out[rows])
    try:
        embeds = model.get_input_embeddings()(inputs)
        with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype != torch.float32):
            return model(inputs_embeds=embeds.to(dtype)).logits
    finally:
        hook.remove()


def evaluate(model: LLaDAModel, heldout: HeldoutSet, batch_size: int, dtype: torch.dtype) -> dict[str, float]:
    """Per setting of the held-out set: cross-entropy per masked token (nats, unweighted mean over its masked
    tokens), its perplexity exp(ce) and the argmax accuracy; ``loss`` / ``ppl``: the mean of the settings'
    cross-entropies and its exp. Runs eagerly (compiled blocks are bypassed), in eval mode, without grad."""
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
    """The learning rate of step ``step`` (0-based): lr (step + 1) / warmup_steps during the warm-up, then a
    cosine from lr to min_lr_ratio * lr at total_steps (lr while total_steps is not yet known)."""
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
            path.write_text("")
        else:  # resume: drop what the interrupted run logged after its last checkpoint
            lines = path.read_text().splitlines() if path.is_file() else []
            kept = [line for line in lines if line and json.loads(line)["step"] <= keep_through_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _progress(step: int, total: int | None, loss: float, lr: float, rate: float, eta: float | None) -> None:
    total_text = "?" if total is None else str(total)
    eta_text = "" if eta is None else f"  eta {int(eta) // 3600}:{int(eta) % 3600 // 60:02d}:{int(eta) % 60:02d}"
    line = f"\r[mdlm] step {step}/{total_text}  loss {loss:.3f}  lr {lr:.2e}  {rate / 1000:.1f}k tok/s{eta_text}"
    print(line, end="", file=sys.stderr, flush=True)


def _save_model(model: LLaDAModel, tokenizer, out: Path, dtype: torch.dtype) -> None:
    """The LLaDA checkpoint in ``dtype`` (save_llada) and the tokenizer, into ``out``."""
    export = LLaDAModel(model.config, device="meta")
    state = {key: value.detach().to("cpu", dtype) for key, value in model.state_dict().items()}
    export.load_state_dict(state, assign=True)
    save_llada(export, out)
    code_data.save_tokenizer(tokenizer, out, model.config.max_sequence_length)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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
    """Train (or with ``resume`` continue) the code model in folder ``out`` (module docstring) on
    ``streams`` = (training, held-out) token streams; returns what ``training.json`` records. ``options`` is
    ignored on resume (the state file's are used). Stops at total_steps, at ``stop_at`` steps, or when
    ``minutes`` have passed, with a checkpoint and a held-out evaluation. ``command`` is recorded (the first
    run's; a resumed run's in ``resumed_with``)."""
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / STATE_FILE
    if resume:
        if not state_path.is_file():
            raise ValueError(f"resume: {state_path} does not exist")
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        options = TrainOptions(**state["options"])
    elif state_path.exists():
        raise ValueError(f"out: {out} already holds a run ({STATE_FILE}); pass resume=True or another folder")
    else:
        state = None
    if minutes is None and (options.steps if state is None else state["total_steps"]) is None:
        raise ValueError("minutes: the schedule's length is not set (steps), so a time budget must size it")
    if options.steps is None and options.warmup_steps < PLAN_SKIP + PLAN_AFTER:
        raise ValueError(f"warmup_steps: at least {PLAN_SKIP + PLAN_AFTER} when the time budget sizes the schedule")
    device_ = torch.device(device)
    dtype = getattr(torch, options.dtype)
    config = code_model_config(options, len(tokenizer))
    model = LLaDAModel(config)
    init_weights(model, options.seed)
    model.to(device_).train()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=options.lr,
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=True,
    )
    step, total_steps, prior_seconds, eval_seconds = 0, options.steps, 0.0, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, total_steps = state["step"], state["total_steps"]
        prior_seconds, eval_seconds = state["elapsed_s"], state["eval_seconds"]
    if compile:
        for block in model.transformer["blocks"]:
            block.compile()

    windows = TokenWindows(streams[0], options.seq_len, options.seed)
    heldout = heldout_set(streams[1], options.seq_len, options.eval_windows)
    log = _Log(out / LOG_FILE, step if resume else None)
    tokens_per_step = options.batch_size * options.seq_len
    deadline = None if minutes is None else started + 60.0 * minutes
    run_record: dict[str, Any] = {
        "command": state["command"] if state is not None else command,
        "resumed_with": [*state["resumed_with"], command] if state is not None else [],
        "options": asdict(options),
        "model_config": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device,
        "compile": compile,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "heldout_list": str(code_data.HELDOUT_FILE.name),
        "heldout_list_sha256": hashlib.sha256(code_data.HELDOUT_FILE.read_bytes()).hexdigest(),
        "train_tokens": len(streams[0]),
        "heldout_tokens": len(streams[1]),
    }
    last_eval: dict[str, float] | None = None
    eval_step = -1

    def run_eval() -> None:
        nonlocal last_eval, eval_seconds, eval_step
        t = time.perf_counter()
        last_eval, eval_step = evaluate(model, heldout, options.batch_size, dtype), step
        eval_seconds = eval_seconds or time.perf_counter() - t  # the first (slowest) one sizes the schedule
        log.write({"step": step, "tokens": step * tokens_per_step, "eval": last_eval})

    def save() -> None:
        elapsed = prior_seconds + time.perf_counter() - started
        state = {
            "options": asdict(options),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "total_steps": total_steps,
            "elapsed_s": elapsed,
            "eval_seconds": eval_seconds,
            "command": run_record["command"],
            "resumed_with": run_record["resumed_with"],
        }
        _atomic_save(state, state_path)
        _save_model(model, tokenizer, out, getattr(torch, save_dtype))
        run_record.update(
            step=step,
            total_steps=total_steps,
            tokens_seen=step * tokens_per_step,
            elapsed_s=round(elapsed, 1),
            heldout_eval=last_eval,
        )
        (out / RUN_FILE).write_text(json.dumps(run_record, indent=2) + "\n")

    def eval_due() -> bool:
        return total_steps is not None and step % max(1, total_steps // options.evals) == 0

    if not resume:
        run_eval()
    last_save = time.perf_counter()
    plan_start = step + PLAN_SKIP
    rate_mark = (time.perf_counter(), step)
    while True:
        if step >= (total_steps or math.inf) or (stop_at is not None and step >= stop_at):
            break
        if deadline is not None and time.perf_counter() > deadline:
            break
        lr = lr_at(step, total_steps, options)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ids = windows.batch(step, options.batch_size)
        batch = sample_masks(
            options.batch_size,
            options.seq_len,
            span_prob=options.span_prob,
            span_min=options.span_min,
            span_max=options.span_max,
            generator=torch.Generator().manual_seed(options.seed * 2**32 + step),
        )
        ids = ids.to(device_)
        logits = masked_logits(model, batch.inputs(ids, code_data.MASK_ID), batch.masked, dtype)
        per_sequence = mdlm_loss(logits, ids[batch.masked.to(device_)], batch)
        loss = per_sequence.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
        optimizer.step()
        step += 1

        if total_steps is None and step == plan_start:
            plan_mark = time.perf_counter()
        if total_steps is None and step == plan_start + PLAN_AFTER:
            per_step = (time.perf_counter() - plan_mark) / PLAN_AFTER
            remaining = deadline - time.perf_counter() - options.evals * (eval_seconds or 0.0)
            remaining -= SAVE_SECONDS * (2 + remaining / (60.0 * save_minutes))
            total_steps = max(step, step + int(remaining / per_step))
            log.write({"step": step, "plan": {"seconds_per_step": per_step, "total_steps": total_steps}})
        if step % log_every == 0 or step == total_steps:
            now = time.perf_counter()
            rate = (step - rate_mark[1]) * tokens_per_step / max(now - rate_mark[0], 1e-9)
            rate_mark = (now, step)
            losses = per_sequence.detach().cpu()
            kinds = {"iid": losses[~batch.span], "span": losses[batch.span]}
            record = {
                "step": step,
                "tokens": step * tokens_per_step,
                "loss": float(losses.mean()),
                **{f"loss_{kind}": float(values.mean()) for kind, values in kinds.items() if values.numel()},
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": rate,
                "elapsed_s": prior_seconds + now - started,
            }
            log.write(record)
            if progress:
                eta = None if total_steps is None else (total_steps - step) * tokens_per_step / max(rate, 1e-9)
                _progress(step, total_steps, record["loss"], lr, rate, eta)
        if eval_due() and step < (total_steps or 0):
            run_eval()
        if time.perf_counter() - last_save > 60.0 * save_minutes:
            save()
            last_save = time.perf_counter()
    if progress:
        print(file=sys.stderr)
    if eval_step != step:
        run_eval()
    save()
    return run_record


# ---------------------------------------------------------------------------------------------
# Command line: ``mdfast train mdlm`` and ``python -m mdfast.code_model.pretrain``
# ---------------------------------------------------------------------------------------------


_PROGRAMS = {"mdlm.py": "python -m mdfast.code_model.pretrain", "mdfast": "mdfast"}  # how sys.argv[0] was invoked


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``mdfast train mdlm`` (``run`` takes the parsed arguments)."""
    defaults = TrainOptions()
    run_group = parser.add_argument_group("run")
    run_group.add_argument("--out", required=True, help="output folder (checkpoint, tokenizer, logs, state)")
    run_group.add_argument(
        "--minutes", type=float, default=None, help="time budget (sizes the schedule unless --steps)"
    )
    run_group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    run_group.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    run_group.add_argument("--stop-at", type=int, default=None, help="stop (with a checkpoint) after this step")
    run_group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compile each block (nn.Module.compile); default: on CUDA only (no gain measured on the CPU)",
    )
    run_group.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    run_group.add_argument("--save-minutes", type=float, default=10.0, help="checkpoint interval")
    run_group.add_argument("--save-dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    run_group.add_argument("--log-every", type=int, default=10, help="steps between log lines")
    run_group.add_argument("--quiet", action="store_true", help="no progress bar")
    opts = parser.add_argument_group("training (fixed for the run; --resume reads them from the state)")
    for field in fields(TrainOptions):
        value = getattr(defaults, field.name)
        kind = {"int": int, "float": float, "str": str, "int | None": int}[field.type]
        opts.add_argument(f"--{field.name.replace('_', '-')}", type=kind, default=value, help=f"default {value}")


def run(args: argparse.Namespace) -> int:
    """Train the code model with the parsed ``args`` (``add_arguments``); prints the training record."""
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    options = TrainOptions(**{f.name: getattr(args, f.name) for f in fields(TrainOptions)})
    tokenizer = code_data.load_tokenizer(out / "tokenizer.json" if args.resume else code_data.TOKENIZER_FILE)
    out.mkdir(parents=True, exist_ok=True)
    streams = token_streams(tokenizer, out / TOKENS_FILE)
    record = train(
        out,
        options,
        streams=streams,
        tokenizer=tokenizer,
        minutes=None if args.minutes is None else args.minutes - (time.perf_counter() - started) / 60.0,
        device=args.device,
        resume=args.resume,
        stop_at=args.stop_at,
        compile=args.device.startswith("cuda") if args.compile is None else args.compile,
        save_minutes=args.save_minutes,
        save_dtype=args.save_dtype,
        log_every=args.log_every,
        progress=not args.quiet,
        command=f"{_PROGRAMS.get(Path(sys.argv[0]).name, sys.argv[0])} {shlex.join(sys.argv[1:])}",
    )
    print(json.dumps({key: record.get(key) for key in ("step", "tokens_seen", "elapsed_s", "heldout_eval")}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mdfast.code_model.pretrain", description="Train the code model (a LLaDA masked diffusion LM)."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
