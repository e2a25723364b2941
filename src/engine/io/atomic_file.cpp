#include "engine/io/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "engine/core/error.hpp"

namespace refinery::io {
namespace {

// Distinguishes temporary names of several AtomicFiles of one process (pid distinguishes processes).
std::atomic<unsigned> g_temp_counter{0};

[[noreturn]] void throw_io_error(const std::filesystem::path& path, const char* what, int err) {
  if (err == ENOSPC || err == EDQUOT)
    throw_user_error(path.string(), ": ", what, " failed: ", std::strerror(err),
                     "; free disk space or write to another directory");
  if (err == EACCES || err == EROFS || err == EPERM)
    throw_user_error(path.string(), ": ", what, " failed: ", std::strerror(err),
                     "; choose a directory you can write to");
  throw_internal_error(path.string(), ": ", what, " failed: ", std::strerror(err));
}

void fsync_directory(const std::filesystem::path& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) throw_io_error(dir, "open (to fsync the directory)", errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  // Some file systems (e.g. some network mounts) do not support fsync on a directory: not an error.
  if (rc != 0 && err != EINVAL && err != ENOTSUP) throw_io_error(dir, "fsync of the directory", err);
}

}  // namespace

AtomicFile::AtomicFile(std::filesystem::path destination) : destination_(std::move(destination)) {
  if (destination_.filename().empty())
    throw_user_error("cannot write to '", destination_.string(), "': the path names no file");
  std::filesystem::path dir = destination_.parent_path();
  if (dir.empty()) dir = ".";
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec))
    throw_user_error("cannot write ", destination_.string(), ": directory ", dir.string(),
                     " does not exist; create it first");
  temp_path_ = dir / str(".", destination_.filename().string(), ".tmp.", ::getpid(), ".",
                         g_temp_counter.fetch_add(1));
  fd_ = ::open(temp_path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) throw_io_error(temp_path_, "create", errno);
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
}

void AtomicFile::write(std::span<const std::byte> bytes) {
  REFINERY_CHECK(fd_ >= 0, "write after commit of ", destination_.string());
  const std::byte* p = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_io_error(destination_, "write", errno);
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

void AtomicFile::write(std::string_view text) {
  write(std::as_bytes(std::span<const char>(text.data(), text.size())));
}

void AtomicFile::reserve(std::size_t size) {
  REFINERY_CHECK(fd_ >= 0, "reserve after commit of ", destination_.string());
  if (::ftruncate(fd_, static_cast<off_t>(size)) != 0) throw_io_error(destination_, "ftruncate", errno);
  if (size == 0) return;
  const int rc = ::posix_fallocate(fd_, 0, static_cast<off_t>(size));  // returns the error number
  if (rc != 0) throw_io_error(destination_, "reserving disk space (posix_fallocate)", rc);
}

void AtomicFile::commit() {
  REFINERY_CHECK(fd_ >= 0 && !committed_, "commit twice of ", destination_.string());
  if (::fsync(fd_) != 0) throw_io_error(destination_, "fsync", errno);
  const int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    throw_io_error(destination_, "close", err);
  }
  if (::rename(temp_path_.c_str(), destination_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_path_.c_str());
    throw_io_error(destination_, "rename of the temporary file onto it", err);
  }
  committed_ = true;
  std::filesystem::path dir = destination_.parent_path();
  fsync_directory(dir.empty() ? std::filesystem::path(".") : dir);
}

void write_file_atomically(const std::filesystem::path& destination, std::string_view text) {
  AtomicFile file(destination);
  file.write(text);
  file.commit();
}

}  // namespace refinery::io
