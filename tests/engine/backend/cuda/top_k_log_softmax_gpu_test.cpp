// The chunked log-softmax + top-k on the GPU against refinery::eval::top_k_log_probs and
// eval::row_stats (f64, full sort order) on the host, over several chunkings of the same rows.
//
// Ids must match exactly (the selection is exact: same set, same order, ties lower id first).
// Log-probs and log-sum-exp: |gpu - cpu| <= 3e-5 + 2e-6·|cpu|. Why: the GPU sums exp(x - max) in
// f32 (per-thread sequential sums of ~cols/256 terms, a tree of 8 levels, one rescaled merge per
// chunk), each step rounding by <= 2^-24 relative; with these logits (|lse| <= ~20) the error of
// log Σ is a few 1e-6 in practice, and the f32 roundings of max + log Σ and of x - lse add at
// most 2^-24·(|lse| + |log-prob|). A wrong element or a wrong sum is off by far more (>= 1e-3).
// Each chunk adds one rescaled f32 merge of (max, Σ); the 1-column chunkings (~1e5 merges, a
// stress case: real chunks are 16384 wide) accumulate ~1e-9 per merge in practice, so the bound
// grows by 2e-9 per chunk. Equal infinities count as equal. Outputs and state are poisoned before every run.
#include <algorithm>
#include <limits>
#include <numeric>

#include "cuda_test_util.hpp"
#include "engine/backend/cuda/top_k_log_softmax.hpp"
#include "engine/eval/log_softmax.hpp"

namespace refinery {
namespace {

using namespace cuda_test;
namespace kc = backend::cuda;

constexpr float kInf = std::numeric_limits<float>::infinity();

// Row r follows pattern r % 8 (each stresses a different part of the selection):
//   0 normal; 1 values rounded to 0.5 (ties everywhere, also at the k-th); 2 30% -inf and the max
//   duplicated; 3 three finite values, the rest -inf (the top k is mostly -inf, by lowest id);
//   4 all equal; 5 rising (every chunk beats the running k: the overflow path); 6 one residue
//   class mod 256 far below the rest (a poor group-maxima bound: the global radix path); 7 the
//   row's largest value copied to ~40 random places.
std::vector<float> make_logits(int64_t rows, int64_t vocab, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_int_distribution<int64_t> pos(0, vocab - 1);
  std::vector<float> x(static_cast<size_t>(rows * vocab));
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x.data() + r * vocab;
    for (int64_t c = 0; c < vocab; ++c) row[c] = normal(gen);
    switch (r % 8) {
      case 1:
        for (int64_t c = 0; c < vocab; ++c) row[c] = std::round(row[c] * 2.0f) / 2.0f;
        break;
      case 2:
        for (int64_t c = 0; c < vocab; ++c)
          if (gen() % 10 < 3) row[c] = -kInf;
        for (int i = 0; i < 5; ++i) row[pos(gen)] = *std::max_element(row, row + vocab);
        break;
      case 3:
        for (int64_t c = 0; c < vocab; ++c) row[c] = -kInf;
        for (int i = 0; i < 3; ++i) row[pos(gen)] = normal(gen);
        break;
      case 4:
        for (int64_t c = 0; c < vocab; ++c) row[c] = 1.25f;
        break;
      case 5:
        for (int64_t c = 0; c < vocab; ++c) row[c] = 1e-4f * static_cast<float>(c) + 1e-3f * row[c];
        break;
      case 6:
        for (int64_t c = 5; c < vocab; c += 256) row[c] = -1000.0f + row[c];
        break;
      case 7: {
        const float top = *std::max_element(row, row + vocab);
        for (int i = 0; i < 40; ++i) row[pos(gen)] = top;
        break;
      }
      default:
        break;
    }
  }
  return x;
}

struct Expected {
  std::vector<int32_t> ids;
  std::vector<float> log_probs, lse;
};

Expected reference(const std::vector<float>& x, int64_t rows, int64_t vocab, int64_t k) {
  Expected e{std::vector<int32_t>(static_cast<size_t>(rows * k)),
             std::vector<float>(static_cast<size_t>(rows * k)),
             std::vector<float>(static_cast<size_t>(rows))};
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * vocab;
    eval::top_k_log_probs(row, vocab, k, e.ids.data() + r * k, e.log_probs.data() + r * k);
    e.lse[r] = static_cast<float>(eval::row_stats(row, vocab).log_sum_exp);
  }
  return e;
}

bool near(float got, float want, std::size_t chunks = 1) {
  if (std::isinf(want) || std::isinf(got)) return got == want;
  return std::abs(double(got) - double(want)) <=
         3e-5 + 2e-6 * std::abs(double(want)) + 2e-9 * static_cast<double>(chunks);
}

