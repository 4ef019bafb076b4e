-- The Lua host module of luapool (`local lp = require "luapool"` from a
-- plain lua5.4), built from this source tree by CMake:
--   luarocks --lua-version 5.4 make scripts/luapool-0.1.0-1.rockspec
-- from the repository top (add --tree DIR to install elsewhere).
rockspec_format = "3.0"
package = "luapool"
version = "0.1.0-1"
source = {
  url = "git+file:///luapool",
}
description = {
  summary = "Lua task scripts on a pool of worker threads, driven from Lua",
  detailed = [[
luapool runs Lua 5.4 task functions on a pool of worker threads, each with
its own Lua state; tasks spawn subtasks at any depth, and their records come
back in a defined order. This rock is the host-side module:
lp.open{workers =, script =} gives a pool with spawn, map, wait, records
and close.]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
}
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LUAPOOL_MODULE_ONLY = "ON",
    LUAPOOL_INSTALL_CMOD = "$(LIBDIR)",
  },
}
