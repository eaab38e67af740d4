// The streaming row pass shared by the CPU kernels (SPEC 1): one read of a logits row z gives its
// log-sum-exp, its exact top-k and, optionally, the sum behind the full entropy; everything else
// of SPEC 1 is O(k) scalar math on that summary (`finish_topk`).
//
// The row is read in tiles of kTile elements (16 KiB of float32, well inside L1). Per tile:
//   1. one vectorized pass: the max of every slice of kSlice elements and the tile max tm
//      (bf16/f16 tiles are first converted to float32 into a per-thread buffer);
//   2. when tm reaches the current k-th largest value, a scan for top-k candidates over the slices
//      whose max reaches it (after the first tile this is rare);
//   3. when tm exceeds the running max m, the running sums are rescaled once to the new m;
//   4. S += sum exp(z - m) (and D += sum exp(z - m) (z - m)) over the tile while it is in L1:
//      a vectorized polynomial exp, float32 lanes flushed into double lanes every few terms.
// Everything here is per row: the callers parallelize over rows, one row per thread, so the results
// never depend on the thread count.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace mdfast {
namespace cpu {

constexpr int kMaxTopK = 8;       // ops.h: 2 <= k <= 8
constexpr int64_t kTile = 4096;  // elements per tile of a row
constexpr int64_t kSlice = 64;   // granularity of the top-k candidate scan
constexpr int kMaxLanes = 16;     // lanes of the max pass (one 512-bit vector)
constexpr int kLanes = 32;        // float32 accumulators of the exp sums (accuracy and ILP)
constexpr int64_t kLanesRun = 256;  // elements summed in float32 lanes before a double flush
// Sorts after every real index: top-k slots start as (-inf, kNoId), so a row with fewer than k
// finite entries fills its remaining slots with its -inf entries, smallest indices first.
constexpr int64_t kNoId = std::numeric_limits<int64_t>::max();
constexpr float kInf = std::numeric_limits<float>::infinity();

// ------------------------------------------------------------------------------------------------
// Element conversion: float32, bfloat16, float16 -> float32 (bit manipulation, so loops vectorize).
// ------------------------------------------------------------------------------------------------

inline float bits_to_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline uint32_t float_to_bits(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

inline float to_float(float x) { return x; }

// bfloat16 is the upper half of a float32.
inline float to_float(c10::BFloat16 x) { return bits_to_float(uint32_t(x.x) << 16); }

// IEEE half -> float, exact for every input (zeros, subnormals, inf, NaN), branch-free: the
// FP16 library's fp16_ieee_to_fp32_value (also c10::detail's portable path).
inline float to_float(c10::Half x) {
  const uint32_t w = uint32_t(x.x) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  // Normal numbers (and inf/NaN): shift exponent and mantissa into place, rebias by 2^-112.
  const float normalized = bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormals: the mantissa as the low bits of 0.5 * 2^1 minus 0.5.
  const float denormalized = bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t magnitude = two_w < (1u << 27) ? float_to_bits(denormalized) : float_to_bits(normalized);
  return bits_to_float(sign | magnitude);
}

// Calls fn(scalar_t{}) for the float32, bfloat16 or float16 dtype `type` (mdfast.ops admits no
// other: another one is a broken invariant).
template <typename Fn>
void dispatch_float_types(c10::ScalarType type, const char* what, Fn&& fn) {
  switch (type) {
    case c10::kFloat:
      fn(float{});
      break;
    case c10::kBFloat16:
      fn(c10::BFloat16{});
      break;
    case c10::kHalf:
      fn(c10::Half{});
      break;
    default:
      TORCH_INTERNAL_ASSERT(false, what, ": float32, bfloat16 or float16 expected, got ", type);
  }
}

// ------------------------------------------------------------------------------------------------
// exp on the row pass: arguments d = z - m <= 0.
// ------------------------------------------------------------------------------------------------

// The pass clamps d from below to kExpCutoff, where exp_nonpositive is exactly 0: -inf entries
// (and everything below e^-87.6 ~ 1e-38, nothing next to the row's max term 1) contribute 0.
constexpr float kExpCutoff = -88.0f;

// exp(d) for d in [kExpCutoff, 0], NaN -> NaN. d = n ln2 + r with n = round(d / ln2)
// (round-to-nearest through the 1.5 * 2^23 trick) and ln2 split in two (Cody-Waite, as Cephes'
// expf), so |r| <= ln2/2; exp(r) by a degree-6 polynomial (a relative-error minimax fit with
// p(0) = 1, p'(0) = 1; <= 1.05 ulp against exp over every float32 d in (-87.6, 0]); times 2^n
// built in the exponent field: n >= -126 gives a normal 2^n, and n = -127 (d <= -87.68, the
// cutoff included) gives the bits of +0, so the result is exactly 0 there without a select.
// Branch-free and inlined into `#pragma omp simd` loops, so gcc vectorizes it.
inline float exp_nonpositive(float d) {
  const float kLog2e = 1.44269504088896341f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23
  const float kLn2Hi = 0.693359375f, kLn2Lo = -2.12194440e-4f;
  const float rounded = std::fma(d, kLog2e, kRound);
  const float n = rounded - kRound;
  const int32_t n_int = int32_t(float_to_bits(rounded) - float_to_bits(kRound));
  const float r = std::fma(-n, kLn2Lo, std::fma(-n, kLn2Hi, d));
  float p = 0x1.6ae70ap-10f;
  p = std::fma(p, r, 0x1.126782p-7f);
  p = std::fma(p, r, 0x1.555822p-5f);
  p = std::fma(p, r, 0x1.55541ap-3f);
  p = std::fma(p, r, 0x1.fffffcp-2f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  return p * bits_to_float(uint32_t(n_int + 127) << 23);  // NaN d: NaN p, NaN result
}

// d clamped from below to kExpCutoff (-inf included), NaN kept (a > b ? a : b is the IEEE max
// instruction's own semantics): a -inf entry then contributes exp = 0 and kExpCutoff * 0 = 0 to
// sum exp(d) d, never NaN.
inline float clamp_exp_argument(float d) { return kExpCutoff > d ? kExpCutoff : d; }

// ------------------------------------------------------------------------------------------------
// Running top-k.
// ------------------------------------------------------------------------------------------------

// The k largest logits seen so far, ordered by (value desc, index asc); NaN never enters.
struct TopK {
  int k;
  float value[kMaxTopK];
  int64_t id[kMaxTopK];

  explicit TopK(int k_) : k(k_) {
    for (int j = 0; j < kMaxTopK; ++j) {
      value[j] = -kInf;
      id[j] = kNoId;
    }
  }

  // The value an entry must reach to possibly enter.
  float threshold() const { return value[k - 1]; }

  static bool ranks_before(float z, int64_t i, float other_z, int64_t other_i) {
    return z > other_z || (z == other_z && i < other_i);
  }

  void offer(float z, int64_t i) {
    if (!ranks_before(z, i, value[k - 1], id[k - 1])) return;
    int j = k - 1;
    for (; j > 0 && ranks_before(z, i, value[j - 1], id[j - 1]); --j) {
      value[j] = value[j - 1];
      id[j] = id[j - 1];
    }
    value[j] = z;
    id[j] = i;
  }
};

// ------------------------------------------------------------------------------------------------
// Tile kernels (z: n <= kTile float32 values in L1).
// ------------------------------------------------------------------------------------------------

// lanes[l] = max(lanes[l], lanes[l + kWidth]) for l < kWidth, then the same on the lower half:
// the max of lanes[0..2 kWidth) in log2(2 kWidth) vector steps, into lanes[0].
template <int kWidth>
inline float fold_max(float* lanes) {
  for (int l = 0; l < kWidth; ++l) lanes[l] = std::max(lanes[l], lanes[l + kWidth]);
  if constexpr (kWidth > 1) return fold_max<kWidth / 2>(lanes);
  return lanes[0];
}

// max of lanes[0..kMaxLanes) (overwrites lanes).
inline float lanes_max(float* lanes) { return fold_max<kMaxLanes / 2>(lanes); }

// The max of each slice of kSlice entries into slice_max[c], and the tile max, in one pass of
// kMaxLanes lanes. NaN entries are skipped (std::max(a, NaN) is a); `summarize_row` sees them in
// the exp sums.
inline float tile_maxima(const float* z, int64_t n, float* slice_max) {
  float tile_lanes[kMaxLanes];
  std::fill(tile_lanes, tile_lanes + kMaxLanes, -kInf);
  for (int64_t c = 0, c0 = 0; c0 < n; ++c, c0 += kSlice) {
    float lanes[kMaxLanes];
    std::fill(lanes, lanes + kMaxLanes, -kInf);
    if (c0 + kSlice <= n) {
      for (int64_t i = c0; i < c0 + kSlice; i += kMaxLanes) {
#pragma omp simd
        for (int l = 0; l < kMaxLanes; ++l) lanes[l] = std::max(lanes[l], z[i + l]);
      }
    } else {
      for (int64_t i = c0; i < n; ++i) lanes[0] = std::max(lanes[0], z[i]);
    }
#pragma omp simd
    for (int l = 0; l < kMaxLanes; ++l) tile_lanes[l] = std::max(tile_lanes[l], lanes[l]);
    slice_max[c] = lanes_max(lanes);
  }
  return lanes_max(tile_lanes);
}

inline bool tile_has_nan(const float* z, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (std::isnan(z[i])) return true;
  return false;
}

// Offers the tile's entries (global indices base + i) to `top` in index order, skipping the
// slices whose max is below its threshold.
inline void tile_topk(const float* z, int64_t n, int64_t base, const float* slice_max, TopK& top) {
  for (int64_t c = 0, c0 = 0; c0 < n; ++c, c0 += kSlice) {
    if (!(slice_max[c] >= top.threshold())) continue;
    for (int64_t i = c0; i < std::min(c0 + kSlice, n); ++i)
      if (z[i] >= top.threshold()) top.offer(z[i], base + i);
  }
}

// sum exp(z - m) and, with kFullEntropy, sum exp(z - m) (z - m) over the tile: kLanes float32
// lanes, each summing kLanesRun / kLanes = 8 consecutive terms of its lane, then added into kLanes
// double lanes (float32 error ~1e-8 relative instead of ~1e-7 for 128 terms per float lane).
template <bool kFullEntropy>
inline void tile_exp_sums(const float* z, int64_t n, float m, double& sum, double& sum_d) {
  double acc[kLanes] = {}, acc_d[kLanes] = {};
  const int64_t full = n - n % kLanes;
  for (int64_t run = 0; run < full; run += kLanesRun) {
    float s[kLanes] = {}, sd[kLanes] = {};
    for (int64_t i = run; i < std::min(run + kLanesRun, full); i += kLanes) {
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        const float d = clamp_exp_argument(z[i + l] - m);
        const float e = exp_nonpositive(d);
        s[l] += e;
        if constexpr (kFullEntropy) sd[l] += e * d;
      }
    }
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      acc[l] += s[l];
      if constexpr (kFullEntropy) acc_d[l] += sd[l];
    }
  }
  for (int64_t i = full; i < n; ++i) {
    const float d = clamp_exp_argument(z[i] - m);
    const float e = exp_nonpositive(d);
    acc[i - full] += e;
    if constexpr (kFullEntropy) acc_d[i - full] += e * d;
  }
  for (int l = 0; l < kLanes; ++l) {
    sum += acc[l];
    if constexpr (kFullEntropy) sum_d += acc_d[l];
  }
}

// A tile of a row as float32: the row itself for float32, else converted into `buffer`.
inline const float* load_tile(const float* src, int64_t, float*) { return src; }

template <typename scalar_t>
inline const float* load_tile(const scalar_t* src, int64_t n, float* buffer) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) buffer[i] = to_float(src[i]);
  return buffer;
}

