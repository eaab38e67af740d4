"""Whole-step CUDA graphs: one block's step (inputs, forward, decoder step) captured once, replayed.

Within a block every step runs the same kernels on the same tensors: the inputs buffer, the
block's rows of the decoder state, and a device-side step counter from which the step reads its
schedule (rho for x-flow, the number of tokens to commit for the discrete decoders). So the
first step of a block runs eagerly (on a side stream: it is also the warm-up that compiles
kernels and creates library handles), the second is captured, and every later step of the block
is a single ``graph.replay()``: no host work per step beyond the replay. The block's graph is
dropped when the next block starts; all graphs share one memory pool.

A forward that cannot be captured (one that reads a tensor back to the host, as some
transformers attention-mask helpers do) makes the capture fail: a one-time warning says why and
the rest of the call runs eagerly. Nothing of a failed capture ran, so the state is untouched.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

# A block's step is captured only when it runs at least this many times: one eager warm-up,
# then the captured step replayed at least twice.
MIN_STEPS = 3


class StepGraphs:
    """Runs the steps of each block, replaying a captured CUDA graph when ``enabled``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.pool = torch.cuda.graph_pool_handle() if enabled else None
        self.captured = 0  # blocks whose step ran from a graph
        self.graph: torch.cuda.CUDAGraph | None = None

    def start_block(self, step: Callable[[], None], steps: int) -> None:
        """The next block's step function and its (maximum) number of steps."""
        self.step, self.graph, self.done = step, None, 0
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
                self.captured += 1
                self.graph.replay()
        else:
            self.step()
        self.done += 1

    def _warm_up(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> torch.cuda.CUDAGraph | None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self.step()
        except Exception as error:  # noqa: BLE001 - any capture failure means: decode eagerly
            self.enabled = self.capture = False
            warnings.warn(
                f"mdfast: the decoding step could not be captured in a CUDA graph ({type(error).__name__}: {error}); "
                "decoding eagerly",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return graph
