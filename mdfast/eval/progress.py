"""The benchmarks' progress bar (tqdm, on stderr: done/total, elapsed<remaining, rate), or none."""

from __future__ import annotations


def progress_bar(total: int, description: str, unit: str, enabled: bool):
    """A tqdm bar over ``total`` items when ``enabled``, else None."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm  # optional extra: eval
    except ImportError:
        raise ImportError("progress=True needs tqdm: pip install 'mdfast[eval]'") from None
    return tqdm(total=total, unit=unit, desc=description, dynamic_ncols=True)
