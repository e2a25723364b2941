// forward_hidden_batch: several sequences side by side in one forward give the hidden states each
// gives alone (positions restart per sequence, attention stays inside each), for a GQA family and
// an MLA + MoE family; and it refuses a cache that already holds tokens.
#include "model_test_util.hpp"

namespace refinery::model {
namespace {

class BatchedForward : public ::testing::TestWithParam<std::string> {};

TEST_P(BatchedForward, EqualsOneSequenceAtATime) {
  auto model = test::load_fixture(GetParam());
  const test::Reference ref(GetParam());
  const auto ids = ref.ids("input_ids_2");  // 23 tokens; three windows of 7 from it
  const int64_t length = 7, sequences = 3;
  std::vector<int32_t> batch;
  std::vector<std::vector<float>> alone;
  for (int64_t b = 0; b < sequences; ++b) {
    const std::vector<int32_t> seq(ids.begin() + b * 5, ids.begin() + b * 5 + length);
    batch.insert(batch.end(), seq.begin(), seq.end());
    KvCache cache = model->make_cache(length);
    alone.push_back(test::values(model->forward_hidden(seq, cache)));
  }
  KvCache cache = model->make_cache(length * sequences);
  const auto together = test::values(model->forward_hidden_batch(batch, sequences, cache));
  const int64_t hidden = model->config().hidden_size;
  ASSERT_EQ(together.size(), std::size_t(length * sequences * hidden));
  for (int64_t b = 0; b < sequences; ++b) {
    const std::vector<float> part(together.begin() + b * length * hidden,
                                  together.begin() + (b + 1) * length * hidden);
    EXPECT_LE(test::max_abs_diff(part, alone[b]), 1e-5 * test::max_abs(alone[b]))
        << GetParam() << " sequence " << b;
  }
}

TEST_P(BatchedForward, NeedsAnEmptyCache) {
  auto model = test::load_fixture(GetParam());
  const std::vector<int32_t> ids{1, 2, 3, 4};
  KvCache cache = model->make_cache(8);
  model->forward_hidden(std::vector<int32_t>{5}, cache);
  EXPECT_THROW(model->forward_hidden_batch(ids, 2, cache), Error);
  KvCache empty = model->make_cache(8);
  EXPECT_THROW(model->forward_hidden_batch(ids, 3, empty), Error);  // 4 tokens are not 3 × L
}

INSTANTIATE_TEST_SUITE_P(Families, BatchedForward,
                         ::testing::Values("llama_gqa_llama3", "deepseek_v3_noaux",
                                           "qwen2_moe_shared"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace refinery::model
