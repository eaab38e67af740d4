// SPEC 1 on the CPU: the token statistics of every logits row, one streaming pass per row
// (cpu/row_stats.h), chunks of rows spread over the calling thread and torch's (cpu/parallel.h),
// every row computed whole by one thread.
#include "cpu/parallel.h"
#include "cpu/row_stats.h"
#include "ops.h"

namespace mdfast {
namespace {

using TokenStatsOutputs = TokenStatsTensors::Pointers;

// SPEC 1 per row z = logits[b, n, :]:
//   lse = log sum_v exp(z_v); argmax x = smallest index among the maximal z;
//   top-k: the k largest p, descending, ties broken by smaller index; margin = p(1) - p(2);
//   H_k = -(1/log k) * sum_{j<=k} q_j log q_j; H_full = lse - sum_v p_v z_v.
template <bool kFullEntropy, typename scalar_t>
void token_stats_rows(const at::Tensor& logits, int k, const TokenStatsOutputs& out) {
  const int64_t N = logits.size(1), V = logits.size(2);
  const int64_t rows = logits.size(0) * N;
  const int64_t stride_b = logits.stride(0), stride_n = logits.stride(1);
  const scalar_t* data = logits.data_ptr<scalar_t>();
  cpu::parallel_chunks(rows, cpu::rows_per_chunk(V), [&](int64_t begin, int64_t end) {
    float buffer[cpu::kTile];  // bf16/f16 tiles converted to float32
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = data + (r / N) * stride_b + (r % N) * stride_n;
      const cpu::RowSummary summary = cpu::summarize_row<kFullEntropy>(row, V, k, buffer);
      const cpu::TopKStats stats = cpu::finish_topk(summary);
      for (int j = 0; j < k; ++j) {
        out.topk_probs[r * k + j] = float(stats.prob[j]);
        out.topk_ids[r * k + j] = cpu::output_id(summary.top.id[j]);
      }
      out.argmax[r] = out.topk_ids[r * k];
      out.lse[r] = float(summary.lse());
      out.margin[r] = float(stats.margin);
      out.entropy_topk[r] = float(stats.entropy);
      if constexpr (kFullEntropy) out.entropy_full[r] = float(summary.entropy_full());
    }
  });
}

}  // namespace

std::vector<at::Tensor> token_stats(const at::Tensor& logits, int64_t k, bool full_entropy) {
  const TokenStatsTensors t(logits, k, full_entropy);
  const TokenStatsOutputs out = t.pointers();
  cpu::dispatch_float_types(logits.scalar_type(), "token_stats: logits", [&](auto tag) {
    using scalar_t = decltype(tag);
    if (full_entropy)
      token_stats_rows<true, scalar_t>(logits, int(k), out);
    else
      token_stats_rows<false, scalar_t>(logits, int(k), out);
  });
  return t.list();
}

}  // namespace mdfast
