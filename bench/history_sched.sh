#!/usr/bin/env bash
# Benchmark for scheduling from recorded durations (issue 6): ~200 tests with
# heavy-tailed sleep durations (~60 s of work in all) on 4 local workers,
# side by side in one hyperfine run:
#   dtest -n 4, first run      (no history: .dtest/ removed before each run)
#   dtest -n 4, with history   (durations recorded by the earlier runs)
#   pytest -n 4                (Debian's pytest-xdist, --dist load) on a pytest
#                              file with the same durations in the same order
# Each makespan is reported as a ratio to the lower bound
# max(longest test, total work / 4). The tests are listed in a random order
# (not longest first), as a real suite would be.
#
# usage (from the repository root):   bench/history_sched.sh [BUILD_DIR]
# Environment: BENCH_RUNS (hyperfine runs per command, default 3),
#   BENCH_TESTS (default 200), BENCH_WORK (seconds of work, default 60).
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=$(cd "${1:-$REPO_ROOT/build}" && pwd)
RUNS=${BENCH_RUNS:-3}
NTESTS=${BENCH_TESTS:-200}
WORK_S=${BENCH_WORK:-60}
DTEST=$BUILD_DIR/src/dtest
PYTHON=/usr/bin/python3   # Debian's, which has pytest-xdist

bash "$REPO_ROOT/scripts/deps.sh" --bench
[[ -x $DTEST ]] || { echo "history_sched.sh: build dtest first ($DTEST)" >&2; exit 1; }

WORK=$BUILD_DIR/bench-history
rm -rf "$WORK"
mkdir -p "$WORK/suite" "$WORK/results"
"$PYTHON" - "$WORK/suite" "$NTESTS" "$WORK_S" <<'PY'
import json, random, sys
out, n, total = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
rng = random.Random(6)
raw = [min(rng.paretovariate(1.3), 60.0) for _ in range(n)]
scale = total / sum(raw)
ms = [max(1, int(round(r * scale * 1000))) for r in raw]
rng.shuffle(ms)
json.dump(ms, open(f"{out}/durations.json", "w"))
with open(f"{out}/heavy_test.cc", "w") as f:
    f.write("#include <gtest/gtest.h>\n#include <chrono>\n#include <thread>\n")
    for i, d in enumerate(ms):
        f.write(f"TEST(Heavy, T{i:03d}) {{ std::this_thread::sleep_for(std::chrono::milliseconds({d})); }}\n")
with open(f"{out}/test_heavy.py", "w") as f:
    f.write("import time\nimport pytest\n\nDURATIONS = %r\n\n" % ms)
    f.write("@pytest.mark.parametrize('i', range(len(DURATIONS)))\n")
    f.write("def test_heavy(i):\n    time.sleep(DURATIONS[i] / 1000)\n")
print(f"{n} tests, {sum(ms)/1000:.1f} s of work, longest {max(ms)/1000:.2f} s", file=sys.stderr)
PY
g++ -O1 -o "$WORK/suite/heavy_test" "$WORK/suite/heavy_test.cc" -lgtest -lgtest_main -pthread
cd "$WORK/suite"
# History for the "with history" command: two recorded runs first.
"$DTEST" -q -n 4 ./heavy_test >&2 || true
"$DTEST" -q -n 4 ./heavy_test >&2 || true
cp -r .dtest "$WORK/history"

hyperfine --runs "$RUNS" --export-json "$WORK/results/sched.json" \
  -n "dtest-first" --prepare "rm -rf $WORK/suite/.dtest" "$DTEST -q -n 4 ./heavy_test" \
  -n "dtest-history" --prepare "rm -rf $WORK/suite/.dtest && cp -r $WORK/history $WORK/suite/.dtest" \
  "$DTEST -q -n 4 ./heavy_test" \
  -n "xdist" --prepare "true" "$PYTHON -m pytest -q -p no:cacheprovider -n 4 test_heavy.py" >&2

"$PYTHON" - "$WORK" <<'PY'
import json, sys
work = sys.argv[1]
ms = json.load(open(f"{work}/suite/durations.json"))
bound = max(max(ms) / 1000, sum(ms) / 1000 / 4)
res = {r["command"]: r["mean"] for r in json.load(open(f"{work}/results/sched.json"))["results"]}
print(f"lower bound max(longest, total/4) = {bound:.2f} s ({len(ms)} tests, {sum(ms)/1000:.1f} s of work)\n")
print("| command | makespan [s] | / lower bound | over the bound [s] |")
print("|---|---:|---:|---:|")
for name, label in (("dtest-first", "dtest -n 4, first run"), ("dtest-history", "dtest -n 4, with history"),
                    ("xdist", "pytest -n 4 (xdist)")):
    m = res[name]
    print(f"| {label} | {m:.2f} | {m / bound:.3f} | {m - bound:.2f} |")
PY
