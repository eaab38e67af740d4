"""The ``mdfast`` console command."""

from __future__ import annotations

import sys

USAGE = """usage: mdfast <command> [options]

commands:
  bench    time token_stats and xflow_step per backend against the eager reference
  info     which backends run here, and why not where they do not
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from mdfast.bench.bench_step import main as bench

        return bench(rest)
    if command == "info":
        return info()
    print(f"mdfast: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


def info() -> int:
    import torch

    import mdfast
    from mdfast import backends

    print(f"mdfast {mdfast.__version__}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
    for name, reason in backends.available().items():
        print(f"  {name:7s} {'available' if reason is None else 'unavailable: ' + reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
