"""Triton kernels of mdfast (installed as ``mdfast.triton_kernels``), one file per concern.

- ``token_stats``, ``xflow_step``, ``rmsnorm``, ``rope``, ``swiglu``: each op's kernels and launcher;
- ``row_stats``, ``topk``: the statistics pass of one row that both ``token_stats`` and the step run;
- ``stats_launch``, ``step_launch``: how the statistics pass and the step's kernels are tuned;
- ``step_kernel``, ``step_policy``, ``action_kernel``, ``commit_update``: the step's kernels and pieces;
- ``workspace``: one allocation for every tensor a launcher writes.
"""
