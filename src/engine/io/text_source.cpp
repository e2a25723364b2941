#include "engine/io/text_source.hpp"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/core/error.hpp"
#include "engine/io/token_dataset.hpp"

namespace refinery::io {

namespace {

constexpr const char* kSupported =
    "supported: .txt (the whole file is one document), .jsonl (one {\"text\": ...} object per "
    "line), .json (tokens JSON [[id, ...], ...]), .h5/.hdf5 (a token dataset from `refine data "
    "tokenize`)";

// A JSON value for a message: short, on one line.
std::string preview(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return text;
}

// nlohmann's messages start with "[json.exception.parse_error.101] "; the rest is what users need.
std::string parse_message(const nlohmann::json::exception& e) {
  std::string what = e.what();
  size_t close = what.find("] ");
  return close == std::string::npos ? what : what.substr(close + 2);
}

std::ifstream open_input(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_user_error("cannot open input file ", path, " for reading; check its permissions");
  return in;
}

}  // namespace

// One open input file.
class TextSource::Reader {
 public:
  virtual ~Reader() = default;
  virtual std::optional<Document> next() = 0;
};

namespace {

class TxtReader final : public TextSource::Reader {
 public:
  explicit TxtReader(std::string path) : path_(std::move(path)) {}
  std::optional<Document> next() override {
    if (done_) return std::nullopt;
    done_ = true;
    std::ifstream in = open_input(path_);
    Document doc;
    doc.origin = path_;
    // Read in 1 MiB pieces: the file is one document, so it is returned whole.
    std::vector<char> piece(size_t{1} << 20);
    while (in) {
      in.read(piece.data(), static_cast<std::streamsize>(piece.size()));
      doc.text.append(piece.data(), static_cast<size_t>(in.gcount()));
    }
    if (in.bad()) throw_internal_error("I/O error while reading ", path_);
    return doc;
  }

 private:
  std::string path_;
  bool done_ = false;
};

class JsonLinesReader final : public TextSource::Reader {
 public:
  explicit JsonLinesReader(std::string path) : path_(std::move(path)), in_(open_input(path_)) {}

  std::optional<Document> next() override {
    std::string line;
    while (std::getline(in_, line)) {
      ++line_number_;
      if (!line.empty() && line.back() == '\r') line.pop_back();                    // CRLF files
      if (line_number_ == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);  // UTF-8 BOM
      if (line.find_first_not_of(" \t") == std::string::npos) continue;             // blank line
      return parse(line);
    }
    if (in_.bad()) throw_internal_error("I/O error while reading ", path_);
    return std::nullopt;
  }

 private:
  Document parse(const std::string& line) const {
    const std::string where = str(path_, ":", line_number_);
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw_user_error(where, ": invalid JSON (", parse_message(e),
                       "); each line of a .jsonl file must be one object like {\"text\": \"...\"}");
    }
    if (!value.is_object()) {
      throw_user_error(where, ": expected a JSON object like {\"text\": \"...\"}, found ",
                       value.type_name(), " ", preview(value));
    }
    auto text = value.find("text");
    if (text == value.end()) {
      std::string keys;
      for (const auto& [key, unused] : value.items()) keys += (keys.empty() ? "" : ", ") + key;
      throw_user_error(where, ": the object has no \"text\" field (its keys: ",
                       keys.empty() ? "none" : keys, "); each line needs {\"text\": \"...\"}");
    }
    if (!text->is_string()) {
      throw_user_error(where, ": \"text\" is ", text->type_name(), " ", preview(*text),
                       ", expected a string");
    }
    Document doc;
    doc.text = text->get<std::string>();
    doc.origin = where;
    return doc;
  }

