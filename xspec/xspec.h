// xspec: execnet-compatible gateway specifications.
//
//   spec := [N "*"] item ("//" item)*
//   item := key ["=" value]
//
// e.g. "popen", "4*popen//chdir=/tmp/w//nice=5", "ssh=-p 2222 user@host//id=lab",
// "socket=10.0.0.5:8888", "popen//env:FOO=bar=baz".
#pragma once

#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace dtest::xspec {

struct Item {
  std::string key;                   // as written: "chdir", "env:FOO", "mykey"
  std::optional<std::string> value;  // nullopt for a bare key ("popen")
  std::size_t column = 0;            // 1-based column of the key in the spec
};

struct Spec {
  std::string original;     // the string as given (including any "N*")
  int count = 1;            // the N of "N*"; 1 when absent
  std::vector<Item> items;  // in order of appearance

  // Gateway type: "popen", "ssh", "socket" or "exec" (exactly one is present).
  std::string type() const;
  // The value of `key`, or nullopt when absent or given without a value.
  std::optional<std::string> get(std::string_view key) const;
  bool has(std::string_view key) const;
  // Every env:NAME=value item.
  std::map<std::string, std::string> env() const;
  // Rebuilds the spec from count and items; equals `original` for any
  // successfully parsed spec.
  std::string str() const;
};

// Thrown for a malformed spec. what() is the full, multi-line message:
//   invalid xspec 'popen//=x': expected a key at column 8
//     popen//=x
//            ^
class Error : public std::runtime_error {
 public:
  Error(std::string message, std::string spec, std::size_t column)
      : std::runtime_error(std::move(message)),
        spec_(std::move(spec)),
        column_(column) {}
  const std::string& spec() const { return spec_; }
  std::size_t column() const { return column_; }  // 1-based

 private:
  std::string spec_;
  std::size_t column_;
};

// Parses one spec. Throws Error on a syntax error, a duplicate key, a bad
// count, a missing or doubled gateway type, or a known key with a bad value.
Spec parse(std::string_view text);

// Parses each spec; collects every error (one message per bad spec, in
// order) instead of stopping at the first. Returns the good specs.
std::vector<Spec> parse_all(const std::vector<std::string>& texts,
                            std::vector<std::string>& errors);

// Machine-readable form used by `dtest spec` and tests.
nlohmann::json to_json(const Spec& spec);

}  // namespace dtest::xspec
