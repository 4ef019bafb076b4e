-- luapool.lua: the task-side module's Lua layer.
--
-- The C core (lib.c) gives the primitives: spawn, futures, wait, join,
-- sleep, yield, emit, counter, self, and a watcher that reports futures in
-- the order they finish. The collection helpers are built here on top of
-- them. This chunk is compiled into the engine and run once in every
-- worker state with the core table as its argument.
local core = ...

local spawn, wait = core.spawn, core.wait
local watch, call = core._watch, core._call
local select, type, error = select, type, error
local tunpack = table.unpack
local mtype = math.type

local M = {}
for k, v in pairs(core) do
  if k:sub(1, 1) ~= "_" then M[k] = v end
end

-- luapool.as_completed(futures): an iterator over the futures, in the
-- order they finish.
function M.as_completed(futures)
  if type(futures) ~= "table" then
    error("luapool.as_completed: a list of futures expected", 2)
  end
  local w = watch(futures)
  return function()
    local i = w:next()
    if i then return futures[i] end
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

local function check_map_args(what, fn, list, opts)
  if type(fn) ~= "string" and type(fn) ~= "function" then
    error(("luapool.%s: argument 1: task function expected, got %s"):format(what, type(fn)), 3)
  end
  if type(list) ~= "table" then
    error(("luapool.%s: argument 2: table expected, got %s"):format(what, type(list)), 3)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("luapool.%s: argument 3: options table expected, got %s"):format(what, type(opts)), 3)
  end
  opts = opts or {}
  local cs = opts.chunksize or 1
  if mtype(cs) ~= "integer" or cs < 1 then
    error(("luapool.%s: option 'chunksize' must be a positive integer"):format(what), 3)
  end
  local sopts = {}
  for k, v in pairs(opts) do
    if k ~= "chunksize" then sopts[k] = v end
  end
  return cs, sopts
end

-- Spawns one task per item, or per chunk of items (a chunk task returns
-- the list of its results). Returns the futures, the chunk size and the
-- number of items.
local function spawn_chunks(what, fn, list, opts, star)
  local cs, sopts = check_map_args(what, fn, list, opts)
  local n = #list
  local futures = {}
  for first = 1, n, cs do
    if star then
      for i = first, math.min(first + cs - 1, n) do
        local it = list[i]
        if type(it) ~= "table" then
          error(("luapool.%s: item %d: a list of arguments expected, got %s"):format(what, i, type(it)), 3)
        end
      end
    end
    if cs == 1 then
      local it = list[first]
      if star then
        futures[first] = spawn(sopts, fn, tunpack(it, 1, it.n or #it))
      else
        futures[first] = spawn(sopts, fn, it)
      end
    else
      futures[#futures + 1] = spawn(sopts, "luapool._chunk", fn, star,
                                    table.move(list, first, math.min(first + cs - 1, n), 1, {}))
    end
  end
  return futures, cs, n
end

local function map(what, fn, list, opts, star)
  local futures, cs, n = spawn_chunks(what, fn, list, opts, star)
  local out = {}
  if cs == 1 then
    for i = 1, n do out[i] = (futures[i]:get()) end
  else
    for c = 1, #futures do
      local r, base = futures[c]:get(), (c - 1) * cs
      for j = 1, math.min(cs, n - base) do out[base + j] = r[j] end
    end
  end
  return out
end

-- luapool.map(fn, list [, opts]): fn(item) for every item, results in list order.
function M.map(fn, list, opts) return map("map", fn, list, opts, false) end

-- luapool.starmap(fn, list_of_arg_lists [, opts]): fn(table.unpack(args)) for each.
function M.starmap(fn, list, opts) return map("starmap", fn, list, opts, true) end

-- luapool.imap(fn, list [, opts]): iterator over the results in list order,
-- each as soon as it and all before it are ready; yields (index, result).
function M.imap(fn, list, opts)
  local futures, cs, n = spawn_chunks("imap", fn, list, opts, false)
  local i, c, buf = 0, 0, nil
  return function()
    if i >= n then return nil end
    i = i + 1
    if cs == 1 then return i, (futures[i]:get()) end
    local off = (i - 1) % cs + 1
    if off == 1 then
      c = c + 1
      buf = futures[c]:get()
    end
    return i, buf[off]
  end
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
    if cs == 1 then return c, (futures[c]:get()) end
    buf = futures[c]:get()
    base = (c - 1) * cs
    off = 1
    pending = math.min(cs, n - base) - 1
    return base + 1, buf[1]
  end
end

-- luapool.wait(futures [, timeout]) and the rest come straight from C.
M.wait = wait

return M
