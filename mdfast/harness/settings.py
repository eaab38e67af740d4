"""The ``model_args`` of the lm-evaluation-harness model ``mdfast``: parsed and checked before any weight loads.

``parse_model_args(args)`` splits lm-eval's keyword arguments (``--model_args k=v,...`` parsed by lm-eval, or a
dict given to ``simple_evaluate``) into ``HarnessSettings``: the model folder and run settings, and a
``DecodeOptions`` whose every field that a string can carry is a key of the same name. A key that is neither
is a ValueError naming it.

Keys:
- pretrained (required): a local model folder (the hub is never reached).
- device, dtype (float32 | bfloat16 | float16), mask_token_id, trust_remote_code: how it loads.
- batch_size: rows per forward (default 8); gen_length: tokens generated per request (default: the task's
  ``max_gen_toks``); max_length: the longest input (default: the model's).
- mc_samples (default 32), seed (default 0): the Monte Carlo log-likelihood (``loglikelihood.py``); seed also
  drives sampled decoding.
- suppress_mask: block the [MASK] logit in every decoded row (a model that predicts its own [MASK]).
- DecodeOptions fields: decoder (default xflow), steps (default 64), block_length (default 32), temperature,
  backend, cuda_graph, progress, sample, tau, factor, k, w_s, w_a, w_b, cache, cache_refresh, eos_token_id
  (default: the tokenizer's; None for none), suppress_tokens (ids separated by ";" or spaces: lm-eval splits
  model_args at commas), policy (a StepPolicy file, read when the model loads).
- max_batch_size: lm-eval's own (its automatic batch size), accepted and unused.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mdfast.decode.options import DecodeOptions

__all__ = ["DECODE_KEYS", "HARNESS_KEYS", "HarnessSettings", "parse_model_args"]

# DecodeOptions fields that no string can carry, and why
UNSETTABLE = {
    "config": "the flow constants come with a policy file (policy=PATH)",
    "generator": "pass seed=N",
    "return_history": "the harness keeps only the final tokens",
    "record_rollout": "the harness records no trajectories",
}
DECODE_KEYS = tuple(f.name for f in dataclasses.fields(DecodeOptions) if f.name not in UNSETTABLE)
DECODE_DEFAULTS = {"decoder": "xflow", "steps": 64, "block_length": 32}
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class HarnessSettings:
    """What ``model_args`` asked for.

    - pretrained: the model folder; device, dtype: None picks cuda/bfloat16 where there is a GPU, else
      cpu/float32; mask_token_id: None takes the tokenizer's, else the config's; trust_remote_code.
    - batch_size, gen_length, max_length, mc_samples, seed, suppress_mask: see the module docstring.
    - decode: the DecodeOptions (policy None until the model loads ``policy_path``; eos_token_id None
      until then when ``eos_given`` is False).
    """

    pretrained: str
    decode: DecodeOptions
    policy_path: str | None = None
    eos_given: bool = False
    device: str | None = None
    dtype: str | None = None
    mask_token_id: int | None = None
    trust_remote_code: bool = False
    batch_size: int = 8
    gen_length: int | None = None
    max_length: int | None = None
    mc_samples: int = 32
    seed: int = 0
    suppress_mask: bool = False

    def record(self) -> dict:
        """The settings as JSON values, for the results' "config"."""
        decode = {name: getattr(self.decode, name) for name in DECODE_KEYS if name not in ("policy", "generator")}
        decode["policy"] = self.policy_path
        return {
            "pretrained": self.pretrained,
            "decoding": decode,
            "batch_size": self.batch_size,
            "gen_length": self.gen_length,
            "suppress_mask": self.suppress_mask,
            "loglikelihood": {
                "estimator": "monte_carlo_elbo",
                "mc_samples": self.mc_samples,
                "seed": self.seed,
                "greedy": "argmax of one fully masked continuation",
            },
        }


# harness keys -> their check (value -> checked value; raises ValueError/TypeError naming the key)
def _int(name: str, low: int):
    def check(value):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
            raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        return value

    return check


