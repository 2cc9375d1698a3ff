#!/usr/bin/env bash
# Benchmark for pytest suites (issue 5): dtest -n 2 against serial pytest and
# pytest-xdist on two generated pytest projects, side by side in one hyperfine
# run per suite:
#   trivial: 5,000 empty tests (50 files x 100 `def test_i(): pass`):
#            per-test overhead
#   sleepy:  300 tests sleeping heavy-tailed, deterministic durations
#            (~12 s of sleep in all, longest 1 s), listed in a shuffled order:
#            scheduling; makespans are compared with the lower bound
#            max(longest test, total / 2)
# Commands (each in the suite's folder, which holds a pytest.ini):
#   pytest               /usr/bin/python3 -m pytest -q -p no:cacheprovider
#   pytest -n 2          the same with -n 2 (Debian's pytest-xdist, --dist load)
#   dtest -n 2, first    dtest -q --tx 2*popen//python=/usr/bin/python3 with
#                        .dtest/ and dtest's cache dir removed before each run
#   dtest -n 2, history  the same with .dtest/ and the cache as two earlier
#                        recorded runs left them (restored before each run)
# dtest takes no positional argument: it finds the pytest project itself.
#
# usage (from the repository root):   bench/pytest_suites.sh [BUILD_DIR]
#   BUILD_DIR   dtest build directory (default: build), with src/dtest and
#               src/dtest-agent built.
# Environment (all optional):
#   BENCH_RUNS_TRIVIAL  hyperfine runs for the trivial suite (5)
#   BENCH_RUNS_SLEEPY   hyperfine runs for the sleepy suite (3)
#   BENCH_SKIP_DTEST=1  leave dtest out (to check the rest of the script)
#
# The suites are generated in a temporary directory (removed at the end).
# Results: $BUILD_DIR/bench-pytest/*.json (hyperfine), results.md (the table
# printed at the end) and trace-*.txt (one DTEST_DEBUG=1 run per suite, with
# history). See bench/README.md.
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
PYTHON=/usr/bin/python3   # Debian's, which has pytest and pytest-xdist

# shellcheck source=bench/common.sh
source "$REPO_ROOT/bench/common.sh"
bench_setup hyperfine
"$PYTHON" -c 'import pytest, xdist' 2>/dev/null || die "$PYTHON lacks pytest or pytest-xdist"

