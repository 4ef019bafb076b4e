#!/bin/sh
# test_rock.sh: builds the rockspec with `luarocks make` into a temporary
# tree (from a copy of the sources, so the tree stays clean) and runs a
# lua5.4 script that requires the installed module and drives a pool.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
command -v luarocks >/dev/null || { echo "luarocks is missing (scripts/deps.sh installs it)"; exit 1; }
mkdir "$tmp/src"
cp -r "$top/engine" "$top/scripts" "$top/CMakeLists.txt" "$tmp/src/"
rockspec=$(cd "$tmp/src" && ls scripts/luapool-*.rockspec)
(cd "$tmp/src" && luarocks --lua-version 5.4 --tree "$tmp/tree" make "$rockspec") >"$tmp/make.log" 2>&1 ||
  { tail -30 "$tmp/make.log"; exit 1; }

cat >"$tmp/tasks.lua" <<'LUA'
local luapool = require "luapool"
function square(x) luapool.emit(x) return x * x end
LUA
cat >"$tmp/host.lua" <<'LUA'
local lp = require "luapool"
assert(package.searchpath("luapool", package.cpath):find(arg[2], 1, true),
       "the module comes from the rock tree")
local pool <close> = assert(lp.open{workers = 2, script = arg[1], order = "tree"})
print(table.concat(pool:map("square", {1, 2, 3, 4}), " "))
assert(pool:wait())
local seen = {}
for rec in pool:records() do seen[#seen + 1] = rec.text end
print(table.concat(seen, " "))
LUA
eval "$(luarocks --lua-version 5.4 --tree "$tmp/tree" path)"
got=$(lua5.4 "$tmp/host.lua" "$tmp/tasks.lua" "$tmp/tree")
want="1 4 9 16
1 2 3 4"
[ "$got" = "$want" ] || { echo "the rock's module printed: $got"; exit 1; }
echo "rock: luarocks make and require \"luapool\" work"
