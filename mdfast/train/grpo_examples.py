"""GRPO's training examples: the ids each one decodes, and the reward functions' scores of its completions.

An example is a dict: "input_ids" (token ids, the mask id at the positions to fill: infilling), or "prompt_ids"
(ids) or "prompt" (text) followed by ``max_completion_length`` masks; its other fields reach the reward functions
as keyword columns, one value per trajectory, as TRL passes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["RewardFunction", "example_template", "prepare_examples", "reward_name", "reward_table"]

RewardFunction = Callable[..., Sequence[float | None]]


def example_template(example: dict, mask_token_id: int, max_completion_length: int, tokenizer=None) -> list[int]:
    """The ids to decode for ``example``: its "input_ids", or its prompt ids followed by the masks.

    A "prompt" (text) is tokenized with ``tokenizer``; ``max_completion_length`` mask ids follow a prompt.
    """
    if "input_ids" in example:
        return list(example["input_ids"])
    if "prompt_ids" in example:
        prompt = list(example["prompt_ids"])
    elif "prompt" in example and tokenizer is not None:
        prompt = tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
    else:
        raise ValueError(
            "train_dataset: each example needs 'input_ids' (with mask ids), 'prompt_ids', or 'prompt' (text, "
            f"with a processing_class); got keys {sorted(example)}"
        )
    return prompt + [mask_token_id] * max_completion_length


def prepare_examples(records: list[dict], tokenizer, chat: bool) -> list[dict]:
    """``records`` with each text-only prompt tokenized into "prompt_ids" (the text stays as "prompt").

    chat: wrap the text in the tokenizer's chat template (a user turn, the generation prompt added).
    """
    out = []
    for record in records:
        if "prompt" in record and "prompt_ids" not in record and "input_ids" not in record:
            if tokenizer is None:
                raise ValueError("data: text prompts need a tokenizer in the model folder; give 'prompt_ids'")
            if chat:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": record["prompt"]}], add_generation_prompt=True, tokenize=False
                )
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                ids = tokenizer(record["prompt"])["input_ids"]
            record = {**record, "prompt_ids": ids}
        out.append(record)
    return out


def reward_name(function: RewardFunction) -> str:
    """The name a reward function's metrics are logged under (``rewards/<name>/mean``)."""
    return getattr(function, "__name__", type(function).__name__)


def reward_table(
    reward_funcs: Sequence[RewardFunction], examples: list[dict], completion_ids: list[list[list[int]]], tokenizer=None
) -> list[list[float]]:
    """Each reward function's score of each completion: [function][trajectory], NaN where it returned None.

    - completion_ids: per example, its trajectories' decoded ids (the trajectories are listed example by example).
    - tokenizer: completions reach the functions as decoded text when given, else as the id lists.
    """
    prompts, flat, columns = [], [], {}
    for example, rows in zip(examples, completion_ids):
        prompt = example.get("prompt", example.get("prompt_ids", example.get("input_ids")))
        for row in rows:
            prompts.append(prompt)
            flat.append(row)
            for key, value in example.items():
                if key != "prompt":
                    columns.setdefault(key, []).append(value)
    completions = tokenizer.batch_decode(flat, skip_special_tokens=True) if tokenizer is not None else flat
    table = []
    for function in reward_funcs:
        values = list(function(prompts=prompts, completions=completions, completion_ids=flat, **columns))
        if len(values) != len(flat):
            raise ValueError(f"reward function {reward_name(function)}: returned {len(values)} rewards for {len(flat)}")
        table.append([math.nan if value is None else float(value) for value in values])
    return table
