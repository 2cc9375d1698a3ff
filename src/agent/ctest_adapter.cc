#include "agent/ctest_adapter.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <utility>

#include <nlohmann/json.hpp>

#include "agent/subprocess.h"
#include "common/fdio.h"

namespace dtest::ctest {

namespace fs = std::filesystem;
using nlohmann::json;

// ===========================================================================
// Regular expressions: a parser for kwsys's syntax (Henry Spencer's, as in
// Source/kwsys/RegularExpression.cxx, error texts included), an AST, and a
// Thompson automaton run as a Pike VM. Whether a match exists does not depend
// on how a backtracking matcher orders its tries, so the answers are kwsys's.
// ===========================================================================

namespace {

constexpr int kHasWidth = 1;  // the piece can never match the empty string
constexpr int kMaxGroups = 10;  // kwsys's NSUBEXP, counting the whole match
constexpr std::string_view kMeta = "^$.[()|?+*\\";

bool is_mult(char c) { return c == '*' || c == '+' || c == '?'; }

struct Node {
  enum Kind { Empty, Set, Bol, Eol, Cat, Alt, Star, Plus, Quest } kind;
  std::vector<int> kids;
  int set = -1;
};

class Parser {
 public:
  Parser(std::string_view pattern, std::vector<std::bitset<256>>& sets)
      : p_(pattern), sets_(sets) {}

  // The root node, or -1 with error() set.
  int parse() {
    int node = -1, flags = 0;
    return reg(false, node, flags) ? node : -1;
  }
  const std::vector<Node>& nodes() const { return nodes_; }
  const std::string& error() const { return error_; }

 private:
  char peek() const { return i_ < p_.size() ? p_[i_] : '\0'; }
  bool fail(const char* message) {
    error_ = message;
    return false;
  }
  int add(Node::Kind kind, std::vector<int> kids = {}, int set = -1) {
    nodes_.push_back(Node{kind, std::move(kids), set});
    return static_cast<int>(nodes_.size()) - 1;
  }
  int add_set(const std::bitset<256>& b) {
    sets_.push_back(b);
    return add(Node::Set, {}, static_cast<int>(sets_.size()) - 1);
  }

  // reg: branch ('|' branch)*, the body of the pattern or of a group.
  bool reg(bool paren, int& node, int& flags) {
    if (paren) {
      if (groups_ >= kMaxGroups) return fail("Too many parentheses.");
      ++groups_;
    }
    flags = kHasWidth;
    std::vector<int> alts;
    do {
      if (!alts.empty()) ++i_;  // the '|'
      int br = -1, bf = 0;
      if (!branch(br, bf)) return false;
      if (!(bf & kHasWidth)) flags &= ~kHasWidth;
      alts.push_back(br);
    } while (peek() == '|');
    if (paren) {
      if (peek() != ')') return fail("Unmatched parentheses.");
      ++i_;
    } else if (i_ < p_.size()) {
      return fail(peek() == ')' ? "Unmatched parentheses." : "Internal error.");
    }
    node = alts.size() == 1 ? alts[0] : add(Node::Alt, std::move(alts));
    return true;
  }

  bool branch(int& node, int& flags) {
    flags = 0;
    std::vector<int> seq;
    while (i_ < p_.size() && peek() != '|' && peek() != ')') {
      int n = -1, f = 0;
      if (!piece(n, f)) return false;
      flags |= f & kHasWidth;
      seq.push_back(n);
    }
    node = seq.empty() ? add(Node::Empty) : seq.size() == 1 ? seq[0] : add(Node::Cat, std::move(seq));
    return true;
  }

  bool piece(int& node, int& flags) {
    int n = -1, f = 0;
    if (!atom(n, f)) return false;
    const char op = peek();
    if (!is_mult(op)) {
      node = n;
      flags = f;
      return true;
    }
    // kwsys refuses loops over what may match nothing (they would not end).
    if (!(f & kHasWidth) && op != '?') return fail("*+ operand could be empty.");
    flags = op == '+' ? kHasWidth : 0;
    node = add(op == '*' ? Node::Star : op == '+' ? Node::Plus : Node::Quest, {n});
    ++i_;
    if (is_mult(peek())) return fail("Nested *?+.");
    return true;
  }

  bool atom(int& node, int& flags) {
    flags = 0;
    const char c = p_[i_++];
    switch (c) {
      case '^':
        node = add(Node::Bol);
        return true;
      case '$':
        node = add(Node::Eol);
        return true;
      case '.': {
        std::bitset<256> all;
        node = add_set(all.set());
        flags = kHasWidth;
        return true;
      }
      case '[':
        if (!bracket(node)) return false;
        flags = kHasWidth;
        return true;
      case '(': {
        int f = 0;
        if (!reg(true, node, f)) return false;
        flags = f & kHasWidth;
        return true;
      }
      case '|':
      case ')':
        return fail("Internal error.");  // branch() never lets these through
      case '?':
      case '+':
      case '*':
        return fail("?+* follows nothing.");
      case '\\':
        if (i_ >= p_.size()) return fail("Trailing backslash.");
        node = literal(p_[i_++]);
        flags = kHasWidth;
        return true;
      default:
        node = literal(c);
        flags = kHasWidth;
        return true;
    }
  }

