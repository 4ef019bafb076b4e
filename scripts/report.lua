-- report.lua: how the report turns record values into text and JSON lines.
--
-- Compiled into the engine and run in the host's formatting state (report.c).
-- JSON comes from dkjson with the keys of every object sorted, so the same
-- value gives the same bytes in every run and every Lua state (Lua's string
-- hashing, and so the order of pairs(), differs from state to state). What
-- JSON cannot hold (a reference cycle, a function name) is written as a
-- string saying so, also the same every time.
--
-- Lua strings are bytes; JSON text is Unicode. A byte that is not part of
-- valid UTF-8 (in a value, a key or a name) is written as the escape
-- \udcXX, XX its value: the "surrogateescape" of PEP 383. The line stays
-- valid JSON (the grammar takes any \u escape, and no valid UTF-8 encodes
-- U+DC80..U+DCFF, so the escape is unambiguous) and loses nothing: Python's
-- s.encode("utf-8", "surrogateescape") gives the bytes back. U+FFFD would
-- lose them, and \u00XX would read as a different, valid character.
local ok, json = pcall(require, "dkjson")
local type, tostring, pairs, sort, fmt = type, tostring, pairs, table.sort, string.format
local mtype, ulen, concat, byte = math.type, utf8.len, table.concat, string.byte

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

-- s with every byte that is not part of valid UTF-8 written as \udcXX.
-- dkjson copies string bytes as they are and writes only ASCII around
-- them, so such bytes in its output are always inside a string literal.
local function escape_bytes(s)
  local n, bad = ulen(s)
  if n then return s end
  local out, i = {}, 1
  repeat
    out[#out + 1] = s:sub(i, bad - 1)
    out[#out + 1] = fmt("\\udc%02x", byte(s, bad))
    i = bad + 1
    n, bad = ulen(s, i)
  until n
  out[#out + 1] = s:sub(i)
  return concat(out)
end

local function tojson(v)
  if not ok then return nil end
  order(v, {})
  local good, s = pcall(json.encode, v, state)
  return good and escape_bytes(s) or nil
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
