// xspec: execnet-compatible gateway specifications (see xspec.h).
//
// The syntax is a small Boost.Spirit X3 grammar producing raw item ranges;
// the meaning of known keys (gateway types, nice, socket, ...) is checked by
// hand afterwards so that every error can name a precise column.
#include "xspec/xspec.h"

#include <algorithm>
#include <array>
#include <boost/fusion/include/adapt_struct.hpp>
#include <boost/optional.hpp>
#include <boost/range/iterator_range.hpp>
#include <boost/spirit/home/x3.hpp>
#include <charconv>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

namespace dtest::xspec::ast {

using Iterator = std::string_view::const_iterator;
using Range = boost::iterator_range<Iterator>;

struct RawItem {
  Range key;
  boost::optional<Range> value;  // none for a bare key
};

struct RawSpec {
  boost::optional<Range> count;  // the text before "*", if any
  std::vector<RawItem> items;
};

}  // namespace dtest::xspec::ast

BOOST_FUSION_ADAPT_STRUCT(dtest::xspec::ast::RawItem, key, value)
BOOST_FUSION_ADAPT_STRUCT(dtest::xspec::ast::RawSpec, count, items)

namespace dtest::xspec {
namespace {

// ---------------------------------------------------------------------------
// Grammar
//
//   spec  := [count "*"] item ("//" item)* end
//   item  := key ["=" value]
//   key   := "env:" name | name
//   name  := [A-Za-z_][A-Za-z0-9_]*
//   value := any characters up to the next "//" or the end
//
// The count is taken loosely (anything before the first "*" that precedes
// any "=" or "//") and validated afterwards, so "x*popen" and "0*popen" get a
// "bad count" message instead of a confusing syntax error. The rule names are
// what an expectation failure reports; fail_syntax() turns them into
// reasons. Every rule after the optional count is reached through an
// expectation point, so a parse either consumes the whole text or throws.
// ---------------------------------------------------------------------------
namespace grammar {

namespace x3 = boost::spirit::x3;
using ast::Range;

constexpr char kName[] = "variable name";
constexpr char kItem[] = "item";

// clang-format off
const x3::rule<class name_tag>                             name  = kName;
const x3::rule<class key_tag, Range>                       key   = "key";
const x3::rule<class value_tag, Range>                     value = "value";
const x3::rule<class item_tag, ast::RawItem>               item  = kItem;
const x3::rule<class items_tag, std::vector<ast::RawItem>> items = kItem;
const x3::rule<class count_tag, Range>                     count = "count";
const x3::rule<class spec_tag, ast::RawSpec>               spec  = "spec";

const auto name_def  = x3::char_("A-Za-z_") >> *x3::char_("A-Za-z0-9_");
const auto key_def   = x3::raw[(x3::lit("env:") > name) | name];
const auto value_def = x3::raw[*(x3::char_ - "//")];
const auto item_def  = key >> -('=' >> value);
const auto items_def = item >> *("//" > item);
const auto count_def = x3::raw[*(x3::char_ - '*' - '=' - "//")] >> '*';
const auto spec_def  = -count > items > x3::eoi;
// clang-format on

BOOST_SPIRIT_DEFINE(name, key, value, item, items, count, spec)

}  // namespace grammar

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

[[noreturn]] void fail(std::string_view text, const std::string& reason,
                       std::size_t column) {
  std::string message = "invalid xspec '";
  message.append(text).append("': ").append(reason);
  message.append(" at column ").append(std::to_string(column));
  message.append("\n  ").append(text);
  message.append("\n  ").append(column - 1, ' ').append("^");
  throw Error(std::move(message), std::string(text), column);
}

// Turns an X3 expectation failure at byte offset `pos` into a reason and
// column.
[[noreturn]] void fail_syntax(std::string_view text, std::size_t pos,
                              const std::string& which) {
  const std::string_view rest = text.substr(pos);
  if (which == grammar::kName) {
    fail(text, "expected a variable name after 'env:'", pos + 1);
  }
  if (which == grammar::kItem) {
    if (text.empty()) fail(text, "empty spec", 1);
    if (rest.empty() || rest.starts_with("//")) {
      fail(text, "empty item", pos + 1);
    }
    fail(text, "expected a key", pos + 1);
  }
  // Only "end of input" is left: the parser stopped right after a bare key
  // (a value always runs to the next "//" or the end). Recover the key.
  std::size_t start = text.rfind("//", pos == 0 ? 0 : pos - 1);
  start = (start == std::string_view::npos) ? 0 : start + 2;
  std::string_view k = text.substr(start, pos - start);
  if (const auto star = k.find('*'); star != std::string_view::npos) {
    k.remove_prefix(star + 1);
  }
  fail(text, "expected '=', '//' or the end after '" + std::string(k) + "'",
       pos + 1);
}

// ---------------------------------------------------------------------------
// Validation of known keys
// ---------------------------------------------------------------------------

constexpr std::array<std::string_view, 4> kGatewayTypes = {"popen", "ssh",
                                                           "socket", "exec"};
constexpr int kMaxCount = 10000;

bool is_gateway_type(std::string_view key) {
  return std::find(kGatewayTypes.begin(), kGatewayTypes.end(), key) !=
         kGatewayTypes.end();
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(),
                                   [](char c) { return c >= '0' && c <= '9'; });
}

bool is_blank(std::string_view s) {
  return s.find_first_not_of(" \t") == std::string_view::npos;
}

bool is_id(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
  });
}

