"""Where the shipped code model lives: its folder of weights, tokenizer and training record."""

from __future__ import annotations

from pathlib import Path

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "code_model"
