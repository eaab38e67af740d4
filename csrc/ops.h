// The native operations of mdfast, one declaration per op. Each backend (cpu/, cuda/) defines the
// same functions; bindings.cpp exposes whichever one was compiled under the same Python names, so
// the Python glue (KernelBackend in mdfast/backends/__init__.py) is shared, with the Triton
// kernels too (same signatures). Semantics: SPEC.md sections 1 and 2, exactly as
// mdfast/reference.py evaluates them.
#pragma once

#include <torch/extension.h>

#include <optional>
#include <vector>

namespace mdfast {

// SPEC 1 over logits (B, N, V) with stride(2) == 1 and any stride(0), stride(1);
// float32, bfloat16 or float16. 2 <= k <= V and k <= 8 (mdfast.ops checks both).
// A row holding NaN or +inf, or only -inf, gets a non-finite lse; its other outputs are
// unspecified except that every id indexes the vocabulary.
// Returns {argmax (B,N) int64, topk_probs (B,N,k) f32, topk_ids (B,N,k) int64, lse (B,N) f32,
//          margin (B,N) f32, entropy_topk (B,N) f32, entropy_full (B,N) f32 or an empty tensor}.
std::vector<at::Tensor> token_stats(const at::Tensor& logits, int64_t k, bool full_entropy);

// What every token_stats checks and allocates: logits (B, N, V) with stride(2) == 1, 2 <= k <= 8,
// V >= k; the outputs on logits' device in the order token_stats returns them.
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
    TORCH_CHECK(logits.dim() == 3, "token_stats: logits must be (B, N, V), got ", logits.sizes());
    TORCH_CHECK(logits.stride(2) == 1, "token_stats: logits rows must be contiguous (stride(2) == 1)");
    TORCH_CHECK(2 <= k && k <= 8, "token_stats: need 2 <= k <= 8, got ", k);
    TORCH_CHECK(logits.size(2) >= k, "token_stats: need V >= k, got V = ", logits.size(2), ", k = ", k);
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

// SPEC 2.2-2.7, one x-flow step, fused: statistics of every row, then the policy state, the
// action (given `action`, else the policy's Kummer mean, else the heuristic), re-edit or flow
// update, and the per-sequence hard commit.
//   logits (B,N,V) stride(2)==1; X, X_out (B,N,E) f32 contiguous; t, t_out (B,N) f32 contiguous
//   (X_out may alias X and t_out may alias t); embedding (V,E) f32/bf16/f16 with stride(1)==1;
//   mask_embedding (E,) f32 contiguous; rho (B,) f32;
//   policy_weights: packed f32 [W1 (d,k+4) row-major, b1 (d), W2 (d,d), b2 (d), w_mu (d),
//   w_kappa (d), b_mu, b_kappa] with d = hidden, or none for the heuristic a_min^(1-c) a_max^c;
//   action (B,N) f32 contiguous, or none; rho is read through its stride.
//   kummer_terms counts the series' terms including term_0 = 1 (FlowConfig.kummer_terms).
// If any row's lse is not finite (NaN or +inf in the row, or the row all -inf), X_out and t_out
// are left unwritten and committed is -1 (the other outputs are unspecified); the caller raises.
// Returns {tokens (B,N) int64, confidence (B,N) f32,
// action (B,N) f32, reedited (B,N) bool, committed (B,) int64, lse (B,N) f32}.
std::vector<at::Tensor> xflow_step(const at::Tensor& logits, const at::Tensor& X, const at::Tensor& t,
                                   const at::Tensor& embedding, const at::Tensor& mask_embedding,
                                   const at::Tensor& rho, const std::optional<at::Tensor>& policy_weights,
                                   int64_t hidden, double kappa_min, double kappa_max,
                                   const std::optional<at::Tensor>& action, double a_min, double a_max,
                                   double reedit_margin, double commit_threshold, int64_t k,
                                   int64_t kummer_terms, at::Tensor& X_out, at::Tensor& t_out);

}  // namespace mdfast
