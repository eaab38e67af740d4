"""Test session setup: offline hub, the Triton interpreter where there is no GPU, fresh seeds."""

import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

# Without a GPU the Triton kernels run under Triton's interpreter (on CPU tensors, small shapes).
# The variable must be set before triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Hypothesis profiles (the property tests, tests/test_properties*.py), chosen by HYPOTHESIS_PROFILE:
# "ci" (the default) draws the same few examples every run (derandomized: no database); "long"
# draws many, replays the examples saved in tests/hypothesis-db first and saves new failures there.
_HYPOTHESIS_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("ci", derandomize=True, max_examples=50, **_HYPOTHESIS_COMMON)
settings.register_profile(
    "long",
    max_examples=1000,
    database=DirectoryBasedExampleDatabase(os.path.join(os.path.dirname(__file__), "hypothesis-db")),
    **_HYPOTHESIS_COMMON,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