def _optional_int(name: str, low: int):
    check = _int(name, low)
    return lambda value: None if value is None else check(value)


def _bool(name: str):
    def check(value):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected true or false, got {value!r}")
        return value

    return check


def _optional_str(name: str, choices: tuple[str, ...] | None = None):
    def check(value):
        if value is None:
            return None
        if not isinstance(value, str) or (choices is not None and value not in choices):
            expected = f"one of {list(choices)}" if choices else "a string"
            raise ValueError(f"{name}: expected {expected}, got {value!r}")
        return value

    return check


def _batch_size(value):
    if isinstance(value, str) and value.startswith("auto"):
        raise ValueError(f"batch_size: {value!r} (lm-eval's automatic batch size) is not supported; pass an int")
    return _int("batch_size", 1)(value)


HARNESS_KEYS = {
    "pretrained": lambda value: _optional_str("pretrained")(str(value) if isinstance(value, Path) else value),
    "device": _optional_str("device"),
    "dtype": _optional_str("dtype", DTYPES),
    "mask_token_id": _optional_int("mask_token_id", 0),
    "trust_remote_code": _bool("trust_remote_code"),
    "batch_size": _batch_size,
    "gen_length": _optional_int("gen_length", 1),
    "max_length": _optional_int("max_length", 2),
    "mc_samples": _int("mc_samples", 1),
    "seed": _int("seed", 0),
    "suppress_mask": _bool("suppress_mask"),
}
IGNORED_KEYS = ("max_batch_size",)


def _token_ids(name: str, value):
    """Token ids from a model_args value: an int, a list, or a string of ids separated by ";" or spaces."""
    if isinstance(value, str):
        parts = value.replace(";", " ").split()
        if not parts or not all(p.isdigit() for p in parts):
            raise ValueError(f"{name}: expected token ids separated by ';' or spaces, got {value!r}")
        return [int(p) for p in parts]
    if isinstance(value, tuple):
        return list(value)
    if name == "suppress_tokens" and isinstance(value, int) and not isinstance(value, bool):
        return [value]  # one id: lm-eval has already made it an int
    return value


def parse_model_args(args: dict) -> HarnessSettings:
    """The settings of lm-eval's model keyword arguments ``args`` (module docstring); every value checked.

    Raises ValueError or TypeError whose message starts with the offending key.
    """
    if not isinstance(args, dict):
        raise TypeError(f"model_args: expected a dict of keyword arguments, got {type(args).__name__}")
    harness, decode = {}, dict(DECODE_DEFAULTS)
    for key, value in args.items():
        if key in HARNESS_KEYS:
            harness[key] = HARNESS_KEYS[key](value)
        elif key in UNSETTABLE:
            raise ValueError(f"{key}: not settable through model_args ({UNSETTABLE[key]})")
        elif key in DECODE_KEYS:
            decode[key] = value
        elif key not in IGNORED_KEYS:
            known = sorted([*HARNESS_KEYS, *DECODE_KEYS])
            raise ValueError(f"{key}: not a model_args key of the mdfast model; expected one of {known}")
    if harness.get("pretrained") is None:
        raise ValueError("pretrained: required, a local model folder (pretrained=FOLDER)")
    for name in ("eos_token_id", "suppress_tokens"):
        if decode.get(name) is not None:
            decode[name] = _token_ids(name, decode[name])
    if isinstance(decode.get("eos_token_id"), list) and len(decode["eos_token_id"]) == 1:
        decode["eos_token_id"] = decode["eos_token_id"][0]
    policy_path = decode.pop("policy", None)
    if policy_path is not None and not isinstance(policy_path, str):
        raise TypeError(f"policy: expected a StepPolicy file path, got {policy_path!r}")
    if policy_path is not None and decode.get("decoder") != "xflow":
        raise ValueError(f"policy: only the xflow decoder reads a step policy, not {decode.get('decoder')!r}")
    options = DecodeOptions(**decode).validate()
    return HarnessSettings(decode=options, policy_path=policy_path, eos_given="eos_token_id" in args, **harness)