  std::string path_;
  std::ifstream in_;
  uint64_t line_number_ = 0;
};

class TokensJsonReader final : public TextSource::Reader {
 public:
  explicit TokensJsonReader(std::string path) : path_(std::move(path)) {
    std::ifstream in = open_input(path_);
    try {
      documents_ = nlohmann::json::parse(in);
    } catch (const nlohmann::json::parse_error& e) {
      throw_user_error(path_, ": invalid JSON (", parse_message(e),
                       "); a tokens JSON file holds [[id, ...], ...]");
    }
    if (!documents_.is_array()) {
      throw_user_error(path_, ": expected a tokens JSON array of arrays [[id, ...], ...], found ",
                       documents_.type_name(), " ", preview(documents_));
    }
    // Validate everything now: fail before any document is used, not halfway through a job.
    for (size_t d = 0; d < documents_.size(); ++d) {
      const auto& doc = documents_[d];
      if (!doc.is_array()) {
        throw_user_error(path_, ": document ", d, " is ", doc.type_name(), " ", preview(doc),
                         ", expected an array of token ids");
      }
      for (size_t j = 0; j < doc.size(); ++j) {
        const auto& id = doc[j];
        bool ok =
            id.is_number_unsigned() && id.get<uint64_t>() <= std::numeric_limits<uint32_t>::max();
        if (!ok) {
          throw_user_error(path_, ": document ", d, ", position ", j,
                           ": expected a non-negative "
                           "integer token id below 2^32, found ",
                           preview(id));
        }
      }
    }
  }

  std::optional<Document> next() override {
    if (index_ >= documents_.size()) return std::nullopt;
    Document doc;
    doc.pre_tokenized = true;
    doc.origin = str(path_, "[", index_, "]");
    const auto& ids = documents_[index_];
    doc.tokens.reserve(ids.size());
    for (const auto& id : ids) doc.tokens.push_back(static_cast<uint32_t>(id.get<uint64_t>()));
    ++index_;
    return doc;
  }

 private:
  std::string path_;
  nlohmann::json documents_;
  size_t index_ = 0;
};

class TokenDatasetReader final : public TextSource::Reader {
 public:
  explicit TokenDatasetReader(const std::string& path) : dataset_(path) {}
  std::optional<Document> next() override {
    if (index_ >= dataset_.n_docs()) return std::nullopt;
    Document doc;
    doc.pre_tokenized = true;
    doc.origin = str(dataset_.path(), "[", index_, "]");
    doc.tokens = dataset_.document(index_);
    ++index_;
    return doc;
  }

 private:
  TokenDataset dataset_;
  uint64_t index_ = 0;
};

}  // namespace

TextSourceKind text_source_kind(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".txt") return TextSourceKind::kText;
  if (ext == ".jsonl") return TextSourceKind::kJsonLines;
  if (ext == ".json") return TextSourceKind::kTokensJson;
  if (ext == ".h5" || ext == ".hdf5") return TextSourceKind::kTokenDataset;
  throw_user_error("input file ", path, " has ",
                   ext.empty() ? std::string("no extension") : "the unsupported extension " + ext,
                   "; ", kSupported);
}

TextSource::TextSource(std::vector<std::string> paths) : paths_(std::move(paths)) {
  if (paths_.empty()) throw_user_error("no input files were given; ", kSupported);
  for (const auto& path : paths_) {
    (void)text_source_kind(path);
    std::error_code ec;
    if (!std::filesystem::exists(path, ec))
      throw_user_error("input file ", path, " does not exist; check the path");
    if (!std::filesystem::is_regular_file(path, ec))
      throw_user_error("input ", path, " is not a regular file; pass files, not directories");
  }
}

TextSource::~TextSource() = default;
TextSource::TextSource(TextSource&&) noexcept = default;
TextSource& TextSource::operator=(TextSource&&) noexcept = default;

std::optional<Document> TextSource::next() {
  while (true) {
    if (reader_) {
      std::optional<Document> doc = reader_->next();
      if (doc) {
        ++documents_read_;
        return doc;
      }
      reader_.reset();
    }
    if (next_path_ >= paths_.size()) return std::nullopt;
    const std::string& path = paths_[next_path_++];
    switch (text_source_kind(path)) {
      case TextSourceKind::kText:
        reader_ = std::make_unique<TxtReader>(path);
        break;
      case TextSourceKind::kJsonLines:
        reader_ = std::make_unique<JsonLinesReader>(path);
        break;
      case TextSourceKind::kTokensJson:
        reader_ = std::make_unique<TokensJsonReader>(path);
        break;
      case TextSourceKind::kTokenDataset:
        reader_ = std::make_unique<TokenDatasetReader>(path);
        break;
    }
  }
}

}  // namespace refinery::io
