-- The skynet benchmark: a 10-ary tree of tasks, each summing its children.
local luapool = require "luapool"
function skynet(num, size)
  if size == 1 then return num end
  local fs, sub = {}, size // 10
  for i = 0, 9 do fs[i + 1] = luapool.spawn(skynet, num + i * sub, sub) end
  local sum = 0
  for i = 1, 10 do sum = sum + fs[i]:get() end
  return sum
end
function main(n) luapool.emit(skynet(0, tonumber(n))) end
