// Python bindings: the same names for the CPU build and the CUDA build (-DMDFAST_CUDA), and the one
// place where Python's StepInputs, StepScalars and GivenStats (mdfast/backends/contract.py) become
// ops.h's.
#include <torch/extension.h>

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

template <typename T>
std::optional<T> optional(const py::handle& value) {
  if (value.is_none()) return std::nullopt;
  return value.cast<T>();
}

mdfast::StepInputs step_inputs(const py::handle& s) {
  const auto tensor = [&](const char* name) { return s.attr(name).cast<at::Tensor>(); };
  return {tensor("logits"),
          tensor("X"),
          tensor("t"),
          tensor("embedding"),
          tensor("mask_embedding"),
          tensor("rho"),
          optional<at::Tensor>(s.attr("policy_weights")),
          optional<at::Tensor>(s.attr("action")),
          given_stats(s.attr("given")),
          optional<at::Tensor>(s.attr("bad")),
          tensor("X_out"),
          tensor("t_out"),
          step_scalars(s.attr("scalars"))};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("token_stats", &mdfast::token_stats, "SPEC 1 token statistics", py::arg("logits"), py::arg("k"),
        py::arg("full_entropy"));
  m.def(
      "xflow_step", [](const py::object& inputs) { return mdfast::xflow_step(step_inputs(inputs)); },
      "SPEC 2 fused x-flow step", py::arg("inputs"));
}