// ------------------------------------------------------------------------------------------------
// The row pass.
// ------------------------------------------------------------------------------------------------

// Summary of one row: m = max z, S = sum exp(z - m), D = sum exp(z - m) (z - m), the top-k.
// S is NaN whenever the row holds NaN or +inf, or is all -inf (then m = -inf, S = 0 -> NaN too).
struct RowSummary {
  float max;
  double sum;
  double sum_d;  // only with full entropy
  TopK top;

  explicit RowSummary(int k) : max(-kInf), sum(0.0), sum_d(0.0), top(k) {}

  // SPEC 1: lse = log sum_v exp(z_v) = m + log S.
  double lse() const { return double(max) + std::log(sum); }

  // SPEC 1: H_full = lse - sum_v p_v z_v. With p_v = exp(z_v - m) / S and z_v = m + (z_v - m):
  // sum_v p_v z_v = m + D / S, so H_full = log S - D / S (no cancellation against m; a -inf
  // entry has p_v = 0 and adds nothing).
  double entropy_full() const { return std::log(sum) - sum_d / sum; }
};

// One streaming pass over row[0..V) (V >= k). `buffer` holds kTile floats (bf16/f16 rows).
template <bool kFullEntropy, typename scalar_t>
RowSummary summarize_row(const scalar_t* row, int64_t V, int k, float* buffer) {
  RowSummary row_summary(k);
  float& m = row_summary.max;
  float slice_max[kTile / kSlice];
  for (int64_t base = 0; base < V; base += kTile) {
    const int64_t n = std::min(kTile, V - base);
    const float* z = load_tile(row + base, n, buffer);
    const float tm = tile_maxima(z, n, slice_max);
    if (tm >= row_summary.top.threshold()) tile_topk(z, n, base, slice_max, row_summary.top);
    if (tm > m) {
      if (m > -kInf) {  // rescale S and D from the old max to tm
        const double shift = double(m) - double(tm);
        const double scale = std::exp(shift);
        row_summary.sum_d = scale * (row_summary.sum_d + shift * row_summary.sum);
        row_summary.sum *= scale;
      }
      m = tm;
    }
    if (m == -kInf) {
      // Every entry so far is -inf (or NaN, which max skips): nothing to add, but a NaN must
      // still poison the row.
      if (tile_has_nan(z, n)) row_summary.sum = std::numeric_limits<double>::quiet_NaN();
      continue;
    }
    tile_exp_sums<kFullEntropy>(z, n, m, row_summary.sum, row_summary.sum_d);
  }
  if (m == -kInf) row_summary.sum = std::numeric_limits<double>::quiet_NaN();  // all -inf: no lse
  return row_summary;
}

