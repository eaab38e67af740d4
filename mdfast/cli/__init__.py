"""The ``mdfast`` console command: ``mdfast [--version] [--debug] <command> [options]``.

Every sub-command plugs in the same way, and its module is imported only when it runs (``mdfast
--help`` and the other commands never import it, so a command whose extra is not installed breaks
nothing else):

1. A module (or an object in one: ``"package.module:Name"``) that defines
   ``add_arguments(parser)``, which adds the command's options to its own ``argparse`` parser (prog
   ``mdfast <command>``; commands with sub-commands of their own, like ``mdfast eval antibody``,
   call ``parser.add_subparsers(...)`` there and keep the chosen one in ``args``), and
   ``run(args) -> int``, which runs it and returns the exit status. A module that parses its own
   command line may define ``main(argv) -> int`` instead (its parser's prog must read
   ``mdfast <command>``).
2. One line in ``COMMANDS``: the name, the target above, a one-line help, and the ``pip`` extra
   the module needs, if any (named in the error when its import fails).
3. Errors: ``raise UsageError("--flag: what is wrong; what to pass")`` for a bad command line
   (exit status 2; the parser's own errors are UsageErrors too), ``CommandError("...")`` for a
   failure the command explains, any other exception for one it does not (exit status 1). Each is
   printed as one line, ``mdfast <command>: error: <message>``; ``--debug`` (before or after the
   command) or ``MDFAST_DEBUG=1`` prints the traceback first.
4. ``add_arguments`` only declares options: ``mdfast <command> --help`` prints them and runs
   nothing. ``run`` checks every argument it can (files exist, the device is there, numbers are
   consistent) before it loads anything large, and imports heavy packages inside itself.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import mdfast

from .errors import ArgumentParser, CommandError, UsageError


@dataclass(frozen=True)
class Command:
    """One sub-command: ``target`` ("module" or "module:attribute") holds ``add_arguments(parser)``
    and ``run(args)``, or ``main(argv)``; ``help`` is its line in ``mdfast --help``; ``extra`` is
    the pip extra its imports need."""

    target: str
    help: str
    extra: str | None = None

    def load(self):
        module, _, attribute = self.target.partition(":")
        loaded = importlib.import_module(module)
        return getattr(loaded, attribute) if attribute else loaded


class CommandGroup:
    """A command made of sub-commands (``mdfast train align``): ``modules`` maps each name to a module
    with ``add_arguments(parser)`` and ``run(args)``, imported when the group's parser is built (only
    when the group's command runs)."""

    def __init__(self, modules: dict[str, tuple[str, str]]) -> None:
        self.modules = modules  # name -> (module, one-line help)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        chosen = parser.add_subparsers(dest="subcommand", metavar="{" + ",".join(self.modules) + "}", required=True)
        for name, (module, help) in self.modules.items():
            sub = chosen.add_parser(name, help=help, description=help)
            add_debug(sub)
            importlib.import_module(module).add_arguments(sub)

    def run(self, args: argparse.Namespace) -> int:
        return importlib.import_module(self.modules[args.subcommand][0]).run(args)


TRAIN = CommandGroup(
    {
        "align": ("mdfast.train.align", "x-pred alignment of a model on its own answers (SPEC 6.1)"),
        "grpo": ("mdfast.train.grpo", "GRPO for the x-flow step policy, the model frozen (SPEC 6.2)"),
        "mdlm": ("mdfast.train.mdlm", "a small LLaDA code model on the Python standard library (SPEC 7)"),
    }
)

COMMANDS: dict[str, Command] = {
    "bench": Command("mdfast.benchmark", "time token_stats and xflow_step per backend against the eager reference"),
    "eval": Command(
        "mdfast.eval.cli", "decoding quality: the antibody benchmark, the code budget curve, HumanEval", extra="eval"
    ),
    "generate": Command("mdfast.cli:Generate", "decode a prompt with a model whose weights are on disk"),
    "info": Command("mdfast.cli:Info", "which backends run here and why not where they do not (builds nothing)"),
    "train": Command("mdfast.cli:TRAIN", "train what x-flow needs: align, grpo, mdlm", extra="train"),
}


