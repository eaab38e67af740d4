"""``MDFastLM``: an lm-evaluation-harness model (registered as ``mdfast``) that decodes with mdfast.

- ``generate_until``: ``mdfast.generate`` with the ``DecodeOptions`` of ``model_args`` (``settings.py``), batched
  with left padding, each response cut at the first of the request's ``until`` strings. A context holding the
  tokenizer's mask token (e.g. "[MASK]") is an infilling request instead: its masked positions are decoded by
  ``mdfast.infill`` and their text is the response. Of the request's generation kwargs only ``until`` and
  ``max_gen_toks`` (unless ``gen_length`` is set) are read: the decoding is the model_args' (a sampling
  request, ``do_sample`` or a temperature, is logged and decoded as model_args say).
- ``loglikelihood``: LLaDA's Monte Carlo estimate (``loglikelihood.py``), ``mc_samples`` draws per pair, seeded.
- ``loglikelihood_rolling``: not implemented (``RollingLoglikelihoodUnsupported``).
Contexts are tokenized without special tokens after the tokenizer's BOS (or CLS) token where it has one, and
cut from the left to fit the model (the continuation or the response is kept whole). The settings are recorded
in the results' "config" (``get_model_info``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import lm_eval.models  # noqa: F401  (registers lm-eval's own models first: an empty registry would skip them)
import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

import mdfast
from mdfast import loading
from mdfast.policy import StepPolicy

from .generation import generate_texts, infill_texts
from .loglikelihood import mc_loglikelihood
from .settings import HarnessSettings, parse_model_args

__all__ = ["MODEL_NAME", "MDFastLM", "RollingLoglikelihoodUnsupported"]

MODEL_NAME = "mdfast"
DEFAULT_GEN_TOKENS = 256  # lm-eval's own default max_gen_toks
logger = logging.getLogger(__name__)


def pick_device(name: str | None) -> torch.device:
    """The device of ``device``: None is cuda where there is one, else cpu; a CUDA device that is not here is cpu.

    lm-eval's own command line passes cuda:0 unless told otherwise (its HF model falls back the same way).
    """
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: expected cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        logger.warning("mdfast: device %s is not available here; running on the CPU", name)
        return torch.device("cpu")
    return device


class RollingLoglikelihoodUnsupported(NotImplementedError):
    """``loglikelihood_rolling`` (perplexity tasks) on a masked diffusion LM: not implemented, and why."""


@register_model(MODEL_NAME)
class MDFastLM(LM):
    """A masked diffusion LM in a local folder, decoded by mdfast (module docstring).

    - pretrained: the folder (``mdfast.loading``: a LLaDA checkpoint loads as the native ``LLaDAModel``, any
      other folder as a transformers masked LM that ``mdfast.patch`` drives).
    - model_args: the other keys of ``settings.py`` (a ValueError names an unknown one).
    """

    def __init__(self, pretrained=None, **model_args) -> None:
        super().__init__()
        self.settings: HarnessSettings = parse_model_args({"pretrained": pretrained, **model_args})
        s = self.settings
        folder = Path(s.pretrained).expanduser()
        if not (folder / "config.json").is_file():
            raise ValueError(f"pretrained: {s.pretrained} is not a model folder with a config.json (no hub)")
        if s.policy_path is not None and not Path(s.policy_path).is_file():
            raise ValueError(f"policy: no such file: {s.policy_path}")
        self._device = pick_device(s.device)
        dtype = getattr(torch, s.dtype) if s.dtype else None
        config = loading.load_config(folder, trust_remote_code=s.trust_remote_code)
        self.tokenizer = loading.load_tokenizer(folder, trust_remote_code=s.trust_remote_code)
        if self.tokenizer is None:
            raise ValueError(f"pretrained: {folder} holds no tokenizer files; save the model's tokenizer there")
        model = loading.load_model(
            folder, device=self._device, dtype=dtype, trust_remote_code=s.trust_remote_code, config=config
        )
        mask_id = s.mask_token_id
        if mask_id is None:
            mask_id = self.tokenizer.mask_token_id
        if mask_id is None:
            mask_id = getattr(config, "mask_token_id", None)
        if mask_id is None:
            raise ValueError(f"mask_token_id: neither the tokenizer nor the config in {folder} names one; pass it")
        self.model = mdfast.patch(model, mask_token_id=mask_id, backend=s.decode.backend)
        self.adapter = self.model.mdfast_adapter
        self.mask_token_id = self.adapter.mask_token_id
        self.options = self._decode_options()
        tok = self.tokenizer
        first = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        self.prefix = [first] if first is not None else []
        self.pad_token_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        limits = [s.max_length, self.adapter.max_positions]
        if isinstance(tok.model_max_length, int) and tok.model_max_length < 1_000_000:
            limits.append(tok.model_max_length)
        self._max_length = min((n for n in limits if n is not None), default=None)
        self._warned: set[str] = set()

    def _decode_options(self) -> mdfast.DecodeOptions:
        """The model_args' DecodeOptions with the policy loaded, the EOS, suppressed [MASK] and generator set."""
        s, options = self.settings, self.settings.decode
        changes = {}
        if s.policy_path is not None:
            changes["policy"] = StepPolicy.load(s.policy_path, self._device)
        if not s.eos_given:
            changes["eos_token_id"] = self.tokenizer.eos_token_id
        if s.suppress_mask:
            changes["suppress_tokens"] = sorted({*(options.suppress_tokens or []), self.mask_token_id})
        options = dataclasses.replace(options, **changes)
        return options.validate(vocab_size=self.adapter.vocab_size)

    # ------------------------------------------------------------------------------------------------
    # lm-eval's interface
    # ------------------------------------------------------------------------------------------------

    @property
    def max_length(self) -> int | None:
        """The longest input (context plus continuation or response), None where nothing bounds it."""
        return self._max_length

    @property
    def eot_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def get_model_info(self) -> dict:
        """What the results' "config" records: the folder, family, dtype, device and every decoding setting."""
        record = self.settings.record()
        record["decoding"].update(eos_token_id=self.options.eos_token_id, suppress_tokens=self.options.suppress_tokens)
        return {
            "model_num_parameters": sum(p.numel() for p in self.model.parameters()),
            "model_dtype": str(next(self.model.parameters()).dtype),
            "model_family": self.adapter.family,
            "mask_token_id": self.mask_token_id,
            "max_length": self._max_length,
            "mdfast_version": mdfast.__version__,
            **record,
        }

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", self.settings.pretrained)).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        return getattr(self.tokenizer, "chat_template", None) if chat_template else None

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The tokenizer's chat template over ``chat_history``, as text."""
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        raise RollingLoglikelihoodUnsupported(
            "loglikelihood_rolling: not implemented for masked diffusion LMs: they define no left-to-right "
            "factorisation, so the per-token rolling log-likelihood of perplexity tasks (wikitext, ...) does not "
            "exist; mdfast's loglikelihood is a Monte Carlo lower bound (ELBO) of a continuation, not comparable "
            "with an autoregressive perplexity"
        )

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(Monte Carlo estimate of log p(continuation | context), greedy) per request (``loglikelihood.py``)."""
        pairs = [self._encode_pair(*request.args) for request in requests]
        s = self.settings
        with tqdm(total=len(requests), desc="mdfast: loglikelihood", disable=disable_tqdm or self.rank != 0) as bar:
            results = mc_loglikelihood(
                self.adapter,
                pairs,
                mc_samples=s.mc_samples,
                batch_size=s.batch_size,
                seed=s.seed,
                pad_token_id=self.pad_token_id,
                on_done=bar.update,
            )
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The response to each (context, gen_kwargs) request (module docstring), in request order."""
        texts: list[str | None] = [None] * len(requests)
        infills, groups = [], {}
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            until, max_new = self._read_gen_kwargs(dict(gen_kwargs or {}))
            if self.tokenizer.mask_token and self.tokenizer.mask_token in context:
                infills.append((i, self._fit_infill(self._encode(context))))
            else:
                groups.setdefault(max_new, []).append((i, context, until))
        bar = tqdm(total=len(requests), desc="mdfast: generate_until", disable=disable_tqdm or self.rank != 0)
        with bar:
            for max_new, members in sorted(groups.items()):
                options = self._generate_options(max_new)
                prompts = [self._fit_prompt(self._encode(context), max_new) for _, context, _ in members]
                out = generate_texts(
                    self.model,
                    self.tokenizer,
                    prompts,
                    [u for _, _, u in members],
                    options,
                    max_new_tokens=max_new,
                    batch_size=self.settings.batch_size,
                    pad_token_id=self.pad_token_id,
                    on_done=bar.update,
                )
                for (i, _, _), text in zip(members, out):
                    texts[i] = text
            if infills:
                out = infill_texts(
                    self.model,
                    self.tokenizer,
                    [ids for _, ids in infills],
                    self._sampling(self.options),
                    mask_token_id=self.mask_token_id,
                    batch_size=self.settings.batch_size,
                    pad_token_id=self.pad_token_id,
                    on_done=bar.update,
                )
                for (i, _), text in zip(infills, out):
                    texts[i] = text
        for request, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return texts

    # ------------------------------------------------------------------------------------------------
    # tokens
    # ------------------------------------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        """``text``'s ids after the BOS (or CLS) prefix, unless the text already opens with it (a chat template)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids if self.prefix and ids[:1] == self.prefix else self.prefix + ids

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids): the whole text encoded at once and split where the context's ids end.

        Trailing whitespace of the context moves to the continuation (lm-eval's convention); where the joint
        encoding does not start with the context's own ids, the two are encoded apart. The context is cut from
        the left to fit ``max_length`` with the continuation.
        """
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        ctx = self._encode(context)
        whole = self._encode(context + continuation)
        if whole[: len(ctx)] == ctx:
            cont = whole[len(ctx) :]
        else:
            cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        if self._max_length is not None and len(ctx) + len(cont) > self._max_length:
            room = self._max_length - len(cont) - len(self.prefix)
            body = ctx[len(self.prefix) :]
            ctx = self.prefix + body[len(body) - max(room, 0) :]
            if room < 0:
                raise ValueError(f"continuation: {len(cont)} tokens do not fit max_length {self._max_length}")
        if self.adapter.shifted and not ctx:
            raise ValueError("context: a shifted-logit model (Dream) needs at least one token before the continuation")
        return ctx, cont

    def _fit_prompt(self, ids: list[int], max_new: int) -> list[int]:
        """The prompt cut from the left (after its BOS) so that it and ``max_new`` tokens fit ``max_length``."""
        if self._max_length is None or len(ids) + max_new <= self._max_length:
            return ids
        room = self._max_length - max_new - len(self.prefix)
        if room < 1:
            raise ValueError(f"gen_length: {max_new} new tokens leave no room for a prompt in {self._max_length}")
        return self.prefix + ids[len(self.prefix) :][-room:]

    def _fit_infill(self, ids: list[int]) -> list[int]:
        """An infilling input cut to ``max_length`` around its masks (centred on them)."""
        if self._max_length is None or len(ids) <= self._max_length:
            return ids
        where = [j for j, t in enumerate(ids) if t == self.mask_token_id]
        first, last = where[0], where[-1]
        if last - first + 1 > self._max_length:
            raise ValueError(f"context: its masks span {last - first + 1} tokens, over max_length {self._max_length}")
        start = min(max(0, first - (self._max_length - (last - first + 1)) // 2), len(ids) - self._max_length)
        return ids[start : start + self._max_length]

    # ------------------------------------------------------------------------------------------------
    # generation settings
    # ------------------------------------------------------------------------------------------------

    def _read_gen_kwargs(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """(stop strings, tokens to generate) of a request; the kwargs mdfast does not read are logged once."""
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = gen_kwargs.pop("max_gen_toks", DEFAULT_GEN_TOKENS)
        if self.settings.gen_length is not None:
            max_new = self.settings.gen_length
        sampling = gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature", 0) or 0) > 0
        ignored = sorted(k for k in gen_kwargs if k not in ("do_sample", "temperature") or sampling)
        key = ",".join(ignored)
        if ignored and key not in self._warned:
            self._warned.add(key)
            logger.warning(
                "mdfast: generation kwargs %s are not read; decoding follows model_args (decoder=%s, temperature=%s)",
                {k: gen_kwargs[k] for k in ignored},
                self.options.decoder,
                self.options.temperature,
            )
        return until, int(max_new)

    def _generate_options(self, max_new: int) -> mdfast.DecodeOptions:
        """The options for ``max_new`` tokens, checked: a budget that does not split them names gen_length."""
        try:
            self.options.validate(max_new_tokens=max_new)
        except (ValueError, TypeError) as error:
            raise type(error)(
                f"{error} (generating {max_new} tokens: set gen_length=, steps= and block_length= in model_args "
                "so that block_length divides gen_length and steps split evenly over its blocks)"
            ) from None
        return self._sampling(self.options)

    def _sampling(self, options: mdfast.DecodeOptions) -> mdfast.DecodeOptions:
        """``options`` with a generator seeded from ``seed`` where the decode draws random numbers."""
        if options.temperature == 0 and not options.sample:
            return options
        generator = torch.Generator(device=self._device).manual_seed(self.settings.seed)
        return dataclasses.replace(options, generator=generator)
