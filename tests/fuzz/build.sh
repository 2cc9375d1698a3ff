#!/usr/bin/env bash
# Builds the wire-protocol fuzzer (libFuzzer + ASan + UBSan) and runs it.
#   tests/fuzz/build.sh [SECONDS]      default 60
# Env: FUZZ_OUT      build/run directory (default: build-fuzz/ in the repo)
#      CXX           clang++ with libFuzzer (default: clang++)
#      SKIP_KNOWN=1  steer around the already-reported bugs (see frame_fuzz.cc)
#      FUZZ_ARGS     extra libFuzzer flags (e.g. "-jobs=4 -workers=4")
set -euo pipefail

seconds="${1:-60}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
out="${FUZZ_OUT:-$repo/build-fuzz}"
cxx="${CXX:-clang++}"
src=(src/common/frame.cc src/common/message.cc)

defs=()
if [[ "${SKIP_KNOWN:-0}" == 1 ]]; then defs+=(-DDTEST_FUZZ_SKIP_KNOWN_BUGS); fi

mkdir -p "$out/corpus" "$out/seeds" "$out/artifacts"
cd "$repo"

# Seed writer: plain build, no fuzzer runtime.
"$cxx" -std=c++20 -O1 -g -I"$repo/src" -DDTEST_FUZZ_SEED_MAIN \
  tests/fuzz/frame_fuzz.cc "${src[@]}" -lzstd -o "$out/frame_fuzz_seeds"
"$out/frame_fuzz_seeds" "$out/seeds"

# The fuzzer itself.
"$cxx" -std=c++20 -O1 -g -fno-omit-frame-pointer \
  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -I"$repo/src" "${defs[@]}" \
  tests/fuzz/frame_fuzz.cc "${src[@]}" -lzstd -o "$out/frame_fuzz"

echo "== fuzzing for ${seconds}s (corpus: $out/corpus, crashes: $out/artifacts/)"
# shellcheck disable=SC2086
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
"$out/frame_fuzz" -max_len=4096 -max_total_time="$seconds" -timeout=20 \
  -rss_limit_mb=4096 -print_final_stats=1 \
  -artifact_prefix="$out/artifacts/" ${FUZZ_ARGS:-} \
  "$out/corpus" "$out/seeds"
