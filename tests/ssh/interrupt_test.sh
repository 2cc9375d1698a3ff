#!/usr/bin/env bash
# Ctrl-C during a remote run leaves no process behind on the remote host:
# dtest runs a slow suite over two ssh gateways to a real sshd on loopback,
# gets SIGINT once tests are running remotely, must exit 2 with every test
# accounted for, and within a few seconds no remote agent and no test
# process may be left. Exits 77 (CTest skip) without sshd. The connection
# is a warm one (a holder process keeps it between runs, the default): the
# holder must stop the agents' channels when the master goes away, and the
# test closes it at the end (none may be left either).
#
# usage: interrupt_test.sh DTEST FIXTURES_DIR SSHD_HARNESS
set -euo pipefail
DTEST=$1
FIX=$2
HARNESS=$3
[[ -x /usr/sbin/sshd ]] || { echo "SKIP: sshd is not installed"; exit 77; }

WORK=$(mktemp -d /tmp/dtest-int.XXXXXX)
export DTEST_CACHE_DIR=$WORK/cache
holders() { pgrep -f "__ssh-holder $WORK/cache/" || true; }
cleanup() {
  set +e
  HOME=$WORK/home "$DTEST" __ssh-close > /dev/null 2>&1
  for p in $(holders); do kill -9 "$p"; done
  pkill -9 -f "$WORK/" 2>/dev/null
  bash "$HARNESS" stop "$WORK/h" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; cat "$WORK/out" 2>/dev/null; exit 1; }

bash "$HARNESS" start "$WORK/h" >/dev/null || { rc=$?; [[ $rc -eq 77 ]] && exit 77; fail "sshd harness failed ($rc)"; }
port=$(cat "$WORK/h/port")
# The suite runs from a copy under WORK, so its processes are easy to find.
cp "$FIX/fx_sleep_test" "$WORK/slow_test"
mkdir -p "$WORK/home"

# Not under timeout(1): it would forward our SIGINT to its whole process
# group, dtest would get two, and the second one ends it at once (by design).
HOME=$WORK/home DTEST_SSH_KNOWN_HOSTS=$WORK/h/known_hosts "$DTEST" -v \
  --tx "2*ssh=-i $WORK/h/id_ed25519 -p $port root@127.0.0.1" "$WORK/slow_test" > "$WORK/out" 2>&1 &
pid=$!
# The watchdog must not hold our stdout (ctest waits for it to close).
( sleep 60; kill -9 "$pid" ) > /dev/null 2>&1 &
watchdog=$!

remote() { pgrep -f "$WORK/(h/remote-home/.cache/dtest/agent-|slow_test)" || true; }
running() { [[ -n "$(pgrep -f "^$WORK/slow_test" || true)" ]]; }
# Waits (up to 20 s) until a test process runs remotely, while dtest lives.
wait_running() {
  for _ in $(seq 1 400); do
    running && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  running
}
# Fails unless nothing is left on the remote host within $1 polls of 50 ms.
expect_nothing_left() {
  for _ in $(seq 1 "$1"); do
    [[ -z "$(remote)" ]] && return 0
    sleep 0.05
  done
  local left
  left=$(remote)
  ps -o pid,ppid,args -p $left
  fail "$2"
}

wait_running || { wait "$pid" || true; fail "no test process ever ran remotely"; }
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
pkill -P "$watchdog" 2>/dev/null || true
kill "$watchdog" 2>/dev/null || true
[[ $rc -eq 2 ]] || fail "dtest exited $rc after SIGINT, expected 2"
grep -q "Interrupted" "$WORK/out" || fail "no 'Interrupted' in the report"
total=$(grep -cE '^(\[gw[01]\] )?\[ *[0-9]+%\] ' "$WORK/out" || true)
expected=$("$FIX/fx_sleep_test" --gtest_list_tests | grep -c '^  ')
[[ $total -eq $expected ]] || fail "$total outcomes for $expected tests"

expect_nothing_left 100 "processes left behind on the remote host"
echo "PASS: SIGINT -> exit 2, $total outcomes, nothing left on the remote host"

# A master killed outright (SIGKILL: no shutdown at all): the connection
# drops, sshd closes the channel, the agent sees EOF and kills its tests.
HOME=$WORK/home DTEST_SSH_KNOWN_HOSTS=$WORK/h/known_hosts "$DTEST" -q \
  --tx "2*ssh=-i $WORK/h/id_ed25519 -p $port root@127.0.0.1" "$WORK/slow_test" > "$WORK/out" 2>&1 &
pid=$!
wait_running || fail "no test process ran remotely (second run)"
kill -KILL "$pid"
wait "$pid" 2>/dev/null || true
expect_nothing_left 200 "processes left behind on the remote host after the master was killed"
echo "PASS: SIGKILL of the master -> nothing left on the remote host"

# Both runs went through one warm connection; closing it leaves nothing.
[[ $(grep -c "Accepted publickey" "$WORK/h/sshd.log") -eq 1 ]] || fail "the second run did not reuse the warm connection"
[[ -n "$(holders)" ]] || fail "no warm-connection holder after the runs"
HOME=$WORK/home "$DTEST" __ssh-close > "$WORK/close" 2>&1 || fail "__ssh-close failed: $(cat "$WORK/close")"
for _ in $(seq 1 100); do [[ -z "$(holders)" ]] && break; sleep 0.05; done
[[ -z "$(holders)" ]] || fail "a holder is still running after __ssh-close"
echo "PASS: one warm connection for both runs, closed"
