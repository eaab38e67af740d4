"""A truncated or corrupted checkpoint, policy file or safetensors shard is a named error naming the file.

Never a bare library error (safetensors' "incomplete metadata" with no file named) and never a partial load:
``load_llada`` on a folder with a truncated shard, a garbage index or config, a missing shard (the shipped code
model's folder among them); ``StepPolicy.load`` on a truncated file; GRPO and MDLM resuming from a truncated
state file (the commands exit 1 with one line naming it).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import mdfast
import mdfast.cli
from mdfast import StepPolicy
from mdfast.atomic import CorruptFileError
from mdfast.code_model.shipped import SHIPPED_MODEL_DIR
from mdfast.models.llada import load_llada, save_llada
from mdfast.models.llada_checkpoint import INDEX_FILE

pytestmark = pytest.mark.usefixtures("one_thread")

from train_fixtures import tiny_llada  # noqa: E402


def cut(path, keep: float = 0.5) -> None:
    """Truncate ``path`` to ``keep`` of its bytes, as a kill in the middle of a plain write would."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def sharded(tmp_path):
    """A tiny LLaDA saved in several shards (folder, shard files)."""
    folder = tmp_path / "llada"
    save_llada(tiny_llada(), folder, max_shard_bytes=20_000)
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 2
    return folder, shards


@pytest.mark.parametrize("keep", [0.0, 0.001, 0.5, 0.999])
def test_a_truncated_shard_is_named(sharded, keep):
    folder, shards = sharded
    assert load_llada(folder, dtype=torch.float32) is not None
    cut(shards[1], keep)
    with pytest.raises(CorruptFileError, match=rf"{shards[1].name}: not a readable safetensors file") as caught:
        load_llada(folder)
    assert caught.value.path == str(shards[1])


def test_a_garbage_index_or_config_is_named(sharded):
    folder, _ = sharded
    index = folder / INDEX_FILE
    good = index.read_text()
    index.write_text(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match=rf"{INDEX_FILE}: not JSON"):
        load_llada(folder)
    index.write_text('{"metadata": {}}')
    with pytest.raises(CorruptFileError, match=rf"{INDEX_FILE}: no weight_map"):
        load_llada(folder)
    index.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptFileError, match=INDEX_FILE):
        load_llada(folder)
    index.write_text(good)
    config = folder / "config.json"
    cut(config)
    with pytest.raises(CorruptFileError, match=r"config\.json: not JSON"):
        load_llada(folder)


def test_a_missing_shard_is_named(sharded):
    folder, shards = sharded
    shards[-1].unlink()
    with pytest.raises(ValueError, match=rf"names shards that do not exist: .*{shards[-1].name}"):
        load_llada(folder)


def test_the_shipped_code_model_with_a_truncated_shard_names_it(tmp_path):
    folder = tmp_path / "code_model"
    shutil.copytree(SHIPPED_MODEL_DIR, folder)
    shard = next(folder.glob("model-*.safetensors"))
    cut(shard, 0.9)
    with pytest.raises(CorruptFileError, match=rf"{shard.name}: .*incomplete metadata.*truncated or corrupted"):
        mdfast.load_llada(folder)


def test_a_truncated_policy_file_is_named(tmp_path):
    path = tmp_path / "policy.safetensors"
    StepPolicy(8).save(path)
    assert StepPolicy.load(path).hidden == 8
    for keep in (0.9, 0.2, 0.0):
        cut(path, keep)
        with pytest.raises(CorruptFileError, match=r"policy\.safetensors: not a readable safetensors file"):
            StepPolicy.load(path)
    with pytest.raises(FileNotFoundError, match=r"other\.safetensors"):
        StepPolicy.load(tmp_path / "other.safetensors")


def test_grpo_resuming_from_a_truncated_state_names_it(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the GRPO run decodes with a tiny transformers BERT")
    from test_crash_resume import grpo_setup

    argv, _ = grpo_setup(tmp_path, max_steps=2)
    out = tmp_path / "run"
    assert mdfast.cli.main(["train", "grpo", *argv, "--output-dir", str(out)]) == 0
    state = out / "checkpoint-2" / "trainer_state.pt"
    cut(state)
    capsys.readouterr()
    assert mdfast.cli.main(["train", "grpo", *argv, "--output-dir", str(out), "--max-steps", "3", "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "CorruptFileError" in err and f"{state}: not a readable torch.save file" in err
    policy = out / "checkpoint-2" / "policy.safetensors"
    state.unlink()  # now checkpoint-1 is the latest complete one: a cut policy there is named too
    cut(out / "checkpoint-1" / "policy.safetensors")
    assert mdfast.cli.main(["train", "grpo", *argv, "--output-dir", str(out), "--max-steps", "3", "--resume"]) == 1
    assert f"{policy.parent.parent / 'checkpoint-1' / 'policy.safetensors'}: not a readable" in capsys.readouterr().err


def test_mdlm_resuming_from_a_truncated_state_names_it(tmp_path, monkeypatch, capsys):
    """A log line cut by a kill is dropped on resume; a cut state file is named (exit 1, one line)."""
    from test_crash_resume import MDLM_TINY, use_small_streams

    from mdfast.code_model import pretrain  # measured import cost: tokenizers, transformers

    use_small_streams(monkeypatch.setattr)
    argv = ["train", "mdlm", "--out", str(tmp_path), "--device", "cpu", "--quiet", "--steps", "3", *MDLM_TINY]
    assert mdfast.cli.main([*argv, "--stop-at", "1", "--log-every", "1"]) == 0
    log = tmp_path / pretrain.LOG_FILE
    log.write_text(log.read_text() + '{"step": 2, "lo')  # the interrupted run's last line, cut by the kill
    assert mdfast.cli.main([*argv, "--resume"]) == 0
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()][-1] == 3
    state = tmp_path / pretrain.STATE_FILE
    cut(state, 0.7)
    capsys.readouterr()
    assert mdfast.cli.main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mdfast train mdlm: error: CorruptFileError: ") and str(state) in err
