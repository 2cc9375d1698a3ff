// The agent's side of a sync: answers sync_* messages from the master,
// writing each root into <base>/<name> through a SafeRoot (so no path from
// the peer can reach outside it) and keeping the root's stat cache in
// <base>/.dtest-sync/<name>.cache, so an unchanged tree costs one round trip.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "common/message.h"
#include "sync/watch.h"

namespace dtest::sync {

class Receiver {
 public:
  using Send = std::function<void(MsgKind, nlohmann::json)>;
  // `watch`: tree watchers for the roots (the agent passes its own binary
  // and the environment's settings; off by default).
  Receiver(Send send, std::string base_dir, WatchOptions watch = WatchOptions{false, {}, 0});
  ~Receiver();
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  // Handles a sync_* message. A malformed message throws ProtocolError;
  // failures of the sync itself (a refused path, a full disk) are collected
  // and reported in the root's sync_done.
  void handle(const Message& m);

 private:
  struct Root;
  void begin(const Message& m);
  void plan(Root& r, const Message& m);
  void data(Root& r, const Message& m);
  void end(Root& r, std::int64_t id, const Message& m);
  Send send_;
  std::string base_;
  WatchOptions watch_;
  std::map<std::int64_t, std::unique_ptr<Root>> roots_;
};

}  // namespace dtest::sync