def main(argv: list[str] | None = None) -> int:
    """Run ``mdfast`` with ``argv`` (default: the process's arguments) and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = top_parser()
    first = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), len(argv))
    try:
        top = parser.parse_args(argv[:first])
    except UsageError as error:
        return report(error, error.prog, debug=False)
    except SystemExit as exit:  # --help, --version
        return exit_status(exit)
    if first == len(argv):
        parser.print_help(sys.stderr)
        return 2
    name, rest = argv[first], argv[first + 1 :]
    if name not in COMMANDS:
        return report(UsageError(f"unknown command {name!r} (choose from {', '.join(COMMANDS)})"), "mdfast", False)
    return run_command(name, rest, debug=top.debug or os.environ.get("MDFAST_DEBUG", "0") == "1")


def top_parser() -> ArgumentParser:
    width = max(len(name) for name in COMMANDS) + 2
    commands = "\n".join(f"  {name:{width}s}{command.help}" for name, command in COMMANDS.items())
    parser = ArgumentParser(
        prog="mdfast",
        usage="mdfast [--version] [--debug] <command> [options]",
        description="Fast decoding for masked diffusion language models.",
        epilog=f"commands:\n{commands}\n\n`mdfast <command> --help` shows a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mdfast {mdfast.__version__}")
    add_debug(parser)
    return parser


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error (also MDFAST_DEBUG=1)")


def run_command(name: str, argv: list[str], debug: bool) -> int:
    """Parse ``argv`` with the command's parser and run it (see the module docstring)."""
    command, prog = COMMANDS[name], f"mdfast {name}"
    try:
        try:
            target = command.load()
        except ImportError as error:
            if command.extra is None:
                raise
            raise CommandError(f'{error}: the command needs pip install "mdfast[{command.extra}]"') from error
        if not hasattr(target, "add_arguments"):
            return target.main(argv)
        parser = ArgumentParser(prog=prog, description=command.help)
        add_debug(parser)
        target.add_arguments(parser)
        args = parser.parse_args(argv)
        debug = debug or args.debug
        return target.run(args)
    except SystemExit as exit:  # --help, and a main(argv) that exits
        return exit_status(exit)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        return report(error, error.prog if isinstance(error, UsageError) and error.prog else prog, debug)


def report(error: Exception, prog: str, debug: bool) -> int:
    """Print ``error`` as one line (after its traceback with ``debug``); return its exit status."""
    if debug:
        traceback.print_exception(error)
    message = " ".join(str(error).split())
    if not isinstance(error, (UsageError, CommandError)):
        message = f"{type(error).__name__}: {message}"
        if not debug:
            message += " (--debug prints the traceback)"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2 if isinstance(error, UsageError) else 1


def exit_status(exit: SystemExit) -> int:
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------------------------
# mdfast info
# ---------------------------------------------------------------------------------------------


