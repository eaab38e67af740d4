// Work over rows spread on torch's threads, in the way that degrades least when the cores are
// shared with other processes.
//
// The calling thread works through the chunks of rows itself, taking the next one from a shared
// counter, while at::get_num_threads() - 1 helpers posted to torch's inter-op thread pool
// (at::launch) take chunks from the same counter when the OS gives them a core. The call returns
// as soon as every chunk is done: it never waits for a helper that has not started (that one finds
// no chunk left and ends), only for chunks a helper is inside, and it waits on a condition
// variable, never spinning. So a call on busy cores degrades to the caller doing the work alone
// instead of stalling at a barrier until every thread got a time slice (an OpenMP region, with
// its spinning waits, does that), and the extension needs no OpenMP runtime of its own. Every row is
// computed whole by one thread, so the results never depend on the thread count or on which thread
// took which chunk. In a process forked after the library was loaded everything stays on the
// calling thread: the pool's threads did not survive the fork, and signalling its inherited
// condition variable can block forever.
#pragma once

#include <ATen/Parallel.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

namespace mdfast {
namespace cpu {

// Elements a chunk should hold: ~1 MiB of float32, read in ~0.1 ms on one core, so a call over a
// few MiB still splits, and a helper that the OS holds back costs at most that much.
constexpr int64_t kChunkElements = int64_t(1) << 18;

// Set in the child of a fork (registered when the library loads).
inline std::atomic<bool> in_forked_child{false};
inline void mark_forked_child() { in_forked_child.store(true); }
inline const int fork_handler_registered = pthread_atfork(nullptr, nullptr, mark_forked_child);

// Rows per chunk for rows of `row_elements` elements (at least one).
inline int64_t rows_per_chunk(int64_t row_elements) {
  return std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, row_elements));
}

// The chunks of one call, shared with its helpers (which may outlive the call: they hold it by a
// shared_ptr and touch `work` only after claiming a chunk, which no helper can do once all are done).
struct ChunkQueue {
  int64_t n, chunk, chunks;
  const std::function<void(int64_t, int64_t)>* work;
  std::atomic<int64_t> next{0}, done{0};
  std::mutex mutex;
  std::condition_variable all_done;

  // Takes chunks until none is left; true if this thread finished the last one.
  bool drain() {
    bool finished_last = false;
    for (int64_t c = next.fetch_add(1); c < chunks; c = next.fetch_add(1)) {
      (*work)(c * chunk, std::min(n, (c + 1) * chunk));
      finished_last = done.fetch_add(1) + 1 == chunks;
    }
    return finished_last;
  }
};

// Calls fn(begin, end) on consecutive chunks [begin, end) of [0, n), each of `chunk` rows (the last
// one shorter), on the calling thread and up to at::get_num_threads() - 1 helpers (see above); all
// on the calling thread when there is one chunk or one thread, inside a parallel region, or in a
// forked child. fn must not throw.
template <typename Fn>
void parallel_chunks(int64_t n, int64_t chunk, const Fn& fn) {
  if (n <= 0) return;
  const int64_t chunks = (n + chunk - 1) / chunk;
  const int64_t helpers = std::min<int64_t>(chunks, at::get_num_threads()) - 1;
  if (helpers <= 0 || at::in_parallel_region() || in_forked_child.load()) {
    for (int64_t begin = 0; begin < n; begin += chunk) fn(begin, std::min(n, begin + chunk));
    return;
  }
  const std::function<void(int64_t, int64_t)> work = fn;
  auto queue = std::make_shared<ChunkQueue>();
  queue->n = n;
  queue->chunk = chunk;
  queue->chunks = chunks;
  queue->work = &work;
  for (int64_t h = 0; h < helpers; ++h) {
    at::launch([queue] {
      if (queue->drain()) {
        std::lock_guard<std::mutex> lock(queue->mutex);
        queue->all_done.notify_all();
      }
    });
  }
  queue->drain();
  std::unique_lock<std::mutex> lock(queue->mutex);
  queue->all_done.wait(lock, [&] { return queue->done.load() == chunks; });
}

}  // namespace cpu
}  // namespace mdfast
