"""Test session setup: offline hub, the Triton interpreter where there is no GPU, fresh seeds."""

import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

# Without a GPU the Triton kernels run under Triton's interpreter (on CPU tensors, small shapes).
# The variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different, reproducible seed per test: fresh inputs everywhere, replayable on failure."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
