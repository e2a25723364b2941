#include "engine/io/token_dataset.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::io {
namespace {

using refinery::test::error_message_of;
using test::ScratchDir;

namespace fs = std::filesystem;

const std::string kData = std::string(REFINERY_SOURCE_DIR) + "/tests/engine/io/h5data/";

TokenDatasetInfo small_info(uint32_t vocab = 8) {
  TokenDatasetInfo info;
  info.tokenizer_sha256 = "abc123";
  info.tokenizer_path = "tok/tokenizer.json";
  info.vocab_size = vocab;
  info.sources = {"a.txt", "b.jsonl"};
  return info;
}

void write(const std::string& path, const std::vector<std::vector<uint32_t>>& docs,
           TokenDatasetInfo info, TokenDatasetWriter::Options options = {}) {
  TokenDatasetWriter writer(path, std::move(info), options);
  for (const auto& d : docs) writer.add_document(d);
  writer.finish();
}

TEST(TokenDataset, RoundTripAcrossChunksWithEmptyDocuments) {
  ScratchDir dir;
  const std::string path = dir.file("out.h5");
  std::vector<std::vector<uint32_t>> docs = {{1, 2, 3}, {}, {7}, {}, {}};
  std::vector<uint32_t> big(50);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<uint32_t>(i % 997);
  docs.push_back(big);
  docs.push_back({0, 0});
  TokenDatasetWriter::Options options;
  options.chunk_tokens = 7;  // the big document spans several chunks and a partial last one
  write(path, docs, small_info(1000), options);

  TokenDataset ds(path);
  ASSERT_EQ(ds.n_docs(), docs.size());
  EXPECT_EQ(ds.n_tokens(), 56u);
  for (size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(ds.document(i), docs[i]) << "document " << i;
  EXPECT_EQ(ds.document_range(5), (std::pair<uint64_t, uint64_t>{4, 54}));
  EXPECT_EQ(ds.read_tokens(3, 3), (std::vector<uint32_t>{7, 0, 1}));
  EXPECT_EQ(ds.doc_offsets(), (std::vector<uint64_t>{0, 3, 3, 4, 4, 4, 54, 56}));
  EXPECT_EQ(ds.vocab_size(), 1000u);
  EXPECT_EQ(ds.tokenizer_sha256(), "abc123");
  EXPECT_EQ(ds.tokenizer_path(), "tok/tokenizer.json");
  EXPECT_EQ(ds.sources(), (std::vector<std::string>{"a.txt", "b.jsonl"}));
  EXPECT_EQ(ds.created_by(), std::string("refinery ") + REFINERY_VERSION);
  EXPECT_EQ(ds.format_version(), 1);
  EXPECT_EQ(ds.string_attribute("format"), "refinery.tokens");
  EXPECT_EQ(ds.int_attribute("n_docs"), 7);
  EXPECT_EQ(ds.int_attribute("n_tokens"), 56);
  std::string msg = error_message_of([&] { ds.document(7); });
  EXPECT_NE(msg.find("document 7 is out of range"), std::string::npos) << msg;
}

TEST(TokenDataset, ManyDocumentsFlushOffsetsInChunks) {
  ScratchDir dir;
  const std::string path = dir.file("many.h5");
  const uint32_t n = 70000;  // more than one chunk of offsets (65536)
  {
    TokenDatasetWriter writer(path, small_info(5));
    for (uint32_t i = 0; i < n; ++i) {
      const uint32_t id = i % 5;
      writer.add_document(std::span<const uint32_t>(&id, i % 3 == 0 ? 0 : 1));
    }
    writer.finish();
  }
  TokenDataset ds(path);
  ASSERT_EQ(ds.n_docs(), n);
  uint64_t expected_tokens = 0;
  for (uint32_t i = 0; i < n; ++i) expected_tokens += (i % 3 == 0 ? 0 : 1);
  EXPECT_EQ(ds.n_tokens(), expected_tokens);
  EXPECT_EQ(ds.document(69998), (std::vector<uint32_t>{69998 % 5}));
  EXPECT_TRUE(ds.document(69999).empty());
}

TEST(TokenDataset, EmptyDatasetIsValid) {
  ScratchDir dir;
  write(dir.file("empty.h5"), {}, small_info());
  TokenDataset ds(dir.file("empty.h5"));
  EXPECT_EQ(ds.n_docs(), 0u);
  EXPECT_EQ(ds.n_tokens(), 0u);
}

TEST(TokenDatasetWriter, WritesToTempThenRenamesOnFinish) {
  ScratchDir dir;
  const std::string out = dir.file("out.h5");
  TokenDatasetWriter writer(out, small_info());
  EXPECT_EQ(writer.temp_path(), str(out, ".tmp-", ::getpid()));
  writer.add_document(std::vector<uint32_t>{1, 2});
  EXPECT_TRUE(fs::exists(writer.temp_path()));
  EXPECT_FALSE(fs::exists(out));
  writer.finish();
  EXPECT_TRUE(fs::exists(out));
  EXPECT_FALSE(fs::exists(writer.temp_path()));
  EXPECT_EQ(dir.entries(), 1u);
  EXPECT_EQ(writer.n_docs(), 1u);
  EXPECT_EQ(writer.n_tokens(), 2u);
}

TEST(TokenDatasetWriter, AbandonedWriterRemovesTempAndKeepsOldOutput) {
  ScratchDir dir;
  const std::string out = dir.file("out.h5");
  { std::ofstream(out) << "previous result"; }
  {
    TokenDatasetWriter writer(out, small_info());
    writer.add_document(std::vector<uint32_t>{1, 2, 3});
    EXPECT_TRUE(fs::exists(writer.temp_path()));
    // destroyed without finish(), as when an exception unwinds a tokenize job
  }
  EXPECT_EQ(dir.entries(), 1u);  // only the old output: the temp file is gone
  std::ifstream in(out);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "previous result");
}

TEST(TokenDatasetWriter, IdOutsideVocabularyIsAUserErrorAndLeavesNoFile) {
  ScratchDir dir;
  const std::string out = dir.file("out.h5");
  std::string msg = error_message_of([&] {
    TokenDatasetWriter writer(out, small_info(8));
    writer.add_document(std::vector<uint32_t>{1, 2});
    writer.add_document(std::vector<uint32_t>{3, 8}, "c.json[1]");
    writer.finish();
  });
  EXPECT_NE(msg.find("document 1 (c.json[1]) has token id 8 at position 1"), std::string::npos)
      << msg;
  EXPECT_NE(msg.find("8 ids"), std::string::npos) << msg;
  EXPECT_EQ(dir.entries(), 0u);
}

TEST(TokenDatasetWriter, MissingOutputDirectoryIsAUserError) {
  ScratchDir dir;
  std::string msg =
      error_message_of([&] { TokenDatasetWriter(dir.file("no/dir/out.h5"), small_info()); });
  EXPECT_NE(msg.find("does not exist"), std::string::npos) << msg;
}

// The committed file made by h5py (tests/fixtures/make_h5_fixtures.py) in the DESIGN §5 layout.
TEST(TokenDataset, ReadsH5pyFixtureExactly) {
  std::ifstream in(kData + "tokens_h5py.expected.json");
  nlohmann::json expected = nlohmann::json::parse(in);
  TokenDataset ds(kData + "tokens_h5py.h5");
  const auto& docs = expected["documents"];
  ASSERT_EQ(ds.n_docs(), docs.size());
  EXPECT_EQ(ds.n_tokens(), expected["n_tokens"].get<uint64_t>());
  std::vector<uint32_t> all;
  for (size_t i = 0; i < docs.size(); ++i) {
    auto want = docs[i].get<std::vector<uint32_t>>();
    EXPECT_EQ(ds.document(i), want) << "document " << i;
    all.insert(all.end(), want.begin(), want.end());
  }
  EXPECT_EQ(ds.read_tokens(0, ds.n_tokens()), all);
  EXPECT_EQ(ds.read_tokens(3, 6), std::vector<uint32_t>(all.begin() + 3, all.begin() + 9));
  const auto& attrs = expected["attrs"];
  EXPECT_EQ(ds.vocab_size(), attrs["vocab_size"].get<uint32_t>());
  EXPECT_EQ(ds.tokenizer_sha256(), attrs["tokenizer_sha256"].get<std::string>());
  EXPECT_EQ(ds.tokenizer_path(), attrs["tokenizer_path"].get<std::string>());
  EXPECT_EQ(ds.created_by(), attrs["created_by"].get<std::string>());
  EXPECT_EQ(ds.sources(), expected["sources"].get<std::vector<std::string>>());
}

struct BadCase {
  const char* file;
  const char* message_part;
};

TEST(TokenDataset, RejectsTamperedFilesWithClearErrors) {
  const BadCase cases[] = {
      {"bad_tokens_int64.h5", "/tokens in"},
      {"bad_tokens_int64.h5", "must be a 1-D uint32 array, found rank 1 of int64"},
      {"bad_tokens_rank2.h5", "found rank 2 of uint32"},
      {"bad_offsets_int64.h5", "/doc_offsets in"},
      {"bad_offsets_int64.h5", "1-D uint64 array, found rank 1 of int64"},
      {"bad_offsets_not_monotone.h5", "decreases at index 3 (8 then 3)"},
      {"bad_offsets_start.h5", "starts at 1, expected 0"},
      {"bad_offsets_end.h5", "ends at 15 but /tokens has 16 tokens"},
      {"bad_token_out_of_vocab.h5", "token 7 (document 2) is 10, not below vocab_size 10"},
      {"bad_no_tokens.h5", "has no dataset /tokens"},
      {"bad_no_format.h5", "not a refinery token dataset"},
      {"bad_format.h5", "has format \"refinery.logits\""},
      {"bad_format_version.h5", "format_version 2"},
      {"bad_n_docs_attr.h5", "attribute n_docs is 4 but /doc_offsets describes 5 documents"},
      {"bad_truncated.h5", "truncated"},
      {"bad_not_hdf5.h5", "not an HDF5 file"},
  };
  for (const auto& c : cases) {
    std::string msg = error_message_of([&] { TokenDataset ds(kData + c.file); });
    EXPECT_NE(msg.find(c.file), std::string::npos) << "the error should name the file: " << msg;
    EXPECT_NE(msg.find(c.message_part), std::string::npos) << c.file << ": " << msg;
  }
  TokenDataset::Options unchecked;
  unchecked.check_token_ids = false;
  TokenDataset ds(kData + "bad_token_out_of_vocab.h5", unchecked);
  EXPECT_EQ(ds.read_tokens(7, 1), std::vector<uint32_t>{10});
}

// Tamper with files our own writer made.
TEST(TokenDataset, RejectsOurFileAfterTampering) {
  ScratchDir dir;
  const std::string path = dir.file("t.h5");
  write(path, {{1, 2}, {3}, {4, 5, 6}}, small_info());
  {
    H5File file = H5File::open(path, /*writable=*/true);
    H5Dataset offsets = file.open_dataset("/doc_offsets");
    const uint64_t bad[] = {5};
    offsets.write_rows(1, bad, DType::kU64, 1);  // 0 5 3 6
  }
  std::string msg = error_message_of([&] { TokenDataset ds(path); });
  EXPECT_NE(msg.find("decreases at index 2 (5 then 3)"), std::string::npos) << msg;

  // Cut the file short, as an interrupted copy would.
  write(path, {{1, 2}, {3}, {4, 5, 6}}, small_info());
  const auto size = fs::file_size(path);
  fs::resize_file(path, size * 2 / 3);
  msg = error_message_of([&] { TokenDataset ds(path); });
  EXPECT_NE(msg.find("t.h5"), std::string::npos) << msg;

  // /tokens of the wrong element type.
  {
    H5File file = H5File::create(path);
    H5Dataset tokens = file.create_dataset("/tokens", DType::kI32, {});
    H5Dataset offsets = file.create_dataset("/doc_offsets", DType::kU64, {});
    const uint64_t zero = 0;
    offsets.append(&zero, DType::kU64, 1);
    file.set_string_attribute("format", "refinery.tokens");
    file.set_int_attribute("format_version", 1);
    file.set_int_attribute("vocab_size", 8);
  }
  msg = error_message_of([&] { TokenDataset ds(path); });
  EXPECT_NE(msg.find("found rank 1 of int32"), std::string::npos) << msg;
}

// Writes the files tests/fixtures/make_h5_fixtures.py --check-ours DIR checks with h5py (set
// REFINERY_H5_INTEROP_DIR=DIR to keep them), and checks them here with our own reader.
TEST(H5Interop, WritesFilesH5pyReads) {
  ScratchDir scratch;
  const char* keep = std::getenv("REFINERY_H5_INTEROP_DIR");
  const std::string dir = keep != nullptr ? std::string(keep) : scratch.file("");
  fs::create_directories(dir);
  const std::string tokens_path = (fs::path(dir) / "tokens_ours.h5").string();
  const std::string f16_path = (fs::path(dir) / "f16_ours.h5").string();
  write(tokens_path, {{1, 2, 3}, {}, {4, 5}}, small_info(8));
  {
    H5File file = H5File::create(f16_path);
    H5DatasetLayout layout;
    layout.row_shape = {3};
    layout.chunk_rows = 4;
    H5Dataset lp = file.create_dataset("/logprobs", DType::kF16, layout);
    const uint16_t bits[] = {0x0000, 0x3C00, 0xC000, 0x7C00, 0x0001, 0x7BFF};
    lp.append(bits, DType::kF16, 2);
    H5Dataset idx = file.create_dataset("/indices", DType::kI32, layout);
    const std::vector<int32_t> ids = {0, 1, 2, 3, 4, 5};
    idx.append(std::span<const int32_t>(ids));
    file.set_string_attribute("teacher", "teacher/dir");
    file.set_int_attribute("k", 3);
  }
  TokenDataset ds(tokens_path);
  EXPECT_EQ(ds.document(2), (std::vector<uint32_t>{4, 5}));
  H5File file = H5File::open(f16_path);
  EXPECT_EQ(file.open_dataset("/logprobs").dtype(), DType::kF16);
  EXPECT_EQ(file.open_dataset("/logprobs").read_all<float>()[1], 1.f);
}

}  // namespace
}  // namespace refinery::io
