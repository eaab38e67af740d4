"""The GPU check's KV cache stage (SPEC 8): no cache, prefix and dual at LLaDA-8B widths; the exact refresh.

- exactness, first: ``cache_refresh=1`` (every step a refresh) gives the tokens of no cache, for low_confidence
  and x-flow, with "dual" and "prefix", on the device at a small shape (bf16; a differing token FAILS the stage).
- speed: a random native LLaDA body at LLaDA-8B widths (d_model 4096, 32 heads, 32 KV heads, MLP 12288,
  V 126464, bf16; the weights of ``bench_e2e.llada_pair``), B = 1, prompt P = 512 + N = 256 new tokens, block 32,
  256 steps (8 blocks of 32 steps: a refresh, then 31 cached steps). For x-flow and low_confidence with cache
  none, prefix and dual: tokens/s of whole ``generate`` calls (N / the median call), ms per step (the median of
  ``GenerateOutput.step_times``, CUDA events) split into refresh and cached steps, nfe and ``graphed_blocks``
  (reported, never asserted); then threshold with dual: nfe and tokens/s.
- timing: one short warm-up call per setting (the same shapes, 2 steps a block), then rounds in which every
  setting runs once in turn (interleaved); each whole call between two CUDA events, the device synchronised
  before the first only (outside the timed region); medians over the rounds.
- layers and rounds from the time left (``plan_runs``): a probe call (dual, 2 steps a block, after one
  untimed) times a refresh step and a cached step with all 32 layers; the stage keeps the most layers
  (halving) and rounds (3, else 2) whose estimate fits, and says so. A step with l of 32 layers costs
  (0.1 + 0.9 l / 32) of the 32-layer one (the head does not shrink): fewer layers understate the cache's
  speed-up (the head projects the block's n rows in every mode). A round that would overrun the stage's
  deadline is not started (one always runs).
- budget: the script gives the stage 70 s at most (it starts with 35 s left or more); the plan aims to end
  within ``AIM_S`` = 60 s. Assumed on an H100 (bf16): a 32-layer refresh step about 22 ms over 768 tokens, a
  dual step about 5 ms, so a round of the seven settings about 21 s at 32 layers and 12 s at 16; CUDA start,
  the exactness check, the 16 GiB body and the probe about 15 s; then 32 layers in 2 rounds (about 47 s with
  the warm-ups) would overrun, so 16 layers in 3 rounds (about 40 s): the stage about 55 s.

``--tiny``: the same code paths on the CPU in float32 (d_model 64, 2 layers, vocab 128, P 16, N 16, block 8,
16 steps, the torch backend), in seconds; its figures measure nothing.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import bench_e2e
import torch
from gpu_stage import Stage, skip, write_results

import mdfast
from mdfast.models.llada import LLaDAConfig

MODES = ("none", "prefix", "dual")
SETTINGS = [(d, m) for d in ("xflow", "low_confidence") for m in MODES] + [("threshold", "dual")]
# host seconds a call beyond its steps, for the estimate (none: its CUDA graph capture)
CALL_S = {"none": 0.5, "prefix": 0.1, "dual": 0.1}
AIM_S = 60.0  # seconds the stage plans to end within (its cap in gpu_check.sh: 70)


@dataclass(frozen=True)
class Lengths:
    """A run's lengths: prompt P, new tokens N, block n, steps (a multiple of the N / n blocks)."""

    prompt: int
    new: int
    block: int
    steps: int

    @property
    def blocks(self) -> int:
        return self.new // self.block

    @property
    def length(self) -> int:
        return self.prompt + self.new