// Chunk boundaries [first, first + cols) covering [0, vocab).
using Chunks = std::vector<std::pair<int64_t, int64_t>>;

Chunks chunks_of(int64_t vocab, std::vector<int64_t> sizes) {
  Chunks out;
  for (int64_t first = 0, i = 0; first < vocab; ++i) {
    const int64_t cols = std::min(sizes[static_cast<size_t>(i) % sizes.size()], vocab - first);
    out.emplace_back(first, cols);
    first += cols;
  }
  return out;
}

// The GPU state of `rows` rows, poisoned (begin must reset it).
struct State {
  Tensor max, sum, values, ids;
  kc::TopKLogSoftmaxState view;
  State(int64_t rows, int64_t k)
      : max(poisoned_gpu({rows})),
        sum(poisoned_gpu({rows})),
        values(poisoned_gpu({rows, k})),
        ids(poisoned_gpu({rows, k}, DType::kI32)) {
    view = {max.mutable_data<float>(), sum.mutable_data<float>(), values.mutable_data<float>(),
            ids.mutable_data<int32_t>(), rows, k};
  }
};

// Runs begin, the chunks (from `logits_gpu` [rows, vocab] in place, ld = vocab; or, if `copied`,
// each chunk copied into its own scratch [rows, cols + 5]), finish; compares with `want`.
void run_and_compare(const std::string& what, const std::vector<float>& x, const Tensor& logits_gpu,
                     int64_t rows, int64_t vocab, int64_t k, const Chunks& chunks, bool copied,
                     const Expected& want) {
  State state(rows, k);
  kc::top_k_log_softmax_begin(state.view, nullptr);
  for (auto [first, cols] : chunks) {
    if (!copied) {
      kc::top_k_log_softmax_update(state.view, logits_gpu.data<float>() + first, vocab, cols,
                                   first, nullptr);
      continue;
    }
    const int64_t ld = cols + 5;
    Tensor scratch = Tensor::empty(DType::kF32, {rows, ld});
    float* s = scratch.mutable_data<float>();
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < ld; ++c)
        s[r * ld + c] = c < cols ? x[static_cast<size_t>(r * vocab + first + c)] : NAN;
    const Tensor scratch_gpu = gpu(scratch);
    kc::top_k_log_softmax_update(state.view, scratch_gpu.data<float>(), ld, cols, first, nullptr);
  }
  Tensor ids = poisoned_gpu({rows, k}, DType::kI32);
  Tensor log_probs = poisoned_gpu({rows, k});
  Tensor lse = poisoned_gpu({rows});
  kc::top_k_log_softmax_finish(state.view, ids.mutable_data<int32_t>(),
                               log_probs.mutable_data<float>(), lse.mutable_data<float>(), nullptr);
  const std::vector<int32_t> got_ids = ints(ids);
  const std::vector<float> got_lp = values(log_probs), got_lse = values(lse);
  int failures = 0;
  for (int64_t r = 0; r < rows && failures < 5; ++r) {
    if (!near(got_lse[r], want.lse[r], chunks.size())) {
      ADD_FAILURE() << what << " row " << r << " (pattern " << r % 8 << "): log-sum-exp "
                    << got_lse[r] << ", cpu " << want.lse[r];
      ++failures;
    }
    for (int64_t j = 0; j < k; ++j) {
      const size_t i = static_cast<size_t>(r * k + j);
      if (got_ids[i] != want.ids[i] || !near(got_lp[i], want.log_probs[i], chunks.size())) {
        ADD_FAILURE() << what << " row " << r << " (pattern " << r % 8 << ") rank " << j
                      << ": id " << got_ids[i] << " log-prob " << got_lp[i] << ", cpu id "
                      << want.ids[i] << " log-prob " << want.log_probs[i];
        ++failures;
        break;
      }
    }
  }
}

