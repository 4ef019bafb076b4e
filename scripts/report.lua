-- report.lua: how the report turns record values into text and JSON lines.
--
-- Compiled into the engine and run in the host's formatting state (report.c).
-- JSON comes from dkjson with the keys of every object sorted, so the same
-- value gives the same bytes in every run and every Lua state (Lua's string
-- hashing, and so the order of pairs(), differs from state to state). What
-- JSON cannot hold (a reference cycle, a function name) is written as a
-- string saying so, also the same every time.
local ok, json = pcall(require, "dkjson")
local type, tostring, pairs, sort, fmt = type, tostring, pairs, table.sort, string.format
local mtype = math.type

local rank = { number = 1, string = 2, boolean = 3 }

local function before(a, b)
  local ta, tb = type(a), type(b)
  if ta ~= tb then return (rank[ta] or 9) < (rank[tb] or 9) end
  if ta == "number" or ta == "string" then return a < b end
  if ta == "boolean" then return not a and b end
  return false
end

-- Gives every table reachable from v a __jsonorder with its keys sorted.
local function order(v, seen)
  if type(v) ~= "table" or seen[v] then return end
  seen[v] = true
  local keys = {}
  for k, x in pairs(v) do
    keys[#keys + 1] = k
    order(x, seen)
  end
  sort(keys, before)
  setmetatable(v, { __jsonorder = keys })
end

local state = { exception = ok and json.encodeexception or nil }

local function tojson(v)
  if not ok then return nil end
  order(v, {})
  local good, s = pcall(json.encode, v, state)
  return good and s or nil
end

local M = {}

-- The text line of a value: strings as they are, tables as JSON, the rest
-- as tostring gives them.
function M.text(v)
  if type(v) == "table" then return tojson(v) or "<a table JSON cannot hold>" end
  return tostring(v)
end

-- One record as a JSON object line.
function M.record(id, name, prio, value)
  local v = tojson(value) or tojson(M.text(value))
  local p = mtype(prio) == "float" and prio == prio // 1 and prio >= -2 ^ 53 and prio <= 2 ^ 53
      and fmt("%d", prio) or tojson(prio)
  return fmt('{"task":%d,"name":%s,"priority":%s,"value":%s}', id, tojson(name), p, v)
end

return M
