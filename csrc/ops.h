// The native operations of mdfast, one declaration per op. Each backend (cpu/, cuda/) defines the
// same functions; bindings.cpp exposes whichever one was compiled under the same Python names, so
// the Python glue (KernelBackend in mdfast/backends/__init__.py) is shared, with the Triton
// kernels too (mdfast/backends/triton.py: the same signatures). Semantics: SPEC.md sections 1 and
// 2, exactly as mdfast/reference.py evaluates them.
//
// mdfast/ops.py validates every argument (shapes, dtypes, devices, strides, ranges) before a call:
// the functions here trust their inputs and check nothing.
#pragma once

#include <ATen/ATen.h>  // not torch/extension.h: only bindings.cpp needs Python (faster builds)

#include <optional>
#include <vector>

namespace mdfast {

// SPEC 1 over logits (B, N, V) with stride(2) == 1 and any stride(0), stride(1);
// float32, bfloat16 or float16; 2 <= k <= min(8, V); V < 2^31 - 64 and B * N < 2^31.
// A row holding NaN or +inf, or only -inf, gets a non-finite lse; its other outputs are
// unspecified except that every id indexes the vocabulary.
// Returns {argmax (B,N) int64, topk_probs (B,N,k) f32, topk_ids (B,N,k) int64, lse (B,N) f32,
//          margin (B,N) f32, entropy_topk (B,N) f32, entropy_full (B,N) f32 or an empty tensor}.
std::vector<at::Tensor> token_stats(const at::Tensor& logits, int64_t k, bool full_entropy);

// The outputs of token_stats, allocated on logits' device in the order token_stats returns them.
struct TokenStatsTensors {
  at::Tensor argmax, topk_probs, topk_ids, lse, margin, entropy_topk, entropy_full;

  // The same outputs as raw pointers, what the kernels write (rows = B * N).
  struct Pointers {
    int64_t* argmax;      // (rows)
    float* topk_probs;    // (rows, k)
    int64_t* topk_ids;    // (rows, k)
    float* lse;           // (rows)
    float* margin;        // (rows)
    float* entropy_topk;  // (rows)
    float* entropy_full;  // (rows), or null without full entropy
  };

  TokenStatsTensors(const at::Tensor& logits, int64_t k, bool full_entropy) {
    const int64_t B = logits.size(0), N = logits.size(1);
    const auto f32 = logits.options().dtype(at::kFloat);
    const auto i64 = logits.options().dtype(at::kLong);
    argmax = at::empty({B, N}, i64);
    topk_probs = at::empty({B, N, k}, f32);
    topk_ids = at::empty({B, N, k}, i64);
    lse = at::empty({B, N}, f32);
    margin = at::empty({B, N}, f32);
    entropy_topk = at::empty({B, N}, f32);
    entropy_full = full_entropy ? at::empty({B, N}, f32) : at::empty({0}, f32);
  }

  Pointers pointers() const {
    return {argmax.data_ptr<int64_t>(), topk_probs.data_ptr<float>(), topk_ids.data_ptr<int64_t>(), lse.data_ptr<float>(),
            margin.data_ptr<float>(),   entropy_topk.data_ptr<float>(),
            entropy_full.numel() > 0 ? entropy_full.data_ptr<float>() : nullptr};
  }

  std::vector<at::Tensor> list() const {
    return {argmax, topk_probs, topk_ids, lse, margin, entropy_topk, entropy_full};
  }
};

// The scalar arguments of one x-flow step: mdfast.backends.StepScalars field by field (bindings.cpp
// converts one into the other by name).
struct StepScalars {
  double a_min, a_max;          // the range of the step size a; z = L ln 2 = ln(a_max / a_min) (SPEC 2.5)
  double reedit_margin;         // re-edit when c_i - t_i < -reedit_margin (SPEC 2.6)
  double commit_threshold;      // the hard commit picks among tokens with t_i < commit_threshold (SPEC 2.7)
  int64_t k;                    // the top-k width: the policy state is [p(1..k), H_k, margin, t, rho]
  int64_t kummer_terms;         // terms of Kummer's series, term_0 = 1 included (FlowConfig.kummer_terms)
  int64_t hidden;               // the step policy's hidden width d (0 without a policy)
  double kappa_min, kappa_max;  // the step policy's kappa range
};

// The statistics a step needs of each row, computed before it (mdfast.backends.GivenStats:
// sample=True, where mdfast.ops drew the actions from them), so that the step does not read the
// logits again: x_pred (B,N) int64, c = p(1) (B,N) f32, lse (B,N) f32, all contiguous.
struct GivenStats {
  at::Tensor tokens, confidence, lse;
};

// The packed step policy, one float32 vector (mdfast.backends.contract.PolicyLayout, the same layout):
//   [W1 (d, k+4) row-major, b1 (d), W2 (d, d) row-major, b2 (d), w_mu (d), w_kappa (d), b_mu, b_kappa]
struct PolicyView {
  int64_t d = 0, width = 0;  // hidden width, state width k + 4
  const float* W1 = nullptr;
  const float* b1 = nullptr;
  const float* W2 = nullptr;
  const float* b2 = nullptr;
  const float* w_mu = nullptr;
  const float* w_kappa = nullptr;
  const float* b_mu = nullptr;
  const float* b_kappa = nullptr;

