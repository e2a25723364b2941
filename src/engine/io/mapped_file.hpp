#pragma once
// A read-only memory mapping of a whole file (RAII).
//
// Weights are memory-mapped, never read into owned buffers (DESIGN §1.4): the kernel pages them in on
// demand and the page cache is shared between processes. The mapping lives as long as the MappedFile;
// zero-copy views into it hold a std::shared_ptr<const MappedFile> (see SafetensorsFile::keep_alive).

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>

namespace refinery::io {

class MappedFile {
 public:
  // How the caller will read the mapping; passed to madvise as a hint (never required for correctness).
  enum class Access { kNormal, kSequential, kRandom };

  // Maps `path` read-only. Throws a user error naming the file when it is missing, not a regular file
  // or unreadable. An empty file gives an empty span (mmap of 0 bytes is not allowed, so none is made).
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path,
                                                Access access = Access::kNormal);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  std::size_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

  // Hint that [offset, offset + length) will be read soon (MADV_WILLNEED); out-of-range parts ignored.
  void prefetch(std::size_t offset, std::size_t length) const;

 private:
  MappedFile(std::filesystem::path path, const std::byte* data, std::size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}

  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace refinery::io
