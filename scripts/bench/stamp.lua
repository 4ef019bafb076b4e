-- Tasks for scripts/bench/broker_host.c, a host that submits them through
-- a broker. started() returns when its body began, on CLOCK_MONOTONIC: the
-- clock the host reads before it submits (same machine). The task API has
-- no clock of its own, so this borrows the engine's (core._now), which the
-- module's Lua layer keeps as an upvalue of its functions.
local luapool = require "luapool"

local function engine_clock()
  for _, f in pairs(luapool) do
    if type(f) == "function" then
      for i = 1, 255 do
        local name, value = debug.getupvalue(f, i)
        if not name then break end
        if name == "now" and type(value) == "function" then return value end
      end
    end
  end
  error("stamp.lua: the engine's clock is not found in the luapool module")
end
local now = engine_clock()

function started() return now() end
function noop() end