@dataclass
class CacheRun:
    """The stage's settings (the GPU run's, or --tiny's) and what it has measured so far.

    body: ``bench_e2e.PRESETS``' fields of the timed body (all its layers); lengths: the timed runs';
    small, small_lengths: the exactness check's body and lengths; results: the stage's JSON.
    """

    device: torch.device
    dtype: torch.dtype
    backend: str
    body: dict
    lengths: Lengths
    small: dict
    small_lengths: Lengths
    results: dict = field(default_factory=dict)

    @classmethod
    def of(cls, tiny: bool) -> CacheRun:
        """The settings of the GPU run, or of --tiny (a toy body on the CPU, the torch backend)."""
        if tiny:
            body = dict(hidden=64, layers=2, heads=4, intermediate=128, vocab=128)
            lengths = Lengths(16, 16, 8, 16)
            return cls(torch.device("cpu"), torch.float32, "torch", body, lengths, body, lengths)
        fields = ("hidden", "layers", "heads", "intermediate", "vocab")
        body = {k: bench_e2e.PRESETS["llada8b"][k] for k in fields}  # 4096, 32, 32, 12288, 126464
        small = dict(hidden=256, layers=2, heads=4, intermediate=512, vocab=1024)
        lengths, small_lengths = Lengths(512, 256, 32, 256), Lengths(64, 64, 16, 64)
        return cls(torch.device("cuda"), torch.bfloat16, "auto", body, lengths, small, small_lengths)

    def model(self, body: dict, layers: int) -> mdfast.LLaDAModel:
        """A random native LLaDA body of ``body``'s widths with ``layers`` layers, seeded.

        ``bench_e2e.llada_pair``'s weights without its eager port (whose transformers import costs seconds):
        matrices N(0, 1/fan_in), the head N(0, 16/d) so that predictions are peaked enough for confident
        tokens, the embedding N(0, 1), norms 1.
        """
        config = LLaDAConfig.from_dict(bench_e2e.llada_config(dict(body, layers=layers)))
        model = mdfast.LLaDAModel(config, device=self.device, dtype=self.dtype).eval()
        generator = torch.Generator(self.device).manual_seed(0)
        with torch.no_grad():
            for name, weight in model.named_parameters():
                if weight.dim() == 1:
                    weight.fill_(1.0)
                elif name.endswith("wte.weight"):
                    weight.normal_(0.0, 1.0, generator=generator)
                else:
                    gain = 4.0 if name == "model.transformer.ff_out.weight" else 1.0
                    weight.normal_(0.0, gain / math.sqrt(weight.shape[1]), generator=generator)
        return model

    def prompt(self, vocab: int, lengths: Lengths) -> torch.Tensor:
        """Random prompt ids (1, P), above the special ids, seeded."""
        generator = torch.Generator().manual_seed(0)
        return torch.randint(bench_e2e.MASK + 1, vocab, (1, lengths.prompt), generator=generator).to(self.device)

    def generate(self, model, ids, lengths: Lengths, decoder: str, mode: str, steps: int | None = None, **kwargs):
        """One ``mdfast.generate`` call (B = 1) under ``torch.no_grad``; mode "none" is no cache."""
        cache = {} if mode == "none" else {"cache": mode}
        with torch.no_grad():
            return mdfast.generate(
                model,
                ids,
                max_new_tokens=lengths.new,
                steps=steps or lengths.steps,
                block_length=lengths.block,
                decoder=decoder,
                backend=self.backend,
                **cache,
                **kwargs,
            )

    def timed(self, call):
        """``call()`` and its seconds: between two CUDA events on a GPU (synchronised before, untimed), else wall."""
        if self.device.type != "cuda":
            start = time.perf_counter()
            out = call()
            return out, time.perf_counter() - start
        torch.cuda.synchronize(self.device)  # outside the timed region: nothing queued before the start event
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = call()
        end.record()
        end.synchronize()
        return out, start.elapsed_time(end) / 1e3  # elapsed_time: milliseconds