  int literal(char c) {
    std::bitset<256> b;
    b.set(static_cast<unsigned char>(c));
    return add_set(b);
  }

  // After '[': an optional '^', a leading ']' or '-' taken literally, ranges
  // a-z (a range starts after the character before its '-', so "a-c-e" is
  // a..e), no escapes; a '-' before the closing ']' is literal.
  bool bracket(int& node) {
    std::bitset<256> b;
    const bool negate = peek() == '^';
    if (negate) ++i_;
    if (peek() == ']' || peek() == '-') b.set(static_cast<unsigned char>(p_[i_++]));
    while (i_ < p_.size() && peek() != ']') {
      if (peek() != '-') {
        b.set(static_cast<unsigned char>(p_[i_++]));
        continue;
      }
      ++i_;
      if (i_ >= p_.size() || peek() == ']') {
        b.set('-');
        continue;
      }
      int from = static_cast<unsigned char>(p_[i_ - 2]) + 1;
      const int to = static_cast<unsigned char>(p_[i_]);
      if (from > to + 1) return fail("Invalid range in [].");
      for (; from <= to; ++from) b.set(static_cast<std::size_t>(from));
      ++i_;
    }
    if (peek() != ']' || i_ >= p_.size()) return fail("Unmatched [].");
    ++i_;
    if (negate) b.flip();
    node = add_set(b);
    return true;
  }

