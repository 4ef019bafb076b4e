local luapool = require "luapool"
function leaf(i) luapool.sleep(0.1) return i * i end
function branch(n)
  local fs = {}
  for i = 1, n do fs[i] = luapool.spawn(leaf, i) end
  local sum = 0
  for _, f in ipairs(fs) do sum = sum + f:get() end
  return sum
end
function main(...) for n = 1, 3 do luapool.emit(luapool.spawn(branch, n):get()) end end
