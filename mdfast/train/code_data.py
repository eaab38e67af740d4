"""Deprecated alias of ``mdfast.code_model.data``, kept for one release."""

from mdfast._aliases import alias_module

alias_module(__name__, "mdfast.code_model.data")
