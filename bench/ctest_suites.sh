#!/usr/bin/env bash
# Benchmark for CTest build trees (issue 5): dtest -n 2 against ctest -j2 on
# two generated CMake projects (no compiler needed: the tests are `true` and
# `sleep`), side by side in one hyperfine run per project:
#   trivial: 1,000 tests running `true`: per-test overhead (both start one
#            process per test)
#   sleepy:  200 tests sleeping heavy-tailed, deterministic durations
#            (~10 s of sleep in all, longest 0.8 s), 10 of them with
#            PROCESSORS 2 (each takes both workers): scheduling; makespans are
#            compared with the lower bound max(longest, sum(d x weight) / 2)
# Commands (each in the project's build tree):
#   ctest -j2            ctest -j2 -Q; its cost data (Testing/Temporary/
#                        CTestCostData.txt, which ctest orders by) as the
#                        warm-up run left it
#   dtest -n 2, first    dtest -q -n 2 . with .dtest/ and dtest's cache
#                        removed before each run
#   dtest -n 2, history  the same with .dtest/ and the cache as two earlier
#                        recorded runs left them (restored before each run)
#
# usage (from the repository root):   bench/ctest_suites.sh [BUILD_DIR]
#   BUILD_DIR   dtest build directory (default: build), with src/dtest and
#               src/dtest-agent built.
# Environment (all optional):
#   BENCH_RUNS_TRIVIAL  hyperfine runs for the trivial project (5)
#   BENCH_RUNS_SLEEPY   hyperfine runs for the sleepy project (3)
#   BENCH_SKIP_DTEST=1  leave dtest out (to check the rest of the script)
#
# The projects are generated in a temporary directory (removed at the end).
# Results: $BUILD_DIR/bench-ctest/*.json (hyperfine), results.md (the table
# printed at the end). See bench/README.md.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $# -gt 1 || ${1:-} == -h || ${1:-} == --help ]]; then
  sed -n '2,31p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
BUILD_DIR=${1:-$REPO_ROOT/build}
RUNS_TRIVIAL=${BENCH_RUNS_TRIVIAL:-5}
RUNS_SLEEPY=${BENCH_RUNS_SLEEPY:-3}
SKIP_DTEST=${BENCH_SKIP_DTEST:-0}
PYTHON=/usr/bin/python3

# shellcheck source=bench/common.sh
source "$REPO_ROOT/bench/common.sh"
bench_setup hyperfine cmake ctest

RESULTS=$BUILD_DIR/bench-ctest
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dtest-bench-ctest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export DTEST_CACHE_DIR=$WORK/cache

# --- a. generate and configure the two projects ------------------------------
log "generating the projects in $WORK"
"$PYTHON" - "$WORK" <<'PY'
import json, os, random, sys

work = sys.argv[1]
HEAD = "cmake_minimum_required(VERSION 3.16)\nproject({} LANGUAGES NONE)\nenable_testing()\n"

def project(name, body):
    d = os.path.join(work, name)
    os.makedirs(d)
    with open(os.path.join(d, "CMakeLists.txt"), "w") as f:
        f.write(HEAD.format(name) + body)

project("trivial", "".join(f"add_test(NAME t{i:04d} COMMAND true)\n" for i in range(1000)))

# sleepy: 200 tests, Pareto (shape 1.2) durations scaled so that, clipped
# at 0.8 s, they make 10 s in all; every 20th test (in a shuffled order)
# has PROCESSORS 2. A fixed seed: the same project every time.
N, TOTAL_MS, LONGEST_MS = 200, 10000, 800
rng = random.Random(7)
raw = [rng.paretovariate(1.2) for _ in range(N)]
lo, hi = 0.0, TOTAL_MS
for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if sum(min(LONGEST_MS, r * mid) for r in raw) < TOTAL_MS else (lo, mid)
ms = [max(1, int(round(min(LONGEST_MS, r * lo)))) for r in raw]
rng.shuffle(ms)
weights = [2 if i % 20 == 7 else 1 for i in range(N)]
body = ""
for i, (m, w) in enumerate(zip(ms, weights)):
    body += f"add_test(NAME s{i:03d} COMMAND sleep {m / 1000:.3f})\n"
    if w > 1:
        body += f"set_tests_properties(s{i:03d} PROPERTIES PROCESSORS {w})\n"
