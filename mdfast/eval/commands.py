"""The benchmarks run into an output folder, resumably: what ``mdfast eval antibody|code|humaneval`` runs.

Each run logs its finished pieces to ``<out>/<benchmark>.jsonl`` as they finish (``run_log.RunLog``): a grid
cell's decoded tokens for antibody and code, a generated problem for humaneval. A rerun with the same settings
and ``--out`` decodes only what is missing; the table, ``<benchmark>.json`` and the plot are made from all of them.

settings: the run's identity (the benchmark's options, resolved: model, decoders, budgets as "1/4", ...), in the
order the command spells them. options: what does not change the records (threads, workers).
"""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path

import torch

import mdfast
from mdfast.decode import DECODERS, DecodeOptions
from mdfast.loading import load_model, load_tokenizer

from .antibody_benchmark import antibody
from .budget_grid import Decoded, parse_budget
from .code_benchmark import code
from .humaneval_benchmark import humaneval, summarize_humaneval
from .plot import plot_antibody, plot_code
from .report import command_line, format_antibody_table, format_code_table, format_humaneval_summary, write_json
from .run_log import RunLog, SettingsMismatch
from .sandbox import Limits

__all__ = ["SettingsMismatch", "check_antibody_cache", "resolve_settings", "run_antibody", "run_code", "run_humaneval"]

ALL = "all"


def resolve_settings(benchmark: str, settings: dict) -> dict:
    """The settings as the benchmarks take them, checked before anything loads (ValueError naming the field).

    "all" decoders become every one of ``DECODERS``, "all" genes or problems None; budgets are spelled as exact
    fractions ("1/4"), sorted; humaneval's decoding budget is checked as ``DecodeOptions`` checks it. A grid's
    ``cache`` and ``cache_refresh`` are checked as ``DecodeOptions`` checks them, and the antibody benchmark
    refuses any cache (``check_antibody_cache``).
    """
    s = dict(settings)
    if s.get("decoders") == ALL:
        s["decoders"] = list(DECODERS)
    if "budgets" in s:
        s["budgets"] = [str(b) for b in sorted({parse_budget(b) for b in s["budgets"]})]
    for name in ("genes", "problems"):
        if s.get(name) == ALL:
            s[name] = None
    if "cache" in s:
        DecodeOptions(steps=1, cache=s["cache"], cache_refresh=s["cache_refresh"]).validate()
    if benchmark == "antibody":
        check_antibody_cache(s["cache"])
    if benchmark == "humaneval":
        options = DecodeOptions(steps=s["steps"], decoder=s["decoder"], block_length=s["block_length"])
        options.validate(max_new_tokens=s["gen_length"])
        if s["policy"] and s["decoder"] != "xflow":
            raise ValueError(f"policy: only the xflow decoder reads a step policy, not {s['decoder']}")
    return s


def check_antibody_cache(cache: str | None) -> None:
    """ValueError naming ``cache`` for any cache: AntiBERTy is a BERT, and only the native LLaDA body keeps one."""
    if cache is not None:
        raise ValueError(
            f"cache: {cache!r} asks for SPEC 8's KV cache, which only the native LLaDA body keeps; the antibody "
            "benchmark's AntiBERTy is a BERT, driven through its own forward: leave out --cache and --cache-refresh"
        )


def run_antibody(settings: dict, out: Path, *, restart: bool = False, progress: bool = False) -> list[dict]:
    """``mdfast eval antibody``: each task's grid, the table printed, antibody.json and antibody.png written."""
    s = settings
    log = RunLog(Path(out) / "antibody.jsonl", s, restart=restart)
    policy = mdfast.StepPolicy.load(s["policy"], s["device"]) if s["policy"] else None
    records = []
    for task in ["suffix", "span"] if s["task"] == "both" else [s["task"]]:
        records += antibody(
            s["model"],
            decoders=s["decoders"],
            budgets=s["budgets"],
            task=task,
            genes=s["genes"],
            seed=s["seed"],
            policy=policy,
            backend=s["backend"],
            batch_size=s["batch_size"],
            progress=progress,
            device=s["device"],
            cache=s.get("cache"),
            cache_refresh=s.get("cache_refresh"),
            **_resumed_cells(log, task),
        )
    print(format_antibody_table(records))
    _write_grid(Path(out), "antibody", command_line("antibody", s), s["device"], records, plot_antibody)
    return records


