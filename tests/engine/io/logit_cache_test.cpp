// Logit cache: round trips (full and top-k), resume after a simulated crash, refusals.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "engine/core/dtype.hpp"
#include "engine/core/error.hpp"
#include "engine/io/logit_cache.hpp"

namespace refinery::io {
namespace {

constexpr int64_t kVocab = 11;
constexpr int64_t kSeqLen = 9;
constexpr int64_t kSequences = 5;

// Deterministic rows: logits[s][r][v], and a top-k view of them.
float logit(int64_t s, int64_t r, int64_t v) {
  return static_cast<float>(((s * 31 + r * 17 + v * 7) % 23) - 11) * 0.37f;
}
std::vector<int32_t> sequence_tokens(int64_t s) {
  std::vector<int32_t> t;
  for (int64_t r = 0; r < kSeqLen; ++r) t.push_back(static_cast<int32_t>((s * 5 + r * 3) % kVocab));
  return t;
}

class LogitCache : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("refinery_logit_cache_" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  LogitCacheInfo info(int64_t top_k) const {
    std::vector<int32_t> all;
    for (int64_t s = 0; s < kSequences; ++s) {
      auto t = sequence_tokens(s);
      all.insert(all.end(), t.begin(), t.end());
    }
    return {"teacher/dir", "fingerprint", top_k, kVocab, kSeqLen, kSequences,
            data_fingerprint(all)};
  }

  // Writes sequences [from, to); rows in blocks of 4.
  static void write_sequences(LogitCacheWriter& w, int64_t top_k, int64_t from, int64_t to,
                              bool end_last = true) {
    for (int64_t s = from; s < to; ++s) {
      const auto t = sequence_tokens(s);
      w.begin_sequence(t);
      for (int64_t r0 = 0; r0 < kSeqLen; r0 += 4) {
        const int64_t rows = std::min<int64_t>(4, kSeqLen - r0);
        if (top_k == 0) {
          std::vector<float> x;
          for (int64_t r = r0; r < r0 + rows; ++r)
            for (int64_t v = 0; v < kVocab; ++v) x.push_back(logit(s, r, v));
          w.add_full(x.data(), rows);
        } else {
          std::vector<int32_t> idx;
          std::vector<float> lp;
          for (int64_t r = r0; r < r0 + rows; ++r)
            for (int64_t j = 0; j < top_k; ++j) {
              idx.push_back(static_cast<int32_t>((s + r + j) % kVocab));
              lp.push_back(-0.1f * static_cast<float>(j + 1) - 0.01f * static_cast<float>(r));
            }
          w.add_top_k(idx.data(), lp.data(), rows);
        }
      }
      if (s + 1 < to || end_last) w.end_sequence();
    }
  }

  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::filesystem::path dir_;
};

void expect_same_contents(const LogitCacheReader& a, const LogitCacheReader& b, int64_t top_k) {
  ASSERT_EQ(a.sequences(), b.sequences());
  for (int64_t s = 0; s < a.sequences(); ++s) {
    EXPECT_EQ(a.sequence_tokens(s), b.sequence_tokens(s));
    const int64_t n = a.sequence_length(s);
    if (top_k == 0) {
      std::vector<float> x(n * kVocab), y(n * kVocab);
      a.read_full(s, 0, n, x.data());
      b.read_full(s, 0, n, y.data());
      EXPECT_EQ(x, y);
    } else {
      std::vector<int32_t> i1(n * top_k), i2(n * top_k);
      std::vector<float> l1(n * top_k), l2(n * top_k);
      a.read_top_k(s, 0, n, i1.data(), l1.data());
      b.read_top_k(s, 0, n, i2.data(), l2.data());
      EXPECT_EQ(i1, i2);
      EXPECT_EQ(l1, l2);
    }
  }
}

TEST_F(LogitCache, FullRoundTrip) {
  {
    LogitCacheWriter w(path("full.h5"), info(0), {2, 3});
    write_sequences(w, 0, 0, kSequences);
    w.finish();
  }
  LogitCacheReader r(path("full.h5"));
  EXPECT_TRUE(r.is_complete());
  EXPECT_EQ(r.sequences(), kSequences);
  EXPECT_EQ(r.info().top_k, 0);
  EXPECT_EQ(r.info().vocab_size, kVocab);
  EXPECT_EQ(r.info().seq_len, kSeqLen);
  EXPECT_EQ(r.info().teacher_fingerprint, "fingerprint");
  EXPECT_EQ(r.sequence_tokens(3), sequence_tokens(3));
  std::vector<float> x(2 * kVocab);
  r.read_full(2, 5, 2, x.data());
  for (int64_t v = 0; v < kVocab; ++v) {
    EXPECT_EQ(x[v], logit(2, 5, v));
    EXPECT_EQ(x[kVocab + v], logit(2, 6, v));
  }
}

TEST_F(LogitCache, TopKRoundTripStoresFloat16) {
  const int64_t k = 3;
  {
    LogitCacheWriter w(path("topk.h5"), info(k));
    write_sequences(w, k, 0, kSequences);
    w.finish();
  }
  LogitCacheReader r(path("topk.h5"));
  EXPECT_EQ(r.info().top_k, k);
  std::vector<int32_t> idx(k);
  std::vector<float> lp(k);
  r.read_top_k(4, 7, 1, idx.data(), lp.data());
  for (int64_t j = 0; j < k; ++j) {
    EXPECT_EQ(idx[j], (4 + 7 + j) % kVocab);
    const float written = -0.1f * static_cast<float>(j + 1) - 0.01f * 7;
    EXPECT_EQ(lp[j], f16_to_f32(f32_to_f16(written)));
    EXPECT_NE(lp[j], written);  // really rounded to half precision
  }
}

// The queue's limits change only when the producer waits, never what is written: a queue of one
// block (no byte allowance) and one whose byte allowance holds every block give the same files,
// for top-k and full-vocabulary caches.
TEST_F(LogitCache, QueueLimitsDoNotChangeTheFile) {
  for (const int64_t k : {int64_t{0}, int64_t{3}}) {
    const std::string tight = path("tight.h5"), roomy = path("roomy.h5");
    {
      LogitCacheWriter a(tight, info(k), LogitCacheWriter::Options{1, 0, 0});
      write_sequences(a, k, 0, kSequences);
      a.finish();
      LogitCacheWriter b(roomy, info(k), LogitCacheWriter::Options{1, size_t{1} << 30, 0});
      write_sequences(b, k, 0, kSequences);
      b.finish();
    }
    expect_same_contents(LogitCacheReader(tight), LogitCacheReader(roomy), k);
    EXPECT_EQ(LogitCacheReader(roomy).sequences(), kSequences);
    std::filesystem::remove(tight);
    std::filesystem::remove(roomy);
  }
}

TEST_F(LogitCache, ResumeAfterACrashGivesTheSameFileContents) {
  for (int64_t top_k : {int64_t{0}, int64_t{4}}) {
    const std::string straight = path("straight" + std::to_string(top_k) + ".h5");
    const std::string crashed = path("crashed" + std::to_string(top_k) + ".h5");
    {
      LogitCacheWriter w(straight, info(top_k));
      write_sequences(w, top_k, 0, kSequences);
      w.finish();
    }
    {
      // Two sequences committed, the third half written to disk, then the writer is dropped.
      LogitCacheWriter w(crashed, info(top_k), {2, 2});
      write_sequences(w, top_k, 0, 3, /*end_last=*/false);
      w.drain();
    }
    {
      LogitCacheReader partial(crashed);
      EXPECT_FALSE(partial.is_complete());
      EXPECT_EQ(partial.sequences(), 2);
    }
    {
      LogitCacheWriter w(crashed, info(top_k));
      EXPECT_EQ(w.resumed_sequences(), 2);
      write_sequences(w, top_k, 2, kSequences);
      w.finish();
    }
    LogitCacheReader a(straight), b(crashed);
    EXPECT_TRUE(b.is_complete());
    expect_same_contents(a, b, top_k);
  }
}

TEST_F(LogitCache, ResumingWithOtherOptionsIsRefused) {
  {
    LogitCacheWriter w(path("c.h5"), info(4));
    write_sequences(w, 4, 0, 2);
  }
  auto other = info(8);
  other.seq_len = 12;
  try {
    LogitCacheWriter w(path("c.h5"), other);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    const std::string m = e.what();
    EXPECT_NE(m.find("top_k is 4 in the cache but 8 now"), std::string::npos) << m;
    EXPECT_NE(m.find("seq_len"), std::string::npos) << m;
  }
  auto teacher = info(4);
  teacher.teacher_fingerprint = "another";
  EXPECT_THROW(LogitCacheWriter(path("c.h5"), teacher), Error);
}

TEST_F(LogitCache, SelectionAndSeedAreRecordedAndCheckedOnResume) {
  {
    LogitCacheWriter w(path("plain.h5"), info(4));
    write_sequences(w, 4, 0, kSequences);
    w.finish();
  }
  EXPECT_EQ(LogitCacheReader(path("plain.h5")).info().selection, kSelectionTopK);
  auto sampled = info(4);
  sampled.selection = kSelectionPriority;
  sampled.sample_seed = 7;
  {
    LogitCacheWriter w(path("sampled.h5"), sampled);
    write_sequences(w, 4, 0, 2);  // not finished: resumable
  }
  {
    const LogitCacheReader r(path("sampled.h5"));
    EXPECT_EQ(r.info().selection, kSelectionPriority);
    EXPECT_EQ(r.info().sample_seed, 7);
  }
  auto other_seed = sampled;
  other_seed.sample_seed = 8;
  try {
    LogitCacheWriter w(path("sampled.h5"), other_seed);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the sample seed is 7 in the cache but 8 now"),
              std::string::npos)
        << e.what();
  }
  try {
    LogitCacheWriter w(path("sampled.h5"), info(4));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("the selection is priority_sample in the cache but top_k"),
              std::string::npos)
        << e.what();
  }
}

