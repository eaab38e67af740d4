"""mdfast.patch / mdfast.unpatch (mdfast/patching.py), the public names, and the import arrows.

The decoded tokens themselves are checked against eager loops in test_generate.py and
test_infill.py; here a patched model's methods must give exactly what the functions give.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from checks import tiny_bert

import mdfast
import mdfast.triton_kernels

transformers = pytest.importorskip("transformers", reason="the tests build tiny models from transformers classes")

MASK = 4
PACKAGE = Path(mdfast.__file__).parent
TRITON_KERNELS = Path(mdfast.triton_kernels.__file__).parent
README = PACKAGE.parent / "README.md"


def test_public_names():
    want = {
        "patch",
        "unpatch",
        "generate",
        "infill",
        "generate_with_options",
        "infill_with_options",
        "DecodeOptions",
        "load_llada",
        "save_llada",
        "LLaDAModel",
        "StepPolicy",
        "FlowConfig",
        "token_stats",
        "xflow_step",
        "TokenStats",
        "XFlowStep",
        "GenerateOutput",
        "__version__",
    }
    assert set(mdfast.__all__) == want
    assert not {name for name in want if not hasattr(mdfast, name)}
    assert mdfast.patch is mdfast.patching.patch and mdfast.unpatch is mdfast.patching.unpatch


def test_one_version_from_the_package_metadata():
    from importlib.metadata import version

    assert mdfast.__version__ == version("mdfast")
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert f'version = "{mdfast.__version__}"' in pyproject
    assert not re.search(r"__version__\s*=\s*['\"]\d+\.\d+", (PACKAGE / "__init__.py").read_text()), "no second copy"


def test_patch_installs_generate_and_infill():
    model = tiny_bert(1)
    assert mdfast.patch(model, mask_token_id=MASK) is model
    ids = torch.randint(5, 64, (2, 6))
    out = model.mdfast_generate(ids, max_new_tokens=8, steps=4, decoder="low_confidence")
    want = mdfast.generate(tiny_bert(1), ids, max_new_tokens=8, steps=4, decoder="low_confidence", mask_token_id=MASK)
    assert torch.equal(out.sequences, want.sequences)
    assert callable(model.mdfast_infill)


def test_patched_infill_is_mdfast_infill():
    model = mdfast.patch(tiny_bert(2), mask_token_id=MASK)
    ids = torch.randint(5, 64, (2, 12))
    ids[:, 3:6] = MASK
    ids[:, 9:11] = MASK
    out = model.mdfast_infill(ids, steps=5, decoder="low_confidence")
    want = mdfast.infill(tiny_bert(2), ids, steps=5, decoder="low_confidence", mask_token_id=MASK)
    assert torch.equal(out.sequences, want.sequences)
    assert torch.equal(out.sequences[ids != MASK], ids[ids != MASK])


def test_patch_passes_its_backend_and_a_call_overrides_it():
    model = mdfast.patch(tiny_bert(3), mask_token_id=MASK, backend="cuda")
    ids = torch.randint(5, 64, (1, 5))
    with pytest.raises(ValueError, match="backend='cuda' runs on cuda"):
        model.mdfast_generate(ids, max_new_tokens=4, steps=2, decoder="low_confidence")
    out = model.mdfast_generate(ids, max_new_tokens=4, steps=2, decoder="low_confidence", backend="torch")
    assert out.sequences.shape == (1, 9)


def test_patch_twice_with_the_same_arguments_returns_the_model_unchanged():
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    adapter, head, generate = model.mdfast_adapter, model.get_output_embeddings(), model.mdfast_generate
    assert mdfast.patch(model, mask_token_id=MASK) is model
    assert model.mdfast_adapter is adapter and model.mdfast_generate is generate
    assert model.get_output_embeddings() is head, "the head is not wrapped twice"
    model.config.mask_token_id = MASK  # None means the config's id
    assert mdfast.patch(model) is model and model.mdfast_adapter is adapter


def test_patch_twice_with_another_mask_id_or_backend_is_an_error():
    model = mdfast.patch(tiny_bert(), mask_token_id=MASK)
    adapter = model.mdfast_adapter
    with pytest.raises(ValueError, match=r"mask_token_id=4.*mask_token_id=9"):
        mdfast.patch(model, mask_token_id=9)
    model.config.mask_token_id = 7  # patch(model) would take the config's 7
    with pytest.raises(ValueError, match=r"mask_token_id=4.*mask_token_id=7"):
        mdfast.patch(model)
    with pytest.raises(ValueError, match=r"backend='auto'.*backend='torch'"):
        mdfast.patch(model, mask_token_id=MASK, backend="torch")
    assert model.mdfast_adapter is adapter and adapter.mask_token_id == MASK and model.mdfast_backend == "auto"
    mdfast.unpatch(model)
    assert mdfast.patch(model, mask_token_id=9, backend="torch").mdfast_adapter.mask_token_id == 9


def test_patch_names_a_bad_backend():
    model = tiny_bert()
    with pytest.raises(ValueError, match=r"backend: expected one of .*'auto'.*got 'gpu'"):
        mdfast.patch(model, mask_token_id=MASK, backend="gpu")
    assert not hasattr(model, "mdfast_adapter") and isinstance(model.get_output_embeddings(), torch.nn.Linear)


def test_unpatch_removes_everything_patch_installed():
    model = tiny_bert(4)
    head, keys, attributes = model.get_output_embeddings(), set(model.state_dict()), set(model.__dict__)
    ids = torch.randint(5, 64, (2, 9))
    before = model(input_ids=ids).logits
    mdfast.patch(model, mask_token_id=MASK)
    assert {"mdfast_adapter", "mdfast_backend", "mdfast_generate", "mdfast_infill"} <= set(model.__dict__)
    assert mdfast.unpatch(model) is model
    assert model.get_output_embeddings() is head
    assert set(model.__dict__) == attributes, "no attribute of patch is left behind"
    assert set(model.state_dict()) == keys
    assert torch.equal(model(input_ids=ids).logits, before)
    assert mdfast.unpatch(model) is model, "unpatching an unpatched model changes nothing"
    assert set(model.__dict__) == attributes


def test_readme_patch_example_runs():
    """The README's `mdfast.patch` example, run as written on a tiny model."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (example,) = [block for block in blocks if "mdfast.patch(" in block]
    model = tiny_bert(5, positions=272)
    names = {
        "mdfast": mdfast,
        "model": model,
        "mask_id": MASK,
        "input_ids": torch.randint(5, 64, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
        "eos": 3,
    }
    exec(compile(example, "README.md", "exec"), names)
    assert names["out"].sequences.shape[0] == 2 and names["out"].nfe > 0
    assert not hasattr(model, "mdfast_generate"), "the example ends with unpatch"
