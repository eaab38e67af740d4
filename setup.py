"""Install mdfast.

``triton_kernels/`` and ``csrc/`` live at the top of the repository (one folder per concern) but
are installed inside the package as ``mdfast.triton_kernels`` and ``mdfast.csrc``: the top-level
name ``triton_kernels`` belongs to other projects. ``bench/`` (scripts) and ``tests/`` are not
installed.

The native extensions are compiled with ninja on first use and cached. ``MDFAST_BUILD_EXT=1``
compiles the CPU extension at install time instead (needs torch in the build environment, so
install with ``pip install --no-build-isolation``).
"""

import os
import runpy

from setuptools import find_packages, setup

package_dir = {
    "mdfast.triton_kernels": "triton_kernels",
    "mdfast.csrc": "csrc",
}
packages = [*find_packages(include=["mdfast", "mdfast.*"]), *package_dir]
package_data = {
    # the example policies (StepPolicy.example) and the code model's weights (mdfast eval code)
    "mdfast": ["data/policies/*.safetensors", "data/policies/*.json", "data/code_model/*"],
    "mdfast.csrc": ["*.h", "*.cpp", "*/*.h", "*/*.cpp", "*/*.cu", "*/*.cuh"],
    "mdfast.code_model": ["*.txt", "*.json"],
    "mdfast.harness.tasks": ["*.yaml"],  # the lm-eval tasks (--include_path mdfast/harness/tasks)
}

ext_modules, cmdclass = [], {}
if os.environ.get("MDFAST_BUILD_EXT", "0") == "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # The same sources and flags as the just-in-time build (one place states them).
    native = runpy.run_path(os.path.join("mdfast", "backends", "native.py"))
    cpu = native["CPU_EXTENSION"]
    ext_modules.append(
        CppExtension(
            "mdfast._cpu_ext",
            sources=[os.path.join("csrc", s) for s in cpu.sources],
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args=list(cpu.cflags),
            extra_link_args=list(cpu.ldflags),
        )
    )
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(
    packages=packages,
    package_dir=package_dir,
    package_data=package_data,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
