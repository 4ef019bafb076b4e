-- Independent CPU-bound tasks: K plain-Lua fib(N) calls, one task each.
local luapool = require "luapool"
local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
function work(n) return fib(n) end
function main(k, n)
  local fs = {}
  for i = 1, tonumber(k) do fs[i] = luapool.spawn(work, tonumber(n)) end
  local sum = 0
  for i = 1, #fs do sum = sum + fs[i]:get() end
  luapool.emit(sum)
end
