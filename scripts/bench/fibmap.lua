-- The pool API's map (seed 002) on many small CPU-bound calls: fib(n) for
-- N values of n cycling through 15..20, with an optional chunksize.
local luapool = require "luapool"
function fib(n)
  if n < 2 then return n end
  return fib(n - 1) + fib(n - 2)
end
function main(count, chunksize)
  local nums = {}
  for i = 1, tonumber(count) do nums[i] = 15 + i % 6 end
  local opts = tonumber(chunksize) and { chunksize = tonumber(chunksize) } or nil
  local sum = 0
  for _, v in ipairs(luapool.map(fib, nums, opts)) do sum = sum + v end
  luapool.emit(sum)
end
