-- Collating results at each level of a task tree: shops report sales to
-- their city, cities to their region, regions to main. Every level spawns
-- its children, adds up what their futures return, and returns the sum.
--
--   luapool run examples/collate.lua --workers 4
local luapool = require "luapool"

function shop(region, city, n)
  return region * 100 + city * 10 + n        -- a shop's sales
end

function city(region, c)
  local fs = {}
  for n = 1, 5 do fs[n] = luapool.spawn(shop, region, c, n) end
  local sum = 0
  for _, f in ipairs(fs) do sum = sum + f:get() end
  return sum
end

function region(r)
  local fs = {}
  for c = 1, 3 do fs[c] = luapool.spawn(city, r, c) end
  local sum = 0
  for _, f in ipairs(fs) do sum = sum + f:get() end
  print(string.format("region %d: %d", r, sum))
  return sum
end

function main()
  local fs = {}
  for r = 1, 4 do fs[r] = luapool.spawn(region, r) end
  local total = 0
  for _, f in ipairs(fs) do total = total + f:get() end
  print("grand total: " .. total)
end
