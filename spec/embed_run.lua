-- embed_run.lua CPATH: the Lua host module under load, without busted (so a
-- ThreadSanitizer build can run it in a plain lua5.4 with its runtime
-- preloaded): futures, map, records, as_completed, cancel and close racing
-- the workers. Exits 0, or raises.
package.cpath = arg[1] .. ";" .. package.cpath
local lp = require "luapool"

local source = [[
local luapool = require "luapool"
function leaf(i) luapool.emit(i) return i end
function node(n) local fs = {} for i = 1, n do fs[i] = luapool.spawn(leaf, i) end
  local s = 0 for _, f in ipairs(fs) do s = s + f:get() end return s end
function nap(s) luapool.sleep(s) end
]]

for round = 1, 3 do
  local pool <close> = assert(lp.open { workers = 2, source = source, pools = { side = "threads:2" },
                                        order = ({ "tree", "priority", "completion" })[round] })
  local futures = {}
  for i = 1, 50 do futures[i] = pool:spawn("node", 20) end
  local n = 0
  for _ in pool:records() do n = n + 1 end -- while the tasks run
  for i = 1, 50 do assert(futures[i]:get() == 210) end
  local list = {}
  for i = 1, 200 do list[i] = i end
  local got = pool:map("leaf", list)
  for i = 1, 200 do assert(got[i] == i) end
  assert(pool:wait())
  for _ in pool:records() do n = n + 1 end
  assert(n == 50 * 20 + 200, n)
  -- as_completed and cancel while the tasks finish, on another pool
  local fs = {}
  for i = 1, 40 do fs[i] = pool:spawn({ pool = "side", priority = i % 3 }, "node", 5) end
  local k = 0
  for f in lp.as_completed(fs, 60) do
    assert(f:get() == 15)
    k = k + 1
  end
  assert(k == 40, k)
  local c = pool:spawn({ pool = "side" }, "nap", 10)
  assert(c:cancel() and c:done())
  pool:spawn("nap", 10) -- cancelled by the close at the end of the round
  futures = nil
  collectgarbage()
end
print("embed_run: ok")
