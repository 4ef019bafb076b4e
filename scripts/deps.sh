#!/bin/sh
# deps.sh: installs what luapool needs to build and test, from Debian's
# packages, when something is missing. Safe to run again.
#   scripts/deps.sh           the build and the default suite
#   scripts/deps.sh --fuzz    also clang with libFuzzer (the fuzz harnesses)
#   scripts/deps.sh --broker-baselines
#                             also what the broker benchmarks' baselines run
#                             on: redis-server, Celery (into the system's
#                             python3) and BullMQ (npm, into
#                             scripts/bench/redis_baselines/node_modules)
set -e
need=""
command -v cc >/dev/null 2>&1 || need="$need gcc"
command -v cmake >/dev/null 2>&1 || need="$need cmake"
command -v make >/dev/null 2>&1 || need="$need make"
command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
command -v lua5.4 >/dev/null 2>&1 || need="$need lua5.4"
command -v busted >/dev/null 2>&1 || need="$need lua-busted"
command -v python3 >/dev/null 2>&1 || need="$need python3"
[ -x /usr/bin/time ] || need="$need time"
command -v luarocks >/dev/null 2>&1 || need="$need luarocks"
command -v valgrind >/dev/null 2>&1 || need="$need valgrind"
[ -f /usr/include/lua5.4/lua.h ] || need="$need liblua5.4-dev"
lua5.4 -e 'require "lpeg"' >/dev/null 2>&1 || need="$need lua-lpeg"
lua5.4 -e 'require "dkjson"' >/dev/null 2>&1 || need="$need lua-dkjson"
# The broker: a Redis 7 to test against (each test starts its own; the
# system's service is never used) and hiredis to talk to it.
command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
[ -f /usr/include/hiredis/hiredis.h ] || need="$need libhiredis-dev"
if [ "${1:-}" = "--fuzz" ]; then
  command -v clang >/dev/null 2>&1 || need="$need clang"
fi
if [ "${1:-}" = "--broker-baselines" ]; then
  command -v redis-server >/dev/null 2>&1 || need="$need redis-server"
  /usr/bin/python3 -c 'import celery' >/dev/null 2>&1 || need="$need python3-celery"
  /usr/bin/python3 -c 'import redis' >/dev/null 2>&1 || need="$need python3-redis"
  command -v node >/dev/null 2>&1 || need="$need nodejs"
  command -v npm >/dev/null 2>&1 || need="$need npm"
fi
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
updated=""
install() {
  [ -n "$updated" ] || $sudo apt-get update -qq
  updated=1
  echo "deps.sh: installing $*"
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $* >/dev/null
}
[ -z "$need" ] || install $need
if [ "${1:-}" = "--broker-baselines" ]; then
  baselines="$(dirname "$0")/bench/redis_baselines"
  [ -d "$baselines/node_modules/bullmq" ] || (cd "$baselines" && npm ci --no-audit --no-fund)
  exit 0
fi
[ "${1:-}" = "--fuzz" ] || exit 0

# libFuzzer's runtime comes with clang's compiler-rt package, which some
# Debian releases leave out of a --no-install-recommends install.
fuzz_links() {
  d=$(mktemp -d)
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' >"$d/f.c"
  clang -fsanitize=fuzzer "$d/f.c" -o "$d/f" >/dev/null 2>&1
  rc=$?
  rm -rf "$d"
  return $rc
}
fuzz_links && exit 0
major=$(clang -dumpversion | cut -d. -f1)
install "libclang-rt-$major-dev" || install "libclang-common-$major-dev"
fuzz_links || { echo "deps.sh: clang cannot link -fsanitize=fuzzer"; exit 1; }
