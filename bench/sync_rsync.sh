#!/usr/bin/env bash
# Benchmark for the delta syncer (issue 4): `dtest sync` against
# `rsync -a --delete -e ssh`, side by side, to the same OpenSSH sshd on
# loopback, with the same key and known_hosts.
#
# usage (from the repository root):   bench/sync_rsync.sh [BUILD_DIR]
#   BUILD_DIR   dtest build directory (default: build) with src/dtest and
#               src/dtest-agent built.
# Environment: BENCH_RUNS (hyperfine runs for the quick cases, default 10),
#   BENCH_FILES (default 20000), BENCH_MB (tree size, default 200).
#
# (a) a tree of BENCH_FILES files in ~1,000 directories, ~BENCH_MB MB of
#     text-like data: first sync into an empty directory; re-sync with nothing
#     changed; re-sync after `touch`ing 10 files (a fresh touch before each run).
# (b) one 100 MB file (random bytes) with 1 KB changed in the middle (the
#     source toggles between two versions before each run, so every run
#     carries a real 1 KB change): time, and bytes on the wire both ways
#     (rsync --stats "Total bytes sent/received"; dtest sync's own count of
#     framed bytes out/in).
# dtest keeps its ssh connection warm between runs (DTEST_SSH_PERSIST, the
# default); rsync -e ssh opens a connection per run, as users run it. A third
# column runs rsync over an OpenSSH ControlMaster connection kept open for the
# whole benchmark, for the fairest comparison of the algorithms themselves.
set -euo pipefail
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=$(cd "${1:-$REPO_ROOT/build}" && pwd)
RUNS=${BENCH_RUNS:-10}
NFILES=${BENCH_FILES:-20000}
MB=${BENCH_MB:-200}
DTEST=$BUILD_DIR/src/dtest
PYTHON=/usr/bin/python3

bash "$REPO_ROOT/scripts/deps.sh" --bench
[[ -x $DTEST ]] || { echo "sync_rsync.sh: build dtest first ($DTEST)" >&2; exit 1; }

