-- The pool API on two CPU-bound functions, fib and ackermann: map (with and
-- without chunksize), starmap, imap, imap_unordered, and spawn + get,
-- including a fib that splits itself into subtasks.
--
--   luapool run examples/pool_api.lua --workers 4
local luapool = require "luapool"

function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end

function ackermann(m, n)
  if m == 0 then return n + 1 end
  if n == 0 then return ackermann(m - 1, 1) end
  return ackermann(m - 1, ackermann(m, n - 1))
end

-- fib as a tree of tasks: above the cutoff each call is two subtasks.
function tree_fib(n)
  if n < 18 then return fib(n) end
  local a, b = luapool.spawn(tree_fib, n - 1), luapool.spawn(tree_fib, n - 2)
  return a:get() + b:get()
end

local function range(a, b)
  local t = {}
  for i = a, b do t[#t + 1] = i end
  return t
end

function main()
  print("map fib(0..10): " .. table.concat(luapool.map(fib, range(0, 10)), " "))
  print("map fib(20..25), chunksize 2: " ..
        table.concat(luapool.map(fib, range(20, 25), { chunksize = 2 }), " "))

  local pairs_ = { { 0, 0 }, { 1, 1 }, { 2, 3 }, { 3, 3 }, { 3, 4 } }
  local values = luapool.starmap(ackermann, pairs_)
  local shown = {}
  for i, p in ipairs(pairs_) do shown[i] = string.format("A(%d,%d)=%d", p[1], p[2], values[i]) end
  print("starmap ackermann: " .. table.concat(shown, " "))

  -- the iterators yield (index in the list, result), as ipairs does
  local inputs = range(20, 25)
  for i, v in luapool.imap(fib, inputs) do
    print(string.format("imap fib(%d) = %d", inputs[i], v))
  end
  -- results in the order they are ready; the index says whose result it is
  for i, v in luapool.imap_unordered(fib, inputs) do
    print(string.format("imap_unordered fib(%d) = %d", inputs[i], v))
  end

  local f = luapool.spawn(ackermann, 2, 3)
  print("spawn ackermann(2,3) = " .. f:get())
  print("spawn tree_fib(25) = " .. luapool.spawn(tree_fib, 25):get())
end
