#include "engine/io/text_source.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/core/error.hpp"
#include "tests/support/expect_error.hpp"
#include "tests/support/scratch_dir.hpp"

namespace refinery::io {
namespace {

using refinery::test::error_message_of;
using test::ScratchDir;

namespace fs = std::filesystem;

const std::string kData = std::string(REFINERY_SOURCE_DIR) + "/tests/engine/io/h5data/";

std::vector<Document> read_all(std::vector<std::string> paths) {
  TextSource source(std::move(paths));
  std::vector<Document> docs;
  while (auto doc = source.next()) docs.push_back(std::move(*doc));
  EXPECT_EQ(source.documents_read(), docs.size());
  EXPECT_FALSE(source.next().has_value());  // stays exhausted
  return docs;
}

// Reads documents until the error, returning its message.
std::string error_while_reading(std::vector<std::string> paths) {
  return error_message_of([&] { read_all(std::move(paths)); });
}

TEST(TextSource, TxtFileIsOneWholeDocument) {
  ScratchDir dir;
  // Larger than the 1 MiB read piece, with newlines, UTF-8 and a NUL byte.
  std::string text = "first line\nsecond — ✓\n\n";
  text += std::string(1, '\0');
  while (text.size() < (size_t{3} << 19) + 5) text += "0123456789abcdef\n";
  const std::string path = dir.write("a.txt", text);
  std::vector<Document> docs = read_all({path});
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].text, text);
  EXPECT_FALSE(docs[0].pre_tokenized);
  EXPECT_TRUE(docs[0].tokens.empty());
  EXPECT_EQ(docs[0].origin, path);
}

TEST(TextSource, EmptyTxtIsOneEmptyDocument) {
  ScratchDir dir;
  std::vector<Document> docs = read_all({dir.write("e.txt", "")});
  ASSERT_EQ(docs.size(), 1u);
  EXPECT_EQ(docs[0].text, "");
}

TEST(TextSource, JsonLinesSkipBlankLinesAndKeepLineNumbers) {
  ScratchDir dir;
  const std::string path =
      dir.write("d.jsonl",
                "\xEF\xBB\xBF{\"text\": \"hello\"}\n"           // line 1, with a UTF-8 BOM
                "\n"                                            // 2: blank
                "   \t \n"                                      // 3: blank
                "{\"id\": 7, \"text\": \"a\\nb \\u00e9\"}\r\n"  // 4: CRLF, escapes, extra key
                "{\"text\": \"\"}\n"                            // 5: empty text is a document
                "{\"text\": \"\xF0\x9F\x98\x80 emoji\"}");      // 6: no final newline
  std::vector<Document> docs = read_all({path});
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(docs[0].text, "hello");
  EXPECT_EQ(docs[0].origin, path + ":1");
  EXPECT_EQ(docs[1].text, "a\nb \xC3\xA9");
  EXPECT_EQ(docs[1].origin, path + ":4");
  EXPECT_EQ(docs[2].text, "");
  EXPECT_EQ(docs[2].origin, path + ":5");
  EXPECT_EQ(docs[3].text, "\xF0\x9F\x98\x80 emoji");
  EXPECT_EQ(docs[3].origin, path + ":6");
  for (const auto& d : docs) EXPECT_FALSE(d.pre_tokenized);
}

TEST(TextSource, JsonLinesErrorsNameFileAndLine) {
  ScratchDir dir;
  const std::string ok = "{\"text\": \"fine\"}\n\n";
  std::string bad = dir.write("bad.jsonl", ok + "{\"text\": \"unterminated}\n");
  std::string msg = error_while_reading({bad});
  EXPECT_NE(msg.find(bad + ":3: invalid JSON"), std::string::npos) << msg;

  bad = dir.write("missing.jsonl", ok + "{\"txt\": \"x\", \"meta\": 1}\n");
  msg = error_while_reading({bad});
  EXPECT_NE(msg.find(bad + ":3: the object has no \"text\" field (its keys: meta, txt)"),
            std::string::npos)
      << msg;

  bad = dir.write("number.jsonl", "{\"text\": 42}\n");
  msg = error_while_reading({bad});
  EXPECT_NE(msg.find(bad + ":1: \"text\" is number 42, expected a string"), std::string::npos)
      << msg;

  bad = dir.write("array.jsonl", "[\"text\"]\n");
  msg = error_while_reading({bad});
  EXPECT_NE(msg.find(bad + ":1: expected a JSON object"), std::string::npos) << msg;
  EXPECT_NE(msg.find("found array"), std::string::npos) << msg;

  bad = dir.write("null.jsonl", "{\"text\": null}\n");
  msg = error_while_reading({bad});
  EXPECT_NE(msg.find("\"text\" is null"), std::string::npos) << msg;

  bad = dir.write("utf8.jsonl", "{\"text\": \"\xFF\"}\n");  // invalid UTF-8 in a JSON string
  msg = error_while_reading({bad});
  EXPECT_NE(msg.find(bad + ":1: invalid JSON"), std::string::npos) << msg;
}

