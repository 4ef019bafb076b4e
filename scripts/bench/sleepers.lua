-- N tasks that each sleep S seconds: sleeping must not hold a worker.
local luapool = require "luapool"
function nap(s) luapool.sleep(s) end
function main(n, s)
  for _ = 1, tonumber(n) do luapool.spawn(nap, tonumber(s)) end
end
