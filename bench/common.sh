# Sourced by the bench scripts (not run): messages, prerequisites, the dtest
# build, and the "first run" / "history" dtest commands for hyperfine.

log() { printf '==> %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

# bench_setup TOOL...: installs what the benchmarks need (scripts/deps.sh
# --bench), checks TOOLs are on PATH, makes BUILD_DIR absolute and sets
# DTEST; unless SKIP_DTEST=1, dtest and its agent must be built there.
bench_setup() {
  log "checking dependencies (scripts/deps.sh --bench)"
  bash "$REPO_ROOT/scripts/deps.sh" --bench
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || die "'$tool' not found in PATH"
  done
  [[ -d $BUILD_DIR ]] || die "build directory '$BUILD_DIR' does not exist (configure and build dtest first)"
  BUILD_DIR=$(cd "$BUILD_DIR" && pwd)
  DTEST=$BUILD_DIR/src/dtest
  if [[ ${SKIP_DTEST:-0} != 1 ]]; then
    [[ -x $DTEST ]] || die "$DTEST not found: build dtest first (cmake --build '$BUILD_DIR'), or set BENCH_SKIP_DTEST=1"
    [[ -x $BUILD_DIR/src/dtest-agent ]] || die "$BUILD_DIR/src/dtest-agent not found beside dtest"
  fi
}

q() { printf '%q' "$1"; }

# dtest_commands ARRAY NAME DIR: records two dtest runs (DTEST_ARGV, in DIR)
# and saves the .dtest/ and dtest cache ($DTEST_CACHE_DIR) they leave in
# $WORK/history-NAME; appends to the array named ARRAY the hyperfine
# arguments of two commands running DTEST_CMD: "dtest -n 2, first run"
# (.dtest/ and the cache removed before each run) and "dtest -n 2,
# history" (both restored before each run).
dtest_commands() {
  local -n out=$1
  local name=$2 dir=$3 hist=$WORK/history-$2
  log "$name: two recorded dtest runs for the history"
  (cd "$dir" && rm -rf .dtest "$DTEST_CACHE_DIR" && "${DTEST_ARGV[@]}" >/dev/null && "${DTEST_ARGV[@]}" >/dev/null)
  rm -rf "$hist" && mkdir -p "$hist" "$DTEST_CACHE_DIR"
  cp -r "$dir/.dtest" "$hist/dtest"
  cp -r "$DTEST_CACHE_DIR" "$hist/cache"
  local d c h
  d=$(q "$dir/.dtest") c=$(q "$DTEST_CACHE_DIR") h=$(q "$hist")
  out+=(
    -n "dtest -n 2, first run" --prepare "rm -rf $d $c" "$DTEST_CMD"
    -n "dtest -n 2, history" --prepare "rm -rf $d $c && cp -r $h/dtest $d && cp -r $h/cache $c" "$DTEST_CMD"
  )
}
