"""mdfast.atomic: a write that fails midway leaves the old file and no temporary file; the result is whole.

Also the permissions a new file gets (those ``open`` gives) and keeps when replaced, the torch and safetensors
helpers, and the named errors of ``checked_torch_load`` / ``checked_safe_open`` on damaged files.
"""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from mdfast.atomic import (
    CorruptFileError,
    atomic_path,
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write,
    atomic_write_text,
    checked_safe_open,
    checked_torch_load,
    trim_jsonl,
)


class Boom(Exception):
    pass


def test_a_write_that_raises_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old\n")
    for mode, piece in (("w", "new " * 1000), ("wb", b"\x00" * 4096)):
        with pytest.raises(Boom), atomic_write(path, mode) as f:
            f.write(piece)
            f.flush()
            raise Boom
        assert path.read_text() == "old\n"
        assert sorted(os.listdir(tmp_path)) == ["out.json"], "the temporary file is removed"
    with pytest.raises(Boom), atomic_path(tmp_path / "new.bin") as temporary:
        temporary.write_bytes(b"half")
        raise Boom
    assert sorted(os.listdir(tmp_path)) == ["out.json"], "a file never written whole does not appear"


def test_the_result_is_complete_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    text = "".join(f"line {i}\n" for i in range(10_000))
    with atomic_write(path) as f:
        for line in text.splitlines(keepends=True):
            f.write(line)
        assert path.read_text() == "old\n", "nothing reaches the target before the context exits"
    assert path.read_text() == text
    atomic_write_text(tmp_path / "é.txt", "é ü\n")
    assert (tmp_path / "é.txt").read_text(encoding="utf-8") == "é ü\n"
    assert sorted(os.listdir(tmp_path)) == ["out.txt", "é.txt"]


def test_permissions_are_those_of_open_and_a_replaced_file_keeps_its_own(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        open(tmp_path / "plain.txt", "w").close()
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode)
    assert mode == stat.S_IMODE(os.stat(tmp_path / "plain.txt").st_mode) == 0o640
    os.chmod(tmp_path / "new.txt", 0o600)
    atomic_write_text(tmp_path / "new.txt", "y")
    assert stat.S_IMODE(os.stat(tmp_path / "new.txt").st_mode) == 0o600


def test_mode_is_checked():
    with pytest.raises(ValueError, match="mode: expected one of"), atomic_write("unused", "a"):
        pass


def test_torch_and_safetensors_files_round_trip(tmp_path):
    state = {"w": torch.randn(3, 4), "step": 7}
    atomic_torch_save(state, tmp_path / "state.pt")
    loaded = checked_torch_load(tmp_path / "state.pt", weights_only=True)
    assert loaded["step"] == 7 and torch.equal(loaded["w"], state["w"])
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.bfloat16)}
    atomic_save_safetensors(tensors, tmp_path / "t.safetensors", metadata={"format": "pt"})
    back = load_file(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert sorted(os.listdir(tmp_path)) == ["state.pt", "t.safetensors"]


@pytest.mark.parametrize("keep", [0, 10, 0.5, -5])
def test_a_cut_torch_file_is_a_named_error(tmp_path, keep):
    atomic_torch_save({"w": torch.randn(1000)}, tmp_path / "state.pt")
    data = (tmp_path / "state.pt").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    (tmp_path / "state.pt").write_bytes(data[:n])
    with pytest.raises(CorruptFileError, match=r"state\.pt: not a readable torch\.save file") as caught:
        checked_torch_load(tmp_path / "state.pt", weights_only=True)
    assert caught.value.path == str(tmp_path / "state.pt")
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        checked_torch_load(tmp_path / "missing.pt")


@pytest.mark.parametrize("keep", [4, 50, 0.5, -1])
def test_a_cut_safetensors_file_is_a_named_error(tmp_path, keep):
    atomic_save_safetensors({"a": torch.randn(100, 100)}, tmp_path / "t.safetensors")
    data = (tmp_path / "t.safetensors").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    (tmp_path / "t.safetensors").write_bytes(data[:n])
    expected = r"t\.safetensors: not a readable safetensors file"
    with pytest.raises(CorruptFileError, match=expected), checked_safe_open(tmp_path / "t.safetensors") as f:
        f.get_tensor("a")


def test_trim_jsonl(tmp_path):
    """A resumed run's log: records up to the step kept (and those without one), a cut last line dropped."""
    log = tmp_path / "log.jsonl"
    trim_jsonl(log, 3)
    assert not log.exists(), "a missing log stays missing"
    log.write_text('{"step": 1}\n{"note": "x"}\n{"step": 3}\n{"step": 4}\n{"step": 5, "lo')
    trim_jsonl(log, 3)
    assert log.read_text() == '{"step": 1}\n{"note": "x"}\n{"step": 3}\n'
    log.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl: line 2 is not JSON"):
        trim_jsonl(log, 3)
