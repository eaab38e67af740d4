"""Compile every Triton kernel for a Hopper GPU (sm_90), as the runtime would specialise it, without a GPU.

    python tests/compile_kernels.py          # a table: kernel, specialisation, registers, local memory

The Triton interpreter (what CI runs the kernels with) executes the kernels' Python, not the
compiler: a kernel can pass every interpreted test and still fail to compile, or spill registers,
on the GPU. This script calls the launchers of ``mdfast.triton_kernels`` (through
``mdfast.backends.triton``) on "meta" tensors at the shapes mdfast runs them at: the production
shapes of both statistics paths, every logits dtype, every k the decoders use, one row and many,
misaligned and strided rows, every mode of the x-flow step, the body kernels (the launchers then
plan GPU launches: ``stats_launch.META_MULTIPROCESSORS``). It records each launch instead of running
it and derives its specialisation with Triton's own binder, as ``JITFunction.run`` does at run time
(an integer argument equal to 1 becomes a constant, one divisible by 16 and a pointer aligned to 16
bytes are marked so), then compiles each distinct specialisation once, ahead of time, with Triton's
compiler and its bundled ptxas for ``--arch`` (default 90). Meta tensors carry their storage offset
in ``data_ptr()``, so a view's alignment is the one it has on the GPU. It exits with 1 if a kernel
fails to compile or, with ``--no-spills``, if one uses local memory (spills). Run it without
``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from mdfast import FlowConfig
from mdfast.backends import GivenStats, StepInputs, StepScalars
from mdfast.backends import triton as kernels
from mdfast.backends.contract import PolicyLayout


@dataclass
class Launch:
    label: str
    fn: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict


@dataclass
class Specialisation:
    """One distinct compile: a kernel with its argument types, constants and divisibility attributes."""

    fn: object
    source: object  # triton.compiler.ASTSource
    options: object  # the backend's options (num_warps, ...)
    labels: list[str] = field(default_factory=list)  # the launches that use it


def record_launches(label: str, call) -> list[Launch]:
    """The kernel launches ``call()`` makes, recorded instead of run."""
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


def specialise(launches: list[Launch], arch: int) -> list[Specialisation]:
    """The distinct specialisations of ``launches`` for sm_``arch``, in first-seen order.

    Derived by Triton's binder: the code ``JITFunction.run`` runs at each launch.
    """
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binders: dict[object, object] = {}
    found: dict[tuple, Specialisation] = {}
    for launch in launches:
        fn = launch.fn
        if fn not in binders:
            binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binders[fn](*launch.args, **launch.kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
        source = ASTSource(fn, signature, constexprs, attrs)
        key = (source.hash(), repr(sorted(options.__dict__.items())))
        if key not in found:
            found[key] = Specialisation(fn, source, options)
        found[key].labels.append(launch.label)
    return list(found.values())


def compile_for(spec: Specialisation, arch: int):
    """Triton's ahead-of-time compile of one specialisation for sm_``arch``."""
    return triton.compile(spec.source, target=GPUTarget("cuda", arch, 32), options=spec.options.__dict__)


def describe(spec: Specialisation) -> str:
    """The specialisation in a few words: constants, and the arguments marked divisible by 16."""
    constants = [
        f"{spec.fn.arg_names[path[0]]}={value}"
        for path, value in sorted(spec.source.constants.items())
        if not spec.fn.params[path[0]].is_constexpr  # a runtime argument that specialised to a constant
    ]
    divisible = [spec.fn.arg_names[path[0]] for path, marks in sorted(spec.source.attrs.items()) if marks]
    return f"{'const ' + ','.join(constants) + '; ' if constants else ''}div16: {','.join(divisible) or '-'}"


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG, SHARED and LOCAL (bytes of local memory: spills and stack) from cuobjdump."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    return {key: int(value) for key, value in re.findall(r"(REG|SHARED|LOCAL):(\d+)", text)}


META = torch.device("meta")
bf16, f16, f32, i64 = torch.bfloat16, torch.float16, torch.float32, torch.int64


def production_launches() -> list[Launch]:
    """The launchers at the shapes mdfast runs them at, on meta tensors."""
    return stats_launches() + step_launches() + body_launches()


def stats_launches() -> list[Launch]:
    """``token_stats``: both paths, every logits dtype, k in {2, 3, 4, 8}, one row and many, strided rows."""
    launches = []

    def stats(label, logits, k=4, full_entropy=False):
        name = str(logits.dtype).removeprefix("torch.")
        launches.extend(
            record_launches(
                f"token_stats {name} {'x'.join(map(str, logits.shape))} k={k}{' H_full' if full_entropy else ''} "
                + label,
                lambda: kernels.token_stats(logits, k, full_entropy),
            )
        )

    for dtype in (bf16, f32, f16):
        for rows in (512, 8):  # the row path; the split path (few rows)
            for full_entropy in (False, True):
                stats("", torch.empty(1, rows, 126464, dtype=dtype, device=META), 4, full_entropy)
    stats("Dream", torch.empty(1, 2048, 152064, dtype=bf16, device=META))
    stats("LLaDA2", torch.empty(8, 64, 157184, dtype=bf16, device=META))
    stats("one row", torch.empty(1, 1, 126464, dtype=bf16, device=META))
    for k in (2, 3, 8):  # soft-masking's k = 3; the extremes
        stats("", torch.empty(1, 512, 126464, dtype=bf16, device=META), k)
    wide = torch.empty(2, 300, 32003, dtype=bf16, device=META)
    stats("strided, misaligned", wide[:, ::2, 5 : 32005 - 5])
    return launches


