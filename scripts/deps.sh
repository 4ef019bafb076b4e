#!/bin/sh
# deps.sh: installs what luapool needs to build and test, from Debian's
# packages, when something is missing. Safe to run again.
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
[ -z "$need" ] && exit 0
echo "deps.sh: installing$need"
if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# shellcheck disable=SC2086
$sudo apt-get install -y -qq --no-install-recommends $need >/dev/null
