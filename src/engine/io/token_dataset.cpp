#include "engine/io/token_dataset.hpp"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/core/log.hpp"

namespace refinery::io {
namespace {

constexpr uint64_t kOffsetsChunkRows = uint64_t{1} << 16;  // 512 KiB of uint64 offsets
constexpr uint64_t kScanTokens = uint64_t{1} << 20;        // tokens per read when validating

std::string optional_string(const H5File& file, const char* name) {
  return file.has_attribute(name) ? file.string_attribute(name) : std::string();
}

}  // namespace

// ---- TokenDatasetWriter
// ---------------------------------------------------------------------------

TokenDatasetWriter::TokenDatasetWriter(std::string out_path, TokenDatasetInfo info)
    : TokenDatasetWriter(std::move(out_path), std::move(info), Options()) {}

TokenDatasetWriter::TokenDatasetWriter(std::string out_path, TokenDatasetInfo info, Options options)
    : out_path_(std::move(out_path)), info_(std::move(info)), options_(options) {
  REFINERY_CHECK(info_.vocab_size > 0, "token dataset ", out_path_, " needs a vocab_size > 0");
  REFINERY_CHECK(options_.chunk_tokens > 0, "chunk_tokens must be > 0");
  temp_path_ = str(out_path_, ".tmp-", ::getpid());
  try {
    file_ = H5File::create(temp_path_);
    H5DatasetLayout token_layout;
    token_layout.chunk_rows = options_.chunk_tokens;
    token_layout.deflate_level = options_.deflate_level;
    token_layout.shuffle = true;
    tokens_ = file_.create_dataset("/tokens", DType::kU32, token_layout);
    H5DatasetLayout offset_layout;
    offset_layout.chunk_rows = kOffsetsChunkRows;
    offset_layout.deflate_level = options_.deflate_level;
    offset_layout.shuffle = true;
    offsets_ = file_.create_dataset("/doc_offsets", DType::kU64, offset_layout);

    file_.set_string_attribute("format", kTokenDatasetFormat);
    file_.set_int_attribute("format_version", kTokenDatasetFormatVersion);
    file_.set_string_attribute("tokenizer_sha256", info_.tokenizer_sha256);
    file_.set_string_attribute("tokenizer_path", info_.tokenizer_path);
    file_.set_int_attribute("vocab_size", info_.vocab_size);
    file_.set_string_attribute("sources", nlohmann::json(info_.sources).dump());
    file_.set_string_attribute("created_by", str("refinery ", REFINERY_VERSION));
  } catch (...) {
    discard();
    throw;
  }
  pending_tokens_.reserve(static_cast<size_t>(std::min<uint64_t>(options_.chunk_tokens, 1 << 20)));
  pending_offsets_.push_back(0);  // doc_offsets starts at 0
}

TokenDatasetWriter::~TokenDatasetWriter() {
  if (!finished_) discard();
}

void TokenDatasetWriter::discard() noexcept {
  tokens_ = H5Dataset();
  offsets_ = H5Dataset();
  file_ = H5File();  // closes silently
  std::error_code ec;
  std::filesystem::remove(temp_path_, ec);
}

void TokenDatasetWriter::add_document(std::span<const uint32_t> ids, std::string_view origin) {
  REFINERY_CHECK(!finished_, "add_document after finish() on ", out_path_);
  for (size_t j = 0; j < ids.size(); ++j) {
    if (ids[j] >= info_.vocab_size) {
      throw_user_error("document ", n_docs_, origin.empty() ? "" : " (", origin,
                       origin.empty() ? "" : ")", " has token id ", ids[j], " at position ", j,
                       ", but the vocabulary has ", info_.vocab_size, " ids (0..",
                       info_.vocab_size - 1, "); check that the data was tokenized with ",
                       info_.tokenizer_path.empty() ? "this tokenizer" : info_.tokenizer_path);
    }
  }
  // Copy through the chunk-sized buffer so that every write to /tokens is one whole chunk.
  size_t done = 0;
  while (done < ids.size()) {
    size_t room = static_cast<size_t>(options_.chunk_tokens - pending_tokens_.size());
    size_t take = std::min(room, ids.size() - done);
    pending_tokens_.insert(pending_tokens_.end(), ids.begin() + done, ids.begin() + done + take);
    done += take;
    if (pending_tokens_.size() == options_.chunk_tokens) flush_tokens();
  }
  n_tokens_ += ids.size();
  ++n_docs_;
  pending_offsets_.push_back(n_tokens_);
  if (pending_offsets_.size() >= kOffsetsChunkRows) flush_offsets();
}

void TokenDatasetWriter::flush_tokens() {
  if (pending_tokens_.empty()) return;
  tokens_.append(std::span<const uint32_t>(pending_tokens_));
  pending_tokens_.clear();
}

void TokenDatasetWriter::flush_offsets() {
  if (pending_offsets_.empty()) return;
  offsets_.append(std::span<const uint64_t>(pending_offsets_));
  pending_offsets_.clear();
}

void TokenDatasetWriter::finish() {
  REFINERY_CHECK(!finished_, "finish() called twice on ", out_path_);
  flush_tokens();
  flush_offsets();
  REFINERY_CHECK(tokens_.rows() == n_tokens_ && offsets_.rows() == n_docs_ + 1, "token dataset ",
                 temp_path_, " lost rows");
  file_.set_int_attribute("n_docs", static_cast<int64_t>(n_docs_));
  file_.set_int_attribute("n_tokens", static_cast<int64_t>(n_tokens_));
  // Datasets first: with HDF5's default (weak) close, the file stays open while they are.
  tokens_ = H5Dataset();
  offsets_ = H5Dataset();
  file_.close();
  std::error_code ec;
  std::filesystem::rename(temp_path_, out_path_, ec);
  if (ec) {
    throw_internal_error("cannot rename ", temp_path_, " to ", out_path_, ": ", ec.message(),
                         "; the data is complete in ", temp_path_);
  }
  finished_ = true;
  log::debug("wrote ", out_path_, ": ", n_docs_, " documents, ", n_tokens_, " tokens");
}

// ---- TokenDataset
// ---------------------------------------------------------------------------------

TokenDataset::TokenDataset(const std::string& path) : TokenDataset(path, Options()) {}

TokenDataset::TokenDataset(const std::string& path, Options options)
    : path_(path), file_(H5File::open(path)) {
  if (!file_.has_attribute("format")) {
    throw_user_error(path_,
                     " is not a refinery token dataset: it has no 'format' attribute "
                     "(expected \"",
                     kTokenDatasetFormat, "\"); make one with `refine data tokenize`");
  }
  std::string format = file_.string_attribute("format");
  if (format != kTokenDatasetFormat) {
    throw_user_error(path_, " has format \"", format, "\", expected \"", kTokenDatasetFormat,
                     "\"; pass a token dataset made by `refine data tokenize`");
  }
  format_version_ = file_.int_attribute("format_version");
  if (format_version_ < 1 || format_version_ > kTokenDatasetFormatVersion) {
    throw_user_error(path_, " has format_version ", format_version_,
                     "; this refinery reads version ", kTokenDatasetFormatVersion,
                     format_version_ > kTokenDatasetFormatVersion ? " (upgrade refinery)" : "");
  }
  int64_t vocab = file_.int_attribute("vocab_size");
  if (vocab <= 0 || vocab > int64_t{std::numeric_limits<uint32_t>::max()}) {
    throw_user_error(path_, " has vocab_size ", vocab, ", expected 1..",
                     std::numeric_limits<uint32_t>::max());
  }
  vocab_size_ = static_cast<uint32_t>(vocab);
  tokenizer_sha256_ = optional_string(file_, "tokenizer_sha256");
  tokenizer_path_ = optional_string(file_, "tokenizer_path");
  created_by_ = optional_string(file_, "created_by");
  if (file_.has_attribute("sources")) {
    std::string text = file_.string_attribute("sources");
    nlohmann::json sources = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    bool ok = sources.is_array() && std::all_of(sources.begin(), sources.end(),
                                                [](const auto& s) { return s.is_string(); });
    if (!ok) {
      throw_user_error(path_, ": attribute 'sources' should be a JSON array of file names, found: ",
                       text.substr(0, 200));
    }
    for (const auto& s : sources) sources_.push_back(s.get<std::string>());
  }

  tokens_ = file_.open_dataset("/tokens");
  if (tokens_.rank() != 1 || tokens_.dtype() != DType::kU32) {
    throw_user_error("/tokens in ", path_, " must be a 1-D uint32 array, found rank ",
                     tokens_.rank(), " of ", tokens_.type_description(),
                     "; rewrite it with numpy dtype uint32");
  }
  H5Dataset offsets = file_.open_dataset("/doc_offsets");
  if (offsets.rank() != 1 || offsets.dtype() != DType::kU64) {
    throw_user_error("/doc_offsets in ", path_, " must be a 1-D uint64 array, found rank ",
                     offsets.rank(), " of ", offsets.type_description(),
                     "; rewrite it with numpy dtype uint64");
  }
  validate_offsets(offsets);
  if (options.check_token_ids) check_token_ids();
}

void TokenDataset::validate_offsets(const H5Dataset& offsets) {
  const uint64_t n_tokens = tokens_.rows();
  if (offsets.rows() == 0) {
    throw_user_error("/doc_offsets in ", path_,
                     " is empty; it needs n_docs + 1 entries starting "
                     "at 0 (an empty dataset has [0])");
  }
  offsets_ = offsets.read_all<uint64_t>();
  if (offsets_.front() != 0)
    throw_user_error("/doc_offsets in ", path_, " starts at ", offsets_.front(), ", expected 0");
  for (size_t i = 1; i < offsets_.size(); ++i) {
    if (offsets_[i] < offsets_[i - 1]) {
      throw_user_error("/doc_offsets in ", path_, " decreases at index ", i, " (", offsets_[i - 1],
                       " then ", offsets_[i], "); offsets must never decrease");
    }
  }
  if (offsets_.back() != n_tokens) {
    throw_user_error("/doc_offsets in ", path_, " ends at ", offsets_.back(), " but /tokens has ",
                     n_tokens, " tokens; the last offset must equal the token count");
  }
  if (file_.has_attribute("n_docs") &&
      file_.int_attribute("n_docs") != static_cast<int64_t>(n_docs())) {
    throw_user_error(path_, ": attribute n_docs is ", file_.int_attribute("n_docs"),
                     " but /doc_offsets describes ", n_docs(), " documents");
  }
  if (file_.has_attribute("n_tokens") &&
      file_.int_attribute("n_tokens") != static_cast<int64_t>(n_tokens)) {
    throw_user_error(path_, ": attribute n_tokens is ", file_.int_attribute("n_tokens"),
                     " but /tokens has ", n_tokens, " tokens");
  }
}

void TokenDataset::check_token_ids() const {
  std::vector<uint32_t> buffer;
  for (uint64_t begin = 0; begin < n_tokens(); begin += kScanTokens) {
    uint64_t count = std::min(kScanTokens, n_tokens() - begin);
    buffer.resize(static_cast<size_t>(count));
    read_tokens(begin, buffer);
    auto bad =
        std::find_if(buffer.begin(), buffer.end(), [&](uint32_t id) { return id >= vocab_size_; });
    if (bad != buffer.end()) {
      uint64_t position = begin + static_cast<uint64_t>(bad - buffer.begin());
      uint64_t doc = static_cast<uint64_t>(
          std::upper_bound(offsets_.begin(), offsets_.end(), position) - offsets_.begin() - 1);
      throw_user_error(path_, ": token ", position, " (document ", doc, ") is ", *bad,
                       ", not below vocab_size ", vocab_size_,
                       "; the dataset does not match its tokenizer");
    }
  }
}

std::pair<uint64_t, uint64_t> TokenDataset::document_range(uint64_t i) const {
  if (i >= n_docs())
    throw_user_error("document ", i, " is out of range: ", path_, " has ", n_docs(), " documents");
  return {offsets_[i], offsets_[i + 1]};
}

std::vector<uint32_t> TokenDataset::document(uint64_t i) const {
  auto [begin, end] = document_range(i);
  return read_tokens(begin, end - begin);
}

std::vector<uint32_t> TokenDataset::read_tokens(uint64_t begin, uint64_t count) const {
  return tokens_.read_rows<uint32_t>(begin, count);
}

void TokenDataset::read_tokens(uint64_t begin, std::span<uint32_t> out) const {
  tokens_.read_rows(begin, out.size(), DType::kU32, out.data());
}

std::string TokenDataset::string_attribute(const std::string& name) const {
  return file_.string_attribute(name);
}

int64_t TokenDataset::int_attribute(const std::string& name) const {
  return file_.int_attribute(name);
}

}  // namespace refinery::io
