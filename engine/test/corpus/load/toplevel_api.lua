local luapool = require "luapool"
luapool.counter("c"):add(3)
luapool.channel("ch", 2):push({1, 2, {x = 3}})
assert(not pcall(luapool.spawn, "main"))
assert(not pcall(luapool.emit, 1))
assert(not pcall(luapool.sleep, 0))
local ok, v = pcall(luapool.channel("ch").pop, luapool.channel("ch"))
function main() return ok, v end
