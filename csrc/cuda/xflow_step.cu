// SPEC 2.2-2.7 on CUDA: one fused x-flow step, a fixed sequence of launches on the current stream
// with no host synchronisation (so a step can be captured in a CUDA graph):
//
//   0. a zeroed one-int "bad" flag (at::zeros), unless mdfast.ops gives it (holding its input checks);
//   1. the statistics pass of cuda/row_stats.cuh, with the per-row step folded into its epilogue:
//      - rows >= 2 x SMs: `xflow_row_kernel`, grid (rows,), 256 threads;
//      - else `chunk_kernel`, grid (rows x chunks,), 256 threads, then `xflow_merge_kernel`, grid
//        (rows,), 128 threads.
//      The epilogue of a row (the block that finished it): x_pred = argmax, c = p(1), lse, the
//      policy state s = [p(1..k), H_k, margin, t_i, rho_b], the action (given; else the policy MLP
//      and Kummer's series, spread over the block; else the heuristic), the re-edit decision and the
//      new t (into a workspace; t_out is not touched yet). A row whose lse is not finite sets the flag.
//      With given statistics (sample=True: the logits are not read again) `given_stats_kernel`,
//      grid-stride over the rows, does the same from them and the given action;
//   2. `commit_update_kernel`, grid (B x Y,), 256 threads: block (b, y) reads the flag (set: it writes
//      committed[b] = -1 and nothing else), chooses sequence b's hard commit (every block of the
//      sequence computes the same choice from the same data in the same fixed order), then writes
//      t_out and X_out for the rows n = y, y + Y, ... of sequence b.
//
// Precision: the per-element work is float32 as SPEC says (the row pass, the t and X updates); the
// per-row scalar tail is double like the CPU backend (p(j), H_k, the policy MLP, Kummer, the
// heuristic): in float32 the policy alone loses up to ~1e-5 relative in the action for weights of
// std 0.7 (see cpu/xflow_step.cpp). X_out may alias X and t_out may alias t: t is read only in step
// 1 and t_out written only in step 2; each X element is read and then written by one thread.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <cmath>

#include "cuda/row_stats.cuh"
#include "ops.h"