// Parses a decimal integer (optional leading '-'); nullopt if malformed.
std::optional<long> to_int(std::string_view s) {
  long n = 0;
  const char* first = s.data();
  const char* last = s.data() + s.size();
  if (s.empty() || !all_digits(s.front() == '-' ? s.substr(1) : s)) {
    return std::nullopt;
  }
  auto [ptr, ec] = std::from_chars(first, last, n);
  if (ec != std::errc() || ptr != last) return std::nullopt;
  return n;
}

// Returns the offset (within `v`) of a problem with a socket address, and
// the reason, or nullopt when `v` is a valid host:port.
std::optional<std::pair<std::size_t, std::string>> check_socket(
    std::string_view v) {
  const std::string need = "'socket' needs host:port";
  std::size_t colon;
  if (v.starts_with('[')) {  // [IPv6]:port
    const std::size_t close = v.find(']');
    if (close == std::string_view::npos || close == 1 ||
        close + 1 >= v.size() || v[close + 1] != ':') {
      return std::pair{std::size_t{0}, need};
    }
    colon = close + 1;
  } else {
    colon = v.find(':');
    if (colon == std::string_view::npos || colon == 0 ||
        v.find(':', colon + 1) != std::string_view::npos) {
      return std::pair{std::size_t{0}, need};
    }
  }
  const std::string_view port = v.substr(colon + 1);
  const auto n = to_int(port);
  if (!n || port.front() == '-' || *n < 1 || *n > 65535) {
    return std::pair{colon + 1,
                     std::string("'socket' port must be from 1 to 65535")};
  }
  return std::nullopt;
}

// The "needs a value" hint for known keys that require one.
std::optional<std::string> value_hint(std::string_view key) {
  if (key == "ssh") return "ssh=user@host";
  if (key == "exec") return "exec=COMMAND";
  if (key == "python") return "python=INTERPRETER";
  if (key == "chdir") return "chdir=DIR";
  if (key == "id") return "id=NAME";
  if (key == "via") return "via=GATEWAY_ID";
  if (key == "agent") return "agent=PATH";
  return std::nullopt;
}

