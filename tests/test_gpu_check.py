"""The logic of the GPU check that its CPU run (``bash bench/gpu_check.sh --tiny``, in CI) does not
reach: the float64 reference evaluated in chunks on the inputs' device (tests/checks.py), the layer
count of the end-to-end stage and of the cache stage (with its refresh / cached step split), the
targets table, and the pieces of ``mdfast.benchmark`` that decide what a row says (the timer on the
CPU, dynamo's fallback detection)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from checks import assert_bitwise_equal, make_state, random_policy, reference_step, reference_token_stats

import mdfast
from mdfast import benchmark, reference

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import gpu_check  # bench/ is no package: its folder goes on the path first


@pytest.mark.parametrize("shape", [(3, 14, 1013), (2, 3, 4, 517), (517,)])
def test_chunked_reference_equals_the_whole(shape):
    """Chunks of a few rows of strided views give the very values of one evaluation of the whole."""
    wide = torch.randn(*shape[:-1], shape[-1] + 5) * 3
    logits = wide[..., 1 : shape[-1] + 1]  # strided rows, offset one element
    whole = reference.token_stats(logits.double(), 4, True)
    chunked = reference_token_stats(logits, 4, True, on_device=True, chunk_elements=3 * shape[-1])
    for name, value in whole.items():
        assert_bitwise_equal(name, chunked[name], value)


def test_sequence_by_sequence_reference_equals_the_batch():
    logits, X, t, embedding, m = make_state(3, 11, 300, 8, device="cpu", logits_dtype=torch.bfloat16)
    policy = random_policy()
    rho = torch.rand(3)
    config = mdfast.FlowConfig()
    batch = reference_step(logits, X, t, embedding, m, policy, rho, config)
    one_by_one = reference_step(logits, X, t, embedding, m, policy, rho, config, on_device=True)
    for name in ("X", "t", "tokens", "confidence", "action", "reedited", "committed", "lse"):
        torch.testing.assert_close(one_by_one[name], batch[name], rtol=1e-15, atol=1e-15)
    action = torch.rand(3, 11)
    given = reference_step(logits, X, t, embedding, m, policy, rho, config, on_device=True, action=action)
    torch.testing.assert_close(given["action"], action.double())
    with pytest.raises(ValueError, match="pass the drawn action="):
        reference_step(logits, X, t, embedding, m, policy, rho, config, on_device=True, sample=True)


def test_planted_rows_and_misaligned_views():
    case = gpu_check.StatsCase("x", (2, 8, 301), "bfloat16", 4, True, misaligned=True, planted=True)
    logits = gpu_check.random_logits(case, "cpu", torch)
    assert logits.shape == (2, 8, 301) and logits.stride() == (8 * 306, 306, 1) and logits.storage_offset() == 1
    assert bool((logits != 0).float().mean() > 0.99), "random draws, not zeros"
    gpu_check.plant_ties(logits[0], torch)
    assert bool((logits[0, 0] == 1).all()) and int(torch.isfinite(logits[0, 2]).sum()) == 2
    assert int(torch.isfinite(logits[0, 3]).sum()) == 1 and bool((logits[0, 5, -7:] == 50).all())


FORWARDS = {"mdfast": 20.0, "eager": 24.0, "eager port": 30.0, "mdfast B=8": 150.0}


def test_layer_count_fits_the_time_left():
    full, lines = gpu_check.choose_layers(FORWARDS, 128, 1000.0, 32)
    assert full == 32 and len(lines) == 1
    fewer, lines = gpu_check.choose_layers(FORWARDS, 128, 40.0, 32)
    assert fewer < 32 and len(lines) > 1
    estimates = [float(line.split("about ")[1].split(" s")[0]) for line in lines]
    assert estimates == sorted(estimates, reverse=True) and (estimates[-1] <= 40 or fewer == 1)
    assert gpu_check.choose_layers(FORWARDS, 128, 0.0, 32)[0] == 1


CACHE_LENGTHS = gpu_check.Lengths(512, 256, 32, 256)
PROBE = {"refresh": 22.0, "cached": 5.0}


def test_cache_plan_fits_the_time_left():
    """All layers and 3 rounds when time allows; else 2 rounds, then halved layers; 1 layer at worst."""
    layers, rounds, lines = gpu_check.plan_runs(PROBE, CACHE_LENGTHS, 1000.0, 32)
    assert (layers, rounds, len(lines)) == (32, 3, 1)
    most = float(lines[0].split("about ")[1].split(" s")[0])
    layers, rounds, lines = gpu_check.plan_runs(PROBE, CACHE_LENGTHS, most - 1, 32)
    assert (layers, rounds, len(lines)) == (32, 2, 2)
    layers, rounds, lines = gpu_check.plan_runs(PROBE, CACHE_LENGTHS, 30.0, 32)
    estimates = [float(line.split("about ")[1].split(" s")[0]) for line in lines]
    assert layers < 32 and estimates[-1] <= 30 < min(estimates[:-1])
    assert estimates[0::2] == sorted(estimates[0::2], reverse=True)  # 3 rounds: fewer layers, less time
    assert gpu_check.plan_runs(PROBE, CACHE_LENGTHS, 0.0, 32)[:2] == (1, 2)


def test_cache_steps_split_into_refresh_and_cached():
    """Two calls of 4 steps over 2 blocks: steps 0 and 2 of each refresh; threshold and no cache are not split."""
    lengths = gpu_check.Lengths(4, 8, 4, 4)
    seconds = [[0.010, 0.001, 0.012, 0.002], [0.014, 0.003, 0.016, 0.004]]
    split = gpu_check.split_steps(seconds, lengths, "xflow", "dual")
    assert split == pytest.approx({"step_ms": 7.0, "refresh_step_ms": 13.0, "cached_step_ms": 2.5})
    for decoder, mode in (("threshold", "dual"), ("xflow", "none")):
        split = gpu_check.split_steps(seconds, lengths, decoder, mode)
        assert split["refresh_step_ms"] is None and split["cached_step_ms"] is None


def _row(op, shape, dtype, variant, backend, replayed_us, eager_us=None, copy_fraction=None, note=""):
    return dict(
        op=op,
        shape=shape,
        dtype=dtype,
        variant=variant,
        backend=backend,
        replayed_us=replayed_us,
        eager_us=eager_us or 2 * (replayed_us or 1.0),
        gb_per_s=1000.0,
        copy_fraction=copy_fraction,
        vs_torch=None,
        peak_extra_mib=None,
        note=note,
    )


def test_targets_from_stage_results():
    """Met / NOT MET from the figures, "not measured" where a stage measured nothing, the e2e
    results read back from JSON (whose keys are strings)."""
    bench = {
        "rows": [
            _row("token_stats", "1x512x126464x4096", "bfloat16", "k=4", "triton", 150.0, copy_fraction=0.7),
            _row("token_stats", "1x512x126464x4096", "float32", "k=4", "triton", 300.0, copy_fraction=0.5),
            _row("xflow_step", "1x512x126464x4096", "bfloat16", "heuristic", "triton", 120.0),
            _row("xflow_step", "8x512x126464x4096", "bfloat16", "heuristic", "triton", 1000.0),
            _row("xflow_step", "1x512x126464x4096", "bfloat16", "heuristic", "cuda", 200.0),
        ]
    }
    e2e = {
        "full_layers": 32,
        "layers": 32,
        "forwards": {32: {1: {"mdfast": {"replayed_ms": 18.0, "eager_ms": 19.5}}}},
        "runs": [
            dict(decoder="xflow", loop="mdfast", vs_eager=1.5, vs_port=1.4, replayed_step_ms=18.4),
            dict(decoder="xflow", loop="eager", vs_eager=1.0, vs_port=None, replayed_step_ms=None),
        ],
        "step_ms": {"layers": 32, "B1": 18.4, "big_batch": 8, "B_big": 140.0},
    }
    compiled = {
        "rows": [
            _row("xflow_step", "1x512x126464x4096", "bfloat16", "heuristic", "triton", 100.0, eager_us=150.0),
            _row("xflow_step", "1x512x126464x4096", "bfloat16", "heuristic", benchmark.COMPILED, None, 1500.0),
        ]
    }
    cache = {"layers": 16, "full_layers": 32, "runs": []}
    for decoder, none, prefix, dual in (("xflow", 30.0, 66.0, 95.0), ("low_confidence", 32.0, 60.0, 90.0)):
        for mode, tokens_per_s in (("none", none), ("prefix", prefix), ("dual", dual)):
            cache["runs"].append(dict(decoder=decoder, cache=mode, tokens_per_s=tokens_per_s))
    e2e, cache = json.loads(json.dumps(e2e)), json.loads(json.dumps(cache))
    found = {t.what: t for t in gpu_check.targets(bench, e2e, compiled, cache)}

    def verdict(what):
        return found[what].met

    assert verdict("triton statistics bfloat16 512 x 126464 >= 60% of copy bandwidth") == "met"
    assert verdict("triton statistics float32 512 x 126464 >= 75% of copy bandwidth") == "NOT MET"
    assert found["triton statistics bfloat16 2048 x 152064 >= 60% of copy bandwidth"].figure == "not measured"
    assert verdict("triton x-flow step B=1 N=512 E=4096 bf16 (heuristic) <= 150 us") == "met"
    assert verdict("triton x-flow step B=8 <= 8x B=1 (heuristic)") == "NOT MET"  # 8.33x
    assert verdict("CUDA within 2x of Triton: x-flow step B=1") == "met"  # 1.67x
    assert verdict("x-flow step B=1 >= 8x torch.compile (eager call latencies)") == "met"  # 10x
    assert verdict("end-to-end x-flow >= 1.3x the eager loop") == "met"
    assert verdict("<= 3% of the x-flow step outside the model") == "met"  # 1 - 18 / 18.4 = 2.2%
    assert verdict("native 8B forward (B=1, 640 tokens, 32 layers) <= 19 ms") == "met"
    assert verdict("x-flow step >= 1.5x the eager port") == "NOT MET"
    assert verdict("graph-replayed step B=8 <= 8.5x B=1") == "met"  # 140 / 18.4 = 7.6x
    shape = "no-cache tokens/s (8B widths, P 512 + 256)"
    assert verdict(f"x-flow dual cache >= 3x {shape}") == "met"  # 95 / 30 = 3.17x
    assert verdict(f"x-flow prefix cache >= 2x {shape}") == "met"  # 2.2x
    assert verdict(f"low-confidence dual cache >= 3x {shape}") == "NOT MET"  # 2.81x
    assert verdict(f"low-confidence prefix cache >= 2x {shape}") == "NOT MET"  # 1.88x
    assert "16/32 layers" in found[f"x-flow dual cache >= 3x {shape}"].figure
    table = gpu_check.format_targets(list(found.values()))
    assert table.count("\n") == len(found) + 1 and "not measured" in table

    nothing = gpu_check.targets(None, None, None)
    assert {t.figure for t in nothing} == {"not measured"} and len(nothing) == len(found)


def test_key_figures_name_the_headline_rows():
    rows = [
        benchmark.Row(**_row("xflow_step", "1x512x126464x4096", "bfloat16", "heuristic", "triton", 95.0, 180.0)),
        benchmark.Row(**_row("token_stats", "1x512x126464x4096", "bfloat16", "k=4", "triton", 60.0, None, 0.71)),
    ]
    assert (
        gpu_check.key_figures(rows) == "triton x-flow B=1 95 us replayed / 180 us eager; triton stats bf16 71% of copy"
    )


def test_cpu_timer_and_rows():
    timer = benchmark.Timer(torch.device("cpu"), warmup=1, repeat=3)
    calls = []
    timing = timer.time(lambda: calls.append(1))
    assert len(calls) == 1 + 3 and timing.replayed is None and timing.eager > 0
    cases = benchmark.step_cases(1, 4, 64, 8, torch.float32, torch.device("cpu"), ["torch"], ("heuristic",))
    rows = benchmark.measure(cases, timer, log=lambda line: None)
    assert [(r.op, r.backend) for r in rows] == [
        ("copy (of the input)", "torch"),
        ("token_stats", "torch"),
        ("xflow_step", "torch"),
    ]
    assert rows[1].vs_torch == 1.0 and rows[1].copy_fraction is not None
    table = benchmark.format_table(rows)
    assert table.splitlines()[0] == benchmark.HEADER and "| - |" in table


def test_probing_names_why_a_backend_cannot_run():
    assert benchmark.probe_backend("torch", torch.device("cpu")) is None
    assert "cuda" in benchmark.probe_backend("cuda", torch.device("cpu"))
    assert benchmark.default_backends(torch.device("cpu")) == ["torch", "cpu"]
    assert benchmark.default_backends(torch.device("cuda")) == ["torch", "triton", "cuda"]


def test_compile_watch_sees_dynamo_give_up():
    with benchmark.CompileWatch() as watch:
        logging.getLogger("torch._dynamo.convert_frame").warning(
            "torch._dynamo hit config.%s (%s)", "recompile_limit", 8
        )
    assert watch.gave_up
    with benchmark.CompileWatch() as quiet:
        logging.getLogger("torch._dynamo").warning("something else")
    assert not quiet.gave_up


def test_compiled_baseline_names_its_graph_breaks():
    """The reference's top_k breaks the graph on bool(tied.any()): the row says so, and where."""
    logits = torch.randn(2, 5, 300)
    call, note = benchmark.compiled_baseline(reference.token_stats, (logits, 4), backend="eager")
    assert "graph break" in note and "reference.py" in note, note
    assert torch.equal(call()["argmax"], reference.token_stats(logits, 4)["argmax"])