namespace mdfast {
namespace {

using namespace gpu;

// Where the action comes from (SPEC 2.5 and the default policy without trained weights).
constexpr int kGiven = 0;
constexpr int kPolicy = 1;
constexpr int kHeuristic = 2;

constexpr int kUpdateThreads = 256;
constexpr int kUpdateWarps = kUpdateThreads / kWarp;

// The per-row step's inputs and outputs (the statistics kernels' epilogue, `xflow_tail`).
struct RowStepArgs {
  // inputs
  const float* t;  // (rows) contiguous
  const float* rho;
  int64_t rho_stride;
  const float* action;  // (rows) contiguous, or null
  PolicyView policy;    // the packed step policy (d = 0 without one)
  double kappa_min, kappa_max;
  int mode;
  double a_min, a_max;
  double log_range;  // z = L ln 2 = ln(a_max / a_min)
  double reedit_margin;
  int kummer_terms;
  // outputs (rows)
  int64_t* tokens;
  float* confidence;
  float* action_out;
  bool* reedited;
  float* t_new;  // workspace: t after SPEC 2.6, before the commit
  float* lse;
  int* bad;
};

template <int kWarps>
struct RowStepScratch {
  double state[kMaxTopK + 4];  // s = [p(1..k), H_k, margin, t_i, rho]
  double c;                    // p(1)
  double lse;
  int64_t token;
  double u_mu[kWarps], u_kappa[kWarps];
};

__device__ __forceinline__ double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
__device__ __forceinline__ double silu(double x) { return x * sigmoid(x); }

// SPEC 2.5, deterministic action: 1F1(alpha; alpha+beta; z) = sum_{n < terms} term_n, term_0 = 1,
// term_{n+1} = term_n r_n, r_n = (alpha + n) / (alpha + beta + n) z / (n + 1): exactly `terms` terms
// (FlowConfig.kummer_terms counts term_0). Warp-wide: lane l of a round of 32 holds r_{base+l}, an
// inclusive prefix product across the lanes gives term_{base+l+1} / term_base; the terms are summed
// per lane and then by a butterfly (fixed order). Every lane returns the same value.
__device__ __forceinline__ double kummer_1f1(double alpha, double beta, double z, int terms, int lane) {
  double partial = 0.0, carry = 1.0;  // carry = term_base
  for (int base = 0; base + 1 < terms; base += kWarp) {
    const int n = base + lane;
    const bool live = n + 1 < terms;
    double r = live ? ((alpha + double(n)) * z) / ((alpha + beta + double(n)) * double(n + 1)) : 1.0;
#pragma unroll
    for (int offset = 1; offset < kWarp; offset <<= 1) {
      const double other = __shfl_up_sync(kFullMask, r, offset);
      if (lane >= offset) r *= other;
    }
    const double term = carry * r;  // term_{n+1}
    if (live) partial += term;
    carry = __shfl_sync(kFullMask, term, kWarp - 1);
  }
  return 1.0 + warp_sum(partial);
}

// SPEC 2.4-2.5 over the whole block (every thread calls it; the state is in xs): the step policy
//   h = SiLU(W2 SiLU(W1 s + b1) + b2);
//   mu = 0.05 + 0.9 sigmoid(w_mu.h + b_mu); kappa = kmin + (kmax - kmin) sigmoid(w_k.h + b_k);
//   alpha = mu kappa, beta = (1 - mu) kappa;  a = clamp(a_min 1F1(alpha; alpha+beta; z), a_min, a_max)
// on the packed weights [W1 (d, k+4) row-major, b1 (d), W2 (d, d), b2 (d), w_mu (d), w_kappa (d),
// b_mu, b_kappa]. In double. Returns a in warp 0 (every lane), 0 elsewhere.
template <int kWarps>
__device__ __forceinline__ double policy_action(const RowStepArgs& args, int k, int warp, int lane,
                                                RowStepScratch<kWarps>& xs, double* h1) {
  const PolicyView& w = args.policy;
  const int d = int(w.d), width = k + 4;
  const float* W1 = w.W1;
  const float* b1 = w.b1;
  const float* W2 = w.W2;
  const float* b2 = w.b2;
  const float* w_mu = w.w_mu;
  const float* w_kappa = w.w_kappa;
  // h1 = SiLU(W1 s + b1): one output per thread
  for (int i = threadIdx.x; i < d; i += kWarps * kWarp) {
    double acc = 0.0;
    for (int j = 0; j < width; ++j) acc += double(W1[int64_t(i) * width + j]) * xs.state[j];
    h1[i] = silu(double(b1[i]) + acc);
  }
  __syncthreads();
  // h2 = SiLU(W2 h1 + b2), fed straight into the two heads: each output by a group of P lanes
  // (P = threads / d, a power of two <= 32, so the d outputs take one round when d <= threads),
  // each lane a strided slice of the row, then a butterfly inside the group; the heads summed per
  // thread in increasing i, then by warp butterflies and over the warps in order.
  int group = kWarp;  // lanes per output
  while (group > 1 && group * d > kWarps * kWarp) group >>= 1;
  const int sub = lane & (group - 1);
  double u_mu = 0.0, u_kappa = 0.0;
  // the loop bound is uniform within a warp: its groups share i / (threads / group) rounds
  const int outputs_per_round = kWarps * kWarp / group;
  const int rounds = (d + outputs_per_round - 1) / outputs_per_round;
  for (int round = 0; round < rounds; ++round) {
    const int i = round * outputs_per_round + int(threadIdx.x) / group;
    double acc = 0.0;
    if (i < d) {
      for (int j = sub; j < d; j += group) acc += double(W2[int64_t(i) * d + j]) * h1[j];
    }
    for (int offset = group >> 1; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullMask, acc, offset);
    if (i < d && sub == 0) {
      const double g = silu(double(b2[i]) + acc);
      u_mu += double(w_mu[i]) * g;
      u_kappa += double(w_kappa[i]) * g;
    }
  }
  u_mu = warp_sum(u_mu);
  u_kappa = warp_sum(u_kappa);
  if (lane == 0) {
    xs.u_mu[warp] = u_mu;
    xs.u_kappa[warp] = u_kappa;
  }
  __syncthreads();
  if (warp != 0) return 0.0;
  double sum_mu = 0.0, sum_kappa = 0.0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    sum_mu += xs.u_mu[w];
    sum_kappa += xs.u_kappa[w];
  }
  const double b_mu = *w.b_mu, b_kappa = *w.b_kappa;
  const double mu = 0.05 + 0.9 * sigmoid(sum_mu + b_mu);
  const double kappa = args.kappa_min + (args.kappa_max - args.kappa_min) * sigmoid(sum_kappa + b_kappa);
  const double alpha = mu * kappa, beta = (1.0 - mu) * kappa;
  const double total = kummer_1f1(alpha, beta, args.log_range, args.kummer_terms, lane);
  return fmin(fmax(args.a_min * total, args.a_min), args.a_max);  // clamp to [a_min, a_max]
}

// The per-row step after the statistics (every thread of the block calls it; warp 0 holds the
// merged top-k): SPEC 2.2 x_pred = argmax, c = p(1); 2.3 the state; 2.4-2.5 the action; 2.6 the
// re-edit test with t before the update (c - t < -margin: t = c, else t += a (1 - t)).
template <int kWarps>
__device__ __forceinline__ void xflow_tail(int64_t row, int64_t N, const WarpTopK& top, const RowTotals& totals,
                                           int k, int warp, int lane, const RowStepArgs& args,
                                           RowStepScratch<kWarps>& xs, double* h1) {
  const int64_t b = row / N;
  if (warp == 0) {
    const RowTail tail = row_tail(top, totals, k, lane);
    if (lane < k) xs.state[lane] = tail.p;
    if (lane == 0) {
      xs.state[k] = tail.entropy;
      xs.state[k + 1] = tail.margin;
      xs.state[k + 2] = double(args.t[row]);
      xs.state[k + 3] = double(args.rho[b * args.rho_stride]);
      xs.c = tail.p1;
      xs.lse = tail.lse;
      xs.token = tail.id0;
    }
  }
  __syncthreads();
  double a = 0.0;
  if (args.mode == kPolicy) a = policy_action<kWarps>(args, k, warp, lane, xs, h1);  // block-uniform branch
  if (warp == 0 && lane == 0) {
    if (args.mode == kGiven) {
      a = double(args.action[row]);
    } else if (args.mode == kHeuristic) {
      // a = a_min^(1 - c) * a_max^c = a_min * exp(c ln(a_max / a_min))
      a = args.a_min * exp(xs.c * args.log_range);
    }
    const float c = float(xs.c), a_f = float(a), t = args.t[row];
    const bool reedit = double(c) - double(t) < -args.reedit_margin;
    args.tokens[row] = xs.token;
    args.confidence[row] = c;
    if (args.mode != kGiven) args.action_out[row] = a_f;
    args.reedited[row] = reedit;
    args.t_new[row] = reedit ? c : t + a_f * (1.0f - t);
    const float lse = float(xs.lse);
    args.lse[row] = lse;
    // A NaN or +inf in the row, or a row all -inf: kernel 2 must write nothing (a benign race: every
    // writer stores the same 1).
    if (!is_finite(lse)) *args.bad = 1;
  }
}

// Grid (rows,), kRowThreads threads, dynamic shared memory: `hidden` doubles with a policy (the
// policy's h1; mdfast.ops bounds hidden by 4096: 32 KiB).
template <class T>
__global__ void __launch_bounds__(kRowThreads, 4)
    xflow_row_kernel(const typename T::storage* __restrict__ logits, int64_t N, int V, int64_t stride_b,
                     int64_t stride_n, int k, RowStepArgs args) {
  __shared__ CombineScratch<kRowWarps> sh;
  __shared__ RowStepScratch<kRowWarps> xs;
  extern __shared__ double h1[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = blockIdx.x;
  const typename T::storage* z = logits + (row / N) * stride_b + (row % N) * stride_n;

  WarpTopK top;
  const RowTotals totals = scan_block<T, false, kRowWarps>(z, 0, V, k, warp, lane, top, sh);
  xflow_tail<kRowWarps>(row, N, top, totals, k, warp, lane, args, xs, h1);
}

// Grid (rows,), kMergeThreads threads: the chunks of a row (chunk_kernel) merged in chunk order.
__global__ void __launch_bounds__(kMergeThreads)
    xflow_merge_kernel(ChunkParts parts, int chunks, int64_t N, int k, RowStepArgs args) {
  __shared__ CombineScratch<kMergeWarps> sh;
  __shared__ RowStepScratch<kMergeWarps> xs;
  extern __shared__ double h1[];
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = blockIdx.x;
  WarpTopK top;
  const RowTotals totals = merge_chunks<false>(parts, row, chunks, k, warp, lane, top, sh);
  xflow_tail<kMergeWarps>(row, N, top, totals, k, warp, lane, args, xs, h1);
}

// Grid-stride over the rows, kUpdateThreads threads: the step of a row from given statistics and
// action (no logits pass), as `xflow_tail` writes it: the flag for a row whose lse is not finite,
// the re-edit decision and t after SPEC 2.6 (c - t < -margin: t = c, else t += a (1 - t)).
__global__ void __launch_bounds__(kUpdateThreads)
    given_stats_kernel(const float* __restrict__ confidence, const float* __restrict__ lse,
                       const float* __restrict__ t, const float* __restrict__ action, bool* __restrict__ reedited,
                       float* __restrict__ t_new, int* bad, int64_t rows, double reedit_margin) {
  for (int64_t row = int64_t(blockIdx.x) * kUpdateThreads + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * kUpdateThreads) {
    const float c = confidence[row], a = action[row], t_row = t[row];
    const bool reedit = double(c) - double(t_row) < -reedit_margin;
    reedited[row] = reedit;
    t_new[row] = reedit ? c : t_row + a * (1.0f - t_row);
    if (!is_finite(lse[row])) *bad = 1;  // a benign race: every writer stores the same 1
  }
}

// ------------------------------------------------------------------------------------------------
// Kernel 2: hard commit (SPEC 2.7) and the writes of t_out and X_out (SPEC 2.6-2.7).
// ------------------------------------------------------------------------------------------------

struct CommitArgs {
  const int* bad;
  const int64_t* tokens;
  const float* confidence;
  const float* action;
  const bool* reedited;
  const float* t_new;
  const float* X;  // may alias X_out: plain loads, no __restrict__
  float* X_out;
  float* t_out;
  const float* mask;  // (E,)
  int64_t emb_stride;
  int64_t* committed;
  double commit_threshold;
};

// (c1, n1) is chosen over (c2, n2): the larger c, the smaller index on ties; n = -1 is no candidate.
__device__ __forceinline__ bool chosen_over(float c1, int n1, float c2, int n2) {
  if (n1 < 0) return false;
  if (n2 < 0) return true;
  return c1 > c2 || (c1 == c2 && n1 < n2);
}

__device__ __forceinline__ void load4(const float* p, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p));
  out[0] = v.x;
  out[1] = v.y;
  out[2] = v.z;
  out[3] = v.w;
}
__device__ __forceinline__ void load4(const uint16_t* p, float* out, BF16) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  BF16::pair(v.x, out);
  BF16::pair(v.y, out + 2);
}
__device__ __forceinline__ void load4(const uint16_t* p, float* out, F16) {
  const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
  F16::pair(v.x, out);
  F16::pair(v.y, out + 2);
}
template <class T>
__device__ __forceinline__ void load4_emb(const typename T::storage* p, float* out) {
  if constexpr (sizeof(typename T::storage) == 4) {
    load4(p, out);
  } else {
    load4(p, out, T{});
  }
}
template <class T>
__device__ __forceinline__ float load1_emb(const typename T::storage* p) {
  return T::scalar(p);
}

