#include "master/sync_command.h"

#include <chrono>
#include <future>
#include <mutex>
#include <thread>

#include <fmt/format.h>

#include "common/message.h"
#include "sync/sender.h"

namespace dtest {

namespace {

using Clock = std::chrono::steady_clock;

std::string human_bytes(std::uint64_t n) {
  if (n < 10 * 1024) return fmt::format("{} B", n);
  if (n < 10 * 1024 * 1024) return fmt::format("{:.1f} KiB", static_cast<double>(n) / 1024);
  return fmt::format("{:.1f} MiB", static_cast<double>(n) / (1024.0 * 1024.0));
}

struct Place {
  xspec::Spec spec;
  std::string id;
  std::string line;  // the report
  bool ok = false;
};

}  // namespace

int run_sync_command(const SyncCommandOptions& opts, const GatewayFactory& factory, std::ostream& out,
                     std::ostream& err) {
  const auto t0 = Clock::now();
  // One place per host and work dir; plain local popen works here already.
  std::vector<Place> places;
  std::vector<std::string> keys;
  int n = 0;
  for (const auto& spec : opts.specs) {
    for (int k = 0; k < spec.count; ++k, ++n) {
      const auto type = spec.type();
      const auto chdir = spec.get("chdir");
      const std::string id = spec.get("id").value_or(fmt::format("gw{}", n));
      if (type == "popen" && !chdir) {
        out << fmt::format("{} ({}): works in this directory; nothing to sync\n", id, spec.original);
        continue;
      }
      const std::string key = type + "=" + spec.get(type).value_or("") + "//chdir=" + chdir.value_or("");
      if (std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
      keys.push_back(key);
      places.push_back(Place{spec, id, {}, false});
    }
  }
  auto roots_future = std::async(std::launch::async, [&] {
    std::vector<std::shared_ptr<const sync::LocalRoot>> roots;
    for (const auto& d : opts.roots)
      roots.push_back(std::make_shared<const sync::LocalRoot>(
          sync::scan_local_root(d, opts.ignore, opts.cache_dir, sync::watch_options_from_env(opts.agent))));
    return roots;
  });
  std::shared_future<std::vector<std::shared_ptr<const sync::LocalRoot>>> roots = roots_future.share();

  std::mutex out_mu;
  std::vector<std::thread> threads;
  for (auto& p : places) {
    threads.emplace_back([&, pp = &p] {
      Place& place = *pp;
      const auto start = Clock::now();
      std::unique_ptr<gateway::Gateway> gw;
      try {
        gw = factory(place.spec, place.id);
        auto hello = gw->receive();
        if (!hello) throw std::runtime_error("the agent closed the connection before saying hello");
        Message h = decode_message(*hello);
        if (h.kind != MsgKind::hello) throw ProtocolError("expected a hello first");
        if (get_int(h, "proto") != kProtocolVersion) throw ProtocolError("the agent speaks another protocol version");
        sync::SyncLink link;
        link.send = [&](const Message& m) {
          Frame f = encode_message(m);
          const std::size_t size = f.payload.size() + kFrameHeaderSize;
          gw->send(f);
          return size;
        };
        link.receive = [&](std::size_t& wire) {
          for (;;) {
            auto f = gw->receive();
            if (!f) throw sync::SyncError("the agent closed the connection during the sync");
            wire = f->payload.size() + kFrameHeaderSize;
            Message m = decode_message(*f);
            if (m.kind == MsgKind::log) {
              std::lock_guard lock(out_mu);
              err << fmt::format("dtest: [{}] agent: {}\n", place.id, m.body.value("message", ""));
              continue;
            }
            return m;
          }
        };
        const auto st = sync::sync_roots(link, opts.roots, roots, opts.ignore);
        const double secs = std::chrono::duration<double>(Clock::now() - start).count();
        place.ok = true;
        place.line = fmt::format(
            "{} ({}): {} entries in {} root(s); {} files sent ({} as deltas, {} of file data), {} deleted, "
            "{} dirs, {} links, {} metadata; wire: {} B out, {} B in, {} round trip(s); {:.3f} s",
            place.id, place.spec.original, st.files, opts.roots.size(), st.whole_files + st.delta_files, st.delta_files,
            human_bytes(st.file_bytes), st.deleted, st.dirs, st.links, st.meta, st.bytes_out, st.bytes_in, st.round_trips, secs);
        for (const auto& w : st.warnings) place.line += fmt::format("\n  warning: {}", w);
        gw->send(encode_message({MsgKind::shutdown, nlohmann::json::object()}));
        gw->close();
        gw->wait(5.0);
      } catch (const std::exception& e) {
        place.line = fmt::format("{} ({}): sync failed: {}", place.id, place.spec.original, e.what());
        if (gw) {
          gw->terminate();
          const std::string diag = gw->diagnostics();
          if (!diag.empty()) place.line += "\nagent stderr:\n" + diag;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  int code = 0;
  try {
    for (const auto& r : roots.get())
      for (const auto& w : r->warnings) err << "dtest: warning: " << r->name << ": " << w << "\n";
  } catch (const std::exception& e) {
    err << "dtest: error: " << e.what() << "\n";
    code = 1;
  }
  for (const auto& p : places) {
    (p.ok ? out : err) << (p.ok ? "" : "dtest: error: ") << p.line << "\n";
    if (!p.ok) code = 1;
  }
  out << fmt::format("synced {} place(s) in {:.3f} s\n", places.size(),
                     std::chrono::duration<double>(Clock::now() - t0).count());
  return code;
}

}  // namespace dtest
