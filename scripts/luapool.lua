-- luapool.lua: the task-side module's Lua layer.
--
-- The C core (engine/lib/) gives the primitives: spawn, futures, wait, join,
-- sleep, yield, emit, counter, self, and a watcher that reports futures in
-- the order they finish. The collection helpers are built here on top of
-- them; map's collecting of results is scripts/map.lua (core._collect),
-- which the host module's pool:map runs too. This chunk is compiled into the engine and run once in every
-- worker state with the core table as its argument.
local core = ...

local spawn, wait = core.spawn, core.wait
local watch, call = core._watch, core._call
local spawn_list, drop, now = core._spawn_list, core._drop, core._now
local collect, get = core._collect, core._get
local select, type, pcall, error = select, type, pcall, error
local tunpack = table.unpack
local mtype = math.type

-- Misuse errors carry the file:line of the user's call, not this file's.
local function misuse(fmt, ...) core._error(fmt:format(...)) end

local M = {}
for k, v in pairs(core) do
  if k:sub(1, 1) ~= "_" then M[k] = v end
end

-- luapool.as_completed(futures [, timeout]): an iterator over the futures,
-- in the order they finish. The timeout (seconds) counts from this call for
-- the whole iteration: past it, the iterator raises an error saying how
-- many futures are not done (the tasks go on).
function M.as_completed(futures, timeout)
  if type(futures) ~= "table" then
    misuse("luapool.as_completed: argument 1: a list of futures expected, got %s", type(futures))
  end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout) then
    misuse("luapool.as_completed: argument 2: timeout (seconds) expected, got %s",
           timeout ~= timeout and "NaN" or type(timeout))
  end
  local w = watch(futures)
  local deadline, given = timeout and now() + timeout, 0
  return function()
    local i
    if deadline then
      local left = deadline - now()
      i = w:next(left > 0 and left or 0)
      if i == false then
        misuse("luapool.as_completed: timed out after %s s: %d of %d futures not done",
               timeout, #futures - given, #futures)
      end
    else
      i = w:next()
    end
    if i then
      given = given + 1
      return futures[i]
    end
  end
end

-- The task that runs one chunk of a map: applies fn to each item (or, for
-- starmap, to the items of each argument list) and returns the results.
function M._chunk(fname, star, items)
  local out = {}
  for i = 1, #items do
    if star then
      out[i] = (call(fname, tunpack(items[i], 1, items[i].n or #items[i])))
    else
      out[i] = (call(fname, items[i]))
    end
  end
  return out
end

local function check_map_args(what, fn, list, opts, star)
  if type(list) ~= "table" then
    misuse("luapool.%s: argument 2: table expected, got %s", what, type(list))
  end
  if opts ~= nil and type(opts) ~= "table" then
    misuse("luapool.%s: argument 3: options table expected, got %s", what, type(opts))
  end
  opts = opts or {}
  local cs = opts.chunksize or 1
  if mtype(cs) ~= "integer" or cs < 1 then
    misuse("luapool.%s: option 'chunksize' must be a positive integer", what)
  end
  local sopts = {}
  for k, v in pairs(opts) do
    if k ~= "chunksize" then sopts[k] = v end
  end
  local n = #list
  if star then
    for i = 1, n do
      local it = list[i]
      if type(it) ~= "table" then
        misuse("luapool.%s: item %d: a list of arguments expected, got %s", what, i, type(it))
      end
    end
  end
  return cs, sopts, n
end

-- Spawns one task per item, or per chunk of items (a chunk task returns
-- the list of its results), queued so that they start in list order.
-- Returns the futures, the chunk size and the number of items.
local function spawn_chunks(what, fn, list, opts, star)
  local cs, sopts, n = check_map_args(what, fn, list, opts, star)
  local futures, task = spawn_list("luapool." .. what, sopts, fn, list, n, star, cs)
  if futures then return futures, cs, n end
  -- A sequential run (--workers 0): each item runs at its spawn, as in a
  -- loop. _spawn_list has checked every argument already.
  futures = {}
  for first = 1, n, cs do
    if cs == 1 then
      local it = list[first]
      if star then
        futures[first] = spawn(sopts, fn, tunpack(it, 1, it.n or #it))
      else
        futures[first] = spawn(sopts, fn, it)
      end
    else
      futures[#futures + 1] = spawn(sopts, task, fn, star,
                                    table.move(list, first, math.min(first + cs - 1, n), 1, {}))
    end
  end
  return futures, cs, n
end

-- When an item fails, map raises its error; the items not yet finished are
-- cancelled and the failures of the others count as handled: the caller
-- has the error in hand. The collecting is shared with the host module's
-- pool:map (scripts/map.lua).
local function map(what, fn, list, opts, star)
  local futures, cs, n = spawn_chunks(what, fn, list, opts, star)
  local out = collect(futures, cs, n, get, drop)
  return out
end

-- An iterator's to-be-closed value: a loop left early (break, return, an
-- error) gives up the items it did not reach, as map does on an error.
local closer_mt = { __close = function(c) drop(c[1]) end }

-- The first result of f:get(), or the error raised after giving up the rest.
local function get_or_drop(f, futures)
  local ok, r = pcall(f.get, f)
  if not ok then
    drop(futures)
    error(r, 0)
  end
  return r
end

-- luapool.map(fn, list [, opts]): fn(item) for every item, results in list order.
-- (Not tail calls: a misuse error names the variable the caller passed,
-- which needs the caller's frame to know the call it made.)
function M.map(fn, list, opts)
  local out = map("map", fn, list, opts, false)
  return out
end

-- luapool.starmap(fn, list_of_arg_lists [, opts]): fn(table.unpack(args)) for each.
function M.starmap(fn, list, opts)
  local out = map("starmap", fn, list, opts, true)
  return out
end

-- luapool.imap(fn, list [, opts]): iterator over the results in list order,
-- each as soon as it and all before it are ready; yields (index, result).
function M.imap(fn, list, opts)
  local futures, cs, n = spawn_chunks("imap", fn, list, opts, false)
  local i, c, buf = 0, 0, nil
  return function()
    if i >= n then return nil end
    i = i + 1
    if cs == 1 then return i, get_or_drop(futures[i], futures) end
    local off = (i - 1) % cs + 1
    if off == 1 then
      c = c + 1
      buf = get_or_drop(futures[c], futures)
    end
    return i, buf[off]
  end, nil, nil, setmetatable({ futures }, closer_mt)
end

-- luapool.imap_unordered(fn, list [, opts]): iterator over (index, result)
-- in the order results are ready.
function M.imap_unordered(fn, list, opts)
  local futures, cs, n = spawn_chunks("imap_unordered", fn, list, opts, false)
  local w = watch(futures)
  local pending, buf, base, off = 0, nil, 0, 0
  return function()
    if pending > 0 then
      off = off + 1
      pending = pending - 1
      return base + off, buf[off]
    end
    local c = w:next()
    if not c then return nil end
    if cs == 1 then return c, get_or_drop(futures[c], futures) end
    buf = get_or_drop(futures[c], futures)
    base = (c - 1) * cs
    off = 1
    pending = math.min(cs, n - base) - 1
    return base + 1, buf[1]
  end, nil, nil, setmetatable({ futures }, closer_mt)
end

-- luapool.wait(futures [, timeout]) and the rest come straight from C.
M.wait = wait

return M