  std::string_view p_;
  std::size_t i_ = 0;
  int groups_ = 1;  // kwsys counts the whole match as group 0
  std::vector<Node> nodes_;
  std::vector<std::bitset<256>>& sets_;
  std::string error_;
};

using Inst = Regex::Inst;

int emit_inst(std::vector<Inst>& prog, Inst::Op op, int x = 0, int y = 0) {
  prog.push_back(Inst{op, x, y});
  return static_cast<int>(prog.size()) - 1;
}

void emit(const std::vector<Node>& nodes, int n, std::vector<Inst>& prog) {
  const Node& node = nodes[static_cast<std::size_t>(n)];
  auto here = [&] { return static_cast<int>(prog.size()); };
  switch (node.kind) {
    case Node::Empty:
      break;
    case Node::Set:
      emit_inst(prog, Inst::Set, node.set);
      break;
    case Node::Bol:
      emit_inst(prog, Inst::Bol);
      break;
    case Node::Eol:
      emit_inst(prog, Inst::Eol);
      break;
    case Node::Cat:
      for (int k : node.kids) emit(nodes, k, prog);
      break;
    case Node::Alt: {
      std::vector<int> to_end;
      for (std::size_t k = 0; k + 1 < node.kids.size(); ++k) {
        const int split = emit_inst(prog, Inst::Split, here() + 1);
        emit(nodes, node.kids[k], prog);
        to_end.push_back(emit_inst(prog, Inst::Jmp));
        prog[static_cast<std::size_t>(split)].y = here();
      }
      emit(nodes, node.kids.back(), prog);
      for (int j : to_end) prog[static_cast<std::size_t>(j)].x = here();
      break;
    }
    case Node::Star: {
      const int split = emit_inst(prog, Inst::Split, here() + 1);
      emit(nodes, node.kids[0], prog);
      emit_inst(prog, Inst::Jmp, split);
      prog[static_cast<std::size_t>(split)].y = here();
      break;
    }
    case Node::Plus: {
      const int start = here();
      emit(nodes, node.kids[0], prog);
      emit_inst(prog, Inst::Split, start, here() + 1);
      break;
    }
    case Node::Quest: {
      const int split = emit_inst(prog, Inst::Split, here() + 1);
      emit(nodes, node.kids[0], prog);
      prog[static_cast<std::size_t>(split)].y = here();
      break;
    }
  }
}

}  // namespace

std::optional<Regex> Regex::compile(std::string_view pattern, std::string& error) {
  // kwsys compiles a C string: a NUL byte ends the pattern.
  pattern = pattern.substr(0, pattern.find('\0'));
  Regex rx;
  if (pattern.find_first_of(kMeta) == std::string_view::npos) {
    rx.is_literal_ = true;
    rx.literal_ = pattern;
    return rx;
  }
  Parser parser(pattern, rx.sets_);
  const int root = parser.parse();
  if (root < 0) {
    error = parser.error();
    return std::nullopt;
  }
  emit(parser.nodes(), root, rx.prog_);
  emit_inst(rx.prog_, Inst::Match);

  // What can follow each place a match continues at, away from the ends of
  // the text, so that run() steps through the middle without walking Split
  // and Jmp chains; and the bytes a match can begin with, so that where
  // nothing is under way run() skips to the next of them.
  const std::size_t n = rx.prog_.size();
  rx.closure_.assign(n, {});
  rx.closure_match_.assign(n, 0);
  std::vector<std::size_t> seen(n, 0);
  std::size_t total = 0;
  std::vector<int> stack;
  for (std::size_t from = 0; from < n; ++from) {
    if (from != 0 && rx.prog_[from - 1].op != Inst::Set) continue;
    stack.assign(1, static_cast<int>(from));
    while (!stack.empty()) {
      const auto pc = static_cast<std::size_t>(stack.back());
      stack.pop_back();
      if (seen[pc] == from + 1) continue;
      seen[pc] = from + 1;
      const Inst& in = rx.prog_[pc];
      if (in.op == Inst::Set) rx.closure_[from].push_back(static_cast<int>(pc));
      if (in.op == Inst::Match) rx.closure_match_[from] = 1;
      if (in.op == Inst::Split) stack.push_back(in.y);
      if (in.op == Inst::Split || in.op == Inst::Jmp) stack.push_back(in.x);
    }
    total += rx.closure_[from].size();
  }
  for (int pc : rx.closure_[0]) rx.first_ |= rx.sets_[static_cast<std::size_t>(rx.prog_[static_cast<std::size_t>(pc)].x)];
  if (rx.closure_match_[0]) rx.first_.set();
  if (total > (1u << 20)) {  // a pathological pattern: walk instead
    rx.closure_.clear();
    rx.closure_match_.clear();
  }
  return rx;
}

bool Regex::search(std::string_view text) const {
  // kwsys searches a C string: a NUL byte ends the text.
  text = text.substr(0, text.find('\0'));
  if (is_literal_) return text.find(literal_) != std::string_view::npos;
  return run(text);
}

bool Regex::run(std::string_view text) const {
  const std::size_t n = prog_.size();
  std::vector<std::uint64_t> mark(n, 0);  // the step a state was last added in
  std::uint64_t step = 0;
  std::vector<int> cur, next, stack;
  // Adds pc and everything reachable from it without reading a byte at
  // `pos`; true when that reaches Match.
  auto add = [&](std::vector<int>& list, int start, std::size_t pos) {
    if (pos != 0 && pos != text.size() && !closure_.empty()) {
      const auto from = static_cast<std::size_t>(start);
      if (closure_match_[from]) return true;
      for (int pc : closure_[from]) {
        auto& seen = mark[static_cast<std::size_t>(pc)];
        if (seen != step) {
          seen = step;
          list.push_back(pc);
        }
      }
      return false;
    }
    stack.assign(1, start);
    while (!stack.empty()) {
      const int pc = stack.back();
      stack.pop_back();
      auto& seen = mark[static_cast<std::size_t>(pc)];
      if (seen == step) continue;
      seen = step;
      const Inst& in = prog_[static_cast<std::size_t>(pc)];
      switch (in.op) {
        case Inst::Set:
          list.push_back(pc);
          break;
        case Inst::Split:
          stack.push_back(in.y);
          stack.push_back(in.x);
          break;
        case Inst::Jmp:
          stack.push_back(in.x);
          break;
        case Inst::Bol:
          if (pos == 0) stack.push_back(pc + 1);
          break;
        case Inst::Eol:
          if (pos == text.size()) stack.push_back(pc + 1);
          break;
        case Inst::Match:
          return true;
      }
    }
    return false;
  };
  ++step;
  if (add(cur, 0, 0)) return true;
  std::size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    ++step;
    next.clear();
    for (int pc : cur) {
      const Inst& in = prog_[static_cast<std::size_t>(pc)];
      if (sets_[static_cast<std::size_t>(in.x)][c] && add(next, pc + 1, i + 1)) return true;
    }
    // A match may also start at every later position; when none is under
    // way, the next one can only start at a byte of first_.
    std::size_t j = i + 1;
    if (next.empty()) {
      while (j < text.size() && !first_[static_cast<unsigned char>(text[j])]) ++j;
      ++step;  // a new position: Bol and Eol must be looked at again
    }
    if (add(next, 0, j)) return true;
    cur.swap(next);
    i = j;
  }
  return false;
}

std::string normalize_output(std::string_view raw) {
  std::string out;
  out.reserve(raw.size() + 1);
  std::size_t start = 0;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] != '\n' && raw[i] != '\0') continue;
    std::size_t len = i - start;
    if (len > 0 && raw[i - 1] == '\r') --len;
    out.append(raw.substr(start, len));
    out.push_back('\n');
    start = i + 1;
  }
  // ctest keeps a last line without a newline whole, '\r' included.
  if (start < raw.size()) {
    out.append(raw.substr(start));
    out.push_back('\n');
  }
  return out;
}

// ===========================================================================
// Parsing the listing
// ===========================================================================

