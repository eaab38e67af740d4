"""The checks and loaders behind ``model_args``' flags: every argument checked before the weights load.

A verb runs them in this order: ``decode_options`` (the budget, no file read), ``check_device``, ``resolve_dtype``,
``check_backend``, ``load_policy``, ``open_folder`` (config and tokenizer, the mask id against the vocabulary),
then ``load_patched_model`` (the weights). Each failure is a UsageError (the command line) or a CommandError
(the folder), named by its flag.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

import mdfast
from mdfast import loading, ops
from mdfast.decode import DecodeOptions
from mdfast.models import DREAM_TYPES, LLADA2_TYPES, LLADA_TYPES, causal_lm_message
from mdfast.models.llada import LLaDAConfig

from .errors import CommandError, UsageError, usage_error

__all__ = [
    "OpenedFolder",
    "check_backend",
    "check_device",
    "check_masked_lm",
    "check_model_folder",
    "check_prompt",
    "check_tokenizer",
    "decode_options",
    "load_patched_model",
    "load_policy",
    "open_folder",
    "report_speed",
    "resolve_dtype",
]


def decode_options(
    args: argparse.Namespace, *, max_new_tokens: int | None = None, steps: int | None = None, **fields
) -> DecodeOptions:
    """The validated ``DecodeOptions`` of the decoding flags (the policy still None: ``load_policy`` reads it).

    - max_new_tokens: ``generate``'s response length, which the budget must split.
    - steps: in place of ``--steps`` (None: ``args.steps``).
    - fields: further DecodeOptions fields (eos_token_id, suppress_tokens, ...).

    A per-decoder flag (``--factor``) becomes its field only when given, so that its absence never
    reads as a value for a decoder that takes none.
    """
    if args.factor is not None:
        fields = {"factor": args.factor, **fields}
    try:
        options = DecodeOptions(
            steps=args.steps if steps is None else steps,
            decoder=args.decoder,
            block_length=args.block_length,
            temperature=args.temperature,
            backend=args.backend,
            cache=args.cache,
            cache_refresh=args.cache_refresh,
            cache_vicinity=args.cache_vicinity,
            **fields,
        )
        return options.validate(max_new_tokens=max_new_tokens)
    except (ValueError, TypeError) as error:
        raise usage_error(error) from None


def check_device(name: str | None) -> torch.device:
    """The torch.device for ``--device`` (None: cuda where there is one, else cpu)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
            raise UsageError(f"--device {name}: CUDA is not available here ({why}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices here")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``--dtype``, by default bfloat16 on CUDA and float32 on the CPU."""
    if name is not None:
        return getattr(torch, name)
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def check_backend(name: str, device: torch.device, dtype: torch.dtype) -> None:
    """An explicit --backend must run on --device with the model's dtype (``ops.resolve_backend``)."""
    if name == "auto":
        return
    try:
        ops.resolve_backend(name, device, dtype)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--backend {name} cannot run with --device {device}: {error}") from None


def load_policy(path: str | None, options: DecodeOptions, device: torch.device) -> DecodeOptions:
    """``options`` with the StepPolicy of file ``--policy`` (only the xflow decoder reads one)."""
    if path is None:
        return options
    if options.decoder != "xflow":
        raise UsageError(f"--policy: only the xflow decoder reads a step policy, not {options.decoder}")
    if not Path(path).is_file():
        raise UsageError(f"--policy: no such file: {path}")
    try:
        policy = mdfast.StepPolicy.load(path, device)
    except Exception as error:
        raise UsageError(f"--policy {path}: not a StepPolicy file ({type(error).__name__}: {error})") from None
    return dataclasses.replace(options, policy=policy)


def check_model_folder(path: str) -> Path:
    """The folder of ``--model``: it exists and holds a config.json (mdfast never reaches the hub)."""
    folder = Path(path).expanduser()
    if not folder.exists():
        hint = ""
        if path.count("/") == 1 and not path.startswith((".", "/", "~")):
            hint = " (mdfast never reaches the hub: download the model and pass its folder)"
        raise UsageError(f"--model: no such folder: {path}{hint}")
    if not (folder / "config.json").is_file():
        raise UsageError(f"--model: {path} holds no config.json (pass the folder a model was saved to)")
    return folder


@dataclass
class OpenedFolder:
    """A model folder read up to its weights.

    - folder, config, tokenizer: the folder and what ``mdfast.loading`` read from it.
    - vocab_size: the model's embeddings (None where the config does not say: known once the weights load).
    - mask_token_id: the id to decode with (None until ``vocab_size`` is known).
    """

    folder: Path
    config: object
    tokenizer: object
    vocab_size: int | None
    mask_token_id: int | None


