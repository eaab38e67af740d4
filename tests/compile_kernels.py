"""Compile every Triton kernel for a Hopper GPU (sm_90) on a machine without one.

    python tests/compile_kernels.py          # a table: kernel, launch, registers, local memory

The Triton interpreter (what CI runs the kernels with) executes the kernels' Python, not the
compiler: a kernel can pass every interpreted test and still fail to compile, or spill registers,
on the GPU. This script calls each wrapper of ``mdfast.triton_kernels`` on "meta" tensors at the
production shapes (the wrappers then plan GPU launches: ``token_stats.META_MULTIPROCESSORS``),
records each launch instead of running it, and compiles it ahead of time with Triton's compiler
and ptxas for ``--arch`` (default 90). It exits with 1 if a kernel fails to compile or, with
``--no-spills``, if one uses local memory (spills). Run it without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

POINTER_TYPES = {
    torch.float32: "*fp32",
    torch.bfloat16: "*bf16",
    torch.float16: "*fp16",
    torch.int64: "*i64",
    torch.int32: "*i32",
    torch.bool: "*i1",
}


@dataclass
class Launch:
    label: str
    fn: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict


def record_launches(label: str, call) -> list[Launch]:
    """The kernel launches ``call()`` makes, recorded instead of run."""
    from triton.runtime.jit import JITFunction

    launches: list[Launch] = []

    def run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(label, self, args, kwargs))

    original = JITFunction.run
    JITFunction.run = run
    try:
        call()
    finally:
        JITFunction.run = original
    return launches


def compile_launch(launch: Launch, arch: int):
    """Triton's ahead-of-time compile of one recorded launch for sm_``arch``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = launch.fn
    options = {key: launch.kwargs[key] for key in ("num_warps", "num_stages") if key in launch.kwargs}
    signature, constexprs = {}, {}
    for i, param in enumerate(fn.params):
        value = launch.args[i] if i < len(launch.args) else launch.kwargs.get(param.name, param.default)
        if param.is_constexpr or value is None:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = POINTER_TYPES[value.dtype]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {param.name} of type {type(value).__name__}")
    source = ASTSource(fn, signature, constexprs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, SHARED and LOCAL (bytes of local memory: spills and stack) from cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|SHARED|LOCAL):(\d+)", text)}


def production_launches() -> list[Launch]:
    """The wrappers at the shapes mdfast runs them at, on meta tensors."""
    from mdfast import reference
    from mdfast.triton_kernels import rmsnorm, rope, swiglu, token_stats, xflow

    meta = torch.device("meta")
    launches = []
    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        for rows, V in ((512, 126464), (8, 126464)):  # the row path, and the split path with few rows
            logits = torch.empty(1, rows, V, dtype=dtype, device=meta)
            launches += record_launches(
                f"token_stats {name} {rows}x{V}", lambda logits=logits: token_stats.token_stats(logits, 4, True)
            )
    B, N, V, E, d = 1, 512, 126464, 4096, 64
    logits = torch.empty(B, N, V, dtype=torch.bfloat16, device=meta)
    X = torch.empty(B, N, E, device=meta)
    t = torch.empty(B, N, device=meta)
    embedding = torch.empty(V, E, dtype=torch.bfloat16, device=meta)
    mask = torch.empty(E, device=meta)
    rho = torch.empty(B, device=meta)
    weights = torch.empty(d * (4 + 4) + d + d * d + d + 2 * d + 2, device=meta)
    for mode, (w, action) in {"policy": (weights, None), "heuristic": (None, None), "given": (None, t)}.items():
        launches += record_launches(
            f"xflow_step {mode} {B}x{N}x{V}x{E}",
            lambda w=w, action=action: xflow.xflow_step(
                logits, X, t, embedding, mask, rho, w, d, 1.0, 100.0, action, 1 / 256, 1.0, 0.1, 0.99, 4, 16, X, t
            ),
        )
    L, D, H, hd, F = 640, 4096, 32, 128, 12288
    x = torch.empty(1, L, D, dtype=torch.bfloat16, device=meta)
    w = torch.empty(D, dtype=torch.bfloat16, device=meta)
    launches += record_launches(f"rms_norm + residual 1x{L}x{D}", lambda: rmsnorm.rms_norm(x, w, 1e-5, x))
    qkv = torch.empty(1, L, 3 * D, dtype=torch.bfloat16, device=meta)
    q = qkv[..., :D].unflatten(-1, (H, hd))
    launches += record_launches(
        f"rope_ 1x{L}x{H}x{hd}", lambda: rope.rope_(q, reference.rope_inv_freq(hd, 500000.0, meta))
    )
    gate_up = torch.empty(L, 2 * F, dtype=torch.bfloat16, device=meta)
    launches += record_launches(f"swiglu {L}x{F}", lambda: swiglu.swiglu(gate_up[:, :F], gate_up[:, F:]))
    return launches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--no-spills", action="store_true", help="fail when a kernel uses local memory")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter compiles nothing", file=sys.stderr)
        return 2
    failed = 0
    print("| launch | kernel | registers | local bytes | shared bytes |\n|---|---|---|---|---|")
    for launch in production_launches():
        name = launch.fn.__name__
        try:
            usage = resource_usage(compile_launch(launch, args.arch).asm["cubin"])
        except Exception as error:
            failed += 1
            first_line = str(error).splitlines()[0] if str(error) else ""
            print(f"| {launch.label} | {name} | FAILED: {type(error).__name__}: {first_line} | | |")
            continue
        spills = usage.get("LOCAL", 0)
        failed += bool(args.no_spills and spills)
        print(f"| {launch.label} | {name} | {usage.get('REG')} | {spills} | {usage.get('SHARED')} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