  PolicyView() = default;
  PolicyView(const float* packed, int64_t hidden, int64_t k) : d(hidden), width(k + 4) {
    W1 = packed;
    b1 = W1 + d * width;
    W2 = b1 + d;
    b2 = W2 + d * d;
    w_mu = b2 + d;
    w_kappa = w_mu + d;
    b_mu = w_kappa + d;
    b_kappa = b_mu + 1;
  }
};

// The inputs of one x-flow step, mdfast.backends.StepInputs field by field (bindings.cpp converts
// one into the other by name):
//   logits (B,N,V) as for token_stats (not read when `given`); X, X_out (B,N,E) f32 contiguous;
//   t, t_out (B,N) f32 contiguous (X_out may alias X and t_out may alias t); embedding (V,E)
//   f32/bf16/f16 with stride(1) == 1; mask_embedding (E,) f32 contiguous; rho (B,) f32, read
//   through its stride; policy_weights: the packed policy (PolicyView) of width scalars.hidden
//   (<= 4096), or none; action (B,N) f32 contiguous, or none; given: the rows' statistics (then
//   `action` is given too), or none; bad: an int32 (1,) flag on the device, or none.
struct StepInputs {
  at::Tensor logits, X, t, embedding, mask_embedding, rho;
  std::optional<at::Tensor> policy_weights, action;
  std::optional<GivenStats> given;
  std::optional<at::Tensor> bad;
  at::Tensor X_out, t_out;
  StepScalars scalars;
};

// The outputs of one x-flow step, made alike by every backend: tokens, confidence and lse are
// `given`'s when there are given statistics, action is the given `action` when there is one; the
// rest is allocated on X's device (uninitialised: a backend writes every entry).
struct StepResult {
  at::Tensor tokens, confidence, action, reedited, committed, lse;

  explicit StepResult(const StepInputs& in) {
    const int64_t B = in.X.size(0), N = in.X.size(1);
    const auto f32 = in.X.options().dtype(at::kFloat);
    tokens = in.given ? in.given->tokens : at::empty({B, N}, in.X.options().dtype(at::kLong));
    confidence = in.given ? in.given->confidence : at::empty({B, N}, f32);
    lse = in.given ? in.given->lse : at::empty({B, N}, f32);
    action = in.action ? *in.action : at::empty({B, N}, f32);
    reedited = at::empty({B, N}, in.X.options().dtype(at::kBool));
    committed = at::empty({B}, in.X.options().dtype(at::kLong));
  }

  std::vector<at::Tensor> list() const { return {tokens, confidence, action, reedited, committed, lse}; }
};

// SPEC 2.2-2.7, one x-flow step, fused: statistics of every row (unless `given`), then the policy
// state, the action (given `action`, else the policy's Kummer mean, else the heuristic
// a_min^(1-c) a_max^c), re-edit or flow update, and the per-sequence hard commit.
// If `bad` is nonzero on entry, or any row's lse is not finite (NaN or +inf in the row, or the row
// all -inf), X_out and t_out are left unwritten, committed is -1 and `bad` (when given) is set;
// the caller raises. Returns {tokens (B,N) int64, confidence (B,N) f32, action (B,N) f32,
// reedited (B,N) bool, committed (B,) int64, lse (B,N) f32} (given tensors are returned as they are).
std::vector<at::Tensor> xflow_step(const StepInputs& inputs);

}  // namespace mdfast
