"""The ship stage: the trained policy as a named example (``mdfast.StepPolicy.example(name)``).

Writes ``<name>.safetensors`` and its card ``<name>.json`` (training, command, date, measured accuracy) in
``--ship-dir`` (default: the package's own ``mdfast/data/policies``), from OUT/grpo/grpo.json and
OUT/evaluate/evaluate.json.
"""

from __future__ import annotations

from pathlib import Path

from mdfast import StepPolicy
from mdfast import policy as policy_module

from .common import TASK_WORDS, RecipeError, read_json, say, write_json


def ship_folder(args) -> Path:
    """``--ship-dir``, else the folder the package's example policies are read from."""
    return Path(args.ship_dir) if args.ship_dir else policy_module.EXAMPLE_POLICIES


def accuracy_table(records: list[dict]) -> dict:
    """``{"task, model model": {"decoder [policy]": {budget: [accuracy, standard error]}}}``, rounded."""
    accuracy: dict = {}
    for r in records:
        label = f"{r['decoder']}" + (f" {r['policy']} policy" if r["policy"] else "")
        accuracy.setdefault(f"{r['task']}, {r['model']} model", {}).setdefault(label, {})[r["budget"]] = [
            round(r["accuracy"], 4),
            None if r["accuracy_se"] is None else round(r["accuracy_se"], 4),
        ]
    return accuracy


def policy_card(name: str, policy: StepPolicy, grpo: dict, evaluation: dict) -> dict:
    """The card of a shipped policy: what it is, how it was trained (the commands), what it measured."""
    return {
        "name": name,
        "description": "x-flow step policy (SPEC 2.4) trained with GRPO (SPEC 6.2) on AntiBERTy infilling "
        f"{TASK_WORDS[grpo['task']]} of non-human antibody V genes (SPEC 7's training side)",
        "model": grpo["model"],
        "task": grpo["task"],
        "budget": grpo["budget"],
        "usage": f'mdfast.StepPolicy.example("{name}") (x-flow on AntiBERTy, {grpo["grpo_model"]} model)',
        "policy": policy.constants(),
        "training": {
            "genes": grpo["data"]["training_genes"],
            "species": grpo["data"]["species"],
            "steps": grpo["steps_done"],
            "config": {k: v for k, v in grpo["config"].items() if k not in ("backend", "disable_tqdm")},
            "reward": grpo["reward"],
            "seconds_per_step": grpo["seconds"]["per_step"],
            "threads": grpo["torch_threads"],
        },
        "command": grpo["command"],
        "date": grpo["date"],
        "mdfast_commit": grpo["mdfast_commit"],
        "evaluation": {"command": evaluation["command"], "date": evaluation["date"], "genes": evaluation["genes"]},
        "accuracy_format": "held-out human genes: {budget: [accuracy, standard error over genes]}",
        "accuracy": accuracy_table(evaluation["records"]),
        "comparisons": evaluation["comparisons"],
    }


def run_ship(args, out: Path) -> None:
    """The ship stage (module docstring)."""
    grpo = read_json(out / "grpo" / "grpo.json", "ship", "grpo,evaluate")
    evaluation = read_json(out / "evaluate" / "evaluate.json", "ship", "grpo,evaluate")
    policy_file = Path(evaluation["policy_file"])
    if not policy_file.is_file():
        raise RecipeError(f"ship needs the policy the evaluate stage measured, {policy_file}: no such file here")
    policy = StepPolicy.load(policy_file)
    folder = ship_folder(args)
    folder.mkdir(parents=True, exist_ok=True)
    name = args.ship_name or f"antiberty-{grpo['task']}"
    policy.save(folder / f"{name}.safetensors")
    write_json(folder / f"{name}.json", policy_card(name, policy, grpo, evaluation))
    size = (folder / f"{name}.safetensors").stat().st_size
    say("ship", f"{folder / name}.safetensors ({size} bytes) and .json")