class Info:
    """``mdfast info``: versions, and for each backend whether it runs here. A native extension
    that is not compiled yet is reported as such (with its cache folder), not compiled, unless
    ``--build`` asks for it."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--build",
            action="store_true",
            help="compile every native extension this machine can run, now (minutes each)",
        )

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import platform

        import torch

        from mdfast import backends

        cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
        print(f"mdfast {mdfast.__version__}, Python {platform.python_version()}, torch {torch.__version__} ({cuda})")
        if args.build:  # loads, and so compiles, every extension that can run here
            lines = {name: availability(reason) for name, reason in backends.available().items()}
        else:
            lines = {name: backend_status(name) for name in backends.NAMES}
        for name, line in lines.items():
            print(f"  {name:7s} {line}")
        return 0


def availability(reason: str | None) -> str:
    return "available" if reason is None else f"unavailable: {reason}"


def backend_status(name: str) -> str:
    """One line on backend ``name``; compiles nothing (``native.build_state``)."""
    import torch

    from mdfast import backends
    from mdfast.backends import native

    backend = backends.get(name)
    extension = {"cpu": native.CPU_EXTENSION, "cuda": native.CUDA_EXTENSION}.get(name)
    if extension is not None:
        if backend.device_type == "cuda" and not torch.cuda.is_available():
            return "unavailable: no CUDA device"
        ready, where = native.build_state(extension)
        if not ready:
            return f"not compiled yet: compiles on first use (minutes) or with `mdfast info --build`; cached in {where}"
    return availability(backend.unavailable_reason())


# ---------------------------------------------------------------------------------------------
# mdfast generate
# ---------------------------------------------------------------------------------------------


class Generate:
    """``mdfast generate``: decode a prompt with a model folder saved by transformers. Every
    argument, and the tokenizer against the model's vocabulary, is checked before the weights load."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        from mdfast.backends import NAMES
        from mdfast.decode import DECODERS

        parser.add_argument("--model", required=True, help="a local model folder with config.json (no hub)")
        parser.add_argument("--prompt", required=True)
        parser.add_argument("--decoder", choices=sorted(DECODERS), default="xflow")
        parser.add_argument("--steps", type=int, default=64, help="model forwards in all (default 64)")
        parser.add_argument("--max-new-tokens", type=int, default=64, help="response length (default 64)")
        parser.add_argument("--block-length", type=int, default=None, help="divides --max-new-tokens (default: all)")
        parser.add_argument("--temperature", type=float, default=0.0)
        parser.add_argument("--policy", default=None, help="a StepPolicy file (xflow)")
        parser.add_argument("--mask-token-id", type=int, default=None, help="default: the tokenizer's mask token")
        parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
        parser.add_argument("--trust-remote-code", action="store_true", help="needed by LLaDA and Dream checkpoints")
        parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where there is one)")
        parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
        parser.add_argument("--backend", choices=["auto", *NAMES], default="auto")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        import torch

        device = check_device(args.device)
        check_budget(args.steps, args.max_new_tokens, args.block_length, args.temperature)
        dtype = getattr(torch, args.dtype) if args.dtype else torch.bfloat16 if device.type == "cuda" else torch.float32
        check_backend(args.backend, device, dtype)
        policy = load_policy(args.policy, args.decoder, device)
        folder = check_model_folder(args.model)
        if args.mask_token_id is not None and args.mask_token_id < 0:
            raise UsageError(f"--mask-token-id: expected a token id >= 0, got {args.mask_token_id}")

        from transformers import AutoTokenizer

        from mdfast.loading import load_config, load_model

        try:
            config = load_config(folder, trust_remote_code=args.trust_remote_code)
        except ValueError as error:
            if args.trust_remote_code or "trust_remote_code" not in str(error):
                raise
            raise UsageError(f"--model {folder}: the model comes with its own code; pass --trust-remote-code") from None
        tokenizer = AutoTokenizer.from_pretrained(
            folder, local_files_only=True, trust_remote_code=args.trust_remote_code
        )
        vocab_size = getattr(config, "vocab_size", None)
        mask_token_id = None
        if vocab_size is not None:  # else checked against the embedding table once it is loaded
            mask_token_id = check_tokenizer(tokenizer, vocab_size, args.mask_token_id, config, folder)
        text = args.prompt
        if args.chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
            )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=not args.chat)["input_ids"]
        check_prompt(tokenizer, ids[0].tolist(), folder)

        model = load_model(folder, device=device, dtype=dtype, trust_remote_code=args.trust_remote_code, config=config)
        if vocab_size is None:
            vocab_size = model.get_input_embeddings().num_embeddings
            mask_token_id = check_tokenizer(tokenizer, vocab_size, args.mask_token_id, config, folder)
        mdfast.patch(model, mask_token_id=mask_token_id, backend=args.backend)
        out = model.mdfast_generate(
            ids.to(device),
            max_new_tokens=args.max_new_tokens,
            steps=args.steps,
            decoder=args.decoder,
            block_length=args.block_length,
            temperature=args.temperature,
            policy=policy,
            eos_token_id=tokenizer.eos_token_id,
        )
        print(tokenizer.decode(out.sequences[0, ids.shape[1] :], skip_special_tokens=True))
        total = sum(out.step_times)
        print(f"# {out.nfe} forwards, {total:.3f} s, {args.max_new_tokens / total:.1f} tokens/s", file=sys.stderr)
        return 0