// Every chunking of `rows` x `vocab` random rows, for each k.
void check_chunkings(int64_t rows, int64_t vocab, const std::vector<int64_t>& ks, bool all,
                     uint32_t seed) {
  const std::vector<float> x = make_logits(rows, vocab, seed);
  const Tensor logits_gpu = gpu(Tensor::copy_of(DType::kF32, {rows, vocab}, x.data()));
  for (int64_t k : ks) {
    const Expected want = reference(x, rows, vocab, k);
    const std::string shape = str("[", rows, " x ", vocab, "] k=", k);
    run_and_compare(shape + " one chunk", x, logits_gpu, rows, vocab, k, {{0, vocab}}, false, want);
    run_and_compare(shape + " chunks of 1000", x, logits_gpu, rows, vocab, k,
                    chunks_of(vocab, {1000}), false, want);
    run_and_compare(shape + " uneven chunks", x, logits_gpu, rows, vocab, k,
                    chunks_of(vocab, {37, 4096, 1, 20011, 513, 8197}), false, want);
    if (!all) continue;
    const int64_t small = std::max<int64_t>(1, k / 2 - 1);  // smaller than k (k > 1)
    run_and_compare(shape + " chunks of " + std::to_string(small), x, logits_gpu, rows, vocab, k,
                    chunks_of(vocab, {small}), false, want);
    Chunks reversed = chunks_of(vocab, {1000});
    std::reverse(reversed.begin(), reversed.end());
    run_and_compare(shape + " chunks of 1000, last first, copied (ld = cols + 5)", x, logits_gpu,
                    rows, vocab, k, reversed, true, want);
  }
}

TEST(TopKLogSoftmaxGpu, MatchesCpuOverChunkingsSmallBatch) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  check_chunkings(7, 50257, {1, 5, 64, 256}, true, 11);
}

TEST(TopKLogSoftmaxGpu, MatchesCpuOverChunkingsOneRowUpToMaxK) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  check_chunkings(1, 102400 + 3, {1, 64, 257, kc::kMaxTopK}, true, 12);
  check_chunkings(8, 50257, {600, kc::kMaxTopK}, false, 13);  // every pattern with G = 2 and 4
}

TEST(TopKLogSoftmaxGpu, MatchesCpuOverChunkingsManyRows) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  check_chunkings(300, 102400 + 3, {64}, false, 14);
  check_chunkings(300, 50257, {5, 256}, false, 15);
}

TEST(TopKLogSoftmaxGpu, VocabularyNearK) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  check_chunkings(9, 300, {256}, true, 16);  // the running k stays partly empty for a while
  check_chunkings(9, 64, {64}, true, 17);    // every column is in the top k
}

TEST(TopKLogSoftmaxGpu, NanPropagatesToTheRow) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  const int64_t rows = 2, vocab = 5000, k = 8;
  std::vector<float> x = make_logits(rows, vocab, 18);
  x[static_cast<size_t>(vocab + 1234)] = NAN;  // row 1 only
  const Tensor logits_gpu = gpu(Tensor::copy_of(DType::kF32, {rows, vocab}, x.data()));
  State state(rows, k);
  kc::top_k_log_softmax_begin(state.view, nullptr);
  for (auto [first, cols] : chunks_of(vocab, {999}))
    kc::top_k_log_softmax_update(state.view, logits_gpu.data<float>() + first, vocab, cols, first,
                                 nullptr);
  Tensor ids = poisoned_gpu({rows, k}, DType::kI32), lp = poisoned_gpu({rows, k}),
         lse = poisoned_gpu({rows});
  kc::top_k_log_softmax_finish(state.view, ids.mutable_data<int32_t>(), lp.mutable_data<float>(),
                               lse.mutable_data<float>(), nullptr);
  const std::vector<int32_t> got_ids = ints(ids);
  const std::vector<float> got_lp = values(lp), got_lse = values(lse);
  const float want_lse0 = static_cast<float>(eval::row_stats(x.data(), vocab).log_sum_exp);
  EXPECT_TRUE(near(got_lse[0], want_lse0)) << got_lse[0] << " vs " << want_lse0;
  EXPECT_TRUE(std::isnan(eval::row_stats(x.data() + vocab, vocab).log_sum_exp));  // the CPU too
  EXPECT_TRUE(std::isnan(got_lse[1]));
  EXPECT_EQ(got_ids[k], 1234);  // NaN ranks first
  for (int64_t j = 0; j < k; ++j) {
    EXPECT_FALSE(std::isnan(got_lp[j])) << "row 0 rank " << j;
    EXPECT_TRUE(std::isnan(got_lp[k + j])) << "row 1 rank " << j;
  }
}

TEST(TopKLogSoftmaxGpu, RejectsUnsupportedK) {
  if (cuda::list_devices().empty()) GTEST_SKIP() << cuda::no_device_reason();
  for (int64_t k : {int64_t{0}, kc::kMaxTopK + 1}) {
    State state(2, std::max<int64_t>(k, 1));
    kc::TopKLogSoftmaxState view = state.view;
    view.k = k;
    try {
      kc::top_k_log_softmax_begin(view, nullptr);
      ADD_FAILURE() << "begin accepted k = " << k;
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInternal) << e.what();
      EXPECT_NE(std::string(e.what()).find("k = " + std::to_string(k)), std::string::npos)
          << e.what();
    }
  }
}

}  // namespace
}  // namespace refinery
