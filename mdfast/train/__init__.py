"""Training (SPEC 6 and the code model of SPEC 7): import the submodules, e.g. ``mdfast.train.align``."""