// The new X of one element: committed (SPEC 2.7): E[x]; re-edited (SPEC 2.6): c E[x] + (1 - c) m;
// else the flow update (SPEC 2.6): X + (E[x] - X) a.
__device__ __forceinline__ float new_x(int kind, float x, float target, float m, float c, float a) {
  return kind == 0 ? target : kind == 1 ? c * target + (1.0f - c) * m : x + (target - x) * a;
}

// Grid (B * Y,), kUpdateThreads threads. kVec4: E % 4 == 0 and every row 16-byte aligned (X, X_out,
// mask) and 4-element aligned (embedding): 4 columns per thread step.
template <class T, bool kVec4>
__global__ void __launch_bounds__(kUpdateThreads)
    commit_update_kernel(CommitArgs args, const typename T::storage* __restrict__ embedding, int N, int64_t E,
                         int Y) {
  __shared__ float best_c_warp[kUpdateWarps];
  __shared__ int best_n_warp[kUpdateWarps];
  const int64_t b = blockIdx.x / Y;
  const int y = int(blockIdx.x % Y);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (*args.bad != 0) {  // a non-finite row somewhere: no state is written (ops.h)
    if (y == 0 && threadIdx.x == 0) args.committed[b] = -1;
    return;
  }
  // SPEC 2.7: among the tokens with t < threshold after 2.6, the largest c (smallest index on ties).
  float best_c = -1.0f;
  int best_n = -1;
  for (int n = threadIdx.x; n < N; n += kUpdateThreads) {
    const int64_t r = b * N + n;
    if (double(args.t_new[r]) < args.commit_threshold) {
      const float c = args.confidence[r];
      if (chosen_over(c, n, best_c, best_n)) {
        best_c = c;
        best_n = n;
      }
    }
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other_c = __shfl_xor_sync(kFullMask, best_c, offset);
    const int other_n = __shfl_xor_sync(kFullMask, best_n, offset);
    if (chosen_over(other_c, other_n, best_c, best_n)) {
      best_c = other_c;
      best_n = other_n;
    }
  }
  if (lane == 0) {
    best_c_warp[warp] = best_c;
    best_n_warp[warp] = best_n;
  }
  __syncthreads();
  best_c = best_c_warp[0];
  best_n = best_n_warp[0];
#pragma unroll
  for (int w = 1; w < kUpdateWarps; ++w) {
    if (chosen_over(best_c_warp[w], best_n_warp[w], best_c, best_n)) {
      best_c = best_c_warp[w];
      best_n = best_n_warp[w];
    }
  }
  if (y == 0 && threadIdx.x == 0) args.committed[b] = best_n;

  for (int n = y; n < N; n += Y) {
    const int64_t r = b * N + n;
    const int kind = n == best_n ? 0 : args.reedited[r] ? 1 : 2;
    if (threadIdx.x == 0) args.t_out[r] = kind == 0 ? 1.0f : args.t_new[r];
    const float c = args.confidence[r], a = args.action[r];
    const typename T::storage* target = embedding + args.tokens[r] * args.emb_stride;
    const float* x = args.X + r * E;
    float* x_out = args.X_out + r * E;
    if (kVec4) {
      for (int64_t e = 4 * int64_t(threadIdx.x); e < E; e += 4 * kUpdateThreads) {
        float tg[4], m[4], xv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        load4_emb<T>(target + e, tg);
        load4(args.mask + e, m);
        if (kind == 2) {
          const float4 v = *reinterpret_cast<const float4*>(x + e);
          xv[0] = v.x;
          xv[1] = v.y;
          xv[2] = v.z;
          xv[3] = v.w;
        }
        float4 o;
        o.x = new_x(kind, xv[0], tg[0], m[0], c, a);
        o.y = new_x(kind, xv[1], tg[1], m[1], c, a);
        o.z = new_x(kind, xv[2], tg[2], m[2], c, a);
        o.w = new_x(kind, xv[3], tg[3], m[3], c, a);
        *reinterpret_cast<float4*>(x_out + e) = o;
      }
    } else {
      for (int64_t e = threadIdx.x; e < E; e += kUpdateThreads) {
        const float xv = kind == 2 ? x[e] : 0.0f;
        x_out[e] = new_x(kind, xv, load1_emb<T>(target + e), args.mask[e], c, a);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Host side.
// ------------------------------------------------------------------------------------------------

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <class T>
void launch_step_stats(const at::Tensor& logits, int k, const RowStepArgs& args, size_t smem, cudaStream_t stream) {
  launch_pass<T, false>(
      logits, k, stream,
      [&](const typename T::storage* data, int64_t N, int V, int64_t rows) {
        xflow_row_kernel<T>
            <<<unsigned(rows), kRowThreads, smem, stream>>>(data, N, V, logits.stride(0), logits.stride(1), k, args);
      },
      [&](const ChunkParts& parts, int chunks, int64_t rows) {
        xflow_merge_kernel<<<unsigned(rows), kMergeThreads, smem, stream>>>(parts, chunks, logits.size(1), k, args);
      });
}

template <class T>
void launch_commit_update(const CommitArgs& args, const at::Tensor& embedding, int64_t B, int64_t N, int64_t E,
                          bool vec4, cudaStream_t stream) {
  const auto* emb = reinterpret_cast<const typename T::storage*>(embedding.data_ptr());
  // Blocks per sequence: about 4 per SM in all (each recomputes the sequence's commit from 2N floats
  // in L2), at most one per row.
  const int sms = multiprocessors(embedding.get_device());
  const int64_t Y = std::max<int64_t>(1, std::min<int64_t>(N, (4 * int64_t(sms) + B - 1) / B));
  const unsigned grid = unsigned(B * Y);
  if (vec4)
    commit_update_kernel<T, true><<<grid, kUpdateThreads, 0, stream>>>(args, emb, int(N), E, int(Y));
  else
    commit_update_kernel<T, false><<<grid, kUpdateThreads, 0, stream>>>(args, emb, int(N), E, int(Y));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::vector<at::Tensor> xflow_step(const StepInputs& inputs) {
  const auto& [logits, X, t, embedding, mask_embedding, rho, policy_weights, action, given, bad, X_out, t_out,
               scalars] = inputs;
  const int64_t B = X.size(0), N = X.size(1), E = X.size(2), k = scalars.k;
  const int mode = action ? kGiven : policy_weights ? kPolicy : kHeuristic;
  const c10::cuda::CUDAGuard guard(X.device());
  const StepResult result(inputs);
  const at::Tensor &tokens = result.tokens, &confidence = result.confidence, &action_out = result.action;
  const at::Tensor &reedited = result.reedited, &committed = result.committed, &lse = result.lse;
  const at::Tensor flag = bad ? *bad : at::zeros({1}, X.options().dtype(at::kInt));
  const at::Tensor t_new = at::empty({B, N}, X.options().dtype(at::kFloat));
  const int64_t rows = B * N;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  RowStepArgs args{};
  args.t = t.data_ptr<float>();
  args.rho = rho.data_ptr<float>();
  args.rho_stride = rho.stride(0);
  args.action = mode == kGiven ? action->data_ptr<float>() : nullptr;
  if (mode == kPolicy) args.policy = PolicyView(policy_weights->data_ptr<float>(), scalars.hidden, k);
  args.kappa_min = scalars.kappa_min;
  args.kappa_max = scalars.kappa_max;
  args.mode = mode;
  args.a_min = scalars.a_min;
  args.a_max = scalars.a_max;
  args.log_range = std::log(scalars.a_max / scalars.a_min);
  args.reedit_margin = scalars.reedit_margin;
  args.kummer_terms = int(std::min<int64_t>(scalars.kummer_terms, INT_MAX));
  args.tokens = tokens.data_ptr<int64_t>();
  args.confidence = confidence.data_ptr<float>();
  args.action_out = action_out.data_ptr<float>();
  args.reedited = reedited.data_ptr<bool>();
  args.t_new = t_new.data_ptr<float>();
  args.lse = lse.data_ptr<float>();
  args.bad = flag.data_ptr<int>();

  if (given) {
    const unsigned grid = unsigned(std::min<int64_t>((rows + kUpdateThreads - 1) / kUpdateThreads,
                                                     4 * int64_t(multiprocessors(X.get_device()))));
    given_stats_kernel<<<grid, kUpdateThreads, 0, stream>>>(args.confidence, args.lse, args.t, args.action,
                                                            args.reedited, args.t_new, args.bad, rows,
                                                            args.reedit_margin);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    const size_t smem = mode == kPolicy ? size_t(scalars.hidden) * sizeof(double) : 0;
    switch (logits.scalar_type()) {
      case at::kFloat:
        launch_step_stats<F32>(logits, int(k), args, smem, stream);
        break;
      case at::kBFloat16:
        launch_step_stats<BF16>(logits, int(k), args, smem, stream);
        break;
      default:
        launch_step_stats<F16>(logits, int(k), args, smem, stream);
        break;
    }
  }

  CommitArgs commit{};
  commit.bad = args.bad;
  commit.tokens = args.tokens;
  commit.confidence = args.confidence;
  commit.action = args.action_out;
  commit.reedited = args.reedited;
  commit.t_new = args.t_new;
  commit.X = X.data_ptr<float>();
  commit.X_out = X_out.data_ptr<float>();
  commit.t_out = t_out.data_ptr<float>();
  commit.mask = mask_embedding.data_ptr<float>();
  commit.emb_stride = embedding.stride(0);
  commit.committed = committed.data_ptr<int64_t>();
  commit.commit_threshold = scalars.commit_threshold;
  const size_t emb_bytes = embedding.element_size();
  const bool vec4 = E % 4 == 0 && aligned(commit.X, 16) && aligned(commit.X_out, 16) && aligned(commit.mask, 16) &&
                    aligned(embedding.data_ptr(), 4 * emb_bytes) && embedding.stride(0) % 4 == 0;
  switch (embedding.scalar_type()) {
    case at::kFloat:
      launch_commit_update<F32>(commit, embedding, B, N, E, vec4, stream);
      break;
    case at::kBFloat16:
      launch_commit_update<BF16>(commit, embedding, B, N, E, vec4, stream);
      break;
    default:
      launch_commit_update<F16>(commit, embedding, B, N, E, vec4, stream);
      break;
  }
  return result.list();
}

}  // namespace mdfast