def check_exact(run: CacheRun, model, decoder: str) -> None:
    """``cache_refresh=1`` with dual and prefix gives no cache's tokens, bit for bit (AssertionError if not)."""
    ids = run.prompt(run.small["vocab"], run.small_lengths)
    want = run.generate(model, ids, run.small_lengths, decoder, "none").sequences
    for mode in ("dual", "prefix"):
        got = run.generate(model, ids, run.small_lengths, decoder, mode, cache_refresh=1).sequences
        differ = got != want
        if bool(differ.any()):
            eager = run.generate(model, ids, run.small_lengths, decoder, "none", cuda_graph=False).sequences
            where = differ.nonzero()[0].tolist()
            raise AssertionError(
                f"{decoder} {mode} cache_refresh=1: {int(differ.sum())} of {want.numel()} tokens differ from no "
                f"cache, the first at {where}; the eager no-cache call (cuda_graph=False) "
                f"{'equals' if torch.equal(eager, got) else 'differs from'} the cached one too"
            )
        print(f"  {decoder} {mode} cache_refresh=1: the {run.small_lengths.new} tokens of no cache")


def split_steps(calls: list[list[float]], lengths: Lengths, decoder: str, mode: str) -> dict:
    """Median ms per step over ``calls`` (each call's step seconds); with a cache also of refresh and cached steps.

    Without ``cache_refresh`` the fixed schedules refresh at each block's first step: step i of a call with
    i % (steps / blocks) == 0. The threshold rule's blocks end where the data say, so its steps are not split.
    """
    ms = [(i, 1e3 * s) for times in calls for i, s in enumerate(times)]
    out = {"step_ms": statistics.median(t for _, t in ms), "refresh_step_ms": None, "cached_step_ms": None}
    if mode != "none" and decoder != "threshold":
        per_block = lengths.steps // lengths.blocks
        refresh = [t for i, t in ms if i % per_block == 0]
        cached = [t for i, t in ms if i % per_block != 0]
        out["refresh_step_ms"] = statistics.median(refresh) if refresh else None
        out["cached_step_ms"] = statistics.median(cached) if cached else None
    return out


def probe(run: CacheRun, model, ids) -> dict[str, float]:
    """Ms of a refresh step and of a cached (dual) step: a dual call with 2 steps a block, after an untimed one."""
    lengths, steps = run.lengths, 2 * run.lengths.blocks
    run.generate(model, ids, lengths, "low_confidence", "dual", steps=steps)  # warm-up
    out = run.generate(model, ids, lengths, "low_confidence", "dual", steps=steps)
    ms = [1e3 * s for s in out.step_times]
    return {"refresh": statistics.median(ms[0::2]), "cached": statistics.median(ms[1::2])}


def call_seconds(step_ms: dict[str, float], lengths: Lengths, mode: str, steps: int) -> float:
    """Estimated seconds of one call of ``steps`` steps: refreshes (every step without a cache), cached steps."""
    refreshes = steps if mode == "none" else lengths.blocks
    return (refreshes * step_ms["none"] + (steps - refreshes) * step_ms[mode]) / 1e3 + CALL_S[mode]


