// Small POSIX I/O helpers with EINTR handling.
#pragma once

#include <string>
#include <string_view>
#include <sys/types.h>

namespace dtest {

// Writes everything or throws std::system_error (EPIPE included).
void write_all(int fd, std::string_view data);
// One read(); returns bytes read (0 at EOF) or throws std::system_error.
// EAGAIN returns -1.
ssize_t read_some(int fd, char* buf, std::size_t n);
void set_cloexec(int fd);
void set_nonblocking(int fd, bool on);
// "exit status 3", "signal 11 (SIGSEGV)" from a waitpid() status.
std::string describe_wait_status(int status);

}  // namespace dtest
