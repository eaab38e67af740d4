"""What a benchmark command prints and writes: Markdown tables, one summary line, the JSON of a run."""

from __future__ import annotations

import datetime
import json
import shlex
from pathlib import Path

from mdfast.atomic import atomic_write_text

__all__ = ["command_line", "format_antibody_table", "format_code_table", "format_humaneval_summary", "write_json"]


def format_antibody_table(records: list[dict]) -> str:
    """A Markdown table: task, decoder, budget, steps, accuracy +- se, agreement +- se, NFE, tokens/s."""
    lines = [
        "| task | decoder | budget | steps/gene | accuracy | agreement | NFE/gene | tokens/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['task']} | {r['decoder']} | {r['budget']} | {r['steps']:.2f} "
            f"| {_pm(r['accuracy'], r['accuracy_se'])} | {_pm(r['agreement'], r['agreement_se'])} "
            f"| {r['nfe']:.2f} | {r['tokens_per_s']:.1f} |"
        )
    seen = {}
    for r in records:
        seen.setdefault(r["task"], (r["genes"], r["residues"]))
    scored = "; ".join(f"{task}: {g} genes, {n} residues scored" for task, (g, n) in seen.items())
    return "\n".join(lines) + f"\n\n{records[0]['model']}; {scored}"


def format_code_table(records: list[dict]) -> str:
    """A Markdown table of the code curve: one row per (decoder, budget).

    Columns: decoder, budget, steps, exact match, token accuracy, parses (each +- se), spans left with a [MASK],
    agreement +- se, NFE, tokens/s.
    """
    lines = [
        "| decoder | budget | steps/case | exact match | token accuracy | parses | [MASK] left | agreement "
        "| NFE/case | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['decoder']} | {r['budget']} | {r['steps']:.2f} | {_pm(r['exact_match'], r['exact_match_se'])} "
            f"| {_pm(r['accuracy'], r['accuracy_se'])} | {_pm(r['parses'], r['parses_se'])} | {r['masked_spans']} "
            f"| {_pm(r['agreement'], r['agreement_se'])} | {r['nfe']:.2f} | {r['tokens_per_s']:.1f} |"
        )
    r = records[0]
    return "\n".join(lines) + f"\n\n{r['model']}; {r['cases']} cases, {r['tokens']} span tokens scored"


def format_humaneval_summary(model: str, s: dict) -> str:
    """One line: the decode's budget, pass@1 +- se (passed/problems), NFE and tokens/s."""
    return (
        f"{model}: {s['decoder']}, {s['steps']} steps, gen length {s['gen_length']}, block {s['block_length']}: "
        f"pass@1 {_pm(s['pass@1'], s['pass@1_se'])} ({s['passed']}/{s['problems']}), NFE {s['nfe']:.1f}, "
        f"{s['tokens_per_s']:.1f} tokens/s"
    )


def command_line(benchmark: str, options: dict) -> str:
    """``mdfast eval <benchmark>`` with ``options`` spelled out as flags (None and False left out)."""
    words = ["mdfast", "eval", benchmark]
    for key, value in options.items():
        if value is None or value is False:
            continue
        words.append("--" + key.replace("_", "-"))
        if value is not True:
            words.append(",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
    return shlex.join(words)


def write_json(path: str | Path, command: str, fields: dict) -> None:
    """The run's JSON: the command that reproduces it, the date (UTC), then ``fields`` (written atomically)."""
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    atomic_write_text(Path(path), json.dumps({"command": command, "date": date, **fields}, indent=1) + "\n")


def _pm(value: float, se: float | None) -> str:
    return f"{value:.3f} ± {se:.3f}" if se is not None else f"{value:.3f}"
