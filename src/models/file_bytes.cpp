#include "file_bytes.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "apo/core/error.hpp"

namespace apo::models {

namespace {

[[noreturn]] void io_error(const std::filesystem::path& path, const char* what, int error) {
  throw Error(error == ENOENT ? ErrorCode::NotFound : ErrorCode::Io,
              error == ENOENT ? std::string("no such file")
                              : fmt::format("{}: {}", what, std::strerror(error)),
              path.string());
}

}  // namespace

std::shared_ptr<const FileBytes> FileBytes::map(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) io_error(path, "cannot open", errno);
  struct stat status {};
  if (::fstat(fd, &status) != 0) {
    const int error = errno;
    ::close(fd);
    io_error(path, "cannot stat", error);
  }
  if (!S_ISREG(status.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::Io, "not a regular file", path.string());
  }
  std::shared_ptr<FileBytes> bytes(new FileBytes());
  bytes->size_ = static_cast<std::size_t>(status.st_size);
  if (bytes->size_ > 0) {
    void* address = ::mmap(nullptr, bytes->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (address == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      io_error(path, "cannot map", error);
    }
    bytes->data_ = static_cast<std::byte*>(address);
    bytes->mapped_ = true;
  }
  ::close(fd);
  return bytes;
}

std::shared_ptr<const FileBytes> FileBytes::hold(std::vector<std::byte> held) {
  std::shared_ptr<FileBytes> bytes(new FileBytes());
  bytes->held_ = std::move(held);
  bytes->data_ = bytes->held_.data();
  bytes->size_ = bytes->held_.size();
  return bytes;
}

void FileBytes::will_need(std::size_t offset, std::size_t bytes) const noexcept {
  if (!mapped_ || offset >= size_) return;
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const std::size_t begin = offset / page * page;
  const std::size_t end = std::min(size_, offset + bytes);
  ::madvise(data_ + begin, end - begin, MADV_WILLNEED);
}

FileBytes::~FileBytes() {
  if (mapped_) ::munmap(data_, size_);
}

TemporaryFile::TemporaryFile(std::filesystem::path final_path)
    : final_path_(std::move(final_path)),
      temporary_path_(final_path_.string() + fmt::format(".tmp.{}", ::getpid())) {
  fd_ = ::open(temporary_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) io_error(temporary_path_, "cannot create", errno);
}

TemporaryFile::~TemporaryFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temporary_path_.c_str());
  }
}

void TemporaryFile::write(std::span<const std::byte> bytes) {
  const std::byte* data = bytes.data();
  std::size_t left = bytes.size();
  while (left > 0) {
    const ssize_t written = ::write(fd_, data, left);
    if (written < 0) {
      if (errno == EINTR) continue;
      io_error(temporary_path_, "write failed", errno);
    }
    data += written;
    left -= static_cast<std::size_t>(written);
  }
}

void TemporaryFile::commit() {
  if (::fsync(fd_) != 0) io_error(temporary_path_, "fsync failed", errno);
  const int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0) {
    const int error = errno;
    ::unlink(temporary_path_.c_str());
    io_error(temporary_path_, "close failed", error);
  }
  if (::rename(temporary_path_.c_str(), final_path_.c_str()) != 0) {
    const int error = errno;
    ::unlink(temporary_path_.c_str());
    io_error(final_path_, "cannot rename the finished file into place", error);
  }
}

}  // namespace apo::models
