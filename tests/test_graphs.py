"""The sequencing of ``mdfast.decode.graphs.StepGraphs`` on the CPU, with torch's CUDA-graph API
replaced by a stand-in whose capture records the step without running it and whose replay runs
it: every call runs exactly one step (warm-up, capture + replay, replays), blocks get a graph
each, and a step that synchronises during warm-up, or a capture that fails, falls back to eager
steps once, remembered on the adapter. The real capture is tested in test_gpu.py."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from mdfast.decode import graphs


class FakeCuda:
    """What StepGraphs uses of torch.cuda. ``sync_in_warm_up`` / ``fail_capture`` make the
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
            fake.captures += 1
            fake.capturing = g
            try:
                yield
            finally:
                fake.capturing = None
            if fake.fail_capture:
                raise RuntimeError("operation not permitted when stream is capturing")

        for name, value in {
            "graph_pool_handle": lambda: object(),
            "Stream": lambda: stream,
            "current_stream": lambda: stream,
            "stream": lambda s: contextlib.nullcontext(),
            "get_sync_debug_mode": lambda: fake.sync_mode,
            "set_sync_debug_mode": lambda mode: setattr(fake, "sync_mode", mode),
            "CUDAGraph": FakeGraph,
            "graph": graph,
        }.items():
            monkeypatch.setattr(torch.cuda, name, value)

    def step_function(self, log: list):
        """A step that appends to ``log`` when it runs (recorded, not run, under capture)."""

        def step():
            if self.capturing is not None:
                self.capturing.steps.append(step)
                return
            if self.sync_in_warm_up and self.sync_mode == "error":
                raise RuntimeError("called a synchronizing CUDA operation")
            log.append(len(log))

        return step


def adapter():
    return SimpleNamespace(capture_failure=None, model=torch.nn.Identity())


@pytest.mark.parametrize("steps", [1, 2, 3, 8])
def test_every_call_runs_one_step(monkeypatch, steps):
    fake = FakeCuda()
    fake.install(monkeypatch)
    runner = graphs.StepGraphs(adapter(), enabled=True)
    for block in range(3):
        log = []
        runner.start_block(fake.step_function(log), steps)
        for _ in range(steps):
            runner()
        assert log == list(range(steps)), f"block {block}: steps run {log}"
    captured = 3 if steps >= graphs.MIN_STEPS else 0
    assert runner.captured == fake.captures == captured


@pytest.mark.parametrize(
    "failure, captures, message",
    [({"sync_in_warm_up": True}, 0, "synchronizing"), ({"fail_capture": True}, 1, "not permitted")],
    ids=["synchronising_step", "failed_capture"],
)
def test_a_step_that_cannot_be_captured_falls_back(monkeypatch, failure, captures, message):
    """A step that synchronises fails in warm-up, before any capture; a capture that fails anyway
    falls back the same way: every step still runs once, one warning, remembered on the adapter."""
    fake = FakeCuda(**failure)
    fake.install(monkeypatch)
    model = adapter()
    runner = graphs.StepGraphs(model, enabled=True)
    log = []
    runner.start_block(fake.step_function(log), 6)
    with pytest.warns(RuntimeWarning, match=f"cannot be captured in a CUDA graph.*{message}"):
        for _ in range(6):
            runner()
    assert log == list(range(6)) and fake.captures == captures and runner.captured == 0
    assert fake.sync_mode == 0, "sync debug mode restored"
    assert message in model.capture_failure
    assert not graphs.StepGraphs(model, enabled=True).enabled, "the adapter remembers"


def test_a_real_error_in_warm_up_is_raised(monkeypatch):
    """A warm-up step that fails for another reason fails again when run eagerly: it propagates."""
    FakeCuda().install(monkeypatch)
    runner = graphs.StepGraphs(adapter(), enabled=True)

    def broken():
        raise RuntimeError("CUDA out of memory")

    runner.start_block(broken, 4)
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match="out of memory"):
        runner()
