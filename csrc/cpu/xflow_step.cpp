// SPEC 2.2-2.7 on the CPU: one fused x-flow step.
//
//   1. per row (chunks of rows on the calling thread and torch's, cpu/parallel.h): the statistics
//      (cpu/row_stats.h), x_pred, c, lse, and the action (given, else the policy's Kummer mean,
//      else the heuristic) -> tokens, confidence, action, lse; skipped when the statistics are
//      given (then so is the action);
//   2. if the flag `bad` is set or any row's lse is not finite: return, X_out and t_out untouched
//      (the caller raises);
//   3. per sequence, on the calling thread (O(B N) scalars): re-edit test and t update of every
//      token, then the hard commit among them -> reedited, t_out, committed;
//   4. per row: X_out written once: E[x] for the committed token, else the re-edit or the flow
//      update; on the calling thread below kParallelUpdate elements, else in chunks as phase 1.
// Phase 1, the read of the logits, is the only phase that spreads over threads at the shapes of a
// decoding step: each hand-over to other threads costs wake-ups, which busy cores delay. The action is computed in phase 1, straight from the row's
// statistics, so the policy state needs no per-row buffer. Phases 3 and 4 give exactly the
// sequence "update, then commit" of the SPEC: the commit needs only the scalars t_out and c, and
// the committed row's X is E[x] whatever the update wrote. Every row and every sequence is handled
// by one thread: results never depend on the thread count. X_out may be X and t_out may be t: each
// element is read before it is written, and by the same thread.
//
// Precision: the per-element work (the row pass over V, the t and X updates) is float32, as SPEC
// says. The per-row scalar tail, O(k + d^2) operations against the row pass's O(V), is double: the
// top-k probabilities and H_k (cpu/row_stats.h), the policy MLP, Kummer's series and the heuristic.
// The policy in float32 loses up to ~1e-5 relative in the action for weights of std 0.7 (rounding
// in 64-term pre-activations, amplified ~z = ln(a_max/a_min) by the exponential action), which is
// the whole tolerance of the tests; in double the action is exact to its float32 rounding.
#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "cpu/parallel.h"
#include "cpu/row_stats.h"
#include "ops.h"