project("sleepy", body)
json.dump({"ms": ms, "weights": weights}, open(os.path.join(work, "sleepy_durations.json"), "w"))
print(f"trivial: 1000 tests; sleepy: {N} tests, {sum(ms) / 1000:.2f} s of sleep, "
      f"longest {max(ms) / 1000:.2f} s, {sum(w > 1 for w in weights)} with PROCESSORS 2", file=sys.stderr)
PY
cp "$WORK/sleepy_durations.json" "$RESULTS/"
for p in trivial sleepy; do
  cmake -S "$WORK/$p" -B "$WORK/$p-build" -G Ninja >/dev/null || die "cmake failed for $p"
done

# --- b. time them ---------------------------------------------------------------
DTEST_ARGV=("$DTEST" -q -n 2 .)
DTEST_CMD="$(q "$DTEST") -q -n 2 ."

bench() {
  local name=$1 runs=$2 dir=$WORK/$1-build
  local cmds=(-n "ctest -j2" --prepare "true" "ctest -j2 -Q")
  [[ $SKIP_DTEST == 1 ]] || dtest_commands cmds "$name" "$dir"
  log "hyperfine: $name ($runs runs each, warm-up 1)"
  (cd "$dir" && hyperfine --warmup 1 --runs "$runs" --export-json "$RESULTS/$name.json" "${cmds[@]}" >&2)
}

bench trivial "$RUNS_TRIVIAL"
bench sleepy "$RUNS_SLEEPY"

# --- c. the table -----------------------------------------------------------------
log "results (ratio = mean / mean of ctest -j2)"
"$PYTHON" - "$RESULTS" "$(nproc 2>/dev/null || echo '?')" <<'PY' | tee "$RESULTS/results.md"
import json, os, platform, sys, time

results, cores = sys.argv[1], sys.argv[2]
sleepy = json.load(open(os.path.join(results, "sleepy_durations.json")))
ms, weights = sleepy["ms"], sleepy["weights"]
longest = max(ms) / 1000
bound = max(longest, sum(m * w for m, w in zip(ms, weights)) / 1000 / 2)
order = ["ctest -j2", "dtest -n 2, first run", "dtest -n 2, history"]

print(f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} cores "
      f"({platform.system()} {platform.release()}); ratio = mean / mean of ctest -j2. "
      f"sleepy: {len(ms)} tests, {sum(ms) / 1000:.2f} s of sleep, longest {longest:.2f} s, "
      f"{sum(w > 1 for w in weights)} with PROCESSORS 2; lower bound "
      f"max(longest, sum(duration x weight) / 2) = {bound:.2f} s. CPU = user + system time.")
print()
print("| project | command | mean [s] | σ [s] | runs | ratio vs ctest -j2 | / lower bound | CPU [s] |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for name, ntests in (("trivial", 1000), ("sleepy", len(ms))):
    path = os.path.join(results, name + ".json")
    if not os.path.exists(path):
        continue
    res = {r["command"]: r for r in json.load(open(path))["results"]}
    base = res["ctest -j2"]["mean"]
    for cmd in order:
        r = res.get(cmd)
        if r is None:
            continue
        over = f"{r['mean'] / bound:.3f}" if name == "sleepy" else "–"
        print(f"| {name} ({ntests} tests) | `{cmd}` | {r['mean']:.3f} | {r['stddev'] or 0:.3f} "
              f"| {len(r['times'])} | {r['mean'] / base:.2f} | {over} | {r['user'] + r['system']:.2f} |")
PY
log "table saved to $RESULTS/results.md"
