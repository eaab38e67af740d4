"""The errors every ``mdfast`` verb raises, and the argparse parser that raises them."""

from __future__ import annotations

import argparse


class UsageError(Exception):
    """A bad command line: printed as one line ``<prog>: error: <message>``, exit status 2."""

    def __init__(self, message: str, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


class CommandError(Exception):
    """A runtime failure the command explains: printed as one line, exit status 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with its errors raised as UsageError (its sub-parsers are of this class too)."""

    def error(self, message: str):
        raise UsageError(message, self.prog)
