-- Fork-join fib: one child spawned per call with n >= 2, awaited with get().
local luapool = require "luapool"
function fib(n)
  if n < 2 then return n end
  local f = luapool.spawn(fib, n - 1)
  local b = fib(n - 2)
  return f:get() + b
end
function main(n) luapool.emit(fib(tonumber(n))) end
