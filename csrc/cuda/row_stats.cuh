// The streaming row pass shared by the CUDA kernels (SPEC 1): one read of a logits row z gives its
// log-sum-exp, its exact top-k and, optionally, the sum behind the full entropy; everything else of
// SPEC 1 is O(k) scalar math on that summary, in double (`row_tail`).
//
//   lse = log sum_v exp(z_v); p_v = exp(z_v - lse); argmax x = smallest index among the maximal z;
//   top-k: the k largest p, descending, ties broken by smaller index; margin = p(1) - p(2);
//   H_k = -(1/log k) * sum_{j<=k} q_j log q_j, q_j = p(j) / sum_{i<=k} p(i) (0 log 0 = 0);
//   H_full = lse - sum_v p_v z_v.
//
// Layout of the pass. A block of kRowThreads threads streams a segment [lo, hi) of one row (the
// whole row, or one chunk of it when rows are too few to fill the GPU). Every lane reads 8 logits
// per step (one 16-byte load of bf16/f16, two of float32) from a 16-byte aligned body; the few
// elements before the first aligned address and after the last whole vector are read by warp 0 in
// one extra scalar step. Warp w takes the groups w, w + 8, w + 16, ... of 32 lanes x 8 logits, with
// kStages groups of loads in flight per lane (software pipelining through registers).
//
// Per thread: a reference m (lazily updated: only when a value exceeds m + kLazyMargin, so the
// rescale branch is taken about once per row), and 8 float32 lanes S_e = sum exp(z - m) (and
// D_e = sum exp(z - m)(z - m) for the full entropy), one per element slot, ~60 terms each for
// V = 126464: float32 error ~1e-7 relative, then added in double.
// Per warp: an exact running top-k of (value, index) pairs, distributed over lanes 0..k-1 (lane j
// holds slot j, sorted by (value desc, index asc)), with the k-th slot (tv, ti) known to every lane.
// A step costs one vote when no lane holds a value >= tv (the common case after the first steps):
// the "block-max filter" of the CPU backend, at warp granularity. Otherwise the candidates of the
// step (those ranking before slot k) are inserted one at a time, warp-uniformly (ballot, shuffles),
// never with local memory or atomics. Before the list is full, candidates are also filtered by the
// k-th largest of the 32 lane maxima (a bitonic sort across the warp), so the first step inserts
// about k elements rather than 256.
// Per block, after the stream: the k-th lists of the warps are merged by warp 0 (fixed order), and
// (m, S, D) of the threads are combined in double: a block max, then each thread rescales its sums
// to it, then fixed-order warp butterflies and a fixed-order sum over the warps. No floating-point
// atomics anywhere, so every result is bitwise reproducible for a given launch configuration (which
// depends only on the shapes and the device's multiprocessor count).
//
// Non-finite rows (ops.h): a NaN reaches S through exp(NaN) = NaN; +inf makes m = +inf and then
// z - m = NaN for that entry; an all -inf row has m = -inf, for which S is forced to NaN. So lse is
// not finite exactly for the rows the contract names. fmaxf skips NaN, and NaN never ranks, so the
// top-k ids stay inside the vocabulary (an empty slot reads id 0).
//
// Accuracy: exp(z - m) by ex2.approx.ftz (the instruction behind --use_fast_math's __expf, ~2 ulp)
// of (z - m) * log2(e): a relative error below ~1e-6 per term for z - m in [-16, 8] (the terms that
// matter), terms below e^-87 flushed to 0 (they are < 1e-38 of the largest term). Sums of positive
// terms keep that relative error. Everything per row after the stream (the block combine, p(j),
// lse, the entropies, the policy) is double, so the float32 outputs are within ~1e-6 of the float64
// reference for float32 logits. The kernels are written with explicit intrinsics and double math,
// so they give the same results with or without --use_fast_math.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace mdfast {
namespace gpu {

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxTopK = 8;  // ops.h: 2 <= k <= 8
// Sorts after every real index: empty top-k slots hold (-inf, kSentinel), so a row with fewer than
// k finite entries fills its remaining slots with its -inf entries, smallest indices first.
constexpr int kSentinel = 0x7fffffff;
constexpr int kLaneElems = 8;  // logits per lane per step
// The row pass: 256 threads (8 warps) per block, <= 64 registers so that 4 blocks (1024 threads)
// share a multiprocessor. N = 512 rows then fill the 132 SMs of an H100 in one wave (528 slots),
// and 1024 threads x 32 bytes (two steps of one 16-byte bf16/f16 load, or one step of two float32
// loads: T::kStages) = 32 KiB of loads in flight per SM, about what Little's law asks for HBM3
// (3.35 TB/s x ~0.8 us / 132 SMs ~ 20 KiB).
constexpr int kRowThreads = 256;
constexpr int kRowWarps = kRowThreads / kWarp;
// The per-thread reference m moves only when a value exceeds m + kLazyMargin (terms up to e^8).
constexpr float kLazyMargin = 8.0f;
constexpr float kLog2e = 1.4426950408889634f;
// The split path: at most kMaxChunks chunks of a row, each at least kMinChunk logits, merged by a
// block of kMergeThreads threads (one chunk per thread).
constexpr int kMergeThreads = 128;
constexpr int kMergeWarps = kMergeThreads / kWarp;
constexpr int kMaxChunks = kMergeThreads;
constexpr int64_t kMinChunk = 4096;

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// 2^x, ~2 ulp, subnormal results flushed to 0, 2^-inf = 0, 2^NaN = NaN.
__device__ __forceinline__ float ex2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Neither NaN nor +-inf (bit test: independent of any fast-math assumption).
__device__ __forceinline__ bool is_finite(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

// ------------------------------------------------------------------------------------------------
// Logits element types: storage, 16-byte vector conversion, scalar load.
// ------------------------------------------------------------------------------------------------

struct F32 {
  using storage = float;
  static constexpr int kVec = 4;                        // elements per 16-byte vector
  static constexpr int kStages = 1;                     // steps of loads in flight (2 x 16 bytes each)
  static constexpr unsigned kNegInfWord = 0xff800000u;  // a 32-bit word of -inf elements
  static __device__ __forceinline__ float scalar(const storage* p) { return *p; }
  static __device__ __forceinline__ void convert(const uint4& r, float* z) {
    z[0] = __uint_as_float(r.x);
    z[1] = __uint_as_float(r.y);
    z[2] = __uint_as_float(r.z);
    z[3] = __uint_as_float(r.w);
  }
};

// bfloat16 is the upper half of a float32 (exact).
struct BF16 {
  using storage = uint16_t;
  static constexpr int kVec = 8;
  static constexpr int kStages = 2;  // steps of loads in flight (16 bytes each)
  static constexpr unsigned kNegInfWord = 0xff80ff80u;
  static __device__ __forceinline__ float scalar(const storage* p) { return __uint_as_float(unsigned(*p) << 16); }
  static __device__ __forceinline__ void pair(unsigned w, float* z) {
    z[0] = __uint_as_float(w << 16);  // little endian: the element of lower address is the low half
    z[1] = __uint_as_float(w & 0xffff0000u);
  }
  static __device__ __forceinline__ void convert(const uint4& r, float* z) {
    pair(r.x, z);
    pair(r.y, z + 2);
    pair(r.z, z + 4);
    pair(r.w, z + 6);
  }
};

// IEEE half -> float32 by the conversion instruction (exact, subnormals included).
struct F16 {
  using storage = uint16_t;
  static constexpr int kVec = 8;
  static constexpr int kStages = 2;
  static constexpr unsigned kNegInfWord = 0xfc00fc00u;
  static __device__ __forceinline__ float scalar(const storage* p) { return __half2float(__ushort_as_half(*p)); }
  static __device__ __forceinline__ void pair(unsigned w, float* z) {
    z[0] = __half2float(__ushort_as_half((unsigned short)(w & 0xffffu)));
    z[1] = __half2float(__ushort_as_half((unsigned short)(w >> 16)));
  }
  static __device__ __forceinline__ void convert(const uint4& r, float* z) {
    pair(r.x, z);
    pair(r.y, z + 2);
    pair(r.z, z + 4);
    pair(r.w, z + 6);
  }
};

// ------------------------------------------------------------------------------------------------
// Warp and block reductions, all in a fixed order.
// ------------------------------------------------------------------------------------------------

// Butterfly sums: every lane ends with the same bits (the pairwise additions are commutative).
__device__ __forceinline__ double warp_sum(double x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

// The k-th largest of the 32 lanes' x (no NaN), by a bitonic sort across the warp, descending.
__device__ __forceinline__ float warp_kth_largest(float x, int k, int lane) {
#pragma unroll
  for (int size = 2; size <= kWarp; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      const float y = __shfl_xor_sync(kFullMask, x, stride);
      const bool keep_max = ((lane & stride) == 0) == ((lane & size) == 0);
      x = keep_max ? fmaxf(x, y) : fminf(x, y);
    }
  }
  return __shfl_sync(kFullMask, x, k - 1);
}

// ------------------------------------------------------------------------------------------------
// The running top-k of a warp.
// ------------------------------------------------------------------------------------------------

// (v, i) ranks before (w, j) in SPEC 1's order: "the k largest p, descending, ties broken by
// smaller index" (p is monotone in z). NaN never ranks before anything. The comparisons are written
// in PTX without .ftz: --use_fast_math compiles float compares with .ftz, under which subnormal
// logits would tie with 0 (and one another). The filters elsewhere (vmax >= tv, z >= bound) may
// stay .ftz: flushing is monotone, so they only let more candidates through to this exact test.
__device__ __forceinline__ bool ranks_before(float v, int i, float w, int j) {
  unsigned r;
  asm("{\n\t.reg .pred gt, eq, lt;\n\t"
      "setp.gt.f32 gt, %1, %2;\n\t"
      "setp.eq.f32 eq, %1, %2;\n\t"
      "setp.lt.s32 lt, %3, %4;\n\t"
      "and.pred eq, eq, lt;\n\t"
      "or.pred gt, gt, eq;\n\t"
      "selp.u32 %0, 1, 0, gt;\n\t}"
      : "=r"(r)
      : "f"(v), "f"(w), "r"(i), "r"(j));
  return r != 0;
}

struct WarpTopK {
  float v;  // this lane's slot (lanes < k): sorted by (value desc, index asc)
  int i;
  float tv;  // slot k - 1, in every lane: what a candidate must rank before to enter
  int ti;

  __device__ __forceinline__ void init() {
    v = neg_inf();
    i = kSentinel;
    tv = neg_inf();
    ti = kSentinel;
  }

  // Inserts (cv, ci), the same in every lane (warp-uniform call), which must rank before slot k-1:
  // the slots it ranks before are a suffix [pos, k); they move down one, it takes pos.
  __device__ __forceinline__ void insert(float cv, int ci, int k, int lane) {
    const bool moves = lane < k && ranks_before(cv, ci, v, i);
    const unsigned movers = __ballot_sync(kFullMask, moves);
    const int pos = __ffs(movers) - 1;
    const float up_v = __shfl_up_sync(kFullMask, v, 1);
    const int up_i = __shfl_up_sync(kFullMask, i, 1);
    if (moves) {
      v = lane == pos ? cv : up_v;
      i = lane == pos ? ci : up_i;
    }
    tv = __shfl_sync(kFullMask, v, k - 1);
    ti = __shfl_sync(kFullMask, i, k - 1);
  }

  // Offers a candidate read from memory (same address in every lane); false when it (and so every
  // later entry of the sorted list it comes from) cannot enter.
  __device__ __forceinline__ bool offer_sorted(float cv, int ci, int k, int lane) {
    if (ci == kSentinel || !ranks_before(cv, ci, tv, ti)) return false;
    insert(cv, ci, k, lane);
    return true;
  }
};

// ------------------------------------------------------------------------------------------------
// Per-thread exp sums.
// ------------------------------------------------------------------------------------------------

template <bool kFull>
struct ThreadSums {
  float m;     // reference: S_e = sum exp(z - m); -inf until a value > -inf is seen
  float mref;  // m, or 0 while m = -inf (then z - mref = z: -inf adds 0, NaN poisons S)
  float mlim;  // m + kLazyMargin: a larger value moves m
  float s[kLaneElems];
  float d[kFull ? kLaneElems : 1];

  __device__ __forceinline__ void init() {
    m = neg_inf();
    mref = 0.0f;
    mlim = neg_inf();
#pragma unroll
    for (int e = 0; e < kLaneElems; ++e) s[e] = 0.0f;
#pragma unroll
    for (int e = 0; e < (kFull ? kLaneElems : 1); ++e) d[e] = 0.0f;
  }

  // m -> vmax (> m + margin): S' = S e^(m - vmax), D' = (D + (m - vmax) S) e^(m - vmax). The factor in
  // double (rare: about once per row and thread). From m = -inf the sums are 0 (or NaN, kept).
  __device__ __forceinline__ void move_reference(float vmax) {
    float scale = 0.0f, shift = 0.0f;
    if (m != neg_inf()) {
      const double shift_d = double(m) - double(vmax);
      scale = float(exp(shift_d));
      shift = float(shift_d);
    }
#pragma unroll
    for (int e = 0; e < kLaneElems; ++e) {
      if (kFull) d[e] = (d[e] + shift * s[e]) * scale;
      s[e] *= scale;
    }
    m = vmax;
    mref = vmax;
    mlim = vmax + kLazyMargin;
  }

  __device__ __forceinline__ void add(const float (&z)[kLaneElems]) {
#pragma unroll
    for (int e = 0; e < kLaneElems; ++e) {
      const float dz = z[e] - mref;
      const float ex = ex2_approx(dz * kLog2e);
      s[e] += ex;
      // exp(dz) dz with -inf entries (ex = 0) adding 0, not 0 * -inf
      if (kFull) d[e] = fmaf(ex, fmaxf(dz, -104.0f), d[e]);
    }
  }

  __device__ __forceinline__ double sum() const {
    double total = 0.0;
#pragma unroll
    for (int e = 0; e < kLaneElems; ++e) total += double(s[e]);
    return total;
  }

  __device__ __forceinline__ double sum_d() const {
    double total = 0.0;
    if (kFull) {
#pragma unroll
      for (int e = 0; e < kLaneElems; ++e) total += double(d[e]);
    }
    return total;
  }
};

// ------------------------------------------------------------------------------------------------
// One step of a lane: 8 logits z (invalid ones are -inf and have no bit in `valid`); element e has
// index base[e / kVec] + e % kVec. Called by all 32 lanes of a warp together.
// ------------------------------------------------------------------------------------------------

template <int kVec, bool kFull>
__device__ __forceinline__ void lane_step(const float (&z)[kLaneElems], const int (&base)[kLaneElems / kVec],
                                          unsigned valid, int k, int lane, ThreadSums<kFull>& sums,
                                          WarpTopK& top) {
  float vmax = z[0];
#pragma unroll
  for (int e = 1; e < kLaneElems; ++e) vmax = fmaxf(vmax, z[e]);  // skips NaN (all NaN: NaN)

  if (vmax > sums.mlim) sums.move_reference(vmax);
  sums.add(z);

  // Only a step holding a value >= the k-th so far can change the top-k.
  if (!__any_sync(kFullMask, vmax >= top.tv)) return;

  // Before the list is full, also skip what ranks below the k-th largest lane maximum: k distinct
  // elements of this step reach that value (lanes without data contribute -inf, which filters none).
  float bound = neg_inf();
  if (top.ti == kSentinel) bound = warp_kth_largest(vmax == vmax ? vmax : neg_inf(), k, lane);

  unsigned pending = 0;
  if (vmax >= top.tv && vmax >= bound) {
#pragma unroll
    for (int e = 0; e < kLaneElems; ++e) {
      const int idx = base[e / kVec] + e % kVec;
      if (((valid >> e) & 1u) && z[e] >= bound && ranks_before(z[e], idx, top.tv, top.ti)) pending |= 1u << e;
    }
  }
  // One candidate at a time, the lowest pending lane's lowest pending element first (any order gives
  // the same list: the top-k of a set under a total order is unique).
  while (true) {
    const unsigned lanes = __ballot_sync(kFullMask, pending != 0);
    if (lanes == 0) break;
    const int src = __ffs(lanes) - 1;
    const int pick = __ffs(pending) - 1;
    float cv = z[0];
    int ci = base[0];
#pragma unroll
    for (int e = 1; e < kLaneElems; ++e) {
      if (pick == e) {
        cv = z[e];
        ci = base[e / kVec] + e % kVec;
      }
    }
    cv = __shfl_sync(kFullMask, cv, src);
    ci = __shfl_sync(kFullMask, ci, src);
    if (lane == src) pending &= pending - 1;
    if (ranks_before(cv, ci, top.tv, top.ti)) top.insert(cv, ci, k, lane);
  }
}

// Loads group g (32 lanes x kU vectors) of the aligned body; vectors past the end read as -inf.
template <class T>
__device__ __forceinline__ void load_group(uint4 (&dst)[kLaneElems / T::kVec], const uint4* body, int g, int nvec,
                                           int lane) {
  constexpr int kU = kLaneElems / T::kVec;
#pragma unroll
  for (int u = 0; u < kU; ++u) {
    const int vec = g * (kWarp * kU) + u * kWarp + lane;
    if (vec < nvec) {
      dst[u] = __ldcs(body + vec);  // streamed once: evict-first
    } else {
      dst[u] = make_uint4(T::kNegInfWord, T::kNegInfWord, T::kNegInfWord, T::kNegInfWord);
    }
  }
}

// Streams row[lo, hi) with a block of kWarps warps: this thread's sums and this warp's top-k.
// Must be called by every thread of the block (the loops are warp-uniform).
template <class T, bool kFull, int kWarps>
__device__ __forceinline__ void scan_segment(const typename T::storage* row, int lo, int hi, int k, int warp,
                                             int lane, ThreadSums<kFull>& sums, WarpTopK& top) {
  using storage = typename T::storage;
  constexpr int kVec = T::kVec;
  constexpr int kU = kLaneElems / kVec;
  constexpr int kGroup = kWarp * kU;  // vectors per group

  // Scalar head (up to the first 16-byte aligned element) and tail (after the last whole vector).
  const unsigned misalign = unsigned(reinterpret_cast<uintptr_t>(row + lo) & 15u);
  int head = misalign ? int((16u - misalign) / sizeof(storage)) : 0;
  head = min(head, hi - lo);
  const int body = lo + head;
  const int nvec = (hi - body) / kVec;
  const int tail = body + nvec * kVec;
  const int nscalar = head + (hi - tail);  // <= 2 (kVec - 1) <= 14 < 32

  if (warp == 0 && nscalar > 0) {
    float z[kLaneElems];
#pragma unroll
    for (int e = 0; e < kLaneElems; ++e) z[e] = neg_inf();
    int base[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) base[u] = 0;
    unsigned valid = 0;
    if (lane < nscalar) {
      const int idx = lane < head ? lo + lane : tail + (lane - head);
      z[0] = T::scalar(row + idx);
      base[0] = idx;
      valid = 1;
    }
    lane_step<kVec, kFull>(z, base, valid, k, lane, sums, top);
  }

  const uint4* vbody = reinterpret_cast<const uint4*>(row + body);
  const int ngroups = (nvec + kGroup - 1) / kGroup;
  constexpr int kStages = T::kStages;
  uint4 buf[kStages][kU];
#pragma unroll
  for (int s = 0; s < kStages; ++s) load_group<T>(buf[s], vbody, warp + s * kWarps, nvec, lane);
  for (int g0 = warp; g0 < ngroups; g0 += kStages * kWarps) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      const int g = g0 + s * kWarps;
      if (g < ngroups) {  // warp-uniform
        float z[kLaneElems];
#pragma unroll
        for (int u = 0; u < kU; ++u) T::convert(buf[s][u], z + u * kVec);
        // refill this stage with the group kStages rounds ahead before working on this one
        load_group<T>(buf[s], vbody, g + kStages * kWarps, nvec, lane);
        int base[kU];
        unsigned valid = 0;
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          const int vec = g * kGroup + u * kWarp + lane;
          base[u] = body + vec * kVec;
          if (vec < nvec) valid |= ((1u << kVec) - 1u) << (u * kVec);
        }
        lane_step<kVec, kFull>(z, base, valid, k, lane, sums, top);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Block combine.
// ------------------------------------------------------------------------------------------------

// The sums of a row (or chunk) relative to M: S = sum exp(z - M), D = sum exp(z - M)(z - M).
struct RowTotals {
  double M, S, D;
};

template <int kWarps>
struct CombineScratch {
  float wmax[kWarps];
  double wsum[kWarps];
  double wsum_d[kWarps];
  float top_v[kWarps * kMaxTopK];
  int top_i[kWarps * kMaxTopK];
};

// Combines every thread's (m, S, D) (relative to its own m) into the block's, in a fixed order; every
// thread gets the result. A thread with m = -inf contributes S * 0 (0, or NaN that it keeps).
template <int kWarps, bool kFull>
__device__ __forceinline__ RowTotals block_combine(float m, double S, double D, int warp, int lane,
                                                   CombineScratch<kWarps>& sh) {
  const float wm = warp_max(m);
  if (lane == 0) sh.wmax[warp] = wm;
  __syncthreads();
  float Mf = sh.wmax[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) Mf = fmaxf(Mf, sh.wmax[w]);
  const double M = double(Mf);
  double scale = 1.0, shift = 0.0;
  if (m != Mf) {
    if (m == neg_inf()) {
      scale = 0.0;
    } else {
      shift = double(m) - M;
      scale = exp(shift);
    }
  }
  double s = S * scale;
  double d = kFull ? (D + shift * S) * scale : 0.0;
  s = warp_sum(s);
  if (kFull) d = warp_sum(d);
  if (lane == 0) {
    sh.wsum[warp] = s;
    sh.wsum_d[warp] = d;
  }
  __syncthreads();
  RowTotals totals{M, 0.0, 0.0};
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    totals.S += sh.wsum[w];
    if (kFull) totals.D += sh.wsum_d[w];
  }
  return totals;
}

// Merges the warps' top-k lists into warp 0's (fixed order: warp 1, 2, ...). Every thread calls it.
template <int kWarps>
__device__ __forceinline__ void block_merge_topk(WarpTopK& top, int k, int warp, int lane, CombineScratch<kWarps>& sh) {
  if (lane < k) {
    sh.top_v[warp * kMaxTopK + lane] = top.v;
    sh.top_i[warp * kMaxTopK + lane] = top.i;
  }
  __syncthreads();
  if (warp == 0) {
    for (int w = 1; w < kWarps; ++w) {
      for (int j = 0; j < k; ++j) {
        if (!top.offer_sorted(sh.top_v[w * kMaxTopK + j], sh.top_i[w * kMaxTopK + j], k, lane)) break;
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------
// SPEC 1, the O(k) tail, in warp 0 (lane j < k holds slot j of the merged, sorted list).
// ------------------------------------------------------------------------------------------------

struct RowTail {
  double p;        // this lane's p(j + 1), lanes < k
  double p1;       // p(1) = c
  double lse;      // m + log S
  double margin;   // p(1) - p(2)
  double entropy;  // H_k
  double entropy_full;
  int64_t id;   // this lane's top-k id (an empty slot reads 0)
  int64_t id0;  // argmax
};

__device__ __forceinline__ RowTail row_tail(const WarpTopK& top, const RowTotals& totals, int k, int lane) {
  RowTail tail;
  // All -inf (M = -inf): no distribution; NaN like the CPU backend (the row is then reported).
  const double S = totals.M == double(neg_inf()) ? __longlong_as_double(0x7ff8000000000000LL) : totals.S;
  // p(j) = exp(z_(j) - lse) = exp(z_(j) - M) / S
  const double e = lane < k ? exp(double(top.v) - totals.M) : 0.0;
  tail.p = e / S;
  // H_k = -(1/log k) * sum_{j<=k} q_j log q_j,  q_j = p(j) / sum_{i<=k} p(i)  (0 log 0 = 0)
  const double q = e / warp_sum(e);
  const double q_log_q = q > 0.0 ? q * log(q) : 0.0;
  tail.entropy = -warp_sum(q_log_q) / log(double(k));
  tail.p1 = __shfl_sync(kFullMask, tail.p, 0);
  tail.margin = tail.p1 - __shfl_sync(kFullMask, tail.p, 1);
  const double log_s = log(S);
  tail.lse = totals.M + log_s;
  // H_full = lse - sum_v p_v z_v = log S - D / S (relative to M: no cancellation against M)
  tail.entropy_full = log_s - totals.D / S;
  tail.id = top.i == kSentinel ? 0 : top.i;
  tail.id0 = __shfl_sync(kFullMask, tail.id, 0);
  return tail;
}

// A block of kWarps warps streams z[lo, hi): returns the segment's (M, S, D) totals (every thread)
// and leaves its merged top-k in `top` (warp 0). What every row and chunk kernel starts with.
template <class T, bool kFull, int kWarps>
__device__ __forceinline__ RowTotals scan_block(const typename T::storage* z, int lo, int hi, int k, int warp, int lane,
                                                WarpTopK& top, CombineScratch<kWarps>& sh) {
  ThreadSums<kFull> sums;
  sums.init();
  top.init();
  scan_segment<T, kFull, kWarps>(z, lo, hi, k, warp, lane, sums, top);
  const RowTotals totals = block_combine<kWarps, kFull>(sums.m, sums.sum(), sums.sum_d(), warp, lane, sh);
  block_merge_topk<kWarps>(top, k, warp, lane, sh);
  return totals;
}

// ------------------------------------------------------------------------------------------------
// The split path: chunks of a row stream into a workspace, a merge kernel combines them.
// ------------------------------------------------------------------------------------------------

struct ChunkParts {
  float* m;     // (rows, chunks)
  double* s;    // (rows, chunks)
  double* d;    // (rows, chunks)
  float* v;     // (rows, chunks, k)
  int* i;       // (rows, chunks, k)
};

// The memory ChunkParts points into, for `count` = rows * chunks partials, on the device of
// `options`. Freed when it goes out of scope after the launches: the caching allocator reuses it
// only in stream order, after the kernels that read it.
struct ChunkWorkspace {
  at::Tensor m, s, d, v, i;

  ChunkWorkspace(const at::TensorOptions& options, int64_t count, int64_t k)
      : m(at::empty({count}, options.dtype(at::kFloat))),
        s(at::empty({count}, options.dtype(at::kDouble))),
        d(at::empty({count}, options.dtype(at::kDouble))),
        v(at::empty({count * k}, options.dtype(at::kFloat))),
        i(at::empty({count * k}, options.dtype(at::kInt))) {}

  ChunkParts parts() const {
    return {m.data_ptr<float>(), s.data_ptr<double>(), d.data_ptr<double>(), v.data_ptr<float>(), i.data_ptr<int>()};
  }
};

// Grid (rows * chunks,), kRowThreads threads: the partial (m, S, D, top-k) of logits row
// [c * chunk_len, min((c + 1) * chunk_len, V)). In an unnamed namespace: each .cu that launches it
// gets its own kernel (no host stub shared between translation units).
namespace {
template <class T, bool kFull>
__global__ void __launch_bounds__(kRowThreads, 4)
    chunk_kernel(const typename T::storage* __restrict__ logits, int64_t N, int V, int64_t stride_b,
                 int64_t stride_n, int k, int chunks, int chunk_len, ChunkParts parts) {
  __shared__ CombineScratch<kRowWarps> sh;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = int64_t(blockIdx.x) / chunks;
  const int c = int(int64_t(blockIdx.x) % chunks);
  const typename T::storage* z = logits + (row / N) * stride_b + (row % N) * stride_n;
  const int lo = c * chunk_len;
  const int hi = min(lo + chunk_len, V);

  WarpTopK top;
  const RowTotals totals = scan_block<T, kFull, kRowWarps>(z, lo, hi, k, warp, lane, top, sh);
  const int64_t at = row * chunks + c;
  if (warp == 0) {
    if (lane < k) {
      parts.v[at * k + lane] = top.v;
      parts.i[at * k + lane] = top.i;
    }
    if (lane == 0) {
      parts.m[at] = float(totals.M);
      parts.s[at] = totals.S;
      parts.d[at] = totals.D;
    }
  }
}
}  // namespace

// In a merge block of kMergeThreads threads (chunks <= kMergeThreads): the row's totals (every
// thread) and its merged top-k (warp 0), chunk by chunk in index order.
template <bool kFull>
__device__ __forceinline__ RowTotals merge_chunks(const ChunkParts& parts, int64_t row, int chunks, int k, int warp,
                                                  int lane, WarpTopK& top, CombineScratch<kMergeWarps>& sh) {
  top.init();
  if (warp == 0) {
    for (int c = 0; c < chunks; ++c) {
      const int64_t at = (row * chunks + c) * k;
      for (int j = 0; j < k; ++j) {
        if (!top.offer_sorted(parts.v[at + j], parts.i[at + j], k, lane)) break;
      }
    }
  }
  const int c = threadIdx.x;
  float m = neg_inf();
  double s = 0.0, d = 0.0;
  if (c < chunks) {
    m = parts.m[row * chunks + c];
    s = parts.s[row * chunks + c];
    d = parts.d[row * chunks + c];
  }
  return block_combine<kMergeWarps, kFull>(m, s, d, warp, lane, sh);
}

// ------------------------------------------------------------------------------------------------
// Host side: the launch shape of the statistics pass.
// ------------------------------------------------------------------------------------------------

struct PassShape {
  int chunks;     // 1: one block streams a whole row
  int chunk_len;  // logits per chunk (a multiple of 64)
};

// One block per row when the rows fill the GPU (>= 2 per SM: N = 512 on 132 SMs gives one wave of
// up to 4 blocks per SM). Fewer rows are cut into chunks so that about 4 blocks per SM stream, each
// chunk at least kMinChunk logits, at most kMaxChunks per row.
inline PassShape pass_shape(int64_t rows, int64_t V, int sms) {
  PassShape shape{1, int(V)};
  if (rows >= 2 * int64_t(sms)) return shape;
  int64_t want = (4 * int64_t(sms) + rows - 1) / rows;
  want = std::min<int64_t>(want, std::max<int64_t>(1, V / kMinChunk));
  want = std::min<int64_t>(want, kMaxChunks);
  if (want <= 1) return shape;
  int64_t len = (V + want - 1) / want;
  len = (len + 63) / 64 * 64;
  shape.chunk_len = int(len);
  shape.chunks = int((V + len - 1) / len);
  return shape;
}

// The multiprocessor count of a device, asked once (no synchronisation).
inline int multiprocessors(int device) {
  static int cache[64] = {0};
  if (device < 0 || device >= 64) device = 0;
  if (cache[device] == 0) {
    int count = 0;
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || count <= 0) {
      (void)cudaGetLastError();
      count = 132;
    }
    cache[device] = count;
  }
  return cache[device];
}

// The statistics pass over logits (B, N, V): one block per row (`row_launch(data, N, V, rows)`),
// or with few rows the split path, chunk_kernel into a workspace, then
// `merge_launch(parts, chunks, rows)`. token_stats and xflow_step differ only in those two
// kernels. In the unnamed namespace, like chunk_kernel, which it launches.
namespace {
template <class T, bool kFull, class RowLaunch, class MergeLaunch>
void launch_pass(const at::Tensor& logits, int k, cudaStream_t stream, RowLaunch&& row_launch,
                 MergeLaunch&& merge_launch) {
  const int64_t B = logits.size(0), N = logits.size(1), rows = B * N;
  const int V = int(logits.size(2));
  const auto* data = reinterpret_cast<const typename T::storage*>(logits.data_ptr());
  const PassShape shape = pass_shape(rows, V, multiprocessors(logits.get_device()));
  if (shape.chunks == 1) {
    row_launch(data, N, V, rows);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const int64_t parts_count = rows * shape.chunks;
  const ChunkWorkspace workspace(logits.options(), parts_count, k);
  const ChunkParts parts = workspace.parts();
  chunk_kernel<T, kFull><<<unsigned(parts_count), kRowThreads, 0, stream>>>(
      data, N, V, logits.stride(0), logits.stride(1), k, shape.chunks, shape.chunk_len, parts);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  merge_launch(parts, shape.chunks, rows);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
}  // namespace

}  // namespace gpu
}  // namespace mdfast
