"""Files written whole or not at all, and files read back that name themselves when they are damaged.

A crash (a kill, a full disk, a power cut) while a checkpoint or an output file is written must leave the file
as it was before, never half written: every writer goes through ``atomic_write``, which writes a temporary file
in the same folder, flushes and fsyncs it, renames it over the target (``os.replace``, atomic on POSIX and
Windows) and fsyncs the folder where the OS allows, so the rename itself survives a power cut.

- ``atomic_write(path, mode)``: the context manager every helper below uses; ``atomic_path(path)`` for
  writers that take a file name (safetensors, tokenizers, numpy).
- ``atomic_write_text``, ``atomic_write_bytes``, ``atomic_torch_save``, ``atomic_save_safetensors``.
- ``remove_temporaries(folder)``: what a writer killed outright (SIGKILL) left behind, removed on resume;
  ``trim_jsonl(path, step)``: a JSON-lines log cut back to a resumed run's checkpoint.
- ``CorruptFileError``: a file that is truncated or corrupted when read back (a ValueError naming the file);
  ``checked_safe_open`` and ``checked_torch_load`` raise it instead of a bare library error.
A new file gets the permissions ``open`` would give it (0o666 less the umask); a replaced one keeps its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

__all__ = [
    "CorruptFileError",
    "atomic_path",
    "atomic_save_safetensors",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "checked_safe_open",
    "checked_torch_load",
    "fsync_folder",
    "remove_temporaries",
    "trim_jsonl",
]

_MODES = ("w", "wb")


class CorruptFileError(ValueError):
    """A file that cannot be read back whole: truncated by a crash, or not the kind of file expected.

    - path: the file; the message names it and what was wrong with it.
    """

    def __init__(self, path: str | os.PathLike, what: str) -> None:
        self.path = os.fspath(path)
        super().__init__(f"{self.path}: {what}; the file is truncated or corrupted (rewrite it, or delete it)")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_mode(path: Path) -> int:
    """The permission bits ``path`` keeps if it exists, else those ``open`` gives a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def fsync_folder(folder: str | os.PathLike) -> None:
    """fsync the folder ``folder`` so that a rename in it is durable (a no-op where the OS cannot open folders)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened; the rename is durable by itself there
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def remove_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder`` (``.<name>.<random>.tmp``); returns them.

    Only for a folder no other process writes to at the same time (a run's own output folder on resume).
    """
    folder = Path(folder)
    removed = [path for path in folder.glob(".*.tmp") if path.is_file()] if folder.is_dir() else []
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on a clean exit it is fsynced and renamed over ``path``.

    - path: the file to (re)place; its folder must exist.
    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    mode = _new_mode(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    temporary = Path(name)
    try:
        yield temporary
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    fsync_folder(target.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str = "utf-8") -> Iterator[IO]:
    """A file object to write ``path`` through: the file appears whole on a clean exit, or not at all.

    - path: the file to (re)place; its folder must exist.
    - mode: "w" (text, in ``encoding``) or "wb" (bytes).
    The data goes to a temporary file in the same folder, is flushed and fsynced, and replaces ``path``
    (``os.replace``); the folder is fsynced. On an exception ``path`` keeps its old content and the temporary
    file is removed.
    """
    if mode not in _MODES:
        raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
    with atomic_path(path) as temporary, open(temporary, mode, encoding=None if "b" in mode else encoding) as f:
        yield f
        f.flush()


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (``atomic_write``)."""
    with atomic_write(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``atomic_write``)."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def trim_jsonl(path: str | os.PathLike, through_step: int) -> None:
    """Keep the records of the JSON-lines log ``path`` whose "step" is at most ``through_step`` (none: kept).

    A resumed run logs the later steps again. A last line cut short by a kill is dropped; a broken line
    elsewhere is a ValueError naming the file and line. Rewritten atomically; a missing file stays missing.
    """
    path = Path(path)
    if not path.is_file():
        return
    lines, kept = path.read_text(encoding="utf-8").splitlines(), []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i + 1 < len(lines):
                raise ValueError(f"{path}: line {i + 1} is not JSON") from None
            break  # the last line, cut short
        if record.get("step", 0) <= through_step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (``atomic_write``)."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file(tensors, path, metadata)``, atomically (``atomic_write``)."""
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata=metadata))


@contextlib.contextmanager
def checked_safe_open(path: str | os.PathLike, framework: str = "pt", device: str = "cpu") -> Iterator[Any]:
    """``safetensors.safe_open``, with a damaged file (bad header, cut data) raised as ``CorruptFileError``.

    - path: the .safetensors file; a missing one raises FileNotFoundError naming it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    try:
        handle = safe_open(os.fspath(path), framework=framework, device=device)
    except SafetensorError as error:
        raise CorruptFileError(path, f"not a readable safetensors file ({error})") from None
    with handle as f:
        try:
            yield f
        except SafetensorError as error:
            raise CorruptFileError(path, f"a tensor cannot be read ({error})") from None


def checked_torch_load(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``torch.load(path, **kwargs)``, with a truncated or damaged file raised as ``CorruptFileError``.

    - path: the file ``torch.save`` wrote; a missing one raises FileNotFoundError naming it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{os.fspath(path)}: no such file")
    try:
        return torch.load(path, **kwargs)
    except (FileNotFoundError, PermissionError):
        raise
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError) as error:
        raise CorruptFileError(path, f"not a readable torch.save file ({type(error).__name__}: {error})") from None
