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


@pytest.fixture
def one_thread():
    """One CPU thread (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny models run in milliseconds,
    and threads only wait on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
