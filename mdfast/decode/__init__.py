"""Decoding: the generic step loop (``loop.py``: ``infill`` and ``generate``), the layout and
schedules (``schedule.py``), CUDA-graph replay (``graphs.py``) and one file per decoder family."""

from .loop import DECODERS, GenerateOutput, generate, infill

__all__ = ["DECODERS", "GenerateOutput", "generate", "infill"]
