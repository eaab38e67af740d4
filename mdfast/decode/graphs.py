"""Whole-step CUDA graphs: one block's step (inputs, forward, decoder step) captured once, replayed.

Within a block every step runs the same kernels on the same tensors: the inputs buffer, the
block's rows of the decoder state, and a device-side step counter from which the step reads its
schedule (rho for x-flow, the number of tokens to commit for the discrete decoders). So the
first step of a block runs eagerly (the warm-up: it compiles kernels and creates library
handles), the second is captured, and every later step of the block is a single
``graph.replay()``: no host work per step beyond the replay. Warm-up and capture run on one
stream of their own, and a block's graph is kept until the next block's capture has reused its
memory (all graphs of a call share one pool).

A step that reads a tensor back to the host (some transformers attention-mask helpers do) cannot
be captured. The warm-up step runs with ``torch.cuda.set_sync_debug_mode("error")``, so such a
step fails there, before any capture, and runs again eagerly; that model's adapter remembers why
(``ModelAdapter.capture_failure``) and later calls do not try again, with a single warning. A
warm-up that fails can only have failed in the forward (the decoder side never synchronises on
the kernel backends, and ``Decoder.graphable`` excludes the torch backend), so running the step
again changes nothing twice. A capture that fails anyway falls back the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ..models import ModelAdapter

# A block's step is captured only when it runs at least this many times: one eager warm-up,
# then the captured step replayed at least twice.
MIN_STEPS = 3


class StepGraphs:
    """Runs the steps of each block, replaying a captured CUDA graph when ``enabled``."""

    def __init__(self, adapter: ModelAdapter, enabled: bool) -> None:
        self.adapter = adapter
        self.enabled = enabled and adapter.capture_failure is None
        self.pool = torch.cuda.graph_pool_handle() if self.enabled else None
        self.stream = torch.cuda.Stream() if self.enabled else None
        self.captured = 0  # blocks whose step ran from a graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.retired: torch.cuda.CUDAGraph | None = None  # the previous block's, until the next capture

    def start_block(self, step: Callable[[], None], steps: int) -> None:
        """The next block's step function and its (maximum) number of steps."""
        self.step, self.done = step, 0
        self.retired, self.graph = self.graph or self.retired, None
        self.capture = self.enabled and steps >= MIN_STEPS

    def __call__(self) -> None:
        """Run one step of the current block."""
        if self.graph is not None:
            self.graph.replay()
        elif self.capture and self.done == 0:
            self._warm_up()
        elif self.capture and self.done == 1:
            self.graph = self._capture()
            if self.graph is None:
                self.step()
            else:
                self.retired = None
                self.captured += 1
                self.graph.replay()
        else:
            self.step()
        self.done += 1

    def _warm_up(self) -> None:
        """The block's first step, on the capture stream, with host synchronisation refused."""
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
                torch.cuda.graph(graph, pool=self.pool, stream=self.stream, capture_error_mode="thread_local"),
            ):
                self.step()
        except Exception as error:
            self._give_up(error.__context__ or error)
            return None
        return graph

    def _give_up(self, error: BaseException) -> None:
        self.enabled = self.capture = False
        self.adapter.capture_failure = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"mdfast: the decoding step of {type(self.adapter.model).__name__} cannot be captured in a CUDA graph "
            f"({self.adapter.capture_failure}); decoding eagerly",
            RuntimeWarning,
            stacklevel=4,
        )
