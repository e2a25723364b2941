// mmap-based MappedFile. The file descriptor is closed right after mapping: the mapping keeps the
// file alive on its own, so a MappedFile costs no descriptor (models have hundreds of shards).
#include "engine/io/mapped_file.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/core/error.hpp"

namespace refinery::io {
namespace {

// Closes a descriptor on every exit path of open().
struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) ::close(fd);
  }
};

int advice_for(MappedFile::Access access) {
  switch (access) {
    case MappedFile::Access::kSequential: return MADV_SEQUENTIAL;
    case MappedFile::Access::kRandom: return MADV_RANDOM;
    default: return MADV_NORMAL;
  }
}

}  // namespace

std::shared_ptr<const MappedFile> MappedFile::open(const std::filesystem::path& path, Access access) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT)
      throw_user_error(path.string(), ": no such file; check the path");
    throw_user_error(path.string(), ": cannot open for reading: ", std::strerror(err),
                     "; check that the file exists and is readable");
  }
  FdCloser closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0)
    throw_internal_error(path.string(), ": fstat failed: ", std::strerror(errno));
  if (!S_ISREG(st.st_mode))
    throw_user_error(path.string(), ": not a regular file (a directory or device?); give a file path");
  const auto size = static_cast<std::size_t>(st.st_size);
  if (size == 0) return std::shared_ptr<const MappedFile>(new MappedFile(path, nullptr, 0));

  void* data = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  if (data == MAP_FAILED)
    throw_internal_error(path.string(), ": mmap of ", size, " bytes failed: ", std::strerror(errno));
  // Only a hint: failure changes nothing but speed.
  ::madvise(data, size, advice_for(access));
  return std::shared_ptr<const MappedFile>(
      new MappedFile(path, static_cast<const std::byte*>(data), size));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

void MappedFile::prefetch(std::size_t offset, std::size_t length) const {
  if (data_ == nullptr || offset >= size_) return;
  if (length > size_ - offset) length = size_ - offset;
  // madvise wants a page-aligned start.
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t aligned = offset - offset % page;
  ::madvise(const_cast<std::byte*>(data_) + aligned, length + (offset - aligned), MADV_WILLNEED);
}

}  // namespace refinery::io
