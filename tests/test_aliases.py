"""Moved import paths keep working for one release: the old module name is the new module, with a warning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MOVED = {
    "mdfast.train.code_data": "mdfast.code_model.data",
    "mdfast.train.code_cases": "mdfast.code_model.cases",
    "mdfast.train.mdlm": "mdfast.code_model.pretrain",
    "mdfast.train.mdlm_loss": "mdfast.code_model.mdlm_loss",
    "mdfast.train.loading": "mdfast.train.records",
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_is_the_new_module_and_warns(old):
    """In a fresh interpreter (an import warns once, when it first runs)."""
    new = MOVED[old]
    code = (
        "import importlib, warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        f"new = importlib.import_module({new!r})\n"
        "try:\n"
        f"    importlib.import_module({old!r})\n"
        "except DeprecationWarning as w:\n"
        "    print(w)\n"
        "warnings.simplefilter('ignore')\n"
        f"assert importlib.import_module({old!r}) is new\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f"{old} moved to {new}" in out


def test_policy_layout_still_imports_from_policy():
    contract = importlib.import_module("mdfast.backends.contract")
    from mdfast.policy import PolicyLayout

    assert PolicyLayout is contract.PolicyLayout
