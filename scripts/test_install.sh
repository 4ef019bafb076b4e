#!/bin/sh
# test_install.sh BUILD_DIR: installs luapool from BUILD_DIR into a temporary
# prefix, then builds examples/embed/host.c against it twice, with
# find_package(luapool) and with pkg-config, and runs both hosts; then
# requires the installed Lua module from lua5.4.
set -eu
build=$(cd "$1" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
lib=$(dirname "$(find "$tmp/prefix" -name 'libluapool.so' | head -n 1)")
want="fig 310
pear 424
total 734"

cmake -S "$top/examples/embed" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
got=$(LD_LIBRARY_PATH="$lib" "$tmp/cm/host" "$top/examples/embed/tasks.lua" fig pear)
[ "$got" = "$want" ] || { echo "find_package host printed: $got"; exit 1; }

export PKG_CONFIG_PATH="$lib/pkgconfig"
# shellcheck disable=SC2046
cc -o "$tmp/host-pc" "$top/examples/embed/host.c" $(pkg-config --cflags --libs luapool)
got=$(LD_LIBRARY_PATH="$lib" "$tmp/host-pc" "$top/examples/embed/tasks.lua" fig pear)
[ "$got" = "$want" ] || { echo "pkg-config host printed: $got"; exit 1; }
# The Lua module, from the prefix's lib/lua/5.4.
cmod=$(find "$tmp/prefix" -name 'luapool.so' -path '*lua/5.4*' | head -n 1)
[ -n "$cmod" ] || { echo "luapool.so is not installed under lua/5.4"; exit 1; }
got=$(cd "$top/examples/embed" && LUA_CPATH="$(dirname "$cmod")/?.so" lua5.4 -e '
  local lp = require "luapool"
  local pool <close> = assert(lp.open{workers = 2, source = "function twice(x) return 2 * x end"})
  print(table.concat(pool:map("twice", {1, 2, 3}), " "))')
[ "$got" = "2 4 6" ] || { echo "the installed Lua module printed: $got"; exit 1; }
echo "install: find_package and pkg-config hosts and the Lua module all work"
