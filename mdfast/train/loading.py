"""Deprecated alias of ``mdfast.train.records``, kept for one release (the model flags: ``mdfast.cli.model_args``)."""

from mdfast._aliases import alias_module

alias_module(__name__, "mdfast.train.records")
