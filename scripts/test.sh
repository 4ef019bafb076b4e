#!/bin/sh
# test.sh: every test of luapool, on a fresh machine too: installs missing
# dependencies, builds with warnings as errors, runs the C tests and the
# busted specs through ctest, and ends with one line of counts.
#
#   scripts/test.sh               the default suite (a few minutes)
#   scripts/test.sh --sanitize    also the whole suite under ASan+UBSan, the
#                                 thread tests under TSan, and the specs under
#                                 ASan with the Lua collector always running
#                                 (LUAPOOL_GC_STRESS=1) (much longer)
set -u
cd "$(dirname "$0")/.."
sh scripts/deps.sh || { echo "luapool tests: 0 passed, 1 failed (dependencies)"; exit 1; }

passed=0
failed=0
busted_ok=0
busted_bad=0

# suite DIR LABEL CMAKE-ARGS...: builds into DIR and runs ctest there.
suite() {
  dir=$1; label=$2; shift 2
  echo "=== $label"
  mkdir -p "$dir"
  if ! cmake -S . -B "$dir" -DLUAPOOL_WERROR=ON "$@" >"$dir/configure.log" 2>&1 ||
     ! cmake --build "$dir" -j "$(nproc)" >"$dir/build.log" 2>&1; then
    cat "$dir/configure.log" "$dir/build.log" 2>/dev/null | tail -40
    failed=$((failed + 1))
    return
  fi
  ctest --test-dir "$dir" --output-on-failure $CTEST_ARGS 2>&1 | tee "$dir/ctest.log" | grep -vE '^ *(Start|Test command)'
  p=$(sed -n 's/.*tests passed, \([0-9]*\) tests failed out of \([0-9]*\).*/\2 \1/p' "$dir/ctest.log")
  if [ -z "$p" ]; then failed=$((failed + 1)); return; fi
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
}

CTEST_ARGS=""
suite build "default build" -DCMAKE_BUILD_TYPE=RelWithDebInfo
if [ "${1:-}" = "--sanitize" ]; then
  CTEST_ARGS="-E install"
  suite build-asan "ASan+UBSan build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLUAPOOL_SANITIZE=address+undefined
  CTEST_ARGS="-L thread"
  suite build-tsan "TSan build, thread tests" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLUAPOOL_SANITIZE=thread
  # The specs once more with the collector running all the time.
  CTEST_ARGS="-L spec"
  export LUAPOOL_GC_STRESS=1
  suite build-asan "ASan build, specs under GC pressure" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLUAPOOL_SANITIZE=address+undefined
  unset LUAPOOL_GC_STRESS
fi

echo "luapool tests: $passed passed, $failed failed (ctest); busted: $busted_ok passed, $busted_bad failed"
[ "$failed" -eq 0 ] && [ "$busted_bad" -eq 0 ]
