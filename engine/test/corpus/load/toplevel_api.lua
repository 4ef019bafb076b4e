local luapool = require "luapool"
luapool.counter("c"):add(3)
luapool.channel("ch", 2):push({1, 2, {x = 3}})
print(pcall(luapool.spawn, "main"))
print(pcall(luapool.emit, 1))
print(pcall(luapool.sleep, 0))
print(pcall(luapool.channel("ch").pop, luapool.channel("ch")))
function main() end
