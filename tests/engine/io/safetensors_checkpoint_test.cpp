// Sharded checkpoints: reading one saved by transformers' save_pretrained, our shard planner against
// its weight_map, and round trips through write_checkpoint.
#include <gtest/gtest.h>

#include <cstring>

#include "engine/core/error.hpp"
#include "engine/io/checkpoint.hpp"
#include "engine/io/safetensors_writer.hpp"
#include "safetensors_test_util.hpp"

namespace refinery::io {
namespace {

namespace fs = std::filesystem;
using test::io_fixture;
using test::TempDir;

TEST(SafetensorsCheckpoint, ReadsShardsSavedByTransformers) {
  const auto ref = test::read_json(io_fixture("data/hf_sharded.json"));
  const auto checkpoint = Checkpoint::open(io_fixture("data/hf_sharded"));
  EXPECT_EQ(checkpoint.files().size(), 7u);
  std::vector<std::string> expected_names;
  for (const auto& t : ref["state_dict_order"]) {
    const std::string name = t["name"].get<std::string>();
    expected_names.push_back(name);
    SCOPED_TRACE(name);
    const auto located = checkpoint.find(name);
    ASSERT_TRUE(located.has_value());
    EXPECT_EQ(located->entry->dtype, DType::kF32);
    EXPECT_EQ(located->entry->shape, t["shape"].get<std::vector<int64_t>>());
    const auto bytes = checkpoint.bytes(name);
    const auto values = t["values"].get<std::vector<double>>();
    ASSERT_EQ(bytes.size(), 4 * values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
      float v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);
      ASSERT_EQ(static_cast<double>(v), values[i]) << "element " << i;
    }
  }
  std::sort(expected_names.begin(), expected_names.end());
  EXPECT_EQ(checkpoint.names(), expected_names);
  const auto index = test::read_json(io_fixture("data/hf_sharded/model.safetensors.index.json"));
  EXPECT_EQ(checkpoint.total_bytes(), index["metadata"]["total_size"].get<uint64_t>());
}

TEST(SafetensorsCheckpoint, ShardPlanMatchesTransformers) {
  const auto ref = test::read_json(io_fixture("data/hf_sharded.json"));
  const auto index = test::read_json(io_fixture("data/hf_sharded/model.safetensors.index.json"));
  std::vector<TensorToWrite> tensors;
  for (const auto& t : ref["state_dict_order"])
    tensors.push_back({t["name"].get<std::string>(), DType::kF32, t["shape"].get<std::vector<int64_t>>(), {}, nullptr});
  const auto plan = plan_shards(tensors, ref["max_shard_size"].get<uint64_t>());
  ASSERT_EQ(plan.size(), 7u);
  for (std::size_t s = 0; s < plan.size(); ++s)
    for (const std::size_t i : plan[s]) {
      const std::string shard = str("model-0000", s + 1, "-of-00007.safetensors");
      EXPECT_EQ(index["weight_map"][tensors[i].name].get<std::string>(), shard) << tensors[i].name;
    }
}

std::vector<TensorToWrite> sample_tensors(const std::vector<std::vector<float>>& data) {
  std::vector<TensorToWrite> tensors;
  for (std::size_t i = 0; i < data.size(); ++i)
    tensors.push_back({str("layers.", i, ".weight"), DType::kF32, {static_cast<int64_t>(data[i].size())},
                       std::as_bytes(std::span(data[i])), nullptr});
  return tensors;
}

TEST(SafetensorsCheckpoint, ShardedRoundTripWithIndex) {
  TempDir dir;
  std::vector<std::vector<float>> data;
  for (int i = 0; i < 5; ++i) data.push_back(std::vector<float>(10 + i, 0.5f * static_cast<float>(i)));
  const auto tensors = sample_tensors(data);
  CheckpointWriteOptions options;
  options.max_shard_bytes = 100;  // 40..56-byte tensors: two per shard
  options.metadata = {{"producer", "refinery test"}};
  const auto result = write_checkpoint(dir.path(), tensors, options);
  ASSERT_EQ(result.files.size(), 3u);
  EXPECT_EQ(result.files[0].filename(), "model-00001-of-00003.safetensors");
  EXPECT_EQ(result.files[2].filename(), "model-00003-of-00003.safetensors");
  EXPECT_EQ(result.index.filename(), "model.safetensors.index.json");
  uint64_t total = 0;
  for (const auto& d : data) total += 4 * d.size();
  EXPECT_EQ(result.total_size, total);

  const auto index = test::read_json(result.index);
  EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
  EXPECT_EQ(index["weight_map"]["layers.0.weight"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["layers.4.weight"], "model-00003-of-00003.safetensors");

  const auto checkpoint = Checkpoint::open(dir.path());
  ASSERT_EQ(checkpoint.size(), 5u);
  for (std::size_t i = 0; i < data.size(); ++i) {
    const auto bytes = checkpoint.bytes(tensors[i].name);
    ASSERT_EQ(bytes.size(), 4 * data[i].size());
    EXPECT_EQ(std::memcmp(bytes.data(), data[i].data(), bytes.size()), 0);
    EXPECT_EQ(checkpoint.find(tensors[i].name)->file->metadata().at("producer"), "refinery test");
  }
  // Opening the index file directly works too.
  EXPECT_EQ(Checkpoint::open(result.index).size(), 5u);
}

TEST(SafetensorsCheckpoint, SingleFileWhenItFitsAndStaleLayoutsAreRemoved) {
  TempDir dir;
  std::vector<std::vector<float>> data = {{1, 2, 3}, {4, 5}, {6}};
  const auto tensors = sample_tensors(data);
  CheckpointWriteOptions small;
  small.max_shard_bytes = 12;
  write_checkpoint(dir.path(), tensors, small);
  ASSERT_TRUE(fs::exists(dir.path() / "model.safetensors.index.json"));
  ASSERT_TRUE(fs::exists(dir.path() / "model-00002-of-00002.safetensors"));

  const auto single = write_checkpoint(dir.path(), tensors);
  ASSERT_EQ(single.files.size(), 1u);
  EXPECT_EQ(single.files[0].filename(), "model.safetensors");
  EXPECT_TRUE(single.index.empty());
  EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors.index.json")) << "a stale index would contradict the file";
  EXPECT_EQ(Checkpoint::open(dir.path()).names(),
            (std::vector<std::string>{"layers.0.weight", "layers.1.weight", "layers.2.weight"}));
  EXPECT_EQ(Checkpoint::open(dir.path() / "model.safetensors").size(), 3u);

  write_checkpoint(dir.path(), tensors, small);
  EXPECT_FALSE(fs::exists(dir.path() / "model.safetensors")) << "it would shadow the new index";
  EXPECT_EQ(Checkpoint::open(dir.path()).files().size(), 2u);
}

TEST(SafetensorsCheckpoint, AbsentTensorErrorNamesIt) {
  const auto checkpoint = Checkpoint::open(io_fixture("data/python_reference.safetensors"));
  EXPECT_FALSE(checkpoint.find("lm_head.weight").has_value());
  try {
    checkpoint.bytes("lm_head.weight");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUser);
    EXPECT_NE(std::string(e.what()).find("has no tensor 'lm_head.weight'"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace refinery::io
