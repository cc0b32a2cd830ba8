#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ with clang, AddressSanitizer and
# UndefinedBehaviorSanitizer (build-fuzz/), then runs each for SECONDS_PER_TARGET seconds
# (default 60) on its seed corpus fuzz/corpus/<target>/, copied into build-fuzz/corpus/ so
# that what one run finds seeds the next. Exits non-zero when any target finds a crash; the
# input that crashed it is kept in build-fuzz/crashes/<target>/ (replay it by passing the
# file to the target's executable).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     targets: safetensors, task, ...
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
build=build-fuzz

# -O1 -g, as libFuzzer's documentation suggests: readable stacks, and a quicker build.
CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g" \
  -DAMALGAM_FUZZ=ON -DAMALGAM_BUILD_TESTS=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target amalgam_fuzzers

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for d in fuzz/corpus/*/; do targets+=("$(basename "$d")"); done
fi

# The targets write their inputs under TMPDIR; a crashing run cannot clean up after itself.
export TMPDIR="$PWD/$build/tmp"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export LSAN_OPTIONS=suppressions="$PWD/scripts/lsan.supp"
# One thread per target: the inputs are small, and threads only add noise to coverage.
export OMP_NUM_THREADS=1

failed=()
printf "%-18s %8s %12s %8s\n" target seconds execs corpus
for t in "${targets[@]}"; do
  rm -rf "$TMPDIR" && mkdir -p "$TMPDIR" "$build/corpus/$t" "$build/crashes/$t"
  cp -n fuzz/corpus/"$t"/* "$build/corpus/$t/"
  log="$build/fuzz_$t.log"
  dict=()
  [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
  status=0
  "$build/fuzz_$t" "$build/corpus/$t" "${dict[@]}" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$build/crashes/$t/" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  files=$(find "$build/corpus/$t" -type f | wc -l)
  printf "%-18s %8s %12s %8s\n" "$t" "$seconds" "${execs:-?}" "$files"
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz_$t found a crash (exit $status); the log ends:" >&2
    tail -n 40 "$log" >&2
  fi
done
rm -rf "$TMPDIR"

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing failed: ${failed[*]} (inputs in $build/crashes/)" >&2
  exit 1
fi
