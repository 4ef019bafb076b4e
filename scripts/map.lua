-- map.lua: a map's results in list order, one implementation for both faces
-- of luapool: a task's luapool.map and starmap (scripts/luapool.lua, where a
-- get suspends the task) and the host module's pool:map (engine/api/
-- luamod.c, where a get blocks the host thread while records are
-- collected). Each face spawns the tasks its own way, then calls
--
--   collect(futures, cs, n, get, drop)
--
-- futures: one per chunk of cs items (the last chunk may hold fewer), n
-- items in all; a chunk's future (cs > 1) gives the list of its results.
-- get(future): its values, or raises its task's error.
-- drop(futures): gives up those not yet awaited; their failures count as
-- handled, since the caller has the error in hand. The task side cancels
-- those not finished; the host waits for every one to finish.
--
-- Returns the first result of every item, in list order. When an item
-- fails, raises its error (the first in list order) once drop has returned.
-- Compiled into the engine (scripts/embed.cmake) and loaded by
-- lp_lib_map_collect.
local pcall, error, min = pcall, error, math.min

local function gather(futures, cs, n, get)
  local out = {}
  if cs == 1 then
    for i = 1, n do out[i] = (get(futures[i])) end
  else
    for c = 1, #futures do
      local r, base = get(futures[c]), (c - 1) * cs
      for j = 1, min(cs, n - base) do out[base + j] = r[j] end
    end
  end
  return out
end

return function(futures, cs, n, get, drop)
  local ok, out = pcall(gather, futures, cs, n, get)
  if not ok then
    drop(futures)
    error(out, 0)
  end
  return out
end
