// Python bindings: the same names for the CPU build and the CUDA build (-DMDFAST_CUDA), and the one
// place where Python's StepScalars and GivenStats (mdfast/backends/__init__.py) become ops.h's.
#include "ops.h"

namespace {

mdfast::StepScalars step_scalars(const py::handle& s) {
  return {s.attr("a_min").cast<double>(),           s.attr("a_max").cast<double>(),
          s.attr("reedit_margin").cast<double>(),   s.attr("commit_threshold").cast<double>(),
          s.attr("k").cast<int64_t>(),              s.attr("kummer_terms").cast<int64_t>(),
          s.attr("hidden").cast<int64_t>(),         s.attr("kappa_min").cast<double>(),
          s.attr("kappa_max").cast<double>()};
}

std::optional<mdfast::GivenStats> given_stats(const py::handle& given) {
  if (given.is_none()) return std::nullopt;
  return mdfast::GivenStats{given.attr("tokens").cast<at::Tensor>(), given.attr("confidence").cast<at::Tensor>(),
                            given.attr("lse").cast<at::Tensor>()};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("token_stats", &mdfast::token_stats, "SPEC 1 token statistics", py::arg("logits"), py::arg("k"),
        py::arg("full_entropy"));
  m.def(
      "xflow_step",
      [](const at::Tensor& logits, const at::Tensor& X, const at::Tensor& t, const at::Tensor& embedding,
         const at::Tensor& mask_embedding, const at::Tensor& rho, const std::optional<at::Tensor>& policy_weights,
         const std::optional<at::Tensor>& action, const py::object& given, const std::optional<at::Tensor>& bad,
         at::Tensor& X_out, at::Tensor& t_out, const py::object& scalars) {
        return mdfast::xflow_step(logits, X, t, embedding, mask_embedding, rho, policy_weights, action,
                                  given_stats(given), bad, X_out, t_out, step_scalars(scalars));
      },
      "SPEC 2 fused x-flow step", py::arg("logits"), py::arg("X"), py::arg("t"), py::arg("embedding"),
      py::arg("mask_embedding"), py::arg("rho"), py::arg("policy_weights"), py::arg("action"), py::arg("given"),
      py::arg("bad"), py::arg("X_out"), py::arg("t_out"), py::arg("scalars"));
}
