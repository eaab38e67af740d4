"""Decoding: the generic step loop (``loop.py``) and one file per decoder family."""

from .loop import DECODERS, GenerateOutput, generate

__all__ = ["DECODERS", "GenerateOutput", "generate"]
