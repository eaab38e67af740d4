"""The public names of mdfast.train and mdfast.code_model: each imports, lazily, and a missing extra says which.

``import mdfast.train`` must stay cheap (no transformers.Trainer, accelerate or peft), a name whose extra is
missing must raise an ImportError naming ``pip install "mdfast[train]"`` when it is used and not before, the
moved modules keep their old paths for one release, and the verbs' parsers build without the training code.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import mdfast.code_model
import mdfast.train


def run_python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object, returned here."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("package", [mdfast.train, mdfast.code_model], ids=["train", "code_model"])
def test_every_public_name_imports(package):
    pytest.importorskip("accelerate", reason="the alignment trainer runs on accelerate (the `train` extra)")
    assert package.__all__ == sorted(set(package.__all__))
    for name in package.__all__:
        value = getattr(package, name)
        assert value is not None, name
        if inspect.isclass(value) or inspect.isfunction(value):  # defined in the package, listed where it lives
            assert value.__module__.startswith(package.__name__ + "."), (name, value.__module__)
        exec(f"from {package.__name__} import {name}", {})
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_the_names_are_the_modules_own():
    from mdfast.code_model import cases, pretrain
    from mdfast.train import align, grpo, policy_loss, rollouts

    assert mdfast.train.XPredAlignmentTrainer is align.XPredAlignmentTrainer
    assert mdfast.train.xpred_alignment_loss is align.xpred_alignment_loss
    assert mdfast.train.PolicyGRPOTrainer is grpo.PolicyGRPOTrainer
    assert mdfast.train.PolicyGRPOConfig is grpo.PolicyGRPOConfig
    assert mdfast.train.collect_rollouts is rollouts.collect_rollouts
    assert mdfast.train.policy_grpo_loss is policy_loss.policy_grpo_loss
    assert mdfast.code_model.code_infill_cases is cases.code_infill_cases
    assert mdfast.code_model.train is pretrain.train
    assert mdfast.code_model.mdlm_loss.mdlm_loss is not None  # the module: its name is its function's too


def test_importing_the_packages_loads_no_trainer():
    loaded = run_python(
        "import json, sys\n"
        "import mdfast.train, mdfast.code_model\n"
        "names = ('accelerate', 'peft', 'transformers.trainer', 'mdfast.train.align', 'mdfast.code_model.data')\n"
        "print(json.dumps([name for name in names if name in sys.modules]))"
    )
    assert loaded == []


def test_a_missing_extra_is_named_when_its_name_is_used():
    code = (
        "import json, sys\n"
        "sys.modules['accelerate'] = None; sys.modules['peft'] = None  # as if not installed\n"
        "import mdfast.train\n"
        "from mdfast.train import collect_rollouts, xpred_alignment_loss  # no extra needed\n"
        "try:\n"
        "    from mdfast.train import XPredAlignmentTrainer\n"
        "    message = None\n"
        "except ImportError as error:\n"
        "    message = str(error)\n"
        "print(json.dumps(message))"
    )
    message = run_python(code)
    assert message is not None and 'pip install "mdfast[train]"' in message and "accelerate" in message


def test_the_verbs_parsers_build_without_the_training_code():
    loaded = run_python(
        "import argparse, json, sys\n"
        "from mdfast.cli import data, train_align, train_mdlm\n"
        "subparsers = argparse.ArgumentParser().add_subparsers()\n"
        "for verb in (data, train_align, train_mdlm):\n"
        "    verb.add_parser(subparsers)\n"
        "names = ('transformers', 'mdfast.train.align', 'mdfast.code_model.pretrain', 'mdfast.code_model.data')\n"
        "print(json.dumps([name for name in names if name in sys.modules]))"
    )
    assert loaded == []
