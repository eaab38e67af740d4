"""mdfast: fast decoding for masked diffusion language models.

Fused token statistics over huge logits rows and the x-prediction flow step (SPEC.md), with
Triton, CUDA, C++ and pure-PyTorch backends behind one dispatch point (``mdfast.ops``); the
decoding loop (``generate``, ``infill``) and ``patch`` to install it on a model.
"""

from importlib.metadata import PackageNotFoundError, version

from .config import FlowConfig
from .decode import DecodeOptions, GenerateOutput, generate, generate_with_options, infill, infill_with_options
from .models.llada import LLaDAModel, load_llada, save_llada
from .ops import TokenStats, XFlowStep, token_stats, xflow_step
from .patching import patch, unpatch
from .policy import StepPolicy

try:  # the one version is pyproject.toml's, read from the installed package's metadata
    __version__ = version("mdfast")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "DecodeOptions",
    "FlowConfig",
    "GenerateOutput",
    "LLaDAModel",
    "StepPolicy",
    "TokenStats",
    "XFlowStep",
    "__version__",
    "generate",
    "generate_with_options",
    "infill",
    "infill_with_options",
    "load_llada",
    "patch",
    "save_llada",
    "token_stats",
    "unpatch",
    "xflow_step",
]
