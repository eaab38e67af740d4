"""What the training tests share: a tiny native LLaDA, prompts, and a reward function.

The tiny BERT is ``checks.tiny_bert``.
"""

from __future__ import annotations

import torch

from mdfast.models.llada import LLaDAConfig, LLaDAModel

MASK = 4
VOCAB = 64


def tiny_llada(seed: int = 0):
    """mdfast's native LLaDA body (SPEC 5), 2 layers, 32 wide, vocabulary 64: no transformers needed."""
    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=32,
        n_layers=2,
        n_heads=2,
        n_kv_heads=2,
        mlp_hidden_size=64,
        vocab_size=VOCAB,
        embedding_size=VOCAB,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        include_bias=False,
        weight_tying=False,
        scale_logits=False,
        input_emb_norm=False,
        max_sequence_length=64,
        mask_token_id=MASK,
        eos_token_id=3,
    )
    model = LLaDAModel(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0, 1.0)
    return model.eval()


def prompt_ids(count: int, seed: int = 0, lengths=(3, 4, 5)) -> list[list[int]]:
    """``count`` prompts of token ids >= 5 (never the mask id), of varied lengths."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, VOCAB, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(count)]


def even_reward(prompts, completions, completion_ids, parity=None, **columns):
    """TRL-style reward: the fraction of completion tokens whose parity is the example's."""
    parity = parity if parity is not None else [0] * len(completion_ids)
    return [sum(int(t) % 2 == p for t in ids) / len(ids) for ids, p in zip(completion_ids, parity)]