namespace {

// The properties that change how ctest schedules or runs a test and that
// dtest does not honour.
constexpr std::string_view kUnsupported[] = {
    "DEPENDS",        "FIXTURES_SETUP",      "FIXTURES_CLEANUP",       "FIXTURES_REQUIRED",
    "RESOURCE_LOCK",  "RESOURCE_GROUPS",     "TIMEOUT_AFTER_MATCH",    "TIMEOUT_SIGNAL_NAME",
    "TIMEOUT_SIGNAL_GRACE_PERIOD",           "GENERATED_RESOURCE_SPEC_FILE",
};

std::string resolve(const std::string& base, const std::string& path) {
  if (path.empty() || base.empty() || path.front() == '/') return path;
  return (fs::path(base) / path).lexically_normal().string();
}

// "path:line" of the add_test() call a test's backtrace index points at.
std::string defined_at(const json& root, const json& test) {
  const auto bt = test.find("backtrace");
  const auto graph = root.find("backtraceGraph");
  if (bt == test.end() || !bt->is_number_unsigned() || graph == root.end() || !graph->is_object())
    return {};
  const auto nodes = graph->find("nodes");
  const auto files = graph->find("files");
  if (nodes == graph->end() || files == graph->end() || !nodes->is_array() || !files->is_array())
    return {};
  const auto i = bt->get<std::size_t>();
  if (i >= nodes->size() || !(*nodes)[i].is_object()) return {};
  const json& node = (*nodes)[i];
  const auto file = node.find("file");
  if (file == node.end() || !file->is_number_unsigned() || file->get<std::size_t>() >= files->size() ||
      !(*files)[file->get<std::size_t>()].is_string())
    return {};
  std::string where = (*files)[file->get<std::size_t>()].get<std::string>();
  if (const auto line = node.find("line"); line != node.end() && line->is_number_integer())
    where += ":" + std::to_string(line->get<long>());
  return where;
}

// Reads one test's properties; false with `error` on a value of the wrong type.
class PropertyReader {
 public:
  PropertyReader(std::string where, std::string& error) : where_(std::move(where)), error_(error) {}

  bool boolean(const std::string& name, const json& v, bool& out) {
    if (!v.is_boolean()) return wrong(name, v, "true or false");
    out = v.get<bool>();
    return true;
  }
  bool integer(const std::string& name, const json& v, long& out) {
    if (!v.is_number_integer()) return wrong(name, v, "an integer");
    out = v.get<long>();
    return true;
  }
  bool number(const std::string& name, const json& v, double& out) {
    if (!v.is_number()) return wrong(name, v, "a number");
    out = v.get<double>();
    return true;
  }
  bool string(const std::string& name, const json& v, std::string& out) {
    if (!v.is_string()) return wrong(name, v, "a string");
    out = v.get<std::string>();
    return true;
  }
  bool strings(const std::string& name, const json& v, std::vector<std::string>& out) {
    if (!v.is_array()) return wrong(name, v, "an array of strings");
    out.clear();
    for (const json& e : v) {
      if (!e.is_string()) {
        error_ = where_ + ": property " + name + ": expected an array of strings, got a " + e.type_name() +
                 " element " + e.dump().substr(0, 80);
        return false;
      }
      out.push_back(e.get<std::string>());
    }
    return true;
  }

 private:
  bool wrong(const std::string& name, const json& v, const char* expected) {
    error_ = where_ + ": property " + name + ": expected " + expected + ", got " + v.type_name() +
             " " + v.dump().substr(0, 80);
    return false;
  }
  std::string where_;
  std::string& error_;
};

bool read_test(const json& root, const json& jt, std::size_t index, const std::string& build_dir,
               Test& t, std::string& error) {
  std::string where = "tests[" + std::to_string(index) + "]";
  if (!jt.is_object()) {
    error = where + ": expected an object, got " + jt.type_name();
    return false;
  }
  const auto name = jt.find("name");
  if (name == jt.end() || !name->is_string() || name->get<std::string>().empty()) {
    error = where + ": no \"name\" string";
    return false;
  }
  t.name = name->get<std::string>();
  where += " (" + t.name + ")";
  if (const auto cmd = jt.find("command"); cmd != jt.end()) {
    if (!cmd->is_array() || cmd->empty()) {
      error = where + ": \"command\": expected a non-empty array of strings, got " + cmd->dump().substr(0, 80);
      return false;
    }
    for (const json& a : *cmd) {
      if (!a.is_string()) {
        error = where + ": \"command\": expected a non-empty array of strings, got a " + a.type_name() +
                " element " + a.dump().substr(0, 80);
        return false;
      }
      t.command.push_back(a.get<std::string>());
    }
  }
  t.defined_at = defined_at(root, jt);

  PropertyReader read(where, error);
  if (const auto props = jt.find("properties"); props != jt.end()) {
    if (!props->is_array()) {
      error = where + ": \"properties\": expected an array, got " + props->type_name();
      return false;
    }
    for (const json& p : *props) {
      const auto pn = p.is_object() ? p.find("name") : p.end();
      const auto pv = p.is_object() ? p.find("value") : p.end();
      if (!p.is_object() || pn == p.end() || !pn->is_string() || pv == p.end()) {
        error = where + ": a property is not {\"name\": string, \"value\": ...}: " + p.dump().substr(0, 80);
        return false;
      }
      const std::string n = pn->get<std::string>();
      const json& v = *pv;
      bool ok = true;
      long i = 0;
      if (n == "WILL_FAIL") {
        ok = read.boolean(n, v, t.will_fail);
      } else if (n == "DISABLED") {
        ok = read.boolean(n, v, t.disabled);
      } else if (n == "RUN_SERIAL") {
        ok = read.boolean(n, v, t.run_serial);
      } else if (n == "SKIP_RETURN_CODE") {
        ok = read.integer(n, v, i);
        if (ok && i >= 0) t.skip_return_code = static_cast<int>(std::min(i, 1L << 30));
      } else if (n == "PROCESSORS") {
        ok = read.integer(n, v, i);
        t.processors = static_cast<int>(std::clamp(i, 1L, 1L << 20));
      } else if (n == "TIMEOUT") {
        ok = read.number(n, v, t.timeout);
        if (!(t.timeout > 0)) t.timeout = 0;
      } else if (n == "WORKING_DIRECTORY") {
        ok = read.string(n, v, t.working_directory);
      } else if (n == "ENVIRONMENT") {
        ok = read.strings(n, v, t.environment);
      } else if (n == "ENVIRONMENT_MODIFICATION") {
        ok = read.strings(n, v, t.environment_modification);
      } else if (n == "LABELS") {
        ok = read.strings(n, v, t.labels);
      } else if (n == "PASS_REGULAR_EXPRESSION") {
        ok = read.strings(n, v, t.pass_regex);
      } else if (n == "FAIL_REGULAR_EXPRESSION") {
        ok = read.strings(n, v, t.fail_regex);
      } else if (n == "SKIP_REGULAR_EXPRESSION") {
        ok = read.strings(n, v, t.skip_regex);
      } else if (n == "REQUIRED_FILES") {
        ok = read.strings(n, v, t.required_files);
      } else if (std::find(std::begin(kUnsupported), std::end(kUnsupported), n) != std::end(kUnsupported)) {
        t.unsupported.push_back(n);
      }
      if (!ok) return false;
    }
  }
  // ctest runs from the top of the build tree, so a relative working
  // directory is relative to it; required files are looked for from the
  // working directory.
  t.working_directory = t.working_directory.empty() ? build_dir : resolve(build_dir, t.working_directory);
  for (auto& f : t.required_files) f = resolve(t.working_directory, f);
  return true;
}

}  // namespace