namespace mdfast {
namespace {

// Phase 4 spreads over threads only from this many elements of X (32 MiB read and written): below
// it one thread takes ~1 ms or less, the order of a thread's wake-up on busy cores.
constexpr int64_t kParallelUpdate = int64_t(1) << 23;

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double silu(double x) { return x * sigmoid(x); }

// sum_j w[j] x[j]
inline double dot(const float* w, const double* x, int64_t n) {
  double acc = 0.0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += double(w[j]) * x[j];
  return acc;
}

// out[i] = SiLU(bias[i] + sum_j W[i, j] x[j]) for i < rows, W row-major (rows, cols).
inline void silu_layer(const float* W, const float* bias, const double* x, int64_t rows, int64_t cols, double* out) {
  for (int64_t i = 0; i < rows; ++i) out[i] = silu(double(bias[i]) + dot(W + i * cols, x, cols));
}

// SPEC 2.4: h = SiLU(W2 SiLU(W1 s + b1) + b2);
// mu = 0.05 + 0.9 sigmoid(w_mu.h + b_mu); kappa = kmin + (kmax - kmin) sigmoid(w_k.h + b_k);
// alpha = mu kappa, beta = (1 - mu) kappa. `scratch` holds 2 d doubles.
inline void step_policy(const PolicyView& w, double kappa_min, double kappa_max, const double* state, double* scratch,
                        double& alpha, double& beta) {
  double* h1 = scratch;
  double* h2 = scratch + w.d;
  silu_layer(w.W1, w.b1, state, w.d, w.width, h1);
  silu_layer(w.W2, w.b2, h1, w.d, w.d, h2);
  const double mu = 0.05 + 0.9 * sigmoid(dot(w.w_mu, h2, w.d) + double(*w.b_mu));
  const double kappa = kappa_min + (kappa_max - kappa_min) * sigmoid(dot(w.w_kappa, h2, w.d) + double(*w.b_kappa));
  alpha = mu * kappa;
  beta = (1.0 - mu) * kappa;
}

// SPEC 2.5, deterministic action: a = a_min * 1F1(alpha; alpha+beta; z), z = L ln 2 = ln(a_max/a_min),
// clamped to [a_min, a_max]. Kummer's series sum_n (alpha)_n / (alpha+beta)_n z^n / n! is summed
// over its first `terms` terms, term_0 = 1, term_{n+1} = term_n (alpha+n)/(alpha+beta+n) z/(n+1)
// (FlowConfig.kummer_terms picks them for float32 accuracy).
inline double kummer_action(double alpha, double beta, double z, int64_t terms, double a_min, double a_max) {
  double term = 1.0, total = 1.0;
  for (int64_t n = 0; n + 1 < terms; ++n) {
    term *= (alpha + double(n)) / (alpha + beta + double(n)) * (z / double(n + 1));
    total += term;
  }
  return std::min(std::max(a_min * total, a_min), a_max);
}

// SPEC 2, the default policy without trained weights: a = a_min^(1 - c) * a_max^c, evaluated as
// a_min * exp(c z), z = ln(a_max / a_min) (the same number, one exp).
inline double heuristic_action(double c, double a_min, double z) { return a_min * std::exp(c * z); }

struct StepShape {
  int64_t B, N, V, E;
};

struct StepOutputs {
  int64_t* tokens;
  float* confidence;
  float* action;
  bool* reedited;
  int64_t* committed;
  float* lse;
};

// Phase 1, per row: SPEC 2.2 statistics, x_pred = argmax, c = p(1); SPEC 2.3 state
// s = [p(1..k), H_k, margin, t_i, rho_b]; SPEC 2.4-2.5 action (out.action already holds a given one).
template <typename scalar_t>
void row_statistics_and_action(const at::Tensor& logits, const float* t, const at::Tensor& rho, bool action_given,
                               const PolicyView* policy, const StepScalars& s, const StepShape& shape,
                               const StepOutputs& out) {
  const int64_t N = shape.N, V = shape.V, rows = shape.B * N;
  const int k = int(s.k);
  const int64_t stride_b = logits.stride(0), stride_n = logits.stride(1);
  const scalar_t* data = logits.data_ptr<scalar_t>();
  const float* rho_data = rho.data_ptr<float>();
  const int64_t rho_stride = rho.stride(0);
  const double log_ratio = std::log(s.a_max / s.a_min);  // z = L ln 2
  cpu::parallel_chunks(rows, cpu::rows_per_chunk(V), [&](int64_t begin, int64_t end) {
    float buffer[cpu::kTile];  // bf16/f16 tiles converted to float32
    std::vector<double> scratch(policy ? 2 * policy->d : 0);  // the policy's h1, h2
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / N, n = r % N;
      const scalar_t* row = data + b * stride_b + n * stride_n;
      const cpu::RowSummary summary = cpu::summarize_row<false>(row, V, k, buffer);
      const cpu::TopKStats stats = cpu::finish_topk(summary);
      out.tokens[r] = cpu::output_id(summary.top.id[0]);
      out.confidence[r] = float(stats.prob[0]);
      out.lse[r] = float(summary.lse());
      if (action_given) continue;
      double a;
      if (policy) {
        double state[cpu::kMaxTopK + 4];
        std::copy(stats.prob, stats.prob + k, state);
        state[k] = stats.entropy;
        state[k + 1] = stats.margin;
        state[k + 2] = t[r];
        state[k + 3] = rho_data[b * rho_stride];
        double alpha, beta;
        step_policy(*policy, s.kappa_min, s.kappa_max, state, scratch.data(), alpha, beta);
        a = kummer_action(alpha, beta, log_ratio, s.kummer_terms, s.a_min, s.a_max);
      } else {
        a = heuristic_action(stats.prob[0], s.a_min, log_ratio);
      }
      out.action[r] = float(a);
    }
  });
}

// Phase 3, per sequence b: SPEC 2.6 re-edit test (t before the update): c - t < -margin re-edits
// (t = c), else t += a (1 - t); then SPEC 2.7 hard commit: among n with t_out < threshold, the
// largest c (smallest n on ties) gets t = 1; committed[b] = that n, or -1 if none.
void update_progress_and_commit(const float* t, float* t_out, const StepScalars& s, const StepShape& shape,
                                const StepOutputs& out) {
  const int64_t N = shape.N;
  for (int64_t b = 0; b < shape.B; ++b) {
    int64_t best = -1;
    for (int64_t i = b * N; i < (b + 1) * N; ++i) {
      const float c = out.confidence[i], a = out.action[i], t_i = t[i];
      const bool reedit = double(c) - double(t_i) < -s.reedit_margin;
      const float t_new = reedit ? c : t_i + a * (1.0f - t_i);
      out.reedited[i] = reedit;
      t_out[i] = t_new;
      if (double(t_new) < s.commit_threshold && (best < 0 || c > out.confidence[best])) best = i;
    }
    if (best >= 0) t_out[best] = 1.0f;
    out.committed[b] = best < 0 ? -1 : best - b * N;
  }
}

// Phase 4 for row r, with target = E[x_pred] (converted to float32) and m the mask embedding:
// committed (SPEC 2.7): X = target; re-edited (SPEC 2.6): X = c target + (1 - c) m;
// else the flow update (SPEC 2.6): X += (target - X) a.
template <typename emb_t>
inline void update_row(const float* X, const emb_t* emb, int64_t emb_stride, const float* mask, float* X_out,
                       const StepShape& shape, const StepOutputs& out, int64_t r) {
  const int64_t N = shape.N, E = shape.E;
  const emb_t* target = emb + out.tokens[r] * emb_stride;
  const float* x = X + r * E;
  float* x_out = X_out + r * E;
  if (out.committed[r / N] == r % N) {
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) x_out[e] = cpu::to_float(target[e]);
  } else if (out.reedited[r]) {
    const float c = out.confidence[r];
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) x_out[e] = c * cpu::to_float(target[e]) + (1.0f - c) * mask[e];
  } else {
    const float a = out.action[r];
#pragma omp simd
    for (int64_t e = 0; e < E; ++e) x_out[e] = x[e] + (cpu::to_float(target[e]) - x[e]) * a;
  }
}