WORK=$BUILD_DIR/bench-sync
rm -rf "$WORK"
mkdir -p "$WORK/results"
SSHD_DIR=$WORK/sshd
export DTEST_CACHE_DIR=$WORK/cache
cleanup() {
  "$DTEST" disconnect >/dev/null 2>&1 || true
  ssh -F "$WORK/ssh_config" -O exit benchhost >/dev/null 2>&1 || true
  bash "$REPO_ROOT/tests/ssh/sshd_harness.sh" stop "$SSHD_DIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
bash "$REPO_ROOT/tests/ssh/sshd_harness.sh" start "$SSHD_DIR" >&2
PORT=$(cat "$SSHD_DIR/port")
cat > "$WORK/ssh_config" <<CFG
Host benchhost
  HostName 127.0.0.1
  Port $PORT
  User root
  IdentityFile $SSHD_DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSHD_DIR/known_hosts
  StrictHostKeyChecking yes
Host benchhost-cm
  HostName 127.0.0.1
  Port $PORT
  User root
  IdentityFile $SSHD_DIR/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $SSHD_DIR/known_hosts
  StrictHostKeyChecking yes
  ControlMaster auto
  ControlPath $WORK/cm-%C
  ControlPersist 600
CFG
RSYNC="rsync -a --delete -e 'ssh -F $WORK/ssh_config'"
DTX="ssh=-F $WORK/ssh_config benchhost"

# --- (a) the tree -------------------------------------------------------------
echo "generating $NFILES files, ~$MB MB ..." >&2
"$PYTHON" - "$WORK/tree/proj" "$NFILES" "$MB" <<'PY'
import os, random, sys, base64
root, n, mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(4)
per_dir = 20
avg = mb * 1024 * 1024 // n
blob = base64.b64encode(rng.randbytes(4 << 20)).decode()  # text-like, ~75% entropy
for i in range(n):
    d = os.path.join(root, f"d{i // per_dir // 50:02d}", f"s{i // per_dir:04d}")
    if i % per_dir == 0:
        os.makedirs(d, exist_ok=True)
    size = max(0, int(rng.expovariate(1 / avg)))
    off = rng.randrange(0, len(blob) - size) if size < len(blob) else 0
    with open(os.path.join(d, f"f{i:05d}.txt"), "w") as f:
        f.write(blob[off:off + size])
PY
du -sh "$WORK/tree/proj" >&2
# Files written in the last seconds are re-hashed by both tools' quick checks
# (dtest distrusts mtimes within 2 s of a scan); a real tree is older.
sleep 3
SRC=$WORK/tree/proj
RDEST=$WORK/rsync-dest       # rsync: $RDEST/proj
CDEST=$WORK/rsync-cm-dest    # rsync over ControlMaster
DDEST=$WORK/dtest-dest       # dtest: chdir=$DDEST, root lands in $DDEST/proj
ssh -F "$WORK/ssh_config" -fN benchhost-cm  # open the master connection

hyperfine --runs 3 --export-json "$WORK/results/first.json" \
  --prepare "rm -rf $RDEST $CDEST $DDEST; mkdir -p $RDEST $CDEST $DDEST" \
  -n "rsync" "$RSYNC $SRC benchhost:$RDEST/" \
  -n "rsync-cm" "rsync -a --delete -e 'ssh -F $WORK/ssh_config' $SRC benchhost-cm:$CDEST/" \
  -n "dtest" "$DTEST sync --tx '$DTX//chdir=$DDEST' $SRC" >&2

hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/results/nochange.json" \
  -n "rsync" "$RSYNC $SRC benchhost:$RDEST/" \
  -n "rsync-cm" "rsync -a --delete -e 'ssh -F $WORK/ssh_config' $SRC benchhost-cm:$CDEST/" \
  -n "dtest" "$DTEST sync --tx '$DTX//chdir=$DDEST' $SRC" >&2

TOUCH="find $SRC -name 'f0*7.txt' | head -10 | xargs touch"
hyperfine --warmup 1 --runs "$RUNS" --export-json "$WORK/results/touch10.json" --prepare "$TOUCH" \
  -n "rsync" "$RSYNC $SRC benchhost:$RDEST/" \
  -n "rsync-cm" "rsync -a --delete -e 'ssh -F $WORK/ssh_config' $SRC benchhost-cm:$CDEST/" \
  -n "dtest" "$DTEST sync --tx '$DTX//chdir=$DDEST' $SRC" >&2
diff -r "$SRC" "$DDEST/proj" >&2 && diff -r "$SRC" "$RDEST/proj" >&2 || { echo "trees differ!" >&2; exit 1; }

# --- (b) one 100 MB file, 1 KB changed in the middle -----------------------------
for t in r c d; do
  mkdir -p "$WORK/big-$t/big"
  head -c $((100 << 20)) /dev/urandom > "$WORK/big-$t/big/big.bin"
done
cp "$WORK/big-r/big/big.bin" "$WORK/big-c/big/big.bin"
cp "$WORK/big-r/big/big.bin" "$WORK/big-d/big/big.bin"
head -c 1024 /dev/urandom > "$WORK/patch-a"
head -c 1024 /dev/urandom > "$WORK/patch-b"
# toggle DIR: writes the other 1 KB patch at 50 MB.
cat > "$WORK/toggle.sh" <<'SH'
f=$1/big/big.bin; s=$1/state
if [ -e "$s" ]; then p=patch-a; rm -f "$s"; else p=patch-b; touch "$s"; fi
dd if="$(dirname "$1")/$p" of="$f" bs=1024 seek=51200 conv=notrunc status=none
SH
sleep 3
rsync -a --delete -e "ssh -F $WORK/ssh_config" "$WORK/big-r/big" "benchhost:$RDEST/"
rsync -a --delete -e "ssh -F $WORK/ssh_config" "$WORK/big-c/big" "benchhost-cm:$CDEST/"
"$DTEST" sync --tx "$DTX//chdir=$DDEST" "$WORK/big-d/big" >&2
hyperfine --runs "$RUNS" --export-json "$WORK/results/big.json" \
  -n "rsync" --prepare "bash $WORK/toggle.sh $WORK/big-r" "$RSYNC $WORK/big-r/big benchhost:$RDEST/" \
  -n "rsync-cm" --prepare "bash $WORK/toggle.sh $WORK/big-c" \
  "rsync -a --delete -e 'ssh -F $WORK/ssh_config' $WORK/big-c/big benchhost-cm:$CDEST/" \
  -n "dtest" --prepare "bash $WORK/toggle.sh $WORK/big-d" "$DTEST sync --tx '$DTX//chdir=$DDEST' $WORK/big-d/big" >&2
# Bytes on the wire for one more change each.
bash "$WORK/toggle.sh" "$WORK/big-r"
rsync -a --delete --stats -e "ssh -F $WORK/ssh_config" "$WORK/big-r/big" "benchhost:$RDEST/" > "$WORK/results/rsync-stats.txt"
bash "$WORK/toggle.sh" "$WORK/big-d"
"$DTEST" sync --tx "$DTX//chdir=$DDEST" "$WORK/big-d/big" > "$WORK/results/dtest-stats.txt"
cmp "$WORK/big-d/big/big.bin" "$DDEST/big/big.bin" && cmp "$WORK/big-r/big/big.bin" "$RDEST/big/big.bin"

"$PYTHON" - "$WORK/results" <<'PY'
import json, os, re, sys
res = sys.argv[1]
def means(name):
    with open(os.path.join(res, name + ".json")) as f:
        return {x["command"]: x["mean"] for x in json.load(f)["results"]}
print("| case | rsync -e ssh [s] | rsync, warm ControlMaster [s] | dtest sync [s] | rsync / dtest | rsync-cm / dtest |")
print("|---|---:|---:|---:|---:|---:|")
for name, label in (("first", "first sync"), ("nochange", "no-change re-sync"),
                    ("touch10", "re-sync after touching 10 files"), ("big", "100 MB file, 1 KB changed")):
    m = means(name)
    r, c, d = m["rsync"], m["rsync-cm"], m["dtest"]
    print(f"| {label} | {r:.3f} | {c:.3f} | {d:.3f} | {r / d:.1f}x | {c / d:.1f}x |")
rs = open(os.path.join(res, "rsync-stats.txt")).read()
sent = int(re.search(r"Total bytes sent: ([\d,]+)", rs).group(1).replace(",", ""))
recv = int(re.search(r"Total bytes received: ([\d,]+)", rs).group(1).replace(",", ""))
ds = open(os.path.join(res, "dtest-stats.txt")).read()
m = re.search(r"wire: (\d+) B out, (\d+) B in", ds)
dout, din = int(m.group(1)), int(m.group(2))
print()
print("| 100 MB file, 1 KB changed | sent [B] | received [B] | total [B] |")
print("|---|---:|---:|---:|")
print(f"| rsync | {sent} | {recv} | {sent + recv} |")
print(f"| dtest | {dout} | {din} | {dout + din} |")
print(f"\ndelta bytes dtest / rsync: {(dout + din) / (sent + recv):.2f}")
PY
