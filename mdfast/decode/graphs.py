"""Whole-step CUDA graphs: one decoding step (inputs, forward, decoder step) captured once per call, replayed.

Every step of a call runs the same kernels on the same tensors: the inputs buffer, the decoder's
per-slot state, and the device step counter from which a step reads everything that changes from
step to step (each row's current block and its positions, rho for x-flow, the number of tokens to
commit; ``schedule.py``). So one graph serves every step of every block of the call, whatever the
shape (batch, sequence length, block length): the first step runs eagerly (the warm-up: it
compiles kernels and creates library handles), the second is captured, and every later step is a
single ``graph.replay()``: no host work per step beyond the replay, and one capture (with its
device synchronisation and allocator flush) per call. Warm-up and capture run on one stream of
their own; the graph and its memory pool live as long as the call. With a KV cache a call has
several step kinds (the refresh, and the cached step of each width S): ``StepGraphs`` keeps one
``StepGraph`` per kind, each warmed up, captured and replayed on its own, and runs a step whose
kind is None (a mixed refresh, rows apart) eagerly.

A step that reads a tensor back to the host (some transformers attention-mask helpers do) cannot
be captured. The warm-up step runs with ``torch.cuda.set_sync_debug_mode("error")``, so such a
step fails there, before any capture, and runs again eagerly; the graph code remembers why for
that model (``capture_failure(model)``, a weak-keyed map: the memory goes with the model) and later
calls do not try again, with a single warning. A warm-up that fails can only have failed in the
forward (the decoder side never synchronises on the kernel backends, and ``Decoder.capturable``
excludes the torch backend), and everything a step writes before its forward is the same when
written twice, so running the step again changes nothing twice. A capture that fails anyway falls
back the same way.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Hashable

import torch
from torch import nn

# A call's step is captured only when it may run at least this many times: one eager warm-up,
# then the captured step replayed at least twice.
MIN_STEPS = 3

_failures: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def capture_failure(model: nn.Module) -> str | None:
    """Why a decoding step of ``model`` could not be captured in a CUDA graph, once that happened; else None.

    ``model``: the module whose forward mdfast drives (the model itself, or the native body a LLaDA
    remote-code model is driven through).
    """
    return _failures.get(model)


class StepGraph:
    """Runs the steps of one call, replaying a captured CUDA graph of ``step`` where it may.

    It may when ``enabled``, ``model`` never failed a capture, and the call may take
    ``max_steps >= MIN_STEPS`` steps.
    """

    def __init__(self, step: Callable[[], None], model: nn.Module, enabled: bool, max_steps: int) -> None:
        self.step, self.model = step, model
        self.enabled = enabled and model not in _failures and max_steps >= MIN_STEPS
        self.stream = torch.cuda.Stream() if self.enabled else None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.done = 0

    def __call__(self) -> bool:
        """Run one step; True when it ran as a replay of the graph."""
        replayed = False
        if self.graph is not None:
            self.graph.replay()
            replayed = True
        elif self.enabled and self.done == 0:
            self._warm_up()
        elif self.enabled and self.done == 1:
            self.graph = self._capture()
            if self.graph is None:
                self.step()
            else:
                self.graph.replay()
                replayed = True
        else:
            self.step()
        self.done += 1
        return replayed

    def _warm_up(self) -> None:
        """The call's first step, on the capture stream, with host synchronisation refused."""
        self.stream.wait_stream(torch.cuda.current_stream())
        failure = None
        previous = torch.cuda.get_sync_debug_mode()
        try:
            with torch.cuda.stream(self.stream):
                torch.cuda.set_sync_debug_mode("error")
                self.step()
        except RuntimeError as error:
            failure = error
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        torch.cuda.current_stream().wait_stream(self.stream)
        if failure is not None:
            self._give_up(failure)
            self.step()  # a real error (not a synchronisation) raises again here

    def _capture(self) -> torch.cuda.CUDAGraph | None:
        graph = torch.cuda.CUDAGraph()
        try:
            # the current stream comes back whatever capture does
            with (
                torch.cuda.stream(self.stream),
                torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"),
            ):
                self.step()
        except Exception as error:
            self._give_up(error.__context__ or error)
            return None
        return graph

    def _give_up(self, error: BaseException) -> None:
        self.enabled = False
        _failures[self.model] = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"mdfast: the decoding step of {type(self.model).__name__} cannot be captured in a CUDA graph "
            f"({_failures[self.model]}); decoding eagerly",
            RuntimeWarning,
            stacklevel=4,
        )


class StepGraphs:
    """Runs the steps of one call with one ``StepGraph`` per step kind (a KV cache's refresh and cached steps).

    ``kind``: called on the host before each step, it names the step's kind (steps of one kind run
    the same kernels on the same tensors, so each kind is captured once); None (the default: one
    kind) for calls without a cache; a kind of None runs that step eagerly.
    """

    def __init__(
        self,
        step: Callable[[], None],
        model: nn.Module,
        enabled: bool,
        max_steps: int,
        kind: Callable[[], Hashable | None] | None = None,
    ) -> None:
        self.step, self.model, self.enabled, self.max_steps = step, model, enabled, max_steps
        self.kind = kind
        self.graphs: dict[Hashable, StepGraph] = {}

    def __call__(self) -> bool:
        """Run one step; True when it ran as a replay of a captured graph."""
        key = "step" if self.kind is None else self.kind()
        if key is None:
            self.step()
            return False
        if key not in self.graphs:
            self.graphs[key] = StepGraph(self.step, self.model, self.enabled, self.max_steps)
        return self.graphs[key]()