std::optional<std::vector<Test>> parse_json_v1(std::string_view text, std::string& error,
                                               const std::string& build_dir) {
  // ctest prints its complaints about invalid regular expressions on stdout,
  // before the JSON; the JSON starts with a '{' at the start of a line.
  std::size_t start = text.find_first_not_of(" \t\r\n");
  if (start != std::string_view::npos && text[start] != '{') {
    const std::size_t brace = text.find("\n{");
    start = brace == std::string_view::npos ? brace : brace + 1;
  }
  if (start == std::string_view::npos) {
    std::string_view first = text.substr(std::min(text.size(), text.find_first_not_of(" \t\r\n")));
    first = first.substr(0, first.find('\n'));
    error = "no JSON object in ctest's output" +
            (first.empty() ? std::string(" (it is empty)") : ", which begins: " + std::string(first.substr(0, 120)));
    return std::nullopt;
  }
  json root;
  try {
    root = json::parse(text.substr(start));
  } catch (const json::exception& e) {
    error = std::string("ctest's output is not valid JSON: ") + e.what();
    return std::nullopt;
  }
  if (!root.is_object()) {
    error = std::string("ctest's JSON: expected an object, got ") + root.type_name();
    return std::nullopt;
  }
  if (const auto kind = root.find("kind"); kind == root.end() || *kind != "ctestInfo") {
    error = "ctest's JSON is not of kind \"ctestInfo\" (kind: " +
            (kind == root.end() ? std::string("missing") : kind->dump()) + ")";
    return std::nullopt;
  }
  const auto version = root.find("version");
  const json* major = nullptr;
  if (version != root.end() && version->is_object()) {
    if (const auto m = version->find("major"); m != version->end()) major = &*m;
  }
  if (!major || *major != 1) {
    error = "ctest's JSON has version " + (version == root.end() ? std::string("(none)") : version->dump()) +
            "; dtest reads major version 1 (--show-only=json-v1)";
    return std::nullopt;
  }
  const auto tests = root.find("tests");
  if (tests == root.end() || !tests->is_array()) {
    error = "ctest's JSON has no \"tests\" array";
    return std::nullopt;
  }
  std::vector<Test> out;
  out.reserve(tests->size());
  for (std::size_t i = 0; i < tests->size(); ++i) {
    Test t;
    if (!read_test(root, (*tests)[i], i, build_dir, t, error)) return std::nullopt;
    out.push_back(std::move(t));
  }
  return out;
}

// ===========================================================================
// Listing a build tree
// ===========================================================================

