#!/usr/bin/env bash
# Builds the libFuzzer targets (libFuzzer + ASan + UBSan) and runs them:
#   frame  the wire protocol: FrameDecoder + decode_message (frame_fuzz.cc)
#   delta  the delta syncer: decode_signature + DeltaApplier (delta_fuzz.cc)
#   manifest  the syncer's manifests, sync_data records, sync_sigs lists
#          (manifest_fuzz.cc)
#   report the command suites' JUnit XML and TAP readers (report_fuzz.cc)
#   tests/fuzz/build.sh [SECONDS]      default 60, for each target
# Env: FUZZ_OUT      build/run directory (default: build-fuzz/ in the repo)
#      FUZZ_TARGETS  which targets to build and run (default: "frame delta")
#      CXX           clang++ with libFuzzer (default: clang++)
#      SKIP_KNOWN=1  steer around the already-reported bugs (see frame_fuzz.cc)
#      FUZZ_ARGS     extra libFuzzer flags (e.g. "-jobs=4 -workers=4")
# The frame target keeps its corpus in corpus/ and seeds/, the delta target in
# delta-corpus/ and delta-seeds/; crashes land in artifacts/ (delta-crash-...
# for the delta target).
set -euo pipefail

seconds="${1:-60}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${FUZZ_OUT:-$repo/build-fuzz}"
cxx="${CXX:-clang++}"
targets="${FUZZ_TARGETS:-frame delta manifest report}"
frame_src=(src/common/frame.cc src/common/message.cc)
delta_src=(sync/delta.cc)
manifest_src=(sync/tree.cc sync/ignore.cc sync/wire.cc)
report_src=(src/agent/report_parse.cc src/common/outcome.cc)

defs=()
if [[ "${SKIP_KNOWN:-0}" == 1 ]]; then defs+=(-DDTEST_FUZZ_SKIP_KNOWN_BUGS); fi

mkdir -p "$out/artifacts"
cd "$repo"

# Where each target keeps its corpus, seeds and crashes (frame: as it always did).
paths() {
  if [[ "$1" == frame ]]; then
    corpus="$out/corpus"; seeds="$out/seeds"; prefix="$out/artifacts/"
  else
    corpus="$out/$1-corpus"; seeds="$out/$1-seeds"; prefix="$out/artifacts/$1-"
  fi
}

for target in $targets; do
  case "$target" in
    frame) src=("${frame_src[@]}"); libs=(-lzstd) ;;
    delta) src=("${delta_src[@]}"); libs=() ;;
    manifest) src=("${manifest_src[@]}"); libs=() ;;
    report) src=("${report_src[@]}"); libs=(-lpugixml) ;;
    *) echo "unknown fuzz target: $target (frame, delta, manifest, report)" >&2; exit 2 ;;
  esac
  paths "$target"
  mkdir -p "$corpus" "$seeds"

  # Seed writer: plain build, no fuzzer runtime.
  "$cxx" -std=c++20 -O1 -g -I"$repo/src" -I"$repo" -DDTEST_FUZZ_SEED_MAIN \
    "tests/fuzz/${target}_fuzz.cc" "${src[@]}" "${libs[@]}" -o "$out/${target}_fuzz_seeds"
  "$out/${target}_fuzz_seeds" "$seeds"

  # The fuzzer itself.
  "$cxx" -std=c++20 -O1 -g -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$repo/src" -I"$repo" "${defs[@]}" \
    "tests/fuzz/${target}_fuzz.cc" "${src[@]}" "${libs[@]}" -o "$out/${target}_fuzz"
done

for target in $targets; do
  paths "$target"
  echo "== fuzzing $target for ${seconds}s (corpus: $corpus, crashes: ${prefix}crash-*)"
  # shellcheck disable=SC2086
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
  "$out/${target}_fuzz" -max_len=4096 -max_total_time="$seconds" -timeout=20 \
    -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$prefix" ${FUZZ_ARGS:-} \
    "$corpus" "$seeds"
done
