#pragma once
// Atomic file replacement (RAII): write to a temporary file in the destination's directory, then
// commit() = fsync the data, rename over the destination, fsync the directory. A reader sees either
// the old file or the complete new one, never a half-written file, even after a crash or power loss
// (DESIGN §1.5). If the AtomicFile is destroyed without commit() (an exception, an early return), the
// temporary file is removed and the destination is untouched.
//
// Usage:
//   AtomicFile out(dir / "model.safetensors");
//   out.write(header); out.write(data);        // or use out.fd() directly (e.g. to mmap it)
//   out.commit();

#include <cstddef>
#include <filesystem>
#include <span>
#include <string_view>

namespace refinery::io {

class AtomicFile {
 public:
  // Creates "<dir>/.<name>.tmp.<pid>.<n>" exclusively (mode 0644, opened read-write so it can be
  // mmapped for writing). The directory must exist.
  explicit AtomicFile(std::filesystem::path destination);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  // Appends all of `bytes` at the current position (retries short writes and EINTR).
  void write(std::span<const std::byte> bytes);
  void write(std::string_view text);

  // Sets the file's size and reserves the disk blocks (posix_fallocate), so that writes through an
  // mmap of the file cannot hit SIGBUS on a full disk: a full disk is reported here instead.
  void reserve(std::size_t size);

  // fsync, close, rename onto the destination, fsync the directory. Throws on any failure (the
  // temporary file is then removed). After commit() the object only remembers the paths.
  void commit();

  int fd() const { return fd_; }
  const std::filesystem::path& destination() const { return destination_; }
  const std::filesystem::path& temp_path() const { return temp_path_; }
  bool committed() const { return committed_; }

 private:
  void discard() noexcept;

  std::filesystem::path destination_;
  std::filesystem::path temp_path_;
  int fd_ = -1;
  bool committed_ = false;
};

// Writes `text` to `destination` atomically (small files: indexes, configs, JSON state).
void write_file_atomically(const std::filesystem::path& destination, std::string_view text);

}  // namespace refinery::io