// ------------------------------------------------------------------------------------------------
// SPEC 1, the O(k) tail.
// ------------------------------------------------------------------------------------------------

// Kept in double: xflow_step feeds them to the policy before they are rounded to float32 outputs.
struct TopKStats {
  double prob[kMaxTopK];  // p(1..k)
  double margin;          // p(1) - p(2)
  double entropy;         // H_k
};

// From the summary: p(j) = exp(z(j) - lse) = exp(z(j) - m) / S; margin = p(1) - p(2);
// H_k = -(1/log k) * sum_{j<=k} q_j log q_j, q_j = p(j) / sum_{i<=k} p(i)  (0 log 0 = 0).
// O(k) work per row, so evaluated in double from the double S.
inline TopKStats finish_topk(const RowSummary& row_summary) {
  const TopK& top = row_summary.top;
  TopKStats stats;
  double p_sum = 0.0;
  for (int j = 0; j < top.k; ++j) {
    stats.prob[j] = std::exp(double(top.value[j]) - double(row_summary.max)) / row_summary.sum;
    p_sum += stats.prob[j];
  }
  double q_log_q = 0.0;
  for (int j = 0; j < top.k; ++j) {
    const double q = stats.prob[j] / p_sum;
    if (q > 0.0) q_log_q += q * std::log(q);
  }
  stats.margin = stats.prob[0] - stats.prob[1];
  stats.entropy = -q_log_q / std::log(double(top.k));
  return stats;
}

// The top-k ids for output: a slot no entry filled (only in a row holding NaN, whose lse is NaN)
// reads 0, so every id indexes the vocabulary.
inline int64_t output_id(int64_t id) { return id == kNoId ? 0 : id; }

}  // namespace cpu
}  // namespace mdfast