TEST(TextSource, TokensJsonYieldsPreTokenizedDocuments) {
  ScratchDir dir;
  const std::string path = dir.write("t.json", "[[1, 2, 3], [], [4294967295, 0]]");
  std::vector<Document> docs = read_all({path});
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].tokens, (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_TRUE(docs[1].tokens.empty());
  EXPECT_EQ(docs[2].tokens, (std::vector<uint32_t>{4294967295u, 0}));
  for (size_t i = 0; i < docs.size(); ++i) {
    EXPECT_TRUE(docs[i].pre_tokenized);
    EXPECT_TRUE(docs[i].text.empty());
    EXPECT_EQ(docs[i].origin, str(path, "[", i, "]"));
  }
  EXPECT_TRUE(read_all({dir.write("none.json", "[]")}).empty());
}

TEST(TextSource, TokensJsonRejectsNonIdsBeforeYieldingAnything) {
  ScratchDir dir;
  struct Case {
    const char* content;
    const char* message_part;
  };
  const Case cases[] = {
      {"[[1, 2], [3, -1]]", "document 1, position 1: expected a non-negative integer token id"},
      {"[[1.5]]", "document 0, position 0"},
      {"[[4294967296]]", "below 2^32, found 4294967296"},
      {"[[\"7\"]]", "found \"7\""},
      {"[[1], 2]", "document 1 is number 2, expected an array of token ids"},
      {"{\"ids\": [1]}", "expected a tokens JSON array of arrays"},
      {"[[1, 2]", "invalid JSON"},
  };
  for (const auto& c : cases) {
    const std::string path = dir.write("bad.json", c.content);
    TextSource source({path});
    std::string msg = error_message_of([&] { source.next(); });  // the first next() already fails
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(c.message_part), std::string::npos) << c.content << " -> " << msg;
  }
}

TEST(TextSource, TokenDatasetYieldsItsDocuments) {
  std::ifstream in(kData + "tokens_h5py.expected.json");
  nlohmann::json expected = nlohmann::json::parse(in);
  const std::string path = kData + "tokens_h5py.h5";
  std::vector<Document> docs = read_all({path});
  ASSERT_EQ(docs.size(), expected["documents"].size());
  for (size_t i = 0; i < docs.size(); ++i) {
    EXPECT_TRUE(docs[i].pre_tokenized);
    EXPECT_EQ(docs[i].tokens, expected["documents"][i].get<std::vector<uint32_t>>());
    EXPECT_EQ(docs[i].origin, str(path, "[", i, "]"));
  }
  std::string msg = error_while_reading({kData + "bad_offsets_start.h5"});
  EXPECT_NE(msg.find("starts at 1, expected 0"), std::string::npos) << msg;
}

TEST(TextSource, SeveralFilesInOrder) {
  ScratchDir dir;
  const std::string a = dir.write("a.TXT", "alpha");  // extensions are case-insensitive
  const std::string b = dir.write("b.jsonl", "{\"text\": \"beta\"}\n{\"text\": \"gamma\"}\n");
  const std::string c = dir.write("c.json", "[[9]]");
  const std::string e = dir.write("e.jsonl", "\n\n");  // no documents at all
  std::vector<Document> docs = read_all({a, e, b, c, kData + "tokens_h5py.h5"});
  ASSERT_EQ(docs.size(), 4u + 5u);
  EXPECT_EQ(docs[0].text, "alpha");
  EXPECT_EQ(docs[1].text, "beta");
  EXPECT_EQ(docs[2].origin, b + ":2");
  EXPECT_EQ(docs[3].tokens, std::vector<uint32_t>{9});
  EXPECT_EQ(docs[4].tokens, (std::vector<uint32_t>{5, 6, 7}));
}

TEST(TextSource, BadPathsFailAtConstruction) {
  ScratchDir dir;
  const std::string good = dir.write("good.txt", "x");
  std::string msg = error_message_of([&] { TextSource({good, dir.write("data.csv", "a,b")}); });
  EXPECT_NE(msg.find("data.csv"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported extension .csv"), std::string::npos) << msg;
  for (const char* ext : {".txt", ".jsonl", ".json", ".h5"})
    EXPECT_NE(msg.find(ext), std::string::npos) << "should list " << ext << ": " << msg;

  msg = error_message_of([&] { TextSource({good, dir.file("absent.jsonl")}); });
  EXPECT_NE(msg.find("absent.jsonl does not exist"), std::string::npos) << msg;

  msg = error_message_of([&] { TextSource({dir.write("README", "x")}); });
  EXPECT_NE(msg.find("no extension"), std::string::npos) << msg;

  fs::create_directories(dir.file("folder.txt"));
  msg = error_message_of([&] { TextSource({dir.file("folder.txt")}); });
  EXPECT_NE(msg.find("not a regular file"), std::string::npos) << msg;

  msg = error_message_of([&] { TextSource(std::vector<std::string>{}); });
  EXPECT_NE(msg.find("no input files"), std::string::npos) << msg;

  EXPECT_EQ(text_source_kind("x/y.HDF5"), TextSourceKind::kTokenDataset);
  EXPECT_EQ(text_source_kind("y.json"), TextSourceKind::kTokensJson);
}

}  // namespace
}  // namespace refinery::io
