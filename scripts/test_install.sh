#!/bin/sh
# test_install.sh BUILD_DIR: installs luapool from BUILD_DIR into a temporary
# prefix, then builds examples/embed/host.c against it twice, with
# find_package(luapool) and with pkg-config, and runs both hosts.
set -eu
build=$(cd "$1" && pwd)
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
lib=$(dirname "$(find "$tmp/prefix" -name 'libluapool.so' | head -n 1)")
want="fig 310
pear 424"

cmake -S "$top/examples/embed" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
got=$(LD_LIBRARY_PATH="$lib" "$tmp/cm/host" "$top/examples/embed/tasks.lua" fig pear)
[ "$got" = "$want" ] || { echo "find_package host printed: $got"; exit 1; }

export PKG_CONFIG_PATH="$lib/pkgconfig"
# shellcheck disable=SC2046
cc -o "$tmp/host-pc" "$top/examples/embed/host.c" $(pkg-config --cflags --libs luapool)
got=$(LD_LIBRARY_PATH="$lib" "$tmp/host-pc" "$top/examples/embed/tasks.lua" fig pear)
[ "$got" = "$want" ] || { echo "pkg-config host printed: $got"; exit 1; }
echo "install: find_package and pkg-config hosts both work"