namespace {

constexpr double kListTimeout = 300;  // seconds; huge trees take a few

std::string tail(const std::string& s, std::size_t n = 2000) {
  std::string t = s.size() > n ? "..." + s.substr(s.size() - n) : s;
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
  return t;
}

bool is_executable_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Where execvp would find `prog`; empty when nowhere.
std::string find_program(const std::string& prog) {
  if (prog.find('/') != std::string::npos) return is_executable_file(prog) ? prog : std::string();
  const char* path = std::getenv("PATH");
  std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (true) {
    const std::size_t colon = dirs.find(':');
    std::string dir(dirs.substr(0, colon));
    const std::string candidate = (dir.empty() ? std::string(".") : dir) + "/" + prog;
    if (is_executable_file(candidate)) return candidate;
    if (colon == std::string_view::npos) return {};
    dirs.remove_prefix(colon + 1);
  }
}

// Runs ctest with `args` in `dir`: through sh (`cd` then `exec`, exit 125
// when the cd fails) rather than with --test-dir, which needs ctest 3.20;
// json-v1 is there since 3.14.
Captured run_ctest(const std::string& ctest, const std::string& dir, const std::vector<std::string>& args) {
  SpawnOptions o;
  o.argv = {"/bin/sh", "-c", "cd -- \"$1\" || exit 125; shift; exec \"$@\"", "sh", dir, ctest};
  o.argv.insert(o.argv.end(), args.begin(), args.end());
  return run_capture(o, kListTimeout, 64u << 20);
}

std::string command_line(const std::vector<std::string>& args) {
  std::string s = "ctest";
  for (const auto& a : args) s += " " + a;
  return s;
}

// CMAKE_CONFIGURATION_TYPES is set in the cache of multi-config trees.
bool is_multi_config(const std::string& build_dir) {
  std::ifstream cache(build_dir + "/CMakeCache.txt");
  std::string line;
  while (std::getline(cache, line)) {
    if (line.rfind("CMAKE_CONFIGURATION_TYPES:", 0) != 0) continue;
    const auto eq = line.find('=');
    return eq != std::string::npos && eq + 1 < line.size();
  }
  return false;
}

// `ctest -N -V` names what it could not find, just before the test:
//   Could not find executable /b/never_built
//   ...
//     Test #28: missing_executable
std::map<std::string, std::string> missing_executables(const std::string& out) {
  std::map<std::string, std::string> found;
  std::string pending;
  std::size_t pos = 0;
  while (pos < out.size()) {
    std::size_t end = out.find('\n', pos);
    if (end == std::string::npos) end = out.size();
    std::string_view line(out.data() + pos, end - pos);
    pos = end + 1;
    constexpr std::string_view kCould = "Could not find executable ";
    if (line.rfind(kCould, 0) == 0) {
      pending = line.substr(kCould.size());
      continue;
    }
    const std::size_t hash = line.find("Test");
    if (hash == std::string_view::npos || line.find_first_not_of(' ') != hash) continue;
    const std::size_t colon = line.find(": ", hash);
    if (colon == std::string_view::npos || line.find('#', hash) > colon) continue;
    std::string_view name = line.substr(colon + 2);
    constexpr std::string_view kDisabled = " (Disabled)";
    if (name.size() > kDisabled.size() && name.substr(name.size() - kDisabled.size()) == kDisabled)
      name.remove_suffix(kDisabled.size());
    if (!pending.empty()) found.emplace(std::string(name), std::move(pending));
    pending.clear();
  }
  return found;
}

}  // namespace

std::optional<std::vector<Test>> list(const std::string& build_dir_in, const std::vector<std::string>& labels,
                                      std::string& error, const std::string& ctest, const std::string& config) {
  std::error_code ec;
  fs::path dir = fs::absolute(build_dir_in, ec).lexically_normal();
  if (!dir.has_filename() && dir != dir.root_path()) dir = dir.parent_path();  // "b/" -> "b"
  const std::string build_dir = dir.string();
  if (!fs::exists(build_dir + "/CTestTestfile.cmake", ec)) {
    error = build_dir_in + " is not a CMake build tree with tests: it has no CTestTestfile.cmake" +
            (fs::is_directory(build_dir, ec) ? " (configure the project, with enable_testing(), first)"
                                              : " (no such directory)");
    return std::nullopt;
  }
  std::vector<std::string> filter;
  if (!config.empty()) filter = {"-C", config};
  for (const auto& l : labels) {
    std::string why;
    if (!Regex::compile(l, why)) {
      error = "label regex \"" + l + "\" is invalid: " + why;
      return std::nullopt;
    }
    filter.insert(filter.end(), {"-L", l});
  }
  const std::string exe = find_program(ctest);
  if (exe.empty()) {
    error = ctest.find('/') == std::string::npos
                ? "ctest not found in PATH (install CMake >= 3.14 on this host, or name ctest's path)"
                : "cannot run " + ctest + ": not an executable file";
    return std::nullopt;
  }

  std::vector<std::string> args = {"--show-only=json-v1"};
  args.insert(args.end(), filter.begin(), filter.end());
  Captured cap;
  try {
    cap = run_ctest(exe, build_dir, args);
  } catch (const std::exception& e) {
    error = e.what();
    return std::nullopt;
  }
  const std::string what = command_line(args) + " in " + build_dir;
  if (cap.timed_out) {
    error = what + " did not finish in " + std::to_string(static_cast<int>(kListTimeout)) + " s";
    return std::nullopt;
  }
  if (WIFEXITED(cap.status) && WEXITSTATUS(cap.status) == 125 && cap.out.empty()) {
    error = "cannot enter " + build_dir + ": " + tail(cap.err);
    return std::nullopt;
  }
  if (cap.status != 0) {
    error = what + " failed (" + describe_wait_status(cap.status) + ")" +
            (cap.err.empty() ? std::string() : ": " + tail(cap.err));
    return std::nullopt;
  }
  auto tests = parse_json_v1(cap.out, error, build_dir);
  if (!tests) {
    error = what + ": " + error;
    return std::nullopt;
  }
  if (tests->empty() && config.empty() && is_multi_config(build_dir)) {
    error = build_dir + " is a multi-config build tree: ctest lists its tests only for a configuration "
            "(name one, as for ctest -C)";
    return std::nullopt;
  }
  // The JSON leaves out what ctest could not find; `ctest -N -V` says.
  if (std::any_of(tests->begin(), tests->end(), [](const Test& t) { return t.command.empty(); })) {
    std::vector<std::string> nv = {"-N", "-V"};
    nv.insert(nv.end(), filter.begin(), filter.end());
    try {
      const Captured v = run_ctest(exe, build_dir, nv);
      const auto missing = missing_executables(v.out);
      for (auto& t : *tests) {
        if (!t.command.empty()) continue;
        if (const auto it = missing.find(t.name); it != missing.end()) t.missing_executable = it->second;
      }
    } catch (const std::exception&) {
      // Only the message gets poorer.
    }
  }
  return tests;
}