TEST_F(LogitCache, UnreadableFileSaysToDeleteIt) {
  std::ofstream(path("junk.h5")) << "this is not HDF5";
  for (int pass = 0; pass < 2; ++pass) {
    try {
      if (pass == 0)
        LogitCacheWriter w(path("junk.h5"), info(4));
      else
        LogitCacheReader r(path("junk.h5"));
      FAIL() << "expected an error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUser);
      EXPECT_NE(std::string(e.what()).find("delete it"), std::string::npos) << e.what();
    }
  }
}

TEST_F(LogitCache, NotALogitCacheIsNamed) {
  {
    auto f = H5File::create(path("other.h5"));
    f.set_string_attribute("format", "refinery.tokens");
  }
  try {
    LogitCacheReader r(path("other.h5"));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a refinery logit cache"), std::string::npos)
        << e.what();
  }
}

TEST(LogitCacheFingerprint, DependsOnTheSampledBytes) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("refinery_fp_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << "{}";
  std::ofstream(dir / "model.safetensors") << "weights-1";
  const std::string a = teacher_fingerprint(dir);
  EXPECT_EQ(a, teacher_fingerprint(dir));
  std::ofstream(dir / "model.safetensors") << "weights-2";
  EXPECT_NE(a, teacher_fingerprint(dir));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace refinery::io
