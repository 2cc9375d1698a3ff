#!/usr/bin/env bash
# Multi-host test: two "hosts", each a network namespace with its own veth
# link and its own OpenSSH sshd; one dtest run spread over both; host 1's link
# is cut mid-run. Every test must still end with exactly one outcome (host
# 1's unfinished tests run on host 2), and the report must name the lost
# gateway. Exits 77 (CTest skip) where network namespaces are not permitted.
#
# usage: netns_test.sh DTEST FIXTURES_DIR SSHD_HARNESS
set -euo pipefail
DTEST=$1
FIX=$2
HARNESS=$3

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; [[ -f ${WORK:-/nonexistent}/out ]] && cat "$WORK/out"; exit 1; }

command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
[[ -x /usr/sbin/sshd ]] || skip "sshd is not installed"

id=$$
NS=(dtest-$id-1 dtest-$id-2)
WORK=$(mktemp -d /tmp/dtest-netns.XXXXXX)
oct=$((id % 200 + 20))

export DTEST_CACHE_DIR=$WORK/cache  # warm connections of this test only
holders() { pgrep -f "__ssh-holder $WORK/cache/" || true; }
cleanup() {
  set +e
  # Warm connections first (while the hosts are there to say goodbye to).
  HOME=$WORK/home "$DTEST" __ssh-close > /dev/null 2>&1
  for _ in $(seq 1 100); do [[ -z "$(holders)" ]] && break; sleep 0.05; done
  for p in $(holders); do echo "cleanup: killing holder $p left running"; kill -9 "$p"; done
  for ns in "${NS[@]}"; do
    # Everything that ran in the namespace (sshd, sessions, agents, tests).
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
  for k in 1 2; do ip link del "dt${id}a$k" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

ip netns add "${NS[0]}" 2>/dev/null || skip "cannot create network namespaces here (ip netns add failed)"
ip netns add "${NS[1]}"

addr() { echo "10.250.$oct.$((4 * $1 + $2))"; }  # host k: .4k+1 root side, .4k+2 inside
: > "$WORK/known_hosts"
for k in 1 2; do
  ns=${NS[$((k - 1))]}
  a=dt${id}a$k
  b=dt${id}b$k
  ip link add "$a" type veth peer name "$b"
  ip link set "$b" netns "$ns"
  ip addr add "$(addr $k 1)/30" dev "$a"
  ip link set "$a" up
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" ip addr add "$(addr $k 2)/30" dev "$b"
  ip netns exec "$ns" ip link set "$b" up
  HARNESS_ADDR=$(addr $k 2) HARNESS_PORT=22 ip netns exec "$ns" bash "$HARNESS" start "$WORK/h$k" >/dev/null
  cat "$WORK/h$k/known_hosts" >> "$WORK/known_hosts"
done

listed() { "$1" --gtest_list_tests | grep -c '^  '; }
expected=$(( $(listed "$FIX/fx_sleep_test") + $(listed "$FIX/fx_pass_test") ))

mkdir -p "$WORK/home"
ssh_env=(env HOME="$WORK/home" DTEST_SSH_KNOWN_HOSTS="$WORK/known_hosts")
TX1="ssh=-i $WORK/h1/id_ed25519 root@$(addr 1 2)"
TX2="ssh=-i $WORK/h2/id_ed25519 root@$(addr 2 2)"

# --dist each: the whole suite on each host, one result per platform.
"${ssh_env[@]}" timeout 120 "$DTEST" --dist each --tx "$TX1" --tx "$TX2" "$FIX/fx_pass_test" > "$WORK/each" 2>&1 \
  || { cat "$WORK/each"; fail "--dist each over two hosts failed"; }
n_pass=$(listed "$FIX/fx_pass_test")
for gw in gw0 gw1; do
  grep -qE "^\[$gw\] [0-9]+ passed, [0-9]+ skipped" "$WORK/each" || { cat "$WORK/each"; fail "no per-platform line for $gw"; }
done
grep -qE "^=+ $((2 * n_pass - 8)) passed, 8 skipped in" "$WORK/each" || { cat "$WORK/each"; fail "--dist each did not run $n_pass tests on each host"; }
echo "dist each: $(tail -1 "$WORK/each")"

HOME=$WORK/home DTEST_SSH_KNOWN_HOSTS=$WORK/known_hosts \
  timeout 120 "$DTEST" -v \
  --tx "ssh=-i $WORK/h1/id_ed25519 root@$(addr 1 2)" \
  --tx "ssh=-i $WORK/h2/id_ed25519 root@$(addr 2 2)" \
  "$FIX/fx_sleep_test" "$FIX/fx_pass_test" > "$WORK/out" 2>&1 &
dtest_pid=$!

# Cut host 1's link as soon as it has reported a result.
for _ in $(seq 1 600); do
  grep -q '^\[gw0\] \[' "$WORK/out" && break
  kill -0 "$dtest_pid" 2>/dev/null || break
  sleep 0.05
done
grep -q '^\[gw0\] \[' "$WORK/out" || { wait "$dtest_pid" || true; fail "host 1 never reported a result"; }
ip link set "dt${id}a1" down
echo "cut host 1's link after: $(grep -c '^\[gw' "$WORK/out") results"

rc=0
wait "$dtest_pid" || rc=$?
[[ $rc -ne 124 ]] || fail "dtest did not finish within 120 s after the link was cut"
[[ $rc -eq 0 ]] || fail "dtest exited $rc, expected 0 (every test passes on host 2)"
grep -q '\[gw0\] gateway lost' "$WORK/out" || fail "the report does not name the lost gateway gw0"

# Exactly one outcome per collected test, none twice.
grep -E '^(\[gw[01]\] )?\[ *[0-9]+%\] [A-Z ]+ ' "$WORK/out" | sed -E 's/^(\[gw[01]\] )?\[ *[0-9]+%\] [A-Z ]+ ([^ ]+).*/\2/' | sort > "$WORK/ids"
got=$(wc -l < "$WORK/ids")
dups=$(uniq -d "$WORK/ids" | wc -l)
[[ $got -eq $expected ]] || fail "$got outcomes for $expected collected tests"
[[ $dups -eq 0 ]] || fail "$dups tests reported twice"
grep -q '^\[gw1\] \[' "$WORK/out" || fail "host 2 ran nothing"
tail -1 "$WORK/out"
# Both runs went over one warm connection per host.
for k in 1 2; do
  n=$(grep -c "Accepted publickey" "$WORK/h$k/sshd.log" || true)
  [[ $n -eq 1 ]] || fail "host $k: $n authentications for two runs (expected one warm connection)"
done
echo "PASS: $got outcomes for $expected tests; gw0 lost, its tests ran on gw1"
