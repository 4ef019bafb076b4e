#!/bin/sh
# test_install.sh BUILD_DIR: installs luapool from BUILD_DIR into a temporary
# prefix, then builds examples/embed/host.c against it twice, with
# find_package(luapool) and with pkg-config, and runs both hosts; builds a
# host whose tasks run in worker processes both ways too; then requires the
# installed Lua module from lua5.4 and runs tasks in worker processes with it.
# Every host runs without LD_LIBRARY_PATH and without LUAPOOL_WORKER_EXE: an
# installed copy finds its library (rpath) and its worker binary (beside the
# library) by itself, and the worker processes must be the prefix's binary.
set -eu
build=$(cd "$1" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unset LD_LIBRARY_PATH LUAPOOL_WORKER_EXE
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
lib=$(dirname "$(find "$tmp/prefix" -name 'libluapool.so' | head -n 1)")
worker=$(realpath "$tmp/prefix/bin/luapool")
want="fig 310
pear 424
total 734"

cmake -S "$top/examples/embed" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
got=$("$tmp/cm/host" "$top/examples/embed/tasks.lua" fig pear)
[ "$got" = "$want" ] || { echo "find_package host printed: $got"; exit 1; }

export PKG_CONFIG_PATH="$lib/pkgconfig"
# shellcheck disable=SC2046
cc -o "$tmp/host-pc" "$top/examples/embed/host.c" $(pkg-config --cflags --libs luapool)
got=$("$tmp/host-pc" "$top/examples/embed/tasks.lua" fig pear)
[ "$got" = "$want" ] || { echo "pkg-config host printed: $got"; exit 1; }

# A host with 2 worker processes: a root task (on the engine's thread)
# spawns one task per process slot, and each returns the pid of the process
# it ran in; the host prints the program each of those processes runs.
mkdir "$tmp/proc"
cat >"$tmp/proc/host.c" <<'C'
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "luapool.h"

static const char tasks[] =
    "local luapool = require 'luapool'\n"
    "function pid() luapool.sleep(0.05) return luapool.self().pid end\n"
    "function probe() local a, b = luapool.spawn(pid), luapool.spawn(pid)\n"
    "  return a:get() .. ' ' .. b:get() end\n";

int main(void) {
  luapool_config cfg;
  luapool_config_init(&cfg);
  cfg.processes = 2;
  luapool *lp;
  luapool_future *f = NULL;
  if (luapool_open(&cfg, &lp) != 0) return 2;
  if (luapool_load_string(lp, tasks, strlen(tasks), "=tasks") != 0 ||
      luapool_submit_values(lp, "probe", NULL, &f) != 0 || luapool_future_wait(f, 60) != 0) {
    printf("error: %s %s\n", luapool_errmsg(lp), f ? luapool_future_text(f, NULL) : "");
    return 1;
  }
  const char *pids = luapool_future_text(f, NULL);
  long pid;
  int used;
  while (sscanf(pids, "%ld%n", &pid, &used) == 1) { /* still running: the pool is open */
    char link[64], exe[PATH_MAX];
    snprintf(link, sizeof link, "/proc/%ld/exe", pid);
    ssize_t n = readlink(link, exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    printf("%s\n", exe);
    pids += used;
  }
  luapool_future_free(f);
  luapool_close(lp);
  return 0;
}
C
cat >"$tmp/proc/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(proc_host LANGUAGES C)
find_package(luapool REQUIRED)
add_executable(host host.c)
target_link_libraries(host PRIVATE luapool::luapool)
CMAKE
cmake -S "$tmp/proc" -B "$tmp/proc/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/proc/cm" >/dev/null
# shellcheck disable=SC2046
cc -o "$tmp/proc/host-pc" "$tmp/proc/host.c" $(pkg-config --cflags --libs luapool)
want_procs="$worker
$worker"
for host in "$tmp/proc/cm/host" "$tmp/proc/host-pc"; do
  got=$("$host") || { echo "$host (worker processes) failed: $got"; exit 1; }
  [ "$got" = "$want_procs" ] || { echo "$host: worker processes ran: $got (want $worker)"; exit 1; }
done

# The Lua module, from the prefix's lib/lua/5.4: threads, then processes.
cmod=$(find "$tmp/prefix" -name 'luapool.so' -path '*lua/5.4*' | head -n 1)
[ -n "$cmod" ] || { echo "luapool.so is not installed under lua/5.4"; exit 1; }
got=$(cd "$top/examples/embed" && LUA_CPATH="$(dirname "$cmod")/?.so" lua5.4 -e '
  local lp = require "luapool"
  local pool <close> = assert(lp.open{workers = 2, source = "function twice(x) return 2 * x end"})
  print(table.concat(pool:map("twice", {1, 2, 3}), " "))')
[ "$got" = "2 4 6" ] || { echo "the installed Lua module printed: $got"; exit 1; }
got=$(cd "$tmp" && LUA_CPATH="$(dirname "$cmod")/?.so" lua5.4 -e '
  local lp = require "luapool"
  local pool <close> = assert(lp.open{processes = 2, source = [[
    local luapool = require "luapool"
    function pid(x) return luapool.self().pid end
    function probe() return luapool.spawn(pid):get() end]]})
  local pid = pool:spawn("probe"):get()
  print(io.popen("readlink /proc/" .. pid .. "/exe"):read("l"))') ||
  { echo "the installed Lua module with processes failed: $got"; exit 1; }
[ "$got" = "$worker" ] || { echo "the installed Lua module ran workers: $got (want $worker)"; exit 1; }
echo "install: find_package and pkg-config hosts, worker processes and the Lua module all work"