void validate(const Spec& spec) {
  const std::string_view text = spec.original;
  std::set<std::string_view> seen;
  const Item* type = nullptr;

  for (const Item& item : spec.items) {
    const std::string_view key = item.key;
    // Columns: of the key, of the '=', and of the value's first character.
    const std::size_t kc = item.column;
    const std::size_t ec = kc + key.size();
    const std::size_t vc = ec + 1;
    const std::string q = "'" + item.key + "'";

    if (!seen.insert(key).second) fail(text, "duplicate key " + q, kc);

    if (is_gateway_type(key)) {
      if (type != nullptr) {
        fail(text,
             "more than one gateway type ('" + type->key + "' and " + q + ")",
             kc);
      }
      type = &item;
    }

    const std::string_view v = item.value ? std::string_view(*item.value) : "";
    const std::size_t vcol = item.value ? vc : kc;  // where a value belongs

    if (key == "popen") {
      if (item.value) fail(text, "'popen' takes no value", ec);
    } else if (key == "socket") {
      if (!item.value || v.empty())
        fail(text, "'socket' needs host:port", vcol);
      if (auto bad = check_socket(v)) fail(text, bad->second, vc + bad->first);
    } else if (key == "nice") {
      const auto n = to_int(v);
      if (!item.value || !n || *n < -20 || *n > 19) {
        fail(text, "'nice' needs an integer from -20 to 19", vcol);
      }
    } else if (key.starts_with("env:")) {
      if (!item.value) {
        fail(text, q + " needs a value (" + item.key + "=VALUE)", kc);
      }
    } else if (auto hint = value_hint(key)) {
      if (!item.value || is_blank(v)) {
        fail(text, q + " needs a value (" + *hint + ")", vcol);
      }
      if ((key == "id" || key == "via") && !is_id(v)) {
        fail(text, q + " must be a gateway id ([A-Za-z0-9_.-]+)", vc);
      }
    }
  }
  if (type == nullptr) {
    fail(text, "no gateway type (one of popen, ssh=, socket=, exec=)", 1);
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Spec
// ---------------------------------------------------------------------------

std::string Spec::type() const {
  for (const Item& item : items) {
    if (is_gateway_type(item.key)) return item.key;
  }
  return "";
}

std::optional<std::string> Spec::get(std::string_view key) const {
  for (const Item& item : items) {
    if (item.key == key) return item.value;
  }
  return std::nullopt;
}

bool Spec::has(std::string_view key) const {
  return std::any_of(items.begin(), items.end(),
                     [&](const Item& item) { return item.key == key; });
}

std::map<std::string, std::string> Spec::env() const {
  std::map<std::string, std::string> out;
  for (const Item& item : items) {
    if (item.key.starts_with("env:") && item.value) {
      out[item.key.substr(4)] = *item.value;
    }
  }
  return out;
}

std::string Spec::str() const {
  std::string out;
  // "1*popen" is accepted; Spec has no flag for an explicit "1*", so keep the
  // prefix when the original text had one.
  if (count != 1 || std::string_view(original).starts_with("1*")) {
    out = std::to_string(count) + "*";
  }
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += "//";
    out += items[i].key;
    if (items[i].value) out += "=" + *items[i].value;
  }
  return out;
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

Spec parse(std::string_view text) {
  namespace x3 = boost::spirit::x3;
  ast::RawSpec raw;
  auto it = text.begin();
  try {
    if (!x3::parse(it, text.end(), grammar::spec, raw)) {
      fail(text, "expected a key", 1);  // unreachable; kept as a safety net
    }
  } catch (const x3::expectation_failure<ast::Iterator>& e) {
    fail_syntax(text, static_cast<std::size_t>(e.where() - text.begin()),
                e.which());
  }

  Spec spec;
  spec.original = std::string(text);
  if (raw.count) {
    const std::string_view n(raw.count->begin(), raw.count->size());
    if (!all_digits(n) || n.front() == '0') {
      fail(text, "bad count (expected a positive integer before '*')", 1);
    }
    if (n.size() > 5 || std::stoi(std::string(n)) > kMaxCount) {
      fail(text,
           "count " + std::string(n) + " is too large (at most " +
               std::to_string(kMaxCount) + ")",
           1);
    }
    spec.count = std::stoi(std::string(n));
  }
  for (const ast::RawItem& r : raw.items) {
    Item item;
    item.key.assign(r.key.begin(), r.key.end());
    if (r.value) item.value = std::string(r.value->begin(), r.value->end());
    item.column = static_cast<std::size_t>(r.key.begin() - text.begin()) + 1;
    spec.items.push_back(std::move(item));
  }
  validate(spec);
  return spec;
}

std::vector<Spec> parse_all(const std::vector<std::string>& texts,
                            std::vector<std::string>& errors) {
  std::vector<Spec> specs;
  for (const std::string& text : texts) {
    try {
      specs.push_back(parse(text));
    } catch (const Error& e) {
      errors.emplace_back(e.what());
    }
  }
  return specs;
}

nlohmann::json to_json(const Spec& spec) {
  using nlohmann::json;
  json j = json::object();
  j["spec"] = spec.original;
  j["count"] = spec.count;
  j["type"] = spec.type();
  json env = json::object();
  json other = json::object();
  json items = json::array();
  for (const Item& item : spec.items) {
    const json value = item.value ? json(*item.value) : json(nullptr);
    items.push_back({{"key", item.key}, {"value", value}});
    if (item.key.starts_with("env:")) {
      if (item.value) env[item.key.substr(4)] = *item.value;
    } else if (item.key == "nice") {
      const auto n = item.value ? to_int(*item.value) : std::nullopt;
      j["nice"] = n ? json(*n) : value;
    } else if (is_gateway_type(item.key) || item.key == "id" ||
               item.key == "python" || item.key == "chdir" ||
               item.key == "via" || item.key == "agent") {
      j[item.key] = value;
    } else {
      other[item.key] = value;
    }
  }
  j["env"] = std::move(env);
  if (!other.empty()) j["other"] = std::move(other);
  j["items"] = std::move(items);
  return j;
}

}  // namespace dtest::xspec
