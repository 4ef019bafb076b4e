-- A tree of `n` tasks with waits at every level: each task sleeps a little,
-- emits its path, spawns its share of the tree and gets every child's
-- result. The total counts every task once.
local lp = require "luapool"

function node(path, budget, nap)
  lp.sleep(nap)
  lp.emit(path)
  if budget <= 1 then return 1 end
  local kids = budget - 1 < 4 and budget - 1 or 4
  local left, fs = budget - 1, {}
  for i = 1, kids do
    local share = i == kids and left or left // (kids - i + 1)
    left = left - share
    fs[i] = lp.spawn(node, path .. "." .. i, share, nap)
  end
  local n = 1
  for i = 1, kids do n = n + fs[i]:get() end
  return n
end

function main(n, nap)
  print("tasks " .. lp.spawn(node, "r", tonumber(n) or 1000, tonumber(nap) or 0.001):get())
end
