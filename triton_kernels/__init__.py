"""Triton kernels of mdfast, one file per operation (installed as ``mdfast.triton_kernels``)."""
