// dtest-agent: started by a gateway; speaks frames on stdin/stdout. With
// --listen it is a TCP server instead (the socket gateway; docs/socket.md).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fcntl.h>
#include <string>
#include <vector>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/listen.h"
#include "common/auth.h"
#include "sync/watch.h"

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: dtest-agent   (started by dtest; speaks its protocol on stdin/stdout)\n"
               "       dtest-agent --listen HOST:PORT [--token-file PATH] [--port-file PATH]\n"
               "         HOST is an IPv4 address, [IPv6] or localhost (no name lookup);\n"
               "         the token comes from --token-file, else $DTEST_TOKEN, else $DTEST_TOKEN_FILE\n"
               "       dtest-agent --watch ROOT [--idle SECONDS] [--ignore PATTERN]...\n"
               "         (started by dtest: watches a synced tree so unchanged re-syncs skip the walk)\n");
  return 4;
}

int listen_main(int argc, char** argv) {
  dtest::listen::Options opts;
  std::string token_file;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "dtest-agent: %s needs a value\n", name);
        return nullptr;
      }
      return argv[++i];
    };
    const char* v = nullptr;
    if (a == "--listen") {
      if (!(v = value("--listen"))) return usage();
      opts.address = v;
    } else if (a == "--token-file") {
      if (!(v = value("--token-file"))) return usage();
      token_file = v;
    } else if (a == "--port-file") {
      if (!(v = value("--port-file"))) return usage();
      opts.port_file = v;
    } else {
      std::fprintf(stderr, "dtest-agent: unknown option '%s'\n", a.c_str());
      return usage();
    }
  }
  if (opts.address.empty()) return usage();
  try {
    if (!token_file.empty()) {
      opts.token = dtest::auth::read_token_file(token_file);
    } else if (auto t = dtest::auth::token_from_env()) {
      opts.token = *t;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dtest-agent: %s\n", e.what());
    return 4;
  }
  if (opts.token.empty()) {
    std::fprintf(stderr, "dtest-agent: --listen needs a token: --token-file PATH, or DTEST_TOKEN / DTEST_TOKEN_FILE\n");
    return 4;
  }
  // The tests the agents run must not see the token.
  ::unsetenv("DTEST_TOKEN");
  ::unsetenv("DTEST_TOKEN_FILE");
  return dtest::listen::serve(opts);
}

int watch_args(int argc, char** argv) {
  std::string root;
  int idle = 600;
  std::vector<std::string> ignore;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (i == 2) {
      root = a;
    } else if (a == "--idle" && i + 1 < argc) {
      idle = std::atoi(argv[++i]);
    } else if (a == "--ignore" && i + 1 < argc) {
      ignore.push_back(argv[++i]);
    } else {
      std::fprintf(stderr, "dtest-agent: unknown option '%s'\n", a.c_str());
      return usage();
    }
  }
  if (root.empty() || idle <= 0) return usage();
  return dtest::sync::watch_main(root, ignore, idle);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && (std::strcmp(argv[1], "--version") == 0)) {
    std::printf("dtest-agent %s\n", DTEST_VERSION);
    return 0;
  }
  if (argc > 2 && std::strcmp(argv[1], "--watch") == 0) return watch_args(argc, argv);
  if (argc > 1 && std::strncmp(argv[1], "--", 2) == 0 && std::strcmp(argv[1], "--help") != 0)
    return listen_main(argc, argv);
  if (argc > 1) return usage();
  // Keep the protocol stream private: fd 1 becomes stderr, so nothing the
  // agent or a library prints by accident can corrupt a frame.
  const int out = ::fcntl(1, F_DUPFD_CLOEXEC, 3);
  const int in = ::fcntl(0, F_DUPFD_CLOEXEC, 3);
  if (out < 0 || in < 0) return 3;
  ::dup2(2, 1);
  const int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull >= 0) ::dup2(devnull, 0);
  return dtest::run_agent(in, out);
}
