// SPEC 1 on CUDA: the token statistics of every logits row, one streaming pass per row
// (cuda/row_stats.cuh), no host synchronisation.
//
//   lse = log sum_v exp(z_v); argmax x = smallest index among the maximal z;
//   top-k: the k largest p, descending, ties broken by smaller index; margin = p(1) - p(2);
//   H_k = -(1/log k) * sum_{j<=k} q_j log q_j; H_full = lse - sum_v p_v z_v.
//
// Launches (pass_shape decides):
// - rows >= 2 x SMs: `stats_row_kernel`, grid (rows,), 256 threads: one block streams a row and
//   writes its statistics (N = 512 bf16 rows of V = 126464: 512 blocks, one wave at 4 blocks/SM);
// - fewer rows: `chunk_kernel`, grid (rows x chunks,), 256 threads, writes each chunk's
//   (m, S, D, top-k) to a workspace, then `stats_merge_kernel`, grid (rows,), 128 threads, merges
//   the chunks of a row in chunk order and writes its statistics.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>


#include "cuda/row_stats.cuh"
#include "ops.h"

namespace mdfast {
namespace {

using namespace gpu;

using StatsOut = TokenStatsTensors::Pointers;

// Warp 0 of a block, lanes j < k holding slot j: the row's outputs.
template <bool kFull>
__device__ __forceinline__ void write_stats(const RowTail& tail, int64_t row, int k, int lane, const StatsOut& out) {
  if (lane < k) {
    out.topk_probs[row * k + lane] = float(tail.p);
    out.topk_ids[row * k + lane] = tail.id;
  }
  if (lane == 0) {
    out.argmax[row] = tail.id0;
    out.lse[row] = float(tail.lse);
    out.margin[row] = float(tail.margin);
    out.entropy_topk[row] = float(tail.entropy);
    if (kFull) out.entropy_full[row] = float(tail.entropy_full);
  }
}

// Grid (rows,), kRowThreads threads: row r = (r / N, r % N) streamed whole.
template <class T, bool kFull>
__global__ void __launch_bounds__(kRowThreads, 4)
    stats_row_kernel(const typename T::storage* __restrict__ logits, int64_t N, int V, int64_t stride_b,
                     int64_t stride_n, int k, StatsOut out) {
  __shared__ CombineScratch<kRowWarps> sh;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = blockIdx.x;
  const typename T::storage* z = logits + (row / N) * stride_b + (row % N) * stride_n;

  WarpTopK top;
  const RowTotals totals = scan_block<T, kFull, kRowWarps>(z, 0, V, k, warp, lane, top, sh);
  if (warp == 0) write_stats<kFull>(row_tail(top, totals, k, lane), row, k, lane, out);
}

// Grid (rows,), kMergeThreads threads: the chunks of a row (chunk_kernel) merged in chunk order.
template <bool kFull>
__global__ void __launch_bounds__(kMergeThreads)
    stats_merge_kernel(ChunkParts parts, int chunks, int k, StatsOut out) {
  __shared__ CombineScratch<kMergeWarps> sh;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t row = blockIdx.x;
  WarpTopK top;
  const RowTotals totals = merge_chunks<kFull>(parts, row, chunks, k, warp, lane, top, sh);
  if (warp == 0) write_stats<kFull>(row_tail(top, totals, k, lane), row, k, lane, out);
}

template <class T, bool kFull>
void launch_stats(const at::Tensor& logits, int k, const StatsOut& out, cudaStream_t stream) {
  launch_pass<T, kFull>(
      logits, k, stream,
      [&](const typename T::storage* data, int64_t N, int V, int64_t rows) {
        stats_row_kernel<T, kFull>
            <<<unsigned(rows), kRowThreads, 0, stream>>>(data, N, V, logits.stride(0), logits.stride(1), k, out);
      },
      [&](const ChunkParts& parts, int chunks, int64_t rows) {
        stats_merge_kernel<kFull><<<unsigned(rows), kMergeThreads, 0, stream>>>(parts, chunks, k, out);
      });
}

template <bool kFull>
void dispatch_stats(const at::Tensor& logits, int k, const StatsOut& out, cudaStream_t stream) {
  switch (logits.scalar_type()) {
    case at::kFloat:
      launch_stats<F32, kFull>(logits, k, out, stream);
      break;
    case at::kBFloat16:
      launch_stats<BF16, kFull>(logits, k, out, stream);
      break;
    default:  // float16 (mdfast.ops admits only these three)
      launch_stats<F16, kFull>(logits, k, out, stream);
  }
}

}  // namespace

std::vector<at::Tensor> token_stats(const at::Tensor& logits, int64_t k, bool full_entropy) {
  const c10::cuda::CUDAGuard guard(logits.device());
  const TokenStatsTensors t(logits, k, full_entropy);
  if (logits.size(0) * logits.size(1) == 0) return t.list();
  const StatsOut out = t.pointers();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (full_entropy)
    dispatch_stats<true>(logits, int(k), out, stream);
  else
    dispatch_stats<false>(logits, int(k), out, stream);
  return t.list();
}

}  // namespace mdfast
