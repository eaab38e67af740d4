// Python bindings: the same names for the CPU build and the CUDA build (-DMDFAST_CUDA).
#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef MDFAST_CUDA
  m.attr("device_type") = "cuda";
#else
  m.attr("device_type") = "cpu";
#endif
  m.def("token_stats", &mdfast::token_stats, "SPEC 1 token statistics", py::arg("logits"), py::arg("k"),
        py::arg("full_entropy"));
  m.def("xflow_step", &mdfast::xflow_step, "SPEC 2 fused x-flow step", py::arg("logits"), py::arg("X"),
        py::arg("t"), py::arg("embedding"), py::arg("mask_embedding"), py::arg("rho"),
        py::arg("policy_weights"), py::arg("hidden"), py::arg("kappa_min"), py::arg("kappa_max"),
        py::arg("action"), py::arg("a_min"), py::arg("a_max"), py::arg("reedit_margin"),
        py::arg("commit_threshold"), py::arg("k"), py::arg("kummer_terms"), py::arg("X_out"),
        py::arg("t_out"));
}
