// io/model_directory: the staged (atomic) model directory and the side-file filter shared by the
// passes that write model directories.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "engine/io/model_directory.hpp"
#include "tests/support/run_refine.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::io {
namespace {

TEST(StagedModelDirectory, CommitReplacesAndAbandonLeavesTheTargetUntouched) {
  test::ScratchDir dir;
  const auto target = dir.path() / "out";
  {
    StagedModelDirectory staged(target / "");  // a trailing separator names the same directory
    EXPECT_EQ(staged.target(), target);
    std::ofstream(staged.path() / "a.txt") << "first";
    staged.commit();
  }
  EXPECT_EQ(test::read_text_file((target / "a.txt").string()), "first");
  {
    StagedModelDirectory abandoned(target);
    std::ofstream(abandoned.path() / "a.txt") << "second";
  }  // destroyed without commit: as if the pass had thrown
  EXPECT_EQ(test::read_text_file((target / "a.txt").string()), "first");
  {
    StagedModelDirectory staged(target);
    std::ofstream(staged.path() / "b.txt") << "third";
    staged.commit();
  }
  EXPECT_FALSE(std::filesystem::exists(target / "a.txt"));
  EXPECT_TRUE(std::filesystem::exists(target / "b.txt"));
  EXPECT_EQ(dir.entries(), 1u);  // no temporary or old directory left beside it
}

TEST(StagedModelDirectory, SideFilesAreEverythingButWeightsAndConfig) {
  EXPECT_TRUE(is_weight_or_config_file("x/model-00001-of-00002.safetensors"));
  EXPECT_TRUE(is_weight_or_config_file("model.safetensors.index.json"));
  EXPECT_TRUE(is_weight_or_config_file("config.json"));
  EXPECT_TRUE(is_weight_or_config_file("pytorch_model.bin"));
  EXPECT_FALSE(is_weight_or_config_file("tokenizer.json"));
  EXPECT_FALSE(is_weight_or_config_file("generation_config.json"));
  EXPECT_EQ(absolute_directory("/a/b/"), std::filesystem::path("/a/b"));
}

}  // namespace
}  // namespace refinery::io
