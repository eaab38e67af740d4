"""x-pred alignment (SPEC 6.1): a fine-tune that makes softmax(Z) W_in land on the clean embedding.

x-flow feeds the model mixtures of embeddings, X_pred = softmax(Z) W_in; a model trained only on one-hot inputs
maps them poorly. The fine-tune trains on the model's own full-budget answers, so what the loss removes is
misalignment, not wrong answers:

    per example r ~ U(0, 1); each answer position masked with probability r (at least one)
    inputs: m at masked positions, the clean embedding W_in[x0] elsewhere (prompt included)
    X_pred = softmax(Z) W_in at every answer position, X0 = W_in[x0] from a frozen copy of W_in
    loss = mean over all answer positions (masked and unmasked) of ||X_pred - X0||^2 / E

- ``xpred_alignment_loss``: that loss; ``sample_alignment_mask``: the masking.
- ``XPredAlignmentTrainer``: a ``transformers.Trainer`` whose ``compute_loss`` it is (full fine-tune, or LoRA
  through peft); ``alignment_training_arguments``: SPEC 6.1's defaults.
- ``generated_answers`` / ``infilled_answers`` / ``alignment_records``: the data, by mdfast's own decoding.

The command is ``mdfast train align``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import sys
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer, TrainingArguments

from ..decode import DecodeOptions, generate_with_options, infill_with_options
from ..errors import describe
from ..models.llada import LLaDAConfig

__all__ = [
    "AlignmentCollator",
    "XPredAlignmentTrainer",
    "alignment_logits",
    "alignment_records",
    "alignment_training_arguments",
    "generated_answers",
    "infilled_answers",
    "masked_cross_entropy",
    "sample_alignment_mask",
    "xpred_alignment_loss",
]

TRAIN_EXTRA = 'pip install "mdfast[train]"'


def sample_alignment_mask(answer_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """SPEC 6.1's masking: per example r ~ U(0, 1), each answer position masked with probability r (at least one).

    ``answer_mask`` (B, L) marks the answer positions; returns the masked positions (B, L) bool, never outside
    the answer. Each position draws u ~ U(0, 1) and is masked when u < r; a row left with none masks its answer
    position of smallest u (uniform over the answer).
    """
    if not isinstance(answer_mask, Tensor) or answer_mask.dim() != 2:
        raise ValueError(f"answer_mask: expected a (B, L) tensor, got {describe(answer_mask)}")
    answer = answer_mask.bool()
    B, L = answer.shape
    r = torch.rand(B, 1, generator=generator, device=answer.device)
    u = torch.rand(B, L, generator=generator, device=answer.device)
    masked = (u < r) & answer
    first = torch.where(answer, u, torch.full_like(u, math.inf)).argmin(-1, keepdim=True)
    forced = (~masked.any(-1, keepdim=True)) & answer.any(-1, keepdim=True)
    at_first = torch.arange(L, device=answer.device) == first
    return masked | (forced & at_first)


def alignment_logits(
    model: nn.Module, input_ids: Tensor, masked: Tensor, mask_token_id: int, attention_mask: Tensor | None = None
) -> Tensor:
    """The model's logits (B, L, V) on SPEC 6.1's input.

    The mask embedding m at the ``masked`` positions and the clean embedding W_in[x0] everywhere else, prompt
    included, fed as ``inputs_embeds`` through the model's own input embedding module (which any HF masked LM,
    a peft-wrapped model and mdfast's LLaDAModel take).
    """
    ids = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    out = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=attention_mask)
    return out.logits if hasattr(out, "logits") else out[0]


def xpred_alignment_loss(
    model: nn.Module,
    batch: dict[str, Tensor],
    *,
    frozen_embedding: Tensor,
    mask_token_id: int,
    masked: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """SPEC 6.1's x-pred alignment loss on ``batch``; returns (loss, logs).

    - batch: "input_ids" (B, L) = prompt and answer x0, "answer_mask" (B, L) (1 at answer positions), optional
      "attention_mask" (B, L).
    - frozen_embedding (V, E): a frozen copy of W_in; X0 = frozen_embedding[x0].
    - masked (B, L) bool: the masked answer positions (default: ``sample_alignment_mask`` with ``generator``).
    - Z = the logits at every answer position, X_pred = softmax(Z) W_in with W_in the model's live input
      embedding table (softmax in float32, the product in W_in's dtype). Loss = mean over all answer positions
      of the batch, masked and unmasked, of ||X_pred - X0||^2 / E.
    - logs (detached; NaN where a set is empty): ``mse_masked`` and ``mse_unmasked`` (the per-position error over
      masked / unmasked answer positions), ``ce_masked`` (cross-entropy of x0 at masked positions),
      ``identity_acc`` (argmax == x0 at unmasked answer positions).
    """
    input_ids, answer = batch["input_ids"], batch["answer_mask"].bool()
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or answer.shape != input_ids.shape:
        raise ValueError(
            f"batch: expected input_ids and answer_mask of one shape (B, L), got {describe(input_ids)} and "
            f"{describe(batch['answer_mask'])}"
        )
    if not bool(answer.any()):
        raise ValueError("batch: answer_mask marks no answer position")
    W = model.get_input_embeddings().weight
    if tuple(frozen_embedding.shape) != tuple(W.shape):
        raise ValueError(
            f"frozen_embedding: expected the input embedding table's shape {tuple(W.shape)}, "
            f"got {tuple(frozen_embedding.shape)}"
        )
    if masked is None:
        masked = sample_alignment_mask(answer, generator)
    elif masked.shape != answer.shape or bool((masked.bool() & ~answer).any()):
        raise ValueError("masked: expected a (B, L) bool tensor inside answer_mask")
    logits = alignment_logits(model, input_ids, masked.bool(), mask_token_id, batch.get("attention_mask"))
    if logits.shape[-1] != W.shape[0]:
        raise ValueError(f"the model's logits have {logits.shape[-1]} entries but W_in has {W.shape[0]} rows")
    Z = logits[answer].float()  # (n, V), every answer position
    x0 = input_ids[answer]
    X_pred = (torch.softmax(Z, dim=-1).to(W.dtype) @ W).float()
    X0 = frozen_embedding.detach()[x0].float()
    error = (X_pred - X0).pow(2).sum(-1) / W.shape[1]  # ||X_pred - X0||^2 / E per position
    loss = error.mean()
    with torch.no_grad():
        is_masked = masked.bool()[answer]
        logs = {
            "mse_masked": _mean_or_nan(error[is_masked]),
            "mse_unmasked": _mean_or_nan(error[~is_masked]),
            "ce_masked": F.cross_entropy(Z[is_masked], x0[is_masked]),
            "identity_acc": _mean_or_nan((Z[~is_masked].argmax(-1) == x0[~is_masked]).float()),
        }
    return loss, {name: value.detach() for name, value in logs.items()}


def masked_cross_entropy(model: nn.Module, batch: dict[str, Tensor], masked: Tensor, mask_token_id: int) -> Tensor:
    """ce_masked of ``model`` on the batch and masking ``xpred_alignment_loss`` used, without grad.

    The frozen base model's value, logged beside the trained one's (SPEC 6.1's logs).
    """
    with torch.no_grad():
        logits = alignment_logits(model, batch["input_ids"], masked, mask_token_id, batch.get("attention_mask"))
        return F.cross_entropy(logits[masked].float(), batch["input_ids"][masked])


def _mean_or_nan(values: Tensor) -> Tensor:
    return values.mean() if values.numel() else torch.tensor(math.nan, device=values.device)


# ---------------------------------------------------------------------------------------------
# Data: the model's own full-budget answers
# ---------------------------------------------------------------------------------------------


class AlignmentCollator:
    """Pads records {"input_ids", "answer_mask"} on the right into a batch of tensors with an "attention_mask"."""

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, records: list[dict]) -> dict[str, Tensor]:
        width = max(len(r["input_ids"]) for r in records)

        def padded(values, fill):
            return torch.tensor([list(v) + [fill] * (width - len(v)) for v in values], dtype=torch.long)

        return {
            "input_ids": padded([r["input_ids"] for r in records], self.pad_token_id),
            "answer_mask": padded([r["answer_mask"] for r in records], 0),
            "attention_mask": padded([[1] * len(r["input_ids"]) for r in records], 0),
        }


def generated_answers(
    model,
    prompts: list[list[int]],
    *,
    answer_length: int,
    mask_token_id: int | None = None,
    batch_size: int = 8,
    block_length: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int = 0,
    backend: str = "auto",
) -> list[dict]:
    """SPEC 6.1's data for prompts (lists of ids): each prompt answered by the model itself at full budget.

    The answer of ``answer_length`` tokens is decoded with the model's standard decoder (low_confidence, one token
    per step), batched with left padding. Returns records {"input_ids": prompt + answer, "answer_mask": 0 on the
    prompt, 1 on the answer}.
    """
    device = model.get_input_embeddings().weight.device
    options = DecodeOptions(
        steps=answer_length,
        decoder="low_confidence",
        block_length=block_length,
        eos_token_id=eos_token_id,
        backend=backend,
    )
    records = []
    for start in range(0, len(prompts), batch_size):
        part = [list(p) for p in prompts[start : start + batch_size]]
        width = max(len(p) for p in part)
        ids = torch.tensor([[pad_token_id] * (width - len(p)) + p for p in part], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part], device=device)
        out = generate_with_options(
            model, ids, options, mask, max_new_tokens=answer_length, mask_token_id=mask_token_id
        )
        for prompt, answer in zip(part, out.sequences[:, width:].tolist()):
            records.append({"input_ids": prompt + answer, "answer_mask": [0] * len(prompt) + [1] * len(answer)})
    return records


def infilled_answers(
    model,
    templates: list[list[int]],
    *,
    mask_token_id: int,
    batch_size: int = 8,
    block_length: int | None = None,
    pad_token_id: int = 0,
    backend: str = "auto",
) -> list[dict]:
    """SPEC 6.1's data for infilling: each template filled by the model itself at full budget.

    A template holds ``mask_token_id`` at the positions to fill (SPEC 7); it is filled with low_confidence, one
    token per step, batched (left-padded) among templates with the same number of masks. Returns records
    {"input_ids": the filled template, "answer_mask": 1 where the masks were}.
    """
    device = model.get_input_embeddings().weight.device
    by_count: dict[int, list[int]] = defaultdict(list)
    for index, template in enumerate(templates):
        by_count[sum(1 for token in template if token == mask_token_id)].append(index)
    if 0 in by_count:
        raise ValueError(f"templates: template {by_count[0][0]} holds no mask token {mask_token_id}")
    records: list[dict | None] = [None] * len(templates)
    for count, indices in by_count.items():
        options = DecodeOptions(steps=count, decoder="low_confidence", block_length=block_length, backend=backend)
        for start in range(0, len(indices), batch_size):
            part = indices[start : start + batch_size]
            width = max(len(templates[i]) for i in part)
            rows = [[pad_token_id] * (width - len(templates[i])) + list(templates[i]) for i in part]
            ids = torch.tensor(rows, device=device)
            mask = torch.tensor([[0] * (width - len(templates[i])) + [1] * len(templates[i]) for i in part])
            out = infill_with_options(model, ids, options, mask.to(device), mask_token_id=mask_token_id)
            for i, row in zip(part, out.sequences.tolist()):
                pad = width - len(templates[i])
                records[i] = {
                    "input_ids": row[pad:],
                    "answer_mask": [int(token == mask_token_id) for token in templates[i]],
                }
    return records


def alignment_records(
    data: list[dict],
    model,
    tokenizer,
    *,
    mask_token_id: int,
    answer_length: int,
    chat: bool = False,
    batch_size: int = 8,
    block_length: int | None = None,
    backend: str = "auto",
) -> list[dict]:
    """The training records of JSONL ``data``: finished records kept, templates infilled, prompts answered.

    - A record with "answer_mask" is kept as it is; one with "input_ids" (mask ids where to fill) is a template
      (``infilled_answers``); one with "prompt_ids" or a "prompt" text (``chat``: in the tokenizer's chat
      template) is answered with ``answer_length`` tokens (``generated_answers``).
    - Returns the kept records, then the answered prompts, then the filled templates.
    """
    done = [r for r in data if "answer_mask" in r]
    templates = [r["input_ids"] for r in data if "answer_mask" not in r and "input_ids" in r]
    prompts = [_prompt_ids(r, tokenizer, chat) for r in data if "answer_mask" not in r and "input_ids" not in r]
    pad_token_id = getattr(tokenizer, "pad_token_id", None) or 0
    common = {"batch_size": batch_size, "block_length": block_length, "pad_token_id": pad_token_id, "backend": backend}
    if prompts:
        eos_token_id = getattr(tokenizer, "eos_token_id", None)
        done += generated_answers(
            model,
            prompts,
            answer_length=answer_length,
            mask_token_id=mask_token_id,
            eos_token_id=eos_token_id,
            **common,
        )
    if templates:
        done += infilled_answers(model, templates, mask_token_id=mask_token_id, **common)
    return done


def _prompt_ids(record: dict, tokenizer, chat: bool) -> list[int]:
    if "prompt_ids" in record:
        return list(record["prompt_ids"])
    if "prompt" not in record or tokenizer is None:
        raise ValueError(f"data: a record needs 'prompt_ids', 'prompt' (with a tokenizer) or 'input_ids': {record}")
    if not chat:
        return tokenizer(record["prompt"])["input_ids"]
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": record["prompt"]}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------


def require_accelerate(what: str) -> None:
    """Raise an ImportError naming the ``train`` extra where accelerate (transformers.Trainer's) is missing."""
    if importlib.util.find_spec("accelerate") is None:
        raise ImportError(f"{what} needs accelerate (transformers.Trainer's): {TRAIN_EXTRA}")


def alignment_training_arguments(output_dir: str, *, lora: bool = False, **overrides) -> TrainingArguments:
    """``transformers.TrainingArguments`` with SPEC 6.1's defaults; ``overrides`` win.

    AdamW, lr 1e-5 full / 1e-4 LoRA, 10 warm-up steps, cosine decay; max_steps 100 full (the paper's LLaDA-8B
    run) / 400 LoRA (its LLaDA2.0 run); a log every step; no reporting integration unless asked;
    ``remove_unused_columns=False`` (the batch carries answer_mask).
    """
    require_accelerate("alignment_training_arguments")
    values = {
        "learning_rate": 1e-4 if lora else 1e-5,
        "warmup_steps": 10,
        "lr_scheduler_type": "cosine",
        "optim": "adamw_torch",
        "max_steps": 400 if lora else 100,
        "logging_steps": 1,
        "report_to": "none",
        "save_strategy": "no",
        "remove_unused_columns": False,
    }
    values.update(overrides)
    return TrainingArguments(output_dir=output_dir, **values)


@contextlib.contextmanager
def _frozen_config_hidden(model: nn.Module):
    """Hide a native LLaDA's frozen config from transformers' Trainer while it is built; other models stay as they are.

    The Trainer writes ``model.config.use_cache`` while it is built; mdfast's ``LLaDAConfig`` is frozen (its fields
    size the fused weights) and the native body keeps no KV cache.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, LLaDAConfig):
        yield
        return
    model.config = None
    try:
        yield
    finally:
        model.config = config


class XPredAlignmentTrainer(Trainer):
    """A ``transformers.Trainer`` whose ``compute_loss`` is ``xpred_alignment_loss`` (SPEC 6.1).

    - model: any masked LM that takes ``inputs_embeds`` (HF masked LMs, mdfast's LLaDAModel).
    - lora_config (a ``peft.LoraConfig``): LoRA through peft instead of a full fine-tune.
    - args: default ``alignment_training_arguments``.
    - train_dataset: records {"input_ids", "answer_mask"} (``alignment_records``), batched by
      ``AlignmentCollator`` unless a data_collator is given.
    - base_model: the frozen base model whose ce_masked is logged beside the trained one's ("base_ce_masked",
      same batch and masking). True takes the LoRA model with its adapters disabled, or for a full fine-tune a
      frozen deep copy (one more copy of the weights); a module is used as it is; False logs none.
    - frozen_embedding (attribute): X0's table, a copy of W_in taken before any step.
    - Logs mse_masked, mse_unmasked, ce_masked, identity_acc beside the Trainer's loss, learning_rate and
      grad_norm. The masking draws come from a generator seeded with args.seed + the process index.
    """

    def __init__(
        self,
        model: nn.Module,
        args=None,
        train_dataset=None,
        *,
        mask_token_id: int | None = None,
        lora_config=None,
        base_model: nn.Module | bool = True,
        data_collator=None,
        **kwargs,
    ) -> None:
        require_accelerate("XPredAlignmentTrainer")
        config = getattr(model, "config", None)
        mask_token_id = mask_token_id if mask_token_id is not None else getattr(config, "mask_token_id", None)
        if mask_token_id is None:
            raise ValueError("mask_token_id: the model's config names none; pass it")
        native = model  # before peft wraps it
        self.mask_token_id = int(mask_token_id)
        self.lora = lora_config is not None
        if self.lora:
            try:
                from peft import get_peft_model  # optional extra: train
            except ImportError as error:
                raise ImportError(f"LoRA alignment needs peft: {TRAIN_EXTRA}") from error
            model = get_peft_model(model, lora_config)
        if args is None:
            args = alignment_training_arguments("xpred-alignment", lora=self.lora)
        args.remove_unused_columns = False  # the batch's answer_mask is no argument of the model's forward
        if data_collator is None:
            data_collator = AlignmentCollator(getattr(config, "pad_token_id", None) or 0)
        with _frozen_config_hidden(native):
            super().__init__(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator, **kwargs)
        self.frozen_embedding = self.model.get_input_embeddings().weight.detach().clone()
        if base_model is True and not self.lora:
            base_model = copy.deepcopy(self.model)
        if isinstance(base_model, nn.Module):
            base_model.requires_grad_(False).eval()
        self.base_model = base_model
        self._mask_generator = torch.Generator(device=self.args.device).manual_seed(
            self.args.seed + self.args.process_index
        )
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        masked = sample_alignment_mask(inputs["answer_mask"], self._mask_generator)
        loss, logs = xpred_alignment_loss(
            model, inputs, frozen_embedding=self.frozen_embedding, mask_token_id=self.mask_token_id, masked=masked
        )
        base_ce = self._base_ce_masked(model, inputs, masked)
        if base_ce is not None:
            logs["base_ce_masked"] = base_ce
        mode = "train" if model.training else "eval"
        for name, value in logs.items():
            self._metrics[mode][name].append(float(value))
        return (loss, {}) if return_outputs else loss

    def _base_ce_masked(self, model, inputs, masked) -> Tensor | None:
        if self.base_model is False or self.base_model is None:
            return None
        if isinstance(self.base_model, nn.Module):
            return masked_cross_entropy(self.base_model, inputs, masked, self.mask_token_id)
        was_training = model.training  # LoRA: the same model with its adapters off, without dropout
        model.eval()
        try:
            with model.disable_adapter():
                return masked_cross_entropy(model, inputs, masked, self.mask_token_id)
        finally:
            model.train(was_training)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation: the alignment loss of the batch (the batch holds no labels for the model)."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the SPEC 6.1 logs, averaged over the steps since the last log (NaN-skipping), to the Trainer's own.

        The Trainer's own: loss, learning_rate, grad_norm.
        """
        mode = "eval" if any(name.startswith("eval_") for name in logs) else "train"
        prefix = "eval_" if mode == "eval" else ""
        for name, values in self._metrics[mode].items():
            finite = [v for v in values if not math.isnan(v)]
            logs[prefix + name] = sum(finite) / len(finite) if finite else math.nan
        self._metrics[mode].clear()
        if start_time is None:  # transformers < 4.47 has no start_time
            super().log(logs)
        else:
            super().log(logs, start_time)


if __name__ == "__main__":  # the command this module used to be
    sys.exit("python -m mdfast.train.align: no longer a command; run `mdfast train align` (the same flags)")