def open_folder(args: argparse.Namespace) -> OpenedFolder:
    """The config and tokenizer of ``--model``, checked against each other; the weights are not read."""
    folder = check_model_folder(args.model)
    if args.mask_token_id is not None and args.mask_token_id < 0:
        raise UsageError(f"--mask-token-id: expected a token id >= 0, got {args.mask_token_id}")
    try:
        config = loading.load_config(folder, trust_remote_code=args.trust_remote_code)
    except ValueError as error:
        if args.trust_remote_code or "trust_remote_code" not in str(error):
            raise
        raise UsageError(f"--model {folder}: the model comes with its own code; pass --trust-remote-code") from None
    check_masked_lm(config, folder)
    tokenizer = loading.load_tokenizer(folder, trust_remote_code=args.trust_remote_code)
    if tokenizer is None and isinstance(config, LLaDAConfig):
        raise CommandError(f"{folder} holds no tokenizer files; save the model's own tokenizer there")
    if tokenizer is None:  # no tokenizer files: transformers builds one from the config (checked below)
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=args.trust_remote_code
        )
    vocab_size = getattr(config, "vocab_size", None)
    mask_token_id = None
    if vocab_size is not None:  # else checked against the embedding table once it is loaded
        mask_token_id = check_tokenizer(tokenizer, vocab_size, args.mask_token_id, config, folder)
    return OpenedFolder(folder, config, tokenizer, vocab_size, mask_token_id)


def check_masked_lm(config, folder: Path) -> None:
    """CommandError, with ``mdfast.patch``'s message, for the config of a causal LM (GPT-2, Llama, ...).

    Such a folder would load as its bare body (``AutoModel``: no output projection); a config that has a
    masked-LM class too (BERT) is left to load as one.
    """
    if getattr(config, "model_type", None) in (*LLADA_TYPES, *DREAM_TYPES, *LLADA2_TYPES):
        return  # masked diffusion models (their remote classes may be registered as causal LMs), or refused later
    causal = AutoModelForCausalLM._model_mapping
    if type(config) in causal and type(config) not in AutoModelForMaskedLM._model_mapping:
        raise CommandError(f"--model {folder}: {causal_lm_message(causal[type(config)].__name__)}")


def load_patched_model(args: argparse.Namespace, opened: OpenedFolder, device: torch.device, dtype: torch.dtype):
    """The model of ``opened`` on ``device``, ``mdfast.patch``-ed with its mask id and ``--backend``."""
    model = loading.load_model(
        opened.folder, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code, config=opened.config
    )
    if opened.mask_token_id is None:
        opened.vocab_size = model.get_input_embeddings().num_embeddings
        opened.mask_token_id = check_tokenizer(
            opened.tokenizer, opened.vocab_size, args.mask_token_id, opened.config, opened.folder
        )
    return mdfast.patch(model, mask_token_id=opened.mask_token_id, backend=args.backend)


def check_tokenizer(tokenizer, vocab_size: int, mask_token_id: int | None, config, folder: Path) -> int:
    """The mask id to decode with, once the tokenizer is known to fit the model's ``vocab_size`` embeddings.

    The tokenizer needs a vocabulary beyond its special tokens and no larger than the table; the mask id
    (``--mask-token-id``, else the tokenizer's mask token, else the config's ``mask_token_id``) lies in the table.
    """
    size = len(tokenizer)
    if size <= len(set(tokenizer.all_special_ids)):
        raise CommandError(
            f"the tokenizer in {folder} holds only its {size} special tokens, no vocabulary, for a model with "
            f"{vocab_size} embeddings (transformers builds one from the config where a folder has no tokenizer files); "
            f"save the model's own tokenizer there (tokenizer.save_pretrained('{folder}'))"
        )
    if size > vocab_size:
        raise CommandError(
            f"the tokenizer in {folder} has {size} tokens but the model only {vocab_size} embeddings: ids "
            f"{vocab_size}..{size - 1} would index outside the table; use the tokenizer the model was trained with"
        )
    if mask_token_id is not None:
        if mask_token_id >= vocab_size:
            raise UsageError(f"--mask-token-id: {mask_token_id} is outside the model's {vocab_size} embeddings")
        return mask_token_id
    mask_token_id = tokenizer.mask_token_id  # None where the tokenizer has no mask token
    if mask_token_id is None:
        mask_token_id = getattr(config, "mask_token_id", None)
    if mask_token_id is None:
        raise CommandError(f"neither the tokenizer nor the config in {folder} names a mask token; pass --mask-token-id")
    if not 0 <= mask_token_id < vocab_size:
        raise CommandError(
            f"the mask token id {mask_token_id} (from {folder}) is outside the model's {vocab_size} embeddings; "
            "pass --mask-token-id"
        )
    return mask_token_id


def check_prompt(tokenizer, ids: list[int], folder: Path, flag: str = "--prompt") -> None:
    """A text whose words all encode to the unknown token: the tokenizer does not fit the text."""
    unk, specials = tokenizer.unk_token_id, set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in specials or i == unk]
    if unk is not None and words and all(i == unk for i in words):
        raise CommandError(
            f"every word of {flag} encodes to the unknown token {tokenizer.unk_token!r}: the tokenizer in "
            f"{folder} does not know them; check that it is the model's own tokenizer"
        )


def report_speed(out, tokens: int) -> str:
    """The line a decoding verb prints on stderr: forwards, seconds, tokens per second."""
    total = sum(out.step_times)
    return f"# {out.nfe} forwards, {total:.3f} s, {tokens / total:.1f} tokens/s"
