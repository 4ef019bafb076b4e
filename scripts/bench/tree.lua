-- A tree of 1 + N + N*M tasks: main spawns N children, each child spawns M
-- leaves; every task awaits its children with get() and counts the tasks
-- of its subtree, so main emits how many ran (1,101 for 100 x 10).
local luapool = require "luapool"
function leaf() return 1 end
function child(m)
  local futures = {}
  for i = 1, m do futures[i] = luapool.spawn(leaf) end
  local count = 1
  for i = 1, m do count = count + futures[i]:get() end
  return count
end
function main(n, m)
  n, m = tonumber(n or 100), tonumber(m or 10)
  local futures = {}
  for i = 1, n do futures[i] = luapool.spawn(child, m) end
  local count = 1
  for i = 1, n do count = count + futures[i]:get() end
  luapool.emit(count)
end
