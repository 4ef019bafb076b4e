-- Trees of extreme shapes: one task with 100,000 children, a chain 10,000
-- tasks deep in which every task waits for its child, and a million tasks
-- alive at once. Counts are exact, records come out in tree order, nothing
-- overflows a C or a Lua stack, and every run's peak memory is written to
-- the test log ("edge: ..." lines on stderr).
--
-- LUAPOOL_EDGE_STRESS=1 (ctest label "stress", scripts/test.sh --stress)
-- adds a million tasks suspended at once and a chain 1,000,000 deep.
local helpers = require "helpers"

local STRESS = os.getenv("LUAPOOL_EDGE_STRESS") == "1"

-- Process workers, when the binary has them (its --help says so).
local PROCESSES
do
  local p = io.popen(helpers.quote(helpers.bin) .. " --help 2>&1")
  PROCESSES = p:read("a"):find("--processes", 1, true) ~= nil
  p:close()
end

-- Pool shapes: --workers N for each N given, and --processes 2.
local function shapes(...)
  local list = {}
  for _, n in ipairs({ ... }) do list[#list + 1] = { "--workers", tostring(n) } end
  if PROCESSES then list[#list + 1] = { "--processes", "2" } end
  return list
end

-- Runs the binary under /usr/bin/time and returns the result of
-- helpers.exec with `rss_kb` (peak resident set size) added.
local function measured(path, args, flags, timeout)
  local tf = helpers.tmpname(".time")
  local argv = { "-f", "%M", "-o", tf, helpers.bin, "run", path }
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  for _, f in ipairs(flags) do argv[#argv + 1] = f end
  local bin = helpers.bin
  helpers.bin = "/usr/bin/time"
  local ok, r = pcall(helpers.exec, argv, { timeout = timeout or 120 })
  helpers.bin = bin
  assert(ok, r)
  r.rss_kb = tonumber((helpers.read_file(tf) or ""):match("(%d+)%s*$"))
  os.remove(tf)
  return r
end

local function note(what, flags, r)
  io.stderr:write(("edge: %s, %s: %.2f s, peak RSS %s MB\n"):format(what, table.concat(flags, " "),
    r.elapsed, r.rss_kb and ("%.0f"):format(r.rss_kb / 1024) or "?"))
end

local function run(what, script, args, flags, timeout)
  local path = helpers.write_script(script)
  local r = measured(path, args, flags, timeout)
  os.remove(path)
  note(what, flags, r)
  assert.are.equal(0, r.code, what .. " " .. table.concat(flags, " ") .. ": " .. helpers.describe(r))
  return r
end

local wide = [[
local luapool = require "luapool"
function child(i)
  luapool.emit(i)
  return i
end
function main(n, how)
  n = tonumber(n)
  if how == "join" then
    for i = 1, n do luapool.spawn(child, i) end
    luapool.join()
    print("joined " .. n)
  else
    local fs = {}
    for i = 1, n do fs[i] = luapool.spawn(child, i) end
    local sum = 0
    for i = 1, n do sum = sum + fs[i]:get() end
    print("sum " .. sum)
  end
end
]]

local chain = [[
local luapool = require "luapool"
function link(n, how)
  luapool.emit("down " .. n)
  local r = 0
  if n > 0 then
    if how == "get" then
      r = luapool.spawn(link, n - 1, how):get()
    elseif how == "pcall" then
      local ok, v = pcall(function() return luapool.spawn(link, n - 1, how):get() end)
      assert(ok, v)
      r = v
    elseif how == "wait" then
      local f = luapool.spawn(link, n - 1, how)
      assert(luapool.wait({ f }))
      r = f:get()
    elseif how == "join" then
      luapool.spawn(link, n - 1, how)
      assert(luapool.join())
      r = n -- what the child returned
    end
  end
  luapool.emit("up " .. n)
  return r + 1
end
function main(n, how)
  print("depth " .. luapool.spawn(link, tonumber(n), how):get())
end
]]

local alive = [[
local luapool = require "luapool"
function queued()
  luapool.counter("ran"):add(1)
end
function gated()
  luapool.counter("waiting"):add(1)
  local v, why = luapool.channel("gate"):pop()
  assert(v == nil and why == "closed", why)
  luapool.counter("ran"):add(1)
end
function main(n, how)
  n = tonumber(n)
  local ran = luapool.counter("ran")
  if how == "queued" then
    -- One worker, and spawn does not run children: all n are queued at once.
    -- (A spawn past the bound of unstarted tasks holds its task back only
    -- where the task could yield: not inside a coroutine of its own.)
    coroutine.wrap(function()
      for _ = 1, n do luapool.spawn(queued) end
    end)()
    print("alive " .. n .. ", ran " .. ran:get())
  else
    -- Every child suspends on the gate; it opens when all n wait there.
    for _ = 1, n do luapool.spawn(gated) end
    local waiting = luapool.counter("waiting")
    while waiting:get() < n do luapool.sleep(0.01) end
    print("alive " .. waiting:get() .. ", ran " .. ran:get())
    luapool.channel("gate"):close()
  end
  luapool.join()
  print("ran " .. ran:get())
end
]]

describe("a task with 100,000 children", function()
  local N = 100000
  for _, how in ipairs({ "join", "get" }) do
    for _, shape in ipairs(shapes(0, 2)) do
      it(("is counted exactly and reported in order (%s, %s)"):format(how, table.concat(shape, " ")), function()
        local r = run("100,000 children (" .. how .. ")", wide, { N, how }, shape)
        assert.are.equal(N + 1, #r.lines)
        for i = 1, N do
          if r.lines[i] ~= tostring(i) then
            error(("line %d is %q, not %d"):format(i, r.lines[i], i))
          end
        end
        local want = how == "join" and "joined " .. N or "sum " .. N * (N + 1) // 2
        assert.are.equal(want, r.lines[N + 1])
      end)
    end
  end
end)

describe("a chain in which every task waits for its child", function()
  local function check(depth, how, shape)
    local r = run(("chain %d deep (%s)"):format(depth, how), chain, { depth, how }, shape, 300)
    assert.are.equal(2 * (depth + 1) + 1, #r.lines)
    for i = 0, depth do
      if r.lines[i + 1] ~= "down " .. depth - i or r.lines[2 * depth + 2 - i] ~= "up " .. depth - i then
        error(("records out of order at level %d"):format(i))
      end
    end
    assert.are.equal("depth " .. depth + 1, r.lines[#r.lines])
  end
  for _, how in ipairs({ "get", "pcall", "wait", "join" }) do
    for _, shape in ipairs(shapes(0, 1, 2)) do
      it(("10,000 deep ends with the exact depth (%s, %s)"):format(how, table.concat(shape, " ")), function()
        check(10000, how, shape)
      end)
    end
  end
  if STRESS then
    for _, w in ipairs({ 0, 2 }) do
      it(("1,000,000 deep ends with the exact depth (get, --workers %d)"):format(w), function()
        check(1000000, "get", { "--workers", tostring(w) })
      end)
    end
  end
end)

describe("a million tasks alive at once", function()
  if PROCESSES then
    -- One worker is what keeps a million queued at once; the suspended ones
    -- wait on a channel, which tasks inside worker processes cannot use.
    pending("tasks alive at once under --processes (channels are not shared with worker processes)")
  end
  it("a million queued children all run (--workers 1)", function()
    local r = run("1,000,000 queued at once", alive, { 1000000, "queued" }, { "--workers", 1 }, 300)
    assert.are.same({ "alive 1000000, ran 0", "ran 1000000" }, r.lines)
  end)
  it("100,000 children suspended at once all wake and finish (--workers 2)", function()
    local r = run("100,000 suspended at once", alive, { 100000, "gated" }, { "--workers", 2 }, 300)
    assert.are.same({ "alive 100000, ran 0", "ran 100000" }, r.lines)
  end)
  if STRESS then
    for _, w in ipairs({ 1, 2 }) do
      it(("a million children suspended at once all wake and finish (--workers %d)"):format(w), function()
        local r = run("1,000,000 suspended at once", alive, { 1000000, "gated" }, { "--workers", w }, 600)
        assert.are.same({ "alive 1000000, ran 0", "ran 1000000" }, r.lines)
      end)
    end
  end
end)