def check_device(name: str | None):
    """The torch.device for ``--device`` (None: cuda where there is one, else cpu)."""
    import torch

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


def check_budget(steps: int, max_new_tokens: int, block_length: int | None, temperature: float) -> None:
    """--steps, --max-new-tokens and --block-length as the decoding loop takes them: positive, the
    blocks dividing the response and the steps, at most one step per token."""
    if max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens: expected at least 1, got {max_new_tokens}")
    if steps < 1:
        raise UsageError(f"--steps: expected at least 1, got {steps}")
    if steps > max_new_tokens:
        raise UsageError(f"--steps {steps}: more steps than the {max_new_tokens} tokens to decode (--max-new-tokens)")
    if block_length is not None:
        if not 1 <= block_length <= max_new_tokens or max_new_tokens % block_length:
            raise UsageError(f"--block-length {block_length}: must divide --max-new-tokens {max_new_tokens}")
        blocks = max_new_tokens // block_length
        if steps % blocks:
            raise UsageError(
                f"--steps {steps}: must be a multiple of the {blocks} blocks "
                f"(--max-new-tokens {max_new_tokens} / --block-length {block_length})"
            )
    if not temperature >= 0:
        raise UsageError(f"--temperature: expected a number >= 0, got {temperature}")


def check_backend(name: str, device, dtype) -> None:
    """An explicit --backend must run on --device with the model's dtype (``ops.resolve_backend``)."""
    if name == "auto":
        return
    from mdfast import ops

    try:
        ops.resolve_backend(name, device, dtype)
    except (ValueError, TypeError) as error:
        raise UsageError(f"--backend {name} cannot run with --device {device}: {error}") from None


def load_policy(path: str | None, decoder: str, device):
    if path is None:
        return None
    if decoder != "xflow":
        raise UsageError(f"--policy: only the xflow decoder reads a step policy, not {decoder}")
    if not Path(path).is_file():
        raise UsageError(f"--policy: no such file: {path}")
    try:
        return mdfast.StepPolicy.load(path, device)
    except Exception as error:
        raise UsageError(f"--policy {path}: not a StepPolicy file ({type(error).__name__}: {error})") from None


def check_model_folder(path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        hint = ""
        if path.count("/") == 1 and not path.startswith((".", "/", "~")):
            hint = " (mdfast never reaches the hub: download the model and pass its folder)"
        raise UsageError(f"--model: no such folder: {path}{hint}")
    if not (folder / "config.json").is_file():
        raise UsageError(f"--model: {path} holds no config.json (pass the folder a model was saved to)")
    return folder


def check_tokenizer(tokenizer, vocab_size: int, mask_token_id: int | None, config, folder: Path) -> int:
    """The mask id to decode with, once the tokenizer is known to fit the model's ``vocab_size``
    embeddings: a vocabulary beyond its special tokens and no larger than the table, and a mask id
    inside the table (``--mask-token-id``, else the tokenizer's mask token, else the config's
    ``mask_token_id``)."""
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


def check_prompt(tokenizer, ids: list[int], folder: Path) -> None:
    """A prompt whose words all encode to the unknown token: the tokenizer does not fit the text."""
    unk, specials = tokenizer.unk_token_id, set(tokenizer.all_special_ids)
    words = [i for i in ids if i not in specials or i == unk]
    if unk is not None and words and all(i == unk for i in words):
        raise CommandError(
            f"every word of --prompt encodes to the unknown token {tokenizer.unk_token!r}: the tokenizer in "
            f"{folder} does not know them; check that it is the model's own tokenizer"
        )


if __name__ == "__main__":
    sys.exit(main())