// Phase 4 over every row (update_row); spread over threads from kParallelUpdate elements on.
template <typename emb_t>
void update_embeddings(const float* X, const at::Tensor& embedding, const float* mask, float* X_out,
                       const StepShape& shape, const StepOutputs& out) {
  const int64_t rows = shape.B * shape.N, E = shape.E;
  const emb_t* emb = embedding.data_ptr<emb_t>();
  const int64_t emb_stride = embedding.stride(0);
  const int64_t chunk = rows * E < kParallelUpdate ? rows : cpu::rows_per_chunk(E);
  cpu::parallel_chunks(rows, chunk, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) update_row(X, emb, emb_stride, mask, X_out, shape, out, r);
  });
}

}  // namespace

std::vector<at::Tensor> xflow_step(const StepInputs& inputs) {
  const auto& [logits, X, t, embedding, mask_embedding, rho, policy_weights, action, given, bad, X_out, t_out,
               scalars] = inputs;
  const StepShape shape{X.size(0), X.size(1), embedding.size(0), X.size(2)};
  const int64_t B = shape.B, N = shape.N;
  const StepResult result(inputs);
  result.reedited.zero_();  // what a step that returns early reports: no re-edit, no commit
  result.committed.fill_(-1);
  int* flag = bad ? bad->data_ptr<int>() : nullptr;
  if (flag && *flag != 0) return result.list();

  const StepOutputs out{result.tokens.data_ptr<int64_t>(),   result.confidence.data_ptr<float>(),
                        result.action.data_ptr<float>(),     result.reedited.data_ptr<bool>(),
                        result.committed.data_ptr<int64_t>(), result.lse.data_ptr<float>()};
  const float* t_data = t.data_ptr<float>();
  if (!given) {
    std::optional<PolicyView> policy;
    if (!action && policy_weights) policy.emplace(policy_weights->data_ptr<float>(), scalars.hidden, scalars.k);
    cpu::dispatch_float_types(logits.scalar_type(), "xflow_step: logits", [&](auto tag) {
      row_statistics_and_action<decltype(tag)>(inputs.logits, t_data, inputs.rho, inputs.action.has_value(),
                                               policy ? &*policy : nullptr, inputs.scalars, shape, out);
    });
  }
  if (!std::all_of(out.lse, out.lse + B * N, [](float v) { return std::isfinite(v); })) {
    if (flag) *flag = 1;
    return result.list();
  }

  update_progress_and_commit(t_data, t_out.data_ptr<float>(), scalars, shape, out);
  cpu::dispatch_float_types(embedding.scalar_type(), "xflow_step: embedding", [&](auto tag) {
    update_embeddings<decltype(tag)>(inputs.X.data_ptr<float>(), inputs.embedding,
                                     inputs.mask_embedding.data_ptr<float>(), inputs.X_out.data_ptr<float>(), shape,
                                     out);
  });
  return result.list();
}

}  // namespace mdfast
