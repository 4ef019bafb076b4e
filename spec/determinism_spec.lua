-- The determinism matrix: 20 seeded random trees, each run with every pool
-- shape (--workers 0, 1, 2, 4, 8, and --processes 1, 2, 4, 8 and
-- --processes 2 --threads 2 when the binary has process workers), must
-- print byte for byte the same tree-order output,
-- and that output must be the one a plain sequential Lua run of the same
-- functions gives (every spawn a direct call).
--
-- Each node of a tree takes its shape from its seed: how many children, how
-- it waits for them (not at all, get at once, get later, join, wait, or
-- get through pcall), whether it yields or sleeps between spawns, and what
-- it records (emit of strings, integers, floats, arrays; print with several
-- arguments; records with their own priorities), so the scheduling differs
-- from one pool shape to the next while the order may not.
local helpers = require "helpers"

local TREES = tonumber(os.getenv("LUAPOOL_MATRIX_TREES")) or 20
local SEED0 = tonumber(os.getenv("LUAPOOL_MATRIX_SEED")) or 20261122

-- Shared by the task script and the sequential reference. `lp` is the
-- module (the real one, or the reference's direct-call stand-in).
local body = [==[
local function rnd(s) return (s * 1103515245 + 12345) % 2147483648 end

function node(s, depth, path)
  s = rnd(s)
  local h = s >> 8 -- the generator's low bits repeat quickly
  local kids = depth >= 5 and 0 or depth < 2 and 2 + h % 3 or h % 4
  local how = (h // 4) % 6
  local r = h % 1000
  lp.emit(path .. " enter " .. r)
  if (h // 64) % 3 == 0 then print(path, "print", depth, r / 8) end
  local futures, sum = {}, r
  for i = 1, kids do
    local f = lp.spawn(node, rnd(s + i), depth + 1, path .. "." .. i)
    if how == 1 then sum = sum + f:get()
    elseif how == 2 or how == 4 or how == 5 then futures[#futures + 1] = f end
    if (h // 512) % 4 == 0 then lp.yield() end
    if (h // 2048) % 5 == 0 then lp.sleep(0.001) end
  end
  if how == 2 then
    for _, f in ipairs(futures) do sum = sum + f:get() end
  elseif how == 3 then
    lp.join()
  elseif how == 4 then
    lp.wait(futures)
    for _, f in ipairs(futures) do sum = sum + f:get() end
  elseif how == 5 then
    for _, f in ipairs(futures) do
      local ok, v = pcall(f.get, f)
      sum = sum + (ok and v or 0)
    end
  end
  if (h // 16) % 4 == 0 then lp.emit({ depth, r, { path } }) end
  if (h // 128) % 5 == 0 then lp.emit(r + 0.5) end
  lp.emit(path .. " exit " .. sum)
  return sum % 100003
end
]==]

local script = "local lp = require 'luapool'\n" .. body .. [==[
function main(seed)
  lp.emit("tree " .. seed)
  lp.emit(lp.spawn(node, tonumber(seed), 0, "r"):get())
end
]==]

-- The sequential reference: the same functions with spawn as a direct call.
-- Records are rendered as the CLI's --format text does for these values.
local function reference(seed)
  local out = {}
  -- Tables here are arrays of integers, strings and arrays: JSON.
  local function json(v)
    if type(v) == "table" then
      local parts = {}
      for i, x in ipairs(v) do parts[i] = json(x) end
      return "[" .. table.concat(parts, ",") .. "]"
    elseif type(v) == "string" then
      return '"' .. v .. '"'
    end
    return tostring(v)
  end
  local function record(v)
    out[#out + 1] = type(v) == "table" and json(v) or tostring(v)
  end
  local lp = {}
  local env = setmetatable({ lp = lp }, { __index = _G })
  env.print = function(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
    out[#out + 1] = table.concat(parts, "\t")
  end
  function lp.emit(v) record(v) end
  function lp.yield() end
  function lp.sleep() end
  function lp.join() end
  function lp.wait() return true end
  function lp.spawn(fn, ...)
    local results = table.pack(fn(...))
    return { get = function() return table.unpack(results, 1, results.n) end }
  end
  assert(load(body, "=reference", "t", env))()
  record("tree " .. seed)
  record(env.node(seed, 0, "r"))
  return table.concat(out, "\n") .. "\n"
end

-- The pool shapes: one flag list per column.
local function columns()
  local cols = {}
  for _, n in ipairs({ 0, 1, 2, 4, 8 }) do
    cols[#cols + 1] = { "--workers", tostring(n) }
  end
  local p = io.popen(helpers.quote(helpers.bin) .. " --help 2>&1")
  local help = p:read("a")
  p:close()
  if help:find("--processes", 1, true) then
    for _, n in ipairs({ 1, 2, 4, 8 }) do
      cols[#cols + 1] = { "--processes", tostring(n) }
    end
    cols[#cols + 1] = { "--processes", "2", "--threads", "2" }
  end
  return cols
end

describe("the determinism matrix", function()
  local cols = columns()
  local path = helpers.write_script(script)
  teardown(function() os.remove(path) end)

  if #cols == 5 then
    pending("process workers: this binary has no --processes, so only threads ran")
  end

  for t = 1, TREES do
    local seed = (SEED0 + t * 7919) % 2147483648
    it(("tree %d (seed %d) prints the sequential output under every pool shape"):format(t, seed), function()
      local want = reference(seed)
      assert.is_true(#helpers.split_lines(want) > 20, "the tree should have some size")
      for _, flags in ipairs(cols) do
        local r = helpers.run(path, { tostring(seed) }, { flags = flags })
        local shape = table.concat(flags, " ")
        assert.are.equal(0, r.code, shape .. ": " .. helpers.describe(r))
        assert.are.equal(want, r.out, shape .. ": output differs from the sequential run")
      end
    end)
  end
end)
