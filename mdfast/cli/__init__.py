"""The ``mdfast`` console command: one argparse tree, ``mdfast [--version] [--debug] <verb> [...]``.

Every verb is a module of this package with ``add_parser(subparsers)`` (which sets ``run`` on its leaf
parsers) and ``run(args) -> int``; a group (eval, train, data) adds nested sub-parsers. ``main`` builds the
tree from ``VERBS``, parses, and calls ``args.run(args)``. Errors become one line ``mdfast <verb ...>: error:
...`` on stderr (``report``): UsageError exit 2 (argparse's own errors too), CommandError exit 1, any other
exception exit 1 with its type, KeyboardInterrupt exit 130. ``--debug`` (anywhere) or MDFAST_DEBUG=1 prints
the traceback first.

A verb module's top level stays light (argparse, pathlib, ``mdfast.cli.errors``, and what ``import mdfast``
has already loaded); ``run`` imports the implementation and checks every argument before anything large loads.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import mdfast

from . import bench, data, eval, generate, infill, info, train
from .errors import ArgumentParser, CommandError, UsageError, missing_extra, usage_error

__all__ = ["VERBS", "ArgumentParser", "CommandError", "UsageError", "build_parser", "main", "usage_error"]

# The verbs in the order ``mdfast --help`` lists them.
VERBS = (generate, infill, eval, train, data, bench, info)

DEBUG_FLAG = "--debug"


def build_parser() -> ArgumentParser:
    """The whole tree: the top-level options and every verb's parser."""
    parser = ArgumentParser(
        prog="mdfast",
        usage="mdfast [--version] [--debug] <verb> [options]",
        description="Fast decoding for masked diffusion language models.",
        epilog="`mdfast <verb> --help` shows a verb's options.",
    )
    parser.add_argument("--version", action="version", version=f"mdfast {mdfast.__version__}")
    parser.add_argument(DEBUG_FLAG, action="store_true", help="print an error's traceback (before or after the verb)")
    verbs = parser.add_subparsers(title="verbs", dest="verb", metavar="<verb>", prog="mdfast")
    for module in VERBS:
        module.add_parser(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``mdfast`` with ``argv`` (default: the process's arguments) and return the exit status."""
    argv = [str(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    debug = DEBUG_FLAG in argv or os.environ.get("MDFAST_DEBUG", "0") == "1"
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    parser = build_parser()
    prog = "mdfast"
    try:
        chosen = chosen_parser(parser, argv)
        prog = chosen.prog
        args, extra = parser.parse_known_args(argv)
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}", prog)
        if getattr(args, "run", None) is None:  # a group without its verb
            chosen.print_help(sys.stderr)
            return 2
        args.command_line = " ".join(["mdfast", *argv])
        return args.run(args)
    except SystemExit as exit:  # --help, --version, and a verb that exits
        return exit_status(exit)
    except KeyboardInterrupt:
        print(f"{prog}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        return report(error, prog, debug)


def chosen_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The deepest parser the verbs of ``argv`` name (the top one where none); an unknown verb is a UsageError.

    A verb is the first word of ``argv`` after its group's options that does not start with "-".
    """
    words = iter(argv)
    while (choices := subparser_choices(parser)) is not None:
        word = next((w for w in words if not w.startswith("-")), None)
        if word is None:
            break
        if word not in choices:
            raise UsageError(f"unknown verb {word!r} (choose from {', '.join(choices)})", parser.prog)
        parser = choices[word]
    return parser


def subparser_choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    """The sub-parsers of ``parser`` by name (None for a leaf)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def report(error: Exception, prog: str, debug: bool) -> int:
    """Print ``error`` as one line (after its traceback with ``debug``); return its exit status."""
    if isinstance(error, ImportError):
        error = missing_extra(error) or error
    if debug:
        traceback.print_exception(error)
    if isinstance(error, UsageError) and error.prog:
        prog = error.prog
    message = " ".join(str(error).split())
    if not isinstance(error, (UsageError, CommandError)):
        message = f"{type(error).__name__}: {message}"
        if not debug:
            message += " (--debug prints the traceback)"
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2 if isinstance(error, UsageError) else 1


def exit_status(exit: SystemExit) -> int:
    """The status of a SystemExit (its message, if any, printed to stderr)."""
    if exit.code is None or isinstance(exit.code, int):
        return exit.code or 0
    print(exit.code, file=sys.stderr)
    return 1
