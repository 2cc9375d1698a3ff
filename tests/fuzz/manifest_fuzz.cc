// libFuzzer target for the syncer's other peer-facing decoders: the manifest
// (sent by the agent, and the stat-cache file), sync_data records and
// sync_sigs lists (sent by the master / the agent).
//
// Byte 0 picks the mode (byte0 % 3), the rest is the input:
//   0  manifest   decode_manifest with and without local fields; SyncError is
//                 the only exception allowed; a manifest that decodes must
//                 re-encode and decode to the same entries and digest, with
//                 every path passing check_relative_path, in strict order.
//   1  records    parse_records: SyncError only; every record's path is valid
//                 and its data lies inside the input.
//   2  sigs       parse_sigs: SyncError only; the pieces lie inside the input.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "sync/tree.h"
#include "sync/wire.h"

namespace {

using namespace dtest::sync;

void check(bool ok) {
  if (!ok) std::abort();
}

bool inside(std::string_view part, std::string_view whole) {
  return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

void fuzz_manifest(std::string_view in) {
  for (bool local : {false, true}) {
    Manifest m;
    try {
      m = decode_manifest(in, local, 100000);
    } catch (const SyncError&) {
      continue;
    }
    for (std::size_t i = 0; i < m.entries.size(); ++i) {
      check(check_relative_path(m.entries[i].path).empty());
      if (i) check(m.entries[i - 1].path < m.entries[i].path);
    }
    const Manifest again = decode_manifest(encode_manifest(m, local), local, 100000);
    check(again.entries.size() == m.entries.size());
    check(again.digest() == m.digest());
  }
}

void fuzz_records(std::string_view in) {
  try {
    for (const auto& r : parse_records(in)) {
      check(check_relative_path(r.path).empty());
      check(inside(r.path, in) && inside(r.data, in));
    }
  } catch (const SyncError&) {
  }
}

void fuzz_sigs(std::string_view in) {
  try {
    for (const auto& [path, sig] : parse_sigs(in)) check(inside(path, in) && inside(sig, in));
  } catch (const SyncError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0: fuzz_manifest(in); break;
    case 1: fuzz_records(in); break;
    default: fuzz_sigs(in); break;
  }
  return 0;
}

#ifdef DTEST_FUZZ_SEED_MAIN
// Seed-corpus writer: manifest_fuzz_seeds DIR writes valid inputs of each mode.
#include <fstream>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  Manifest m;
  Entry d;
  d.path = "src";
  d.type = EntryType::dir;
  Entry f;
  f.path = "src/a.cc";
  f.size = 3;
  f.mtime_ns = 1700000000123456789;
  f.hash = hash_bytes("abc");
  Entry l;
  l.path = "src/link";
  l.type = EntryType::symlink;
  l.target = "../x";
  l.size = 4;
  m.entries = {d, f, l};
  std::ofstream(dir + "/manifest", std::ios::binary) << std::string(1, '\0') + encode_manifest(m);
  std::ofstream(dir + "/manifest-local", std::ios::binary) << std::string(1, '\3') + encode_manifest(m, true);
  std::string recs;
  Record r;
  r.path = "src/a.cc";
  r.first = r.last = true;
  r.data = "abc";
  r.size = 3;
  r.hash = hash_bytes("abc");
  append_record(recs, r);
  std::ofstream(dir + "/records", std::ios::binary) << std::string(1, '\1') + recs;
  std::string sigs;
  append_sig(sigs, "src/a.cc", "signature bytes");
  std::ofstream(dir + "/sigs", std::ios::binary) << std::string(1, '\2') + sigs;
  return 0;
}
#endif
