"""The ``mdfast`` console command."""

from __future__ import annotations

import sys

USAGE = """usage: mdfast <command> [options]

commands:
  bench     time token_stats and xflow_step per backend against the eager reference
  generate  decode a prompt with a model whose weights are on disk (mdfast generate --help)
  info      which backends run here, and why not where they do not
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from mdfast.benchmark import main as bench

        return bench(rest)
    if command == "generate":
        return generate(rest)
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


def generate(argv: list[str]) -> int:
    import argparse

    import torch

    import mdfast
    from mdfast.decode import DECODERS

    parser = argparse.ArgumentParser(
        prog="mdfast generate", description="Decode a prompt with a masked diffusion LM from disk."
    )
    parser.add_argument("--model", required=True, help="a local model folder (the hub is not reached)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--decoder", choices=sorted(DECODERS), default="xflow")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--block-length", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--policy", default=None, help="a StepPolicy file (xflow)")
    parser.add_argument("--mask-token-id", type=int, default=None)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the tokenizer's chat template")
    parser.add_argument("--trust-remote-code", action="store_true", help="needed by LLaDA and Dream checkpoints")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)

    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    dtype = (
        getattr(torch, args.dtype)
        if args.dtype
        else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    )
    common = {"local_files_only": True, "trust_remote_code": args.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(args.model, **common)
    config = AutoConfig.from_pretrained(args.model, **common)
    loader = AutoModelForMaskedLM if type(config) in AutoModelForMaskedLM._model_mapping else AutoModel
    model = loader.from_pretrained(args.model, dtype=dtype, **common).to(args.device).eval()
    mask_token_id = args.mask_token_id if args.mask_token_id is not None else tokenizer.mask_token_id
    mdfast.patch(model, mask_token_id=mask_token_id, backend=args.backend)

    text = args.prompt
    if args.chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
    input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=not args.chat)["input_ids"].to(args.device)
    policy = mdfast.StepPolicy.load(args.policy, args.device) if args.policy else None
    out = model.mdfast_generate(
        input_ids,
        max_new_tokens=args.max_new_tokens,
        steps=args.steps,
        decoder=args.decoder,
        block_length=args.block_length,
        temperature=args.temperature,
        policy=policy,
        eos_token_id=tokenizer.eos_token_id,
    )
    print(tokenizer.decode(out.sequences[0, input_ids.shape[1] :], skip_special_tokens=True))
    total = sum(out.step_times)
    print(f"# {out.nfe} forwards, {total:.3f} s, {args.max_new_tokens / total:.1f} tokens/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
