"""Decoding: the public calls, their options, the step loop, and one file per decoder family.

- ``api.py``: ``generate``, ``infill`` and their ``*_with_options`` forms.
- ``options.py``: ``DecodeOptions`` (every check of a call's options) and the ``DECODERS`` table.
- ``loop.py``: the sync-free step loop; ``schedule.py``: the layout and schedules; ``graphs.py``:
  CUDA-graph replay.
"""

from .api import generate, generate_with_options, infill, infill_with_options
from .loop import GenerateOutput
from .options import DECODERS, DecodeOptions

__all__ = [
    "DECODERS",
    "DecodeOptions",
    "GenerateOutput",
    "generate",
    "generate_with_options",
    "infill",
    "infill_with_options",
]
