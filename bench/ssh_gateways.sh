#!/usr/bin/env bash
# Benchmark for the remote gateways (issue 3): how long until N ssh gateways
# are up and a suite has run, dtest against pytest-xdist over execnet, side by
# side in one hyperfine run per N, against a real OpenSSH sshd on loopback.
#
# usage (from the repository root):   bench/ssh_gateways.sh [BUILD_DIR]
#   BUILD_DIR   dtest build directory (default: build), with src/dtest and
#               src/dtest-agent built.
# Environment: BENCH_RUNS (hyperfine runs per command, default 5),
#   BENCH_GATEWAYS (default "1 4 16").
#
# Two suites, equivalent in both tools:
#   one      1 trivial test: the time is bring-up + collection + one test +
#            teardown, i.e. the time to the first result
#   trivial  200 trivial tests
# dtest runs a GoogleTest binary in place, xdist a pytest file that it first
# rsyncs (one small file) to its remote folder; both over ssh to 127.0.0.1 as
# root with a generated key, through one ssh config (host alias benchhost).
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=$(cd "${1:-$REPO_ROOT/build}" && pwd)
RUNS=${BENCH_RUNS:-5}
GATEWAYS=${BENCH_GATEWAYS:-"1 4 16"}
DTEST=$BUILD_DIR/src/dtest
PYTHON=/usr/bin/python3   # Debian's, which has pytest-xdist

bash "$REPO_ROOT/scripts/deps.sh" --bench
[[ -x $DTEST ]] || { echo "ssh_gateways.sh: build dtest first ($DTEST)" >&2; exit 1; }

WORK=$BUILD_DIR/bench-ssh
rm -rf "$WORK"
mkdir -p "$WORK/suite" "$WORK/results"
SSHD_DIR=$WORK/sshd
trap 'bash "$REPO_ROOT/tests/ssh/sshd_harness.sh" stop "$SSHD_DIR" >/dev/null 2>&1 || true' EXIT
bash "$REPO_ROOT/tests/ssh/sshd_harness.sh" start "$SSHD_DIR" >&2
PORT=$(cat "$SSHD_DIR/port")

# One ssh config for both tools: a host alias with port, key and known_hosts.
cat > "$WORK/ssh_config" <<CFG
Host benchhost
  HostName 127.0.0.1
  Port $PORT
  User root
  IdentityFile $SSHD_DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSHD_DIR/known_hosts
  StrictHostKeyChecking yes
CFG

# --- the suites -------------------------------------------------------------
cat > "$WORK/suite/one_test.cc" <<'CC'
#include <gtest/gtest.h>
TEST(One, Passes) { SUCCEED(); }
CC
{
  echo '#include <gtest/gtest.h>'
  for i in $(seq 0 199); do echo "TEST(Trivial, T$i) { SUCCEED(); }"; done
} > "$WORK/suite/trivial_test.cc"
for t in one trivial; do
  g++ -O1 -o "$WORK/suite/${t}_test" "$WORK/suite/${t}_test.cc" -lgtest -lgtest_main -pthread
done
cat > "$WORK/suite/test_one.py" <<'PY'
def test_passes():
    pass
PY
cat > "$WORK/suite/test_trivial.py" <<'PY'
import pytest

@pytest.mark.parametrize("i", range(200))
def test_trivial(i):
    pass
PY

SUITE=$WORK/suite
# xdist needs the tests under an --rsyncdir root (it syncs the folder, here
# one small file, to chdir= on the remote); dtest runs the binary in place
# (same machine; bench/sync_rsync.sh measures dtest's syncer).
XDIST_TX() { echo "$1*ssh=-F $WORK/ssh_config benchhost//python=$PYTHON//chdir=$WORK/xdist-remote"; }
DTEST_TX() { echo "$1*ssh=-F $WORK/ssh_config benchhost"; }

# Warm the remote agent cache once so every timed dtest run is a warm start
# (xdist has nothing to upload: execnet sends its bootstrap on every start).
"$DTEST" -q --tx "$(DTEST_TX 1)" "$SUITE/one_test" >&2

for n in $GATEWAYS; do
  for suite in one trivial; do
    hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/results/$suite-$n.json" \
      -n "xdist $n gw $suite" \
      "cd $SUITE && $PYTHON -m pytest -q -p no:cacheprovider -d --rsyncdir $SUITE --tx '$(XDIST_TX "$n")' $SUITE/test_$suite.py" \
      -n "dtest $n gw $suite" \
      "$DTEST -q --tx '$(DTEST_TX "$n")' $SUITE/${suite}_test" >&2
  done
done

"$PYTHON" - "$WORK/results" "$GATEWAYS" <<'PY'
import json, sys, os
results, gateways = sys.argv[1], sys.argv[2].split()
print("| gateways | suite | pytest-xdist [s] | dtest [s] | xdist / dtest |")
print("|---:|---|---:|---:|---:|")
for n in gateways:
    for suite in ("one", "trivial"):
        with open(os.path.join(results, f"{suite}-{n}.json")) as f:
            r = {x["command"].split()[0]: x for x in json.load(f)["results"]}
        x, d = r["xdist"]["mean"], r["dtest"]["mean"]
        label = "1 test (time to first result)" if suite == "one" else "200 trivial tests"
        print(f"| {n} | {label} | {x:.3f} | {d:.3f} | {x / d:.1f} |")
PY