def step_launches() -> list[Launch]:
    """``xflow_step``: every mode, B = 1 and 8, bf16 and float32, and a short block (the split path)."""
    N, V, E, d = 512, 126464, 4096, 64
    config = FlowConfig()
    with_policy = StepScalars(config.a_min, config.a_max, 0.1, 0.99, 4, config.kummer_terms, d, 2.0, 100.0)
    heuristic = StepScalars(config.a_min, config.a_max, 0.1, 0.99, 4, config.kummer_terms)
    weights = torch.empty(PolicyLayout(d, 4).size, device=META)
    launches = []
    for batch in (1, 8):
        for logits_dtype, emb_dtype in ((bf16, bf16), (f32, f32)):
            logits = torch.empty(batch, N, V, dtype=logits_dtype, device=META)
            X = torch.empty(batch, N, E, device=META)
            t = torch.empty(batch, N, device=META)
            embedding = torch.empty(V, E, dtype=emb_dtype, device=META)
            mask = torch.empty(E, device=META)
            rho = torch.empty(batch, device=META)
            bad = torch.empty(1, dtype=torch.int32, device=META)
            given = GivenStats(torch.empty(batch, N, dtype=i64, device=META), t, t)
            modes = {
                "policy": (weights, None, None, None, with_policy),
                "policy, checked": (weights, None, None, bad, with_policy),
                "heuristic": (None, None, None, None, heuristic),
                "given action": (None, t, None, None, heuristic),
                "sampled (given statistics)": (None, t, given, None, heuristic),
            }
            for mode, (w, action, stats_given, flag, scalars) in modes.items():
                name = str(logits_dtype).removeprefix("torch.")
                launches += record_launches(
                    f"xflow_step {mode} {name} {batch}x{N}x{V}x{E}",
                    functools.partial(
                        kernels.xflow_step,
                        StepInputs(logits, X, t, embedding, mask, rho, w, action, stats_given, flag, X, t, scalars),
                    ),
                )
    block = torch.empty(1, 32, V, dtype=bf16, device=META)  # a semi-autoregressive block: the split path
    X32, t32 = torch.empty(1, 32, E, device=META), torch.empty(1, 32, device=META)
    launches += record_launches(
        "xflow_step heuristic bfloat16 1x32 (split path)",
        lambda: kernels.xflow_step(
            StepInputs(block, X32, t32, embedding, mask, rho[:1], None, None, None, None, X32, t32, heuristic)
        ),
    )
    return launches


def body_launches() -> list[Launch]:
    """The LLaDA body's kernels at LLaDA-8B's widths: ``rms_norm`` (alone, with the residual), ``rope_``, ``swiglu``."""
    L, D, H, hd, F = 640, 4096, 32, 128, 12288
    x = torch.empty(1, L, D, dtype=bf16, device=META)
    w = torch.empty(D, dtype=bf16, device=META)
    launches = record_launches(f"rms_norm 1x{L}x{D}", lambda: kernels.rms_norm(x, w, 1e-5, None))
    launches += record_launches(f"rms_norm + residual 1x{L}x{D}", lambda: kernels.rms_norm(x, w, 1e-5, x))
    qkv = torch.empty(1, L, 3 * D, dtype=bf16, device=META)
    for name, at in (("q", 0), ("k", D)):
        view = qkv[..., at : at + D].unflatten(-1, (H, hd))
        launches += record_launches(f"rope_ {name} 1x{L}x{H}x{hd}", lambda view=view: kernels.rope_(view, 500000.0))
    gate_up = torch.empty(L, 2 * F, dtype=bf16, device=META)
    launches += record_launches(f"swiglu {L}x{F}", lambda: kernels.swiglu(gate_up[:, :F], gate_up[:, F:]))
    return launches


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--no-spills", action="store_true", help="fail when a kernel uses local memory")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter compiles nothing", file=sys.stderr)
        return 2
    start = time.monotonic()
    launches = production_launches()
    specialisations = specialise(launches, args.arch)
    failed = 0
    print("| kernel | specialisation | launches (first) | registers | local bytes | shared bytes |")
    print("|---|---|---|---|---|---|")
    for spec in specialisations:
        name, used = spec.fn.__name__, f"{len(spec.labels)} ({spec.labels[0]})"
        try:
            usage = resource_usage(compile_for(spec, args.arch).asm["cubin"])
        except Exception as error:
            failed += 1
            first_line = str(error).splitlines()[0] if str(error) else ""
            print(f"| {name} | {describe(spec)} | {used} | FAILED: {type(error).__name__}: {first_line} | | |")
            continue
        spills = usage.get("LOCAL", 0)
        failed += bool(args.no_spills and spills)
        print(
            f"| {name} | {describe(spec)} | {used} | {usage.get('REG')} | {spills} | {usage.get('SHARED')} |",
            flush=True,
        )
    print(
        f"\n{len(launches)} launches recorded, {len(specialisations)} distinct specialisations compiled for "
        f"sm_{args.arch} in {time.monotonic() - start:.0f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
