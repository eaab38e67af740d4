"""mdfast: fast decoding for masked diffusion language models.

Fused token statistics over huge logits rows and the x-prediction flow step (SPEC.md), with
Triton, CUDA, C++ and pure-PyTorch backends behind one dispatch point (``mdfast.ops``).
"""

from .config import FlowConfig
from .decode import GenerateOutput, generate, infill
from .models.llada import LLaDAModel, load_llada, save_llada
from .ops import TokenStats, XFlowStep, token_stats, xflow_step
from .patching import patch, unpatch
from .policy import StepPolicy

__version__ = "0.1.0"

__all__ = [
    "FlowConfig",
    "GenerateOutput",
    "LLaDAModel",
    "StepPolicy",
    "TokenStats",
    "XFlowStep",
    "generate",
    "infill",
    "load_llada",
    "patch",
    "save_llada",
    "token_stats",
    "unpatch",
    "xflow_step",
]