// ===========================================================================
// Environment and verdicts
// ===========================================================================

bool apply_environment(const Test& t, std::map<std::string, std::string>& env,
                       std::vector<std::string>& unset, std::string& error) {
  auto current = [&](const std::string& name) -> std::optional<std::string> {
    if (const auto it = env.find(name); it != env.end()) return it->second;
    if (std::find(unset.begin(), unset.end(), name) != unset.end()) return std::nullopt;
    const char* v = std::getenv(name.c_str());
    return v ? std::optional<std::string>(v) : std::nullopt;
  };
  auto set_var = [&](const std::string& name, const std::string& value) {
    env[name] = value;
    unset.erase(std::remove(unset.begin(), unset.end(), name), unset.end());
  };
  auto unset_var = [&](const std::string& name) {
    env.erase(name);
    if (std::find(unset.begin(), unset.end(), name) == unset.end()) unset.push_back(name);
  };

  // Validate first: ctest starts nothing when an entry is wrong.
  struct Mod {
    std::string name, op, value;
  };
  std::vector<Mod> mods;
  for (const auto& m : t.environment_modification) {
    const auto eq = m.find('=');
    if (eq == std::string::npos) {
      error = "ENVIRONMENT_MODIFICATION \"" + m + "\": no '=' after the variable name";
      return false;
    }
    const auto colon = m.find(':', eq + 1);
    if (colon == std::string::npos) {
      error = "ENVIRONMENT_MODIFICATION \"" + m + "\": no ':' after the operation";
      return false;
    }
    Mod mod{m.substr(0, eq), m.substr(eq + 1, colon - eq - 1), m.substr(colon + 1)};
    static constexpr std::string_view kOps[] = {"reset",          "set",
                                                "unset",          "string_append",
                                                "string_prepend", "path_list_append",
                                                "path_list_prepend", "cmake_list_append",
                                                "cmake_list_prepend"};
    if (std::find(std::begin(kOps), std::end(kOps), mod.op) == std::end(kOps)) {
      error = "ENVIRONMENT_MODIFICATION \"" + m + "\": unknown operation \"" + mod.op + "\"";
      return false;
    }
    mods.push_back(std::move(mod));
  }

  // ENVIRONMENT: putenv() in order; an entry without '=' removes the variable.
  for (const auto& e : t.environment) {
    const auto eq = e.find('=');
    if (eq == std::string::npos) {
      unset_var(e);
    } else {
      set_var(e.substr(0, eq), e.substr(eq + 1));
    }
  }

  // ENVIRONMENT_MODIFICATION, as ctest's cmCTestRunTest::ForkProcess: a diff
  // per variable; an edit starts from the diff's value, or from the
  // environment when the diff has none (even right after an "unset", as
  // ctest does), and "reset" forgets the diff.
  std::map<std::string, std::optional<std::string>> diff;
  for (const auto& [name, op, value] : mods) {
    if (op == "reset") {
      diff.erase(name);
      continue;
    }
    if (op == "set") {
      diff[name] = value;
      continue;
    }
    if (op == "unset") {
      diff[name] = std::nullopt;
      continue;
    }
    const auto d = diff.find(name);
    std::string v = d != diff.end() && d->second ? *d->second : current(name).value_or("");
    auto join = [&](char sep, bool append) {
      if (v.empty()) {
        v = value;
      } else {
        v = append ? v + sep + value : value + sep + v;
      }
    };
    if (op == "string_append") {
      v += value;
    } else if (op == "string_prepend") {
      v = value + v;
    } else if (op == "path_list_append" || op == "path_list_prepend") {
      join(':', op == "path_list_append");
    } else {
      join(';', op == "cmake_list_append");
    }
    diff[name] = v;
  }
  for (const auto& [name, v] : diff) {
    if (v) {
      set_var(name, *v);
    } else {
      unset_var(name);
    }
  }
  return true;
}

