-- Flat fan-out: main spawns N trivial tasks.
local luapool = require "luapool"
function noop() end
function main(n)
  for _ = 1, tonumber(n) do luapool.spawn(noop) end
end
