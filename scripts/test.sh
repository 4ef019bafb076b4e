#!/bin/sh
# test.sh: every test of luapool, on a fresh machine too: installs missing
# dependencies, builds with warnings as errors, runs the C tests and the
# busted specs through ctest, and ends with one line of counts that sums
# every part that ran.
#
#   scripts/test.sh               the default suite (about a minute)
#   scripts/test.sh --sanitize    also the whole suite under ASan+UBSan, the
#                                 thread tests under TSan, the specs under ASan
#                                 with the Lua collector always running
#                                 (LUAPOOL_GC_STRESS=1), and a short run of
#                                 every fuzz harness under libFuzzer (clang,
#                                 LUAPOOL_FUZZ_SECONDS each, default 15)
#   scripts/test.sh --stress      also the heavy tests (ctest label "stress":
#                                 a million suspended tasks, a chain a million
#                                 deep)
# Both flags may be given. With CI=true (as .ci/run runs it) the --sanitize
# parts run too. In the sanitized parts every sanitizer writes its reports
# into the build directory's sanitizer-reports/, and any report there fails
# the run, even from a process whose exit code a test did not look at.
set -u
cd "$(dirname "$0")/.."

sanitize=""
stress=""
for a in "$@"; do
  case $a in
    --sanitize) sanitize=1 ;;
    --stress) stress=1 ;;
    *) echo "usage: scripts/test.sh [--sanitize] [--stress]" >&2; exit 2 ;;
  esac
done
[ "${CI:-}" = true ] && sanitize=1

if [ -n "$sanitize" ]; then deps="--fuzz"; else deps=""; fi
sh scripts/deps.sh $deps || { echo "luapool tests: 0 passed, 1 failed (dependencies)"; exit 1; }

passed=0
failed=0
busted_ok=0
busted_bad=0
reports=0
start=$(date +%s)

# suite DIR LABEL CMAKE-ARGS...: builds into DIR and runs ctest there with
# $CTEST_ARGS; with $SANITIZED set, collects the sanitizers' reports.
suite() {
  dir=$1; label=$2; shift 2
  t0=$(date +%s)
  echo "=== $label"
  mkdir -p "$dir"
  if ! cmake -S . -B "$dir" -DLUAPOOL_WERROR=ON "$@" >"$dir/configure.log" 2>&1 ||
     ! cmake --build "$dir" -j "$(nproc)" >"$dir/build.log" 2>&1; then
    cat "$dir/configure.log" "$dir/build.log" 2>/dev/null | tail -40
    failed=$((failed + 1))
    return
  fi
  san="$PWD/$dir/sanitizer-reports"
  rm -rf "$san"
  if [ -n "${SANITIZED:-}" ]; then
    mkdir -p "$san"
    export ASAN_OPTIONS="log_path=$san/asan:detect_leaks=1"
    export UBSAN_OPTIONS="log_path=$san/ubsan:print_stacktrace=1"
    export TSAN_OPTIONS="log_path=$san/tsan:second_deadlock_stack=1"
  fi
  # shellcheck disable=SC2086
  ctest --test-dir "$dir" --output-on-failure $CTEST_ARGS 2>&1 | tee "$dir/ctest.log" | grep -vE '^ *(Start|Test command)'
  unset ASAN_OPTIONS UBSAN_OPTIONS TSAN_OPTIONS
  p=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2 \1/p' "$dir/ctest.log")
  if [ -z "$p" ]; then
    if grep -q "No tests were found" "$dir/ctest.log"; then p="0 0"; else failed=$((failed + 1)); return; fi
  fi
  set -- $p
  passed=$((passed + $1 - $2))
  failed=$((failed + $2))
  # Individual busted tests inside the spec files, for the closing line.
  log="$dir/Testing/Temporary/LastTest.log"
  if [ -f "$log" ]; then
    s=$(sed -n 's/^\([0-9]*\) success[es]* \/ \([0-9]*\) failures* \/ \([0-9]*\) errors*.*/\1 \2 \3/p' "$log" |
        awk '{ok += $1; bad += $2 + $3} END {print ok + 0, bad + 0}')
    set -- $s
    busted_ok=$((busted_ok + $1))
    busted_bad=$((busted_bad + $2))
  fi
  n=$(find "$san" -type f 2>/dev/null | wc -l)
  if [ "$n" -gt 0 ]; then
    echo "=== $label: $n sanitizer report(s) in $san:"
    for f in "$san"/*; do echo "--- $f"; head -40 "$f"; done
    reports=$((reports + n))
    failed=$((failed + 1))
  fi
  echo "=== $label: $(($(date +%s) - t0)) s"
}

REL=-DCMAKE_BUILD_TYPE=RelWithDebInfo
SAN=-DLUAPOOL_SANITIZE=address+undefined
SANITIZED=""
CTEST_ARGS="-LE stress"
suite build "default build" $REL
if [ -n "$stress" ]; then
  CTEST_ARGS="-L stress"
  suite build "default build, stress tests" $REL
fi
if [ -n "$sanitize" ]; then
  SANITIZED=1
  CTEST_ARGS="-E install -LE stress"
  # The default build runs the full 1,000 random argument vectors; under
  # ASan each start of the binary costs ~0.2 s, and 250 find the same kind
  # of memory error.
  export LUAPOOL_ARGV_CASES=250
  suite build-asan "ASan+UBSan build" $REL $SAN
  unset LUAPOOL_ARGV_CASES
  CTEST_ARGS="-L thread"
  suite build-tsan "TSan build, thread tests" $REL -DLUAPOOL_SANITIZE=thread
  # The specs once more with the collector running all the time: not the
  # ones that test scale, nor spec_process (whose unbounded-allocation case
  # fills a 64 MB state under a collector that never stops: minutes); under
  # a constant collection they are quadratic and say nothing more. Process
  # workers still run under GC pressure in the determinism matrix.
  CTEST_ARGS="-L spec -LE scale|stress -E ^spec_process$"
  export LUAPOOL_GC_STRESS=1
  suite build-asan "ASan build, specs under GC pressure" $REL $SAN
  unset LUAPOOL_GC_STRESS
  CTEST_ARGS="-L fuzz -j $(nproc)"
  suite build-fuzz "libFuzzer harnesses, ${LUAPOOL_FUZZ_SECONDS:-15} s each" $REL $SAN -DCMAKE_C_COMPILER=clang \
    -DLUAPOOL_FUZZ=ON -DLUAPOOL_FUZZ_SECONDS="${LUAPOOL_FUZZ_SECONDS:-15}"
fi

echo "luapool tests: $passed passed, $failed failed (ctest); busted: $busted_ok passed, $busted_bad failed; sanitizer reports: $reports; $(($(date +%s) - start)) s"
[ "$failed" -eq 0 ] && [ "$busted_bad" -eq 0 ]