RESULTS=$BUILD_DIR/bench-pytest
mkdir -p "$RESULTS"
rm -f "$RESULTS"/*.json "$RESULTS"/trace-*.txt
WORK=$(mktemp -d "${TMPDIR:-/tmp}/dtest-bench-pytest.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
# dtest's cache (listings, cost memory, the plugin) in the temp dir too, so
# that "first run" means it and the user's cache is left alone.
export DTEST_CACHE_DIR=$WORK/cache

# --- a. generate the two pytest projects ------------------------------------
log "generating the suites in $WORK"
"$PYTHON" - "$WORK" <<'PY'
import json, os, random, sys

work = sys.argv[1]

def project(name):
    d = os.path.join(work, name)
    os.makedirs(d)
    with open(os.path.join(d, "pytest.ini"), "w") as f:
        f.write("[pytest]\n")
    return d

# trivial: 50 files x 100 empty tests.
d = project("trivial")
for f in range(50):
    with open(os.path.join(d, f"test_trivial_{f:02d}.py"), "w") as out:
        out.write("".join(f"def test_{i}():\n    pass\n\n\n" for i in range(100)))

# sleepy: 300 tests, Pareto (shape 1.2) durations scaled so that, clipped
# at 1 s, they make 12 s in all (a bisection for the scale), in a shuffled
# order, 10 files x 30 tests. A fixed seed: the same suite every time.
N, TOTAL_MS, LONGEST_MS = 300, 12000, 1000
rng = random.Random(5)
raw = [rng.paretovariate(1.2) for _ in range(N)]
lo, hi = 0.0, TOTAL_MS
for _ in range(200):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if sum(min(LONGEST_MS, r * mid) for r in raw) < TOTAL_MS else (lo, mid)
ms = [min(LONGEST_MS, r * lo) for r in raw]
ms = [max(1, int(round(m))) for m in ms]
rng.shuffle(ms)
d = project("sleepy")
for f in range(10):
    with open(os.path.join(d, f"test_sleepy_{f:02d}.py"), "w") as out:
        out.write("import time\n\n\n")
        for i in range(30):
            k = f * 30 + i
            out.write(f"def test_{k:03d}():\n    time.sleep({ms[k] / 1000!r})\n\n\n")
json.dump(ms, open(os.path.join(work, "sleepy_durations.json"), "w"))
print(f"trivial: 5000 tests; sleepy: {N} tests, {sum(ms) / 1000:.2f} s of sleep, "
      f"longest {max(ms) / 1000:.2f} s, {sum(m >= 200 for m in ms)} tests >= 200 ms, "
      f"median {sorted(ms)[N // 2]} ms", file=sys.stderr)
PY
cp "$WORK/sleepy_durations.json" "$RESULTS/"

# --- b. time them ---------------------------------------------------------------
PYTEST="$(q "$PYTHON") -m pytest -q -p no:cacheprovider"
DTEST_ARGV=("$DTEST" -q --tx "2*popen//python=$PYTHON")
DTEST_CMD="$(q "$DTEST") -q --tx $(q "2*popen//python=$PYTHON")"

# bench NAME RUNS: one hyperfine invocation for the four commands, run in the
# suite's folder.
bench() {
  local name=$1 runs=$2 dir=$WORK/$1
  local cmds=(
    -n "pytest" --prepare "true" "$PYTEST"
    -n "pytest -n 2" --prepare "true" "$PYTEST -n 2"
  )
  [[ $SKIP_DTEST == 1 ]] || dtest_commands cmds "$name" "$dir"
  log "hyperfine: $name ($runs runs each, warm-up 1)"
  (cd "$dir" && hyperfine --warmup 1 --runs "$runs" --export-json "$RESULTS/$name.json" "${cmds[@]}" >&2)
  if [[ $SKIP_DTEST != 1 ]]; then
    # One traced run (with history) to see where dtest's time goes.
    (cd "$dir" && rm -rf .dtest "$DTEST_CACHE_DIR" && cp -r "$WORK/history-$name/dtest" .dtest &&
      cp -r "$WORK/history-$name/cache" "$DTEST_CACHE_DIR" &&
      DTEST_DEBUG=1 "${DTEST_ARGV[@]}" >/dev/null 2>"$RESULTS/trace-$name.txt")
  fi
}

bench trivial "$RUNS_TRIVIAL"
bench sleepy "$RUNS_SLEEPY"

# --- c. the table -----------------------------------------------------------------
log "results (ratio = mean / mean of serial pytest)"
"$PYTHON" - "$RESULTS" "$(nproc 2>/dev/null || echo '?')" <<'PY' | tee "$RESULTS/results.md"
import json, os, platform, sys, time

results, cores = sys.argv[1], sys.argv[2]
ms = json.load(open(os.path.join(results, "sleepy_durations.json")))
total, longest = sum(ms) / 1000, max(ms) / 1000
bound = max(longest, total / 2)
order = ["pytest", "pytest -n 2", "dtest -n 2, first run", "dtest -n 2, history"]

print(f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} cores "
      f"({platform.system()} {platform.release()}); ratio = mean / mean of serial pytest. "
      f"sleepy: {len(ms)} tests, {total:.2f} s of sleep, longest {longest:.2f} s, "
      f"lower bound max(longest, total / 2) = {bound:.2f} s. CPU = user + system time "
      f"of the command and its children (hyperfine's mean), less sensitive to other load.")
print()
print("| suite | command | mean [s] | σ [s] | runs | ratio vs pytest | / xdist | / lower bound | CPU [s] |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for suite, ntests in (("trivial", 5000), ("sleepy", len(ms))):
    path = os.path.join(results, suite + ".json")
    if not os.path.exists(path):
        continue
    res = {r["command"]: r for r in json.load(open(path))["results"]}
    base = res["pytest"]["mean"]
    xdist = res["pytest -n 2"]["mean"]
    for name in order:
        r = res.get(name)
        if r is None:
            continue
        over = f"{r['mean'] / bound:.3f}" if suite == "sleepy" else "–"
        print(f"| {suite} ({ntests} tests) | `{name}` | {r['mean']:.3f} | {r['stddev'] or 0:.3f} "
              f"| {len(r['times'])} | {r['mean'] / base:.2f} | {r['mean'] / xdist:.2f} | {over} "
              f"| {r['user'] + r['system']:.2f} |")
PY
log "table saved to $RESULTS/results.md; traces in $RESULTS/trace-*.txt"
