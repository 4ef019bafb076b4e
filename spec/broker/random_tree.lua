-- A tree of about `n` tasks whose shape comes from a seed: each task prints
-- a line, spawns a pseudo-random number of children, waits for some of them
-- (get) and leaves the rest to completion counting. Its output is the same
-- however the tasks are spread, in tree order.
local lp = require "luapool"

local function rand(seed) return (seed * 1103515245 + 12345) % 2147483648 end

function node(seed, depth, budget)
  lp.emit(string.format("node %d depth %d budget %d", seed, depth, budget))
  if budget <= 1 then return seed % 1000 end
  local kids = 1 + rand(seed) % 6
  if kids > budget - 1 then kids = budget - 1 end
  local left, futures, s = budget - 1, {}, seed
  for i = 1, kids do
    s = rand(s + i)
    local share = i == kids and left or math.max(1, left // (kids - i + 1))
    left = left - share
    futures[i] = lp.spawn(node, s, depth + 1, share)
  end
  local sum = 0
  for i = 1, kids, 2 do sum = sum + futures[i]:get() end
  return sum % 1000003
end

function main(n, seed)
  local total = lp.spawn(node, tonumber(seed) or 7, 0, tonumber(n) or 1000):get()
  print("total " .. total)
end
