-- Fork-join fib: one child spawned per call with n >= 2, awaited with get().
local luapool = require "luapool"
function fib(n)
  if n < 2 then return n end
  local f = luapool.spawn(fib, n - 1)
  local b = fib(n - 2)
  return f:get() + b
end
-- With "one", the whole tree is one task spawned from main (in process mode,
-- a task of a worker process whose subtasks are shared with the others).
function main(n, one)
  if one == "one" then
    luapool.emit(luapool.spawn(fib, tonumber(n)):get())
  else
    luapool.emit(fib(tonumber(n)))
  end
end
