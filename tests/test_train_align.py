"""SPEC 6.1's x-pred alignment (mdfast/train/align.py): the loss, the masking, the trainer and the command.

The loss against a hand computation, the masking, the trainer (full and LoRA) and ``mdfast train align`` end to end.
"""

from __future__ import annotations

import importlib.util
import json
import math
from types import SimpleNamespace

import pytest
import torch
from checks import tiny_bert
from torch import nn
from train_fixtures import MASK, VOCAB, prompt_ids, tiny_llada

pytest.importorskip("transformers", reason="mdfast.train.align's trainer is a transformers.Trainer")
import mdfast.cli
from mdfast.train.align import (
    XPredAlignmentTrainer,
    alignment_training_arguments,
    masked_cross_entropy,
    sample_alignment_mask,
    xpred_alignment_loss,
)


class ToyLM(nn.Module):
    """logits = (running sum of the input embeddings) @ P^T + c: context-dependent and simple
    enough to write out by hand."""

    def __init__(self, V=10, E=3):
        super().__init__()
        self.embed = nn.Embedding(V, E)
        self.proj = nn.Linear(E, V)
        self.config = SimpleNamespace(mask_token_id=0)

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds, attention_mask=None):
        return SimpleNamespace(logits=self.proj(inputs_embeds.cumsum(1)))


def test_alignment_loss_equals_the_hand_computation():
    model = ToyLM()
    V, E = model.embed.weight.shape
    input_ids = torch.tensor([[3, 1, 4, 1, 5], [2, 6, 5, 3, 6]])
    answer = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])  # the second row's last position is padding-like
    masked = torch.tensor([[0, 0, 1, 0, 1], [0, 0, 1, 0, 0]], dtype=torch.bool)
    frozen = model.embed.weight.detach().clone() + 0.25 * torch.randn(V, E)  # X0 must come from this table
    loss, logs = xpred_alignment_loss(
        model, {"input_ids": input_ids, "answer_mask": answer}, frozen_embedding=frozen, mask_token_id=0, masked=masked
    )

    W = model.embed.weight.double().tolist()
    P, c = model.proj.weight.double().tolist(), model.proj.bias.double().tolist()
    errors, ces, hits = {True: [], False: []}, [], []
    for b in range(2):
        running = [0.0] * E
        for j in range(5):
            token = 0 if masked[b, j] else int(input_ids[b, j])
            running = [r + w for r, w in zip(running, W[token])]
            if not answer[b, j]:
                continue
            z = [sum(p * x for p, x in zip(P[v], running)) + c[v] for v in range(V)]
            top = max(z)
            lse = top + math.log(sum(math.exp(zv - top) for zv in z))
            p = [math.exp(zv - lse) for zv in z]
            x_pred = [sum(p[v] * W[v][e] for v in range(V)) for e in range(E)]
            x0 = int(input_ids[b, j])
            error = sum((xp - f) ** 2 for xp, f in zip(x_pred, frozen[x0].tolist())) / E
            errors[bool(masked[b, j])].append(error)
            if masked[b, j]:
                ces.append(lse - z[x0])
            else:
                hits.append(float(max(range(V), key=lambda v: z[v]) == x0))
    every = errors[True] + errors[False]
    assert abs(loss.item() - sum(every) / len(every)) < 1e-6
    assert abs(float(logs["mse_masked"]) - sum(errors[True]) / len(errors[True])) < 1e-6
    assert abs(float(logs["mse_unmasked"]) - sum(errors[False]) / len(errors[False])) < 1e-6
    assert abs(float(logs["ce_masked"]) - sum(ces) / len(ces)) < 1e-5
    assert float(logs["identity_acc"]) == pytest.approx(sum(hits) / len(hits), rel=1e-7)  # a float32 mean


@pytest.mark.parametrize("make", [ToyLM, tiny_llada], ids=["toy", "native-llada"])
def test_the_alignment_loss_moves_only_the_model(make):
    model = make()
    W = model.get_input_embeddings().weight
    frozen = W.detach().clone()
    batch = {"input_ids": torch.tensor([[7, 5, 9, 6, 8]]), "answer_mask": torch.tensor([[0, 1, 1, 1, 1]])}
    loss, _ = xpred_alignment_loss(model, batch, frozen_embedding=frozen, mask_token_id=model.config.mask_token_id)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())  # every weight, the input table included
    assert frozen.grad is None and not frozen.requires_grad


def test_masking_draws_r_per_example_and_masks_at_least_one_answer_position():
    answer = torch.zeros(4000, 12, dtype=torch.long)
    answer[:, 4:] = 1
    answer[7] = 0  # a row without an answer stays unmasked
    g = torch.Generator().manual_seed(0)
    masked = sample_alignment_mask(answer, g)
    assert not bool((masked & ~answer.bool()).any())
    has_answer = answer.bool().any(1)
    assert bool((masked.sum(1)[has_answer] >= 1).all()) and int(masked[7].sum()) == 0
    # E[fraction masked] = E[r] = 1/2 plus the forced position of rows that drew none
    fraction = masked[has_answer].sum(1).float() / 8
    forced = sum(((1 - r) ** 8) * (1 / 8) for r in torch.linspace(0, 1, 10001).tolist()) / 10001
    assert abs(float(fraction.mean()) - (0.5 + forced)) < 0.02
    # the per-example rate varies: some rows mask almost all, some exactly one
    assert int((masked.sum(1) == 8).sum()) > 100 and int((masked.sum(1) == 1).sum()) > 100
    assert torch.equal(masked, sample_alignment_mask(answer, torch.Generator().manual_seed(0)))