def run_code(settings: dict, out: Path, *, restart: bool = False, progress: bool = False, threads=None) -> list[dict]:
    """``mdfast eval code``: the budget curve, the table printed, code.json and code.png written."""
    s = settings
    if threads:
        torch.set_num_threads(threads)
    log = RunLog(Path(out) / "code.jsonl", s, restart=restart)
    policy = mdfast.StepPolicy.load(s["policy"], s["device"]) if s["policy"] else None
    records = code(
        s["model"],
        decoders=s["decoders"],
        budgets=s["budgets"],
        cases=s["cases"],
        seed=s["seed"],
        policy=policy,
        backend=s["backend"],
        batch_size=s["batch_size"],
        progress=progress,
        device=s["device"],
        dtype=getattr(torch, s["dtype"]),
        cache=s.get("cache"),
        cache_refresh=s.get("cache_refresh"),
        **_resumed_cells(log, None),
    )
    print(format_code_table(records))
    command = command_line("code", {**s, "threads": threads})
    _write_grid(Path(out), "code", command, s["device"], records, plot_code)
    return records


def run_humaneval(settings: dict, out: Path, *, restart: bool = False, progress: bool = False, workers=None) -> dict:
    """``mdfast eval humaneval``: completions generated (resumably), then scored; humaneval.json written."""
    s = settings
    device = s["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
    log = RunLog(Path(out) / "humaneval.jsonl", s, restart=restart)
    model = load_model(s["model"], device=device, dtype=s["dtype"], trust_remote_code=s["trust_remote_code"])
    tokenizer = load_tokenizer(s["model"], trust_remote_code=s["trust_remote_code"])
    records = humaneval(
        model,
        tokenizer,
        decoder=s["decoder"],
        steps=s["steps"],
        gen_length=s["gen_length"],
        block_length=s["block_length"],
        problems=s["problems"],
        batch_size=s["batch_size"],
        chat=s["chat"],
        policy=mdfast.StepPolicy.load(s["policy"], device) if s["policy"] else None,
        mask_token_id=s["mask_token_id"],
        backend=s["backend"],
        limits=Limits(seconds=s["timeout"], memory_bytes=s["memory_mb"] << 20),
        workers=workers,
        progress=progress,
        done=log.entries,
        on_record=log.append,
    )
    summary = summarize_humaneval(records)
    path = Path(out) / "humaneval.json"
    command = command_line("humaneval", {**s, "workers": workers})
    write_json(path, command, {"device": device, "torch": torch.__version__, "summary": summary, "records": records})
    print(format_humaneval_summary(s["model"], summary))
    print(f"# wrote {path} (finished problems in {log.path.name})", file=sys.stderr)
    return summary


def _resumed_cells(log: RunLog, task: str | None) -> dict:
    """``done`` and ``on_cell`` for one grid (one task of the antibody benchmark): the log's cells, and its writer."""
    done = {
        (e["decoder"], Fraction(e["budget"])): Decoded.from_json(e["decoded"])
        for e in log.entries
        if e.get("task") == task
    }

    def on_cell(decoder: str, budget: Fraction, decoded: Decoded) -> None:
        log.append({"task": task, "decoder": decoder, "budget": str(budget), "decoded": decoded.to_json()})

    return {"done": done, "on_cell": on_cell}


def _write_grid(out: Path, name: str, command: str, device, records: list[dict], plot) -> None:
    """A grid command's outputs: ``<name>.json`` (the run's metadata and the records) and ``<name>.png``."""
    fields = {"device": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    write_json(out / f"{name}.json", command, {**fields, "records": records})
    plot(records, out / f"{name}.png")
    print(f"# wrote {out / (name + '.json')} and {out / (name + '.png')} (cells in {name}.jsonl)", file=sys.stderr)
