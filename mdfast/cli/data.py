"""``mdfast data``: the code model's data: its infilling cases as training records, its split and tokenizer."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdfast.atomic import atomic_write
from mdfast.cli.errors import UsageError

LONGEST_SPAN = 128  # mdfast.code_model.cases.code_infill_cases's span_tokens maximum


def add_parser(subparsers) -> argparse.ArgumentParser:
    """``data`` under ``mdfast``, with the sub-verbs code-cases and code-split."""
    parser = subparsers.add_parser(
        "data",
        help="the code model's data: infilling cases as training records, the split, the tokenizer",
        description="The code model's data: the standard library's training / held-out split, its tokenizer, and "
        "infilling cases cut from its functions.",
    )
    verbs = parser.add_subparsers(dest="data_verb", metavar="{code-cases,code-split}", required=True)
    cases = verbs.add_parser(
        "code-cases",
        help="write code infilling cases as JSONL training records (mdfast train grpo / align)",
        description="Write code infilling cases (one masked span of whole lines of a function body each, in a window "
        "of the file's tokens) as JSONL training records: input_ids, and the reward columns target, source and "
        "span_chars of mdfast.code_model.cases.filled_file_parses and span_token_accuracy.",
    )
    cases.add_argument("--split", choices=("train", "heldout"), default="train", help="the files' split (train)")
    cases.add_argument("--cases", type=int, default=256, help="at most this many cases (256)")
    cases.add_argument("--seq-len", type=int, default=256, help="window length: the model's max_sequence_length")
    cases.add_argument("--seed", type=int, default=0)
    cases.add_argument("--tokenizer", default=None, help="tokenizer.json or its folder (default: the code tokenizer)")
    cases.add_argument("--out", required=True, help="the JSONL file to write")
    cases.set_defaults(run=run_code_cases)
    split = verbs.add_parser(
        "code-split",
        help="show the code model's training / held-out split; regenerate the list or the tokenizer (one-off)",
        description="Show this Python's standard library split into the code model's training and held-out files. "
        "--write-heldout and --write-tokenizer regenerate mdfast/code_model/heldout.txt and tokenizer.json: a "
        "one-off, since the shipped model, its checkpoints and the evaluation cases depend on both.",
    )
    split.add_argument("--write-heldout", action="store_true", help="rewrite heldout.txt (choose_heldout)")
    split.add_argument("--write-tokenizer", action="store_true", help="retrain tokenizer.json on the training split")
    split.set_defaults(run=run_code_split)
    return parser


def run_code_cases(args: argparse.Namespace) -> int:
    """``mdfast data code-cases``: cut the cases from the chosen split and write them as JSONL records."""
    if args.cases < 1:
        raise UsageError(f"--cases: expected at least 1, got {args.cases}")
    if args.seq_len < LONGEST_SPAN:
        raise UsageError(f"--seq-len: expected at least {LONGEST_SPAN} (the longest span), got {args.seq_len}")
    if args.tokenizer is not None and not Path(args.tokenizer).exists():
        raise UsageError(f"--tokenizer: no such file or folder: {args.tokenizer}")
    if not Path(args.out).parent.is_dir():
        raise UsageError(f"--out: no such folder: {Path(args.out).parent}")
    # the tree imports every verb: implementations load when their verb runs
    from mdfast.code_model import cases as code_cases  # loads when the verb runs
    from mdfast.code_model import data as code_data  # loads when the verb runs

    train, heldout = code_data.split_files(code_data.source_files())
    files = train if args.split == "train" else heldout
    print(f"cutting cases from {len(files)} {args.split} files", file=sys.stderr)
    cases = code_cases.code_infill_cases(
        code_data.load_tokenizer(args.tokenizer or code_data.TOKENIZER_FILE),
        n_cases=args.cases,
        seq_len=args.seq_len,
        seed=args.seed,
        files=files,
    )
    with atomic_write(args.out) as f:
        for case in cases:
            f.write(json.dumps(code_cases.training_record(case)) + "\n")
    print(f"{len(cases)} {args.split} cases written to {args.out}", file=sys.stderr)
    return 0


def run_code_split(args: argparse.Namespace) -> int:
    """``mdfast data code-split``: print the split's sizes, after regenerating the list or the tokenizer if asked."""
    from mdfast.code_model import data as code_data  # the tree imports every verb: implementations load when it runs

    files = code_data.source_files()
    if args.write_heldout:
        code_data.write_heldout(files)
    train, held = code_data.split_files(files)
    if args.write_tokenizer:
        code_data.write_tokenizer(train)
    nbytes = {name: sum(len(t.encode()) for t in side.values()) for name, side in (("train", train), ("held", held))}
    print(
        f"{code_data.stdlib_root()}: {len(files)} files; training {len(train)} files ({nbytes['train'] / 1e6:.1f} MB), "
        f"held out {len(held)} of {len(code_data.heldout_paths())} listed ({nbytes['held'] / 1e6:.2f} MB)"
    )
    return 0
