#!/bin/sh
# setup.sh: installs the dependencies, builds luapool into build/, and runs
# an example (the nested loop of 50 one-second tasks, about 3 s).
set -e
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$(nproc)"
echo "--- luapool run examples/nested_loops.lua"
./build/luapool run examples/nested_loops.lua