def records(count=4, answer_length=4):
    out = []
    for ids in prompt_ids(count, seed=2):
        answer = torch.randint(5, VOCAB, (answer_length,)).tolist()
        out.append({"input_ids": ids + answer, "answer_mask": [0] * len(ids) + [1] * answer_length})
    return out


@pytest.mark.parametrize("make", [tiny_bert, tiny_llada], ids=["bert", "native-llada"])
def test_trainer_moves_only_the_model_and_logs_spec_6_1(tmp_path, make):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the `train` extra)")
    model = make().train()
    config = getattr(model, "config", None)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    args = alignment_training_arguments(
        str(tmp_path), max_steps=2, per_device_train_batch_size=2, use_cpu=True, disable_tqdm=True
    )
    assert (args.learning_rate, args.warmup_steps, args.lr_scheduler_type.value) == (1e-5, 10, "cosine")
    trainer = XPredAlignmentTrainer(model, args, records(), mask_token_id=MASK)
    frozen = trainer.frozen_embedding.clone()
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "mse_masked" in entry]
    assert len(logs) == 2
    for name in ("loss", "grad_norm", "learning_rate", "mse_masked", "mse_unmasked", "ce_masked", "identity_acc"):
        assert name in logs[0], name
    # before any update the model is its base: the same ce_masked on the same batch and masking
    assert logs[0]["base_ce_masked"] == pytest.approx(logs[0]["ce_masked"], rel=1e-5)
    assert any(not torch.equal(p, before[name]) for name, p in model.state_dict().items())
    assert torch.equal(trainer.frozen_embedding, frozen)
    for name, p in trainer.base_model.state_dict().items():
        assert torch.equal(p, before[name]), name
    assert model.config is config  # the native LLaDA's frozen config is back, unchanged


def test_lora_trains_only_the_adapters(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the `train` extra)")
    peft = pytest.importorskip("peft", reason="LoRA alignment needs peft (the `train` extra)")
    model = tiny_bert()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    args = alignment_training_arguments(
        str(tmp_path), lora=True, max_steps=1, per_device_train_batch_size=4, use_cpu=True, disable_tqdm=True
    )
    assert args.learning_rate == 1e-4
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], init_lora_weights=False)
    trainer = XPredAlignmentTrainer(model, args, records(), mask_token_id=MASK, lora_config=lora)
    trainer.train()
    log = next(entry for entry in trainer.state.log_history if "base_ce_masked" in entry)
    assert log["base_ce_masked"] != log["ce_masked"]  # the adapters change the predictions; the base is logged apart
    for name, p in model.state_dict().items():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, before[key]), name
    # the base ce is the model without adapters
    batch = trainer.data_collator(records())
    masked = sample_alignment_mask(batch["answer_mask"], torch.Generator().manual_seed(1))
    with trainer.model.disable_adapter():
        without = masked_cross_entropy(trainer.model, batch, masked, MASK)
    assert torch.allclose(without, masked_cross_entropy(tiny_bert(), batch, masked, MASK))


def test_the_command_answers_prompts_and_aligns_end_to_end(tmp_path):
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate (the `train` extra)")
    import transformers

    folder = tmp_path / "model"
    tiny_bert().save_pretrained(folder)
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt_ids": ids}) + "\n" for ids in prompt_ids(3, seed=4)))
    out, saved = tmp_path / "aligned", tmp_path / "answers.jsonl"
    argv = ["--model", str(folder), "--data", str(data), "--mask-token-id", str(MASK), "--device", "cpu"]
    argv += ["--answer-length", "4", "--max-steps", "2", "--per-device-train-batch-size", "2"]
    argv += ["--output-dir", str(out), "--save-data", str(saved), "--backend", "torch"]
    assert mdfast.cli.main(["train", "align", *argv]) == 0
    answered = [json.loads(line) for line in saved.read_text().splitlines()]
    assert len(answered) == 3 and all(sum(r["answer_mask"]) == 4 for r in answered)
    # the answers are the model's own full-budget low_confidence answers
    base = tiny_bert()
    first = answered[0]
    prompt = torch.tensor([first["input_ids"][:-4]])
    again = mdfast.generate(
        base, prompt, max_new_tokens=4, steps=4, decoder="low_confidence", mask_token_id=MASK, backend="torch"
    )
    assert again.sequences[0].tolist() == first["input_ids"]
    aligned = transformers.AutoModelForMaskedLM.from_pretrained(out, local_files_only=True)
    assert not torch.equal(aligned.bert.embeddings.word_embeddings.weight, base.bert.embeddings.word_embeddings.weight)
    log = [json.loads(line) for line in (out / "alignment_log.jsonl").read_text().splitlines()]
    assert any("mse_masked" in entry for entry in log)


def test_the_command_checks_its_arguments_before_loading_anything(tmp_path, capsys):
    folder = tmp_path / "model"
    tiny_bert().save_pretrained(folder)
    data = tmp_path / "prompts.jsonl"
    data.write_text("")
    base = ["train", "align", "--model", str(folder), "--data", str(data)]
    assert mdfast.cli.main([*base, "--answer-length", "0"]) == 2
    assert "--answer-length: expected at least 1" in capsys.readouterr().err
    assert mdfast.cli.main([*base[:3], str(tmp_path), "--data", str(data)]) == 2
    assert "--model" in capsys.readouterr().err
    assert mdfast.cli.main([*base[:5], str(tmp_path / "missing.jsonl")]) == 2
    assert "--data: no such file" in capsys.readouterr().err
    if importlib.util.find_spec("accelerate") is not None:
        assert mdfast.cli.main([*base, "--device", "cpu"]) == 2  # an empty --data file
        error = capsys.readouterr().err
        assert "--data" in error and "no records" in error