std::optional<Verdict> precheck(const Test& t) {
  if (t.disabled) return Verdict{Outcome::skipped, "disabled"};
  if (!t.working_directory.empty()) {
    struct stat st {};
    const bool exists = ::stat(t.working_directory.c_str(), &st) == 0;
    if (!exists || !S_ISDIR(st.st_mode))
      return Verdict{Outcome::not_run, "cannot change to its WORKING_DIRECTORY " + t.working_directory + ": " +
                                           (exists ? "not a directory" : std::strerror(errno))};
  }
  for (const auto& f : t.required_files) {
    const std::string path = resolve(t.working_directory, f);
    if (::access(path.c_str(), F_OK) != 0)
      return Verdict{Outcome::not_run, "REQUIRED_FILES: " + path + " does not exist"};
  }
  const std::string at = t.defined_at.empty() ? std::string() : " (add_test at " + t.defined_at + ")";
  if (t.command.empty()) {
    return Verdict{Outcome::not_run,
                   (t.missing_executable.empty() ? std::string("ctest found no executable for this test")
                                                 : "executable not found: " + t.missing_executable) +
                       at};
  }
  if (!is_executable_file(t.command[0]))
    return Verdict{Outcome::not_run, "executable not found: " + t.command[0] + at};
  std::map<std::string, std::string> env;
  std::vector<std::string> unset;
  std::string error;
  if (!apply_environment(t, env, unset, error)) return Verdict{Outcome::not_run, error};
  return std::nullopt;
}

namespace {

std::string seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", s);
  return buf;
}

// The first of `patterns` found in `text` (index), noting invalid ones.
std::optional<std::size_t> first_match(const std::vector<std::string>& patterns, const char* property,
                                       const std::string& text, std::string& notes) {
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    std::string why;
    const auto rx = Regex::compile(patterns[i], why);
    if (!rx) {
      notes += std::string(notes.empty() ? "" : "; ") + property + " [" + patterns[i] + "] is invalid (" + why +
               "), ctest never matches it";
      continue;
    }
    if (rx->search(text)) return i;
  }
  return std::nullopt;
}

std::string bracketed(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& p : v) s += (s.empty() ? "[" : " [") + p + "]";
  return s;
}

}  // namespace

Verdict judge(const Test& t, int wait_status, std::string_view output, bool timed_out) {
  if (timed_out) return {Outcome::timeout, t.timeout > 0 ? "timed out after " + seconds(t.timeout) + " s" : "timed out"};
  if (!WIFEXITED(wait_status)) return {Outcome::crashed, describe_wait_status(wait_status)};
  const int code = WEXITSTATUS(wait_status);
  const std::string exit_status = describe_wait_status(wait_status);

  std::string notes;
  std::string text;
  if (!t.pass_regex.empty() || !t.fail_regex.empty() || !t.skip_regex.empty()) text = normalize_output(output);
  const auto pass = first_match(t.pass_regex, "PASS_REGULAR_EXPRESSION", text, notes);
  const auto fail = first_match(t.fail_regex, "FAIL_REGULAR_EXPRESSION", text, notes);
  const auto skip = first_match(t.skip_regex, "SKIP_REGULAR_EXPRESSION", text, notes);
  auto with_notes = [&](Outcome o, std::string message) {
    if (!notes.empty()) message += (message.empty() ? "" : "; ") + notes;
    return Verdict{o, std::move(message)};
  };

  if (skip) return with_notes(Outcome::skipped, "output matches SKIP_REGULAR_EXPRESSION [" + t.skip_regex[*skip] + "]");
  if (t.skip_return_code && *t.skip_return_code == code)
    return with_notes(Outcome::skipped, exit_status + " is its SKIP_RETURN_CODE");

  // As ctest: a PASS_REGULAR_EXPRESSION replaces the exit status; a
  // FAIL_REGULAR_EXPRESSION match fails whatever else.
  const bool pass_missing = !t.pass_regex.empty() && !pass;
  const bool success = !fail && !pass_missing && (code == 0 || !t.pass_regex.empty());
  std::string why;
  if (fail) {
    why = "output matches FAIL_REGULAR_EXPRESSION [" + t.fail_regex[*fail] + "]";
  } else if (pass_missing) {
    why = "output matches no PASS_REGULAR_EXPRESSION " + bracketed(t.pass_regex);
  } else if (pass) {
    why = "output matches PASS_REGULAR_EXPRESSION [" + t.pass_regex[*pass] + "]";
  } else {
    why = exit_status;
  }
  if (success != t.will_fail) return with_notes(Outcome::passed, t.will_fail ? "failed as expected (WILL_FAIL): " + why : "");
  return with_notes(Outcome::failed, t.will_fail ? "passed, but WILL_FAIL expects a failure: " + why : why);
}

}  // namespace dtest::ctest