def plan_runs(probe_ms: dict[str, float], lengths: Lengths, seconds: float, full: int) -> tuple[int, int, list[str]]:
    """The most layers (of ``full``, halving), then rounds (3, else 2), whose runs fit in ``seconds``; the lines.

    ``probe_ms``: "refresh" and "cached" (dual) ms per step with all ``full`` layers. A step with l layers
    costs (0.1 + 0.9 l / full) of it; a prefix step interpolates between the two by S's mean width (block j's
    S is N - j n wide); each call adds ``CALL_S``. The warm-ups run 2 steps a block; each round runs every
    setting of ``SETTINGS`` once. At one layer the answer is 2 rounds whatever the estimate.
    """
    n, L, N = lengths.block, lengths.length, lengths.new
    mean_width = N - n * (lengths.blocks - 1) / 2
    lines, layers = [], full
    while True:
        scale = 0.1 + 0.9 * layers / full
        refresh, cached = probe_ms["refresh"] * scale, probe_ms["cached"] * scale
        step_ms = {"none": refresh, "dual": cached, "prefix": cached + (refresh - cached) * (mean_width - n) / (L - n)}
        # threshold's warm-up runs its whole call: its steps bound nothing
        warm_up = sum(call_seconds(step_ms, lengths, m, warm_up_steps(d, lengths)) for d, m in SETTINGS)
        one_round = sum(call_seconds(step_ms, lengths, m, lengths.steps) for _, m in SETTINGS)
        for rounds in (3, 2):
            estimate = warm_up + rounds * one_round
            lines.append(f"{layers} layers, {rounds} rounds: about {estimate:.0f} s (left: {seconds:.0f} s)")
            if estimate <= seconds:
                return layers, rounds, lines
        if layers == 1:
            return 1, 2, lines
        layers = max(1, layers // 2)


def warm_up_steps(decoder: str, lengths: Lengths) -> int:
    """Steps of a warm-up call: 2 a block (a refresh and a cached step); threshold's fill each block anyway."""
    return lengths.steps if decoder == "threshold" else 2 * lengths.blocks


def measure(run: CacheRun, stage: Stage, model, ids, rounds: int, path: str | None) -> int:
    """Warm-ups, then ``rounds`` interleaved rounds of every setting (fewer if the deadline nears); the rounds run.

    After every round the rows so far go to ``<path>/cache.json`` (a stage stopped at its limit keeps them).
    """
    lengths = run.lengths
    for decoder, mode in SETTINGS:
        run.generate(model, ids, lengths, decoder, mode, steps=warm_up_steps(decoder, lengths))
    calls = {setting: [] for setting in SETTINGS}
    last, done = 0.0, 0
    for r in range(rounds):
        if r and stage.left() < 1.2 * last + 5:
            print(f"round {r + 1} not started: {stage.left():.0f} s left, a round took {last:.0f} s")
            break
        start = time.monotonic()
        for decoder, mode in SETTINGS:
            calls[(decoder, mode)].append(run.timed(lambda d=decoder, m=mode: run.generate(model, ids, lengths, d, m)))
        last = time.monotonic() - start
        print(f"round {r + 1}/{rounds}: {last:.1f} s", flush=True)
        run.results["runs"] = [summarize(d, m, calls[(d, m)], lengths) for d, m in SETTINGS]
        write_results(path, "cache", run.results)
        done += 1
    return done


def summarize(decoder: str, mode: str, calls: list, lengths: Lengths) -> dict:
    """One setting's row from its timed calls [(GenerateOutput, seconds)]: tokens/s, steps, nfe, graphed blocks."""
    seconds = [s for _, s in calls]
    steps = [out.step_times for out, _ in calls]
    last = calls[-1][0]
    row = dict(decoder=decoder, cache=mode, seconds=seconds, tokens_per_s=lengths.new / statistics.median(seconds))
    row.update(split_steps(steps, lengths, decoder, mode), nfe=last.nfe, graphed_blocks=last.graphed_blocks)
    return row


def format_row(row: dict, base: dict | None) -> str:
    """One row printed: tokens/s (and against no cache), ms per step (refresh / cached), nfe, graphed blocks."""
    text = f"{row['decoder']:>14} {row['cache']:>6}: {row['tokens_per_s']:8.1f} tokens/s"
    if base is not None and row is not base:
        text += f" ({row['tokens_per_s'] / base['tokens_per_s']:.2f}x none)"
    text += f", step {row['step_ms']:.2f} ms"
    if row["refresh_step_ms"] is not None:
        cached = row["cached_step_ms"]
        text += f" (refresh {row['refresh_step_ms']:.2f}, cached {'-' if cached is None else f'{cached:.2f}'})"
    return text + f", nfe {row['nfe']}, graphed_blocks {row['graphed_blocks']}, {len(row['seconds'])} calls"


def speedups(results: dict) -> dict[tuple[str, str], float]:
    """(decoder, mode) -> tokens/s over no cache's, for the decoders timed without a cache."""
    runs = {(r["decoder"], r["cache"]): r for r in results.get("runs", [])}
    out = {}
    for (decoder, mode), row in runs.items():
        base = runs.get((decoder, "none"))
        if base is not None and mode != "none":
            out[(decoder, mode)] = row["tokens_per_s"] / base["tokens_per_s"]
    return out


def key(results: dict) -> str:
    """The stage's key figure: layers, dual and prefix against no cache per decoder, threshold's nfe."""
    ratios = speedups(results)
    text = f"{results.get('layers')}/{results.get('full_layers')} layers"
    for decoder in ("xflow", "low_confidence"):
        if (decoder, "dual") in ratios:
            text += f"; {decoder} dual {ratios[(decoder, 'dual')]:.2f}x"
            text += f", prefix {ratios.get((decoder, 'prefix'), 0):.2f}x none"
    threshold = [r for r in results.get("runs", []) if r["decoder"] == "threshold"]
    if threshold:
        text += f"; threshold dual nfe {threshold[0]['nfe']}, {threshold[0]['tokens_per_s']:.0f} tokens/s"
    return text


def stage_cache(args) -> int:
    """SPEC 8's KV cache on the device: exactness at a small shape, then speed at LLaDA-8B widths (module doc)."""
    if not args.tiny and not torch.cuda.is_available():
        return skip("no CUDA device")
    stage = Stage("cache", args.budget)
    run = CacheRun.of(args.tiny)
    full, lengths = run.body["layers"], run.lengths
    run.results = {"full_layers": full, "lengths": asdict(lengths) | {"blocks": lengths.blocks}, "runs": []}
    run.results["device"] = torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "cpu"
    small = stage.case("the small body of the exactness check", lambda: run.model(run.small, run.small["layers"]))
    for decoder in ("low_confidence", "xflow") if small is not None else ():
        label = f"{decoder}: cache_refresh=1 == no cache (dual, prefix)"
        stage.case(label, lambda d=decoder, m=small: check_exact(run, m, d))
    del small
    b = run.body
    print(f"LLaDA body: {b['hidden']} wide, {b['heads']} heads, MLP {b['intermediate']}, V {b['vocab']}, {run.dtype}")
    print(f"B = 1, prompt {lengths.prompt} + {lengths.new} new, block {lengths.block}, {lengths.steps} steps")
    model = stage.case(f"the body with all {full} layers", lambda: run.model(run.body, full))
    ids = run.prompt(b["vocab"], lengths)
    probe_ms = None
    if model is not None:
        probe_ms = stage.case("probe: a refresh step and a dual step", lambda: probe(run, model, ids))
    if probe_ms is None:
        return stage.finish()
    print(f"  {full} layers: refresh step {probe_ms['refresh']:.2f} ms, dual step {probe_ms['cached']:.2f} ms")
    spent = time.monotonic() - stage.started
    layers, rounds, lines = plan_runs(probe_ms, lengths, min(stage.left(), AIM_S - spent) - 3, full)
    print("\n".join(["layers and rounds from the time left:", *lines, f"timing {layers} of {full} layers"]))
    run.results.update(layers=layers, rounds=rounds, probe_ms=probe_ms)
    if layers != full:
        del model
        gc.collect()  # the calls' decoders may hold the body in reference cycles
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        model = stage.case(f"the body with {layers} layers", lambda: run.model(run.body, layers))
        if model is None:
            return stage.finish()
    measured = stage.case(
        f"{len(SETTINGS)} settings, up to {rounds} rounds",
        lambda: measure(run, stage, model, ids, rounds, args.results),
    )
    if measured is None and not run.results["runs"]:
        return stage.finish()
    base = {r["decoder"]: r for r in run.results["runs"] if r["cache"] == "none"}
    for row in run.results["runs"]:
        print(format_row(row, base.get(row["decoder"])))
    write_results(args.results, "cache", run.results)
    return stage.finish(key(run.results))
