"""The sequencing of ``mdfast.decode.graphs.StepGraph`` on the CPU, with torch's CUDA-graph API
replaced by a stand-in whose capture records the step without running it and whose replay runs
it: every call runs exactly one step (warm-up, capture + replay, replays), a call captures once
whatever its blocks, and a step that synchronises during warm-up, or a capture that fails, falls
back to eager steps once, remembered for the model (``graphs.capture_failure``). The real capture
is tested in test_gpu.py."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from mdfast.decode import graphs


class FakeCuda:
    """What StepGraph uses of torch.cuda. ``sync_in_warm_up`` / ``fail_capture`` make the
    warm-up step raise as sync-debug mode "error" does, or the capture itself fail."""

    def __init__(self, sync_in_warm_up=False, fail_capture=False):
        self.capturing = None  # the FakeGraph being captured
        self.sync_mode = 0
        self.sync_in_warm_up, self.fail_capture = sync_in_warm_up, fail_capture
        self.captures = 0

    def install(self, monkeypatch):
        stream = SimpleNamespace(wait_stream=lambda other: None)
        fake = self

        class FakeGraph:
            def __init__(self):
                self.steps = []

            def replay(self):
                for step in self.steps:
                    step()

        @contextlib.contextmanager
        def graph(g, pool=None, stream=None, capture_error_mode="global"):
            assert capture_error_mode == "thread_local", "captures must not affect other threads"
            fake.captures += 1
            fake.capturing = g
            try:
                yield
            finally:
                fake.capturing = None
            if fake.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")

        for name, value in {
            "Stream": lambda: stream,
            "current_stream": lambda: stream,
            "stream": lambda s: contextlib.nullcontext(),
            "get_sync_debug_mode": lambda: fake.sync_mode,
            "set_sync_debug_mode": lambda mode: setattr(fake, "sync_mode", mode),
            "CUDAGraph": FakeGraph,
            "graph": graph,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def wrap(self, step):
        """``step`` recorded (not run) under capture, failing in warm-up when asked to."""

        def run():
            if self.capturing is not None:
                self.capturing.steps.append(step)
                return
            if self.sync_in_warm_up and self.sync_mode == "error":
                raise RuntimeError("called a synchronizing CUDA operation")
            step()

        return run

    def step_function(self, log: list):
        """A step that appends to ``log`` when it runs."""
        return self.wrap(lambda: log.append(len(log)))


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_every_call_runs_one_step(monkeypatch, steps):
    fake = FakeCuda()
    fake.install(monkeypatch)
    log = []
    runner = graphs.StepGraph(fake.step_function(log), torch.nn.Identity(), enabled=True, max_steps=steps)
    replayed = [runner() for _ in range(steps)]
    assert log == list(range(steps)), f"steps run {log}"
    captured = steps >= graphs.MIN_STEPS
    assert fake.captures == int(captured)
    assert replayed == [False] + [captured] * (steps - 1), "every step after the warm-up is a replay"


@pytest.mark.parametrize(
    "failure, captures, message",
    [({"sync_in_warm_up": True}, 0, "synchronizing"), ({"fail_capture": True}, 1, "not permitted")],
    ids=["synchronising_step", "failed_capture"],
)
def test_a_step_that_cannot_be_captured_falls_back(monkeypatch, failure, captures, message):
    """A step that synchronises fails in warm-up, before any capture; a capture that fails anyway
    falls back the same way: every step still runs once, one warning, remembered for the model."""
    fake = FakeCuda(**failure)
    fake.install(monkeypatch)
    model = torch.nn.Identity()
    log = []
    runner = graphs.StepGraph(fake.step_function(log), model, enabled=True, max_steps=6)
    with pytest.warns(RuntimeWarning, match=f"cannot be captured in a CUDA graph.*{message}"):
        replayed = [runner() for _ in range(6)]
    assert log == list(range(6)) and fake.captures == captures and not any(replayed)
    assert fake.sync_mode == 0, "sync debug mode restored"
    assert message in graphs.capture_failure(model)
    assert not graphs.StepGraph(lambda: None, model, enabled=True, max_steps=6).enabled, "the model is remembered"
    assert graphs.StepGraph(lambda: None, torch.nn.Identity(), enabled=True, max_steps=6).enabled, "only that model"


def test_a_real_error_in_warm_up_is_raised(monkeypatch):
    """A warm-up step that fails for another reason fails again when run eagerly: it propagates."""
    FakeCuda().install(monkeypatch)

    def broken():
        raise RuntimeError("CUDA out of memory")

    runner = graphs.StepGraph(broken, torch.nn.Identity(), enabled=True, max_steps=4)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="out of memory"):
        runner()


@pytest.mark.parametrize("decoder", ["xflow", "low_confidence", "threshold", "factor"])
def test_one_capture_replays_every_block(monkeypatch, decoder):
    """A real decoding call (a tiny BERT, an interior span and a suffix, blocks of 4, rows with
    different numbers of masks) run through StepGraph with the stand-in: one capture for the whole
    call, the captured step replayed across every block of every row, the same tokens as eager
    steps, and graphed_blocks counting the blocks that ran replayed steps."""
    transformers = pytest.importorskip("transformers", reason="builds a tiny BERT from transformers classes")
    from mdfast.decode.loop import DECODERS, _run, _Step
    from mdfast.decode.schedule import Schedule
    from mdfast.models import adapt, release

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = transformers.BertForMaskedLM(config).eval()
    ids = torch.randint(5, 64, (2, 16))
    ids[0, 2:6] = ids[0, 10:16] = 4  # 10 masks: blocks of 4, 4, 2
    ids[1, 12:16] = 4  # 4 masks: one block

    def decode(graphed: bool):
        adapter = adapt(model, 4)
        try:
            schedule = Schedule(ids == 4, 6, 4)
            dec = DECODERS[decoder](adapter, schedule, backend="auto", generator=None, temperature=0.0)
            fake = FakeCuda()
            if graphed:
                fake.install(monkeypatch)
            step = _Step(adapter, dec, ids, None)
            graph = graphs.StepGraph(fake.wrap(step), model, enabled=graphed, max_steps=dec.max_steps)
            nfe, _, _, graphed_blocks = _run(dec, graph, return_history=False, progress=False)
            monkeypatch.undo()
            return dec.tokens().clone(), nfe, graphed_blocks, fake.captures
        finally:
            release(adapter)

    eager_tokens, eager_nfe, eager_blocks, _ = decode(False)
    tokens, nfe, graphed_blocks, captures = decode(True)
    assert torch.equal(tokens, eager_tokens) and nfe == eager_nfe
    assert captures == 1 and eager_blocks == 0
    if decoder not in ("threshold", "factor"):  # 6 steps over blocks of 2, 2, 2 steps: the warm-up is block 0's first
        assert nfe == 6 and graphed_blocks == 3
    else:
        assert 1 <= graphed_blocks <= 3


@pytest.mark.parametrize("mode", ["dual", "prefix"])
def test_a_cached_call_captures_once_per_step_kind(monkeypatch, mode):
    """With a KV cache (a tiny native LLaDA, two rows with different masks): one capture for the refresh
    step and one per cached width, each replayed only at steps whose host plan names its kind; the
    mixed steps (rows refreshing apart) eager; the tokens of eager steps."""
    from test_llada import tiny_llada

    from mdfast.decode.cache import CachedForward
    from mdfast.decode.loop import DECODERS, _run, _Step
    from mdfast.decode.schedule import Schedule
    from mdfast.models import adapt, release

    torch.manual_seed(0)
    model = tiny_llada().double()
    ids = torch.randint(0, 48, (2, 16))
    ids[0, 6:16] = 49  # 10 masks: blocks of 4, 4, 2
    ids[1, 12:16] = 49  # 4 masks: one block

    def decode(graphed: bool):
        adapter = adapt(model)
        try:
            schedule = Schedule(ids == 49, 8, 4)
            dec = DECODERS["low_confidence"](adapter, schedule, backend="auto", generator=None, temperature=0.0)
            cached = CachedForward(adapter, schedule, mode, None, None)
            step = _Step(adapter, dec, ids, None, None, cached)
            fake, captured = FakeCuda(), []
            if graphed:
                fake.install(monkeypatch)

            def run():  # under capture, record the kind; a replay checks the step's kind is the captured one
                if fake.capturing is None:
                    return step()
                kind = cached.kind()
                captured.append(kind)

                def replay():
                    assert cached.kind() == kind, f"a graph of {kind} replayed at a {cached.kind()} step"
                    step()

                fake.capturing.steps.append(replay)

            runner = graphs.StepGraphs(run, model, graphed, dec.max_steps, cached.kind)
            nfe, _, _, graphed_blocks = _run(dec, runner, False, False, cached.plan)
            monkeypatch.undo()
            return dec.tokens().clone(), nfe, graphed_blocks, captured, runner
        finally:
            release(adapter)

    eager_tokens, eager_nfe, _, _, _ = decode(False)
    tokens, nfe, graphed_blocks, captured, runner = decode(True)
    assert torch.equal(tokens, eager_tokens) and nfe == eager_nfe == 8
    assert len(captured) == len(set(captured)), f"one capture per kind, got {captured}"
    assert ("refresh",) in runner.graphs and any(k[0] == "cached" for k in captured), captured
    assert None not in runner.graphs, "mixed steps run eagerly"
    assert graphed_blocks >= 2
