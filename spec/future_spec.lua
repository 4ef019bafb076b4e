-- Futures: get, done, ok, cancel, id (SPEC §2, §6).
--
-- Assumptions where the SPEC is open (also listed in the spec report):
--  * ASSUMED: future:get(timeout) that runs out of time RAISES an error whose
--    text says "timeout" (or "timed out"). It does not return nil, "timeout":
--    that would be indistinguishable from a task returning those values. The
--    task is not cancelled by it; a later get() still returns its values.
--  * The error get re-raises converts with tostring to a text that holds the
--    task's name, its id (as a decimal number) and the original message.
--  * get() may be called more than once; it returns the same values each time.
--  * A failure that a caller awaited with get (even inside pcall) counts as
--    handled: it is not reported as an unawaited failure and the run exits 0.
--  * A cancelled task is not a failure of the run: exit code 0. get on it
--    raises an error whose text says "cancel"; done() is true, ok() false.
--  * cancel() on a finished future returns false and changes nothing.
--  * A future's id() is an integer equal to luapool.self().id inside the task.

local H = require "helpers"

local function run_ok(body, args, opts)
  local res = H.run(H.PRELUDE .. body, args, opts or { workers = 2 })
  assert.are.equal(0, res.code, H.describe(res))
  return res
end

describe("future", function()
  describe("get", function()
    it("returns every return value, nils included", function()
      local res = run_ok([[
function many() return 1, "two", nil, { 4 }, 5.5, false end
function main()
  local f = luapool.spawn(many)
  luapool.emit(dumpall(f:get()))
  luapool.emit(dumpall(f:get()))
end
]])
      local want = 'n=6 i:1 "two" nil #1{[i:1]=i:4} f:5.5 false'
      assert.are.same({ want, want }, res.lines)
    end)

    it("returns nothing for a task that returns nothing", function()
      local res = run_ok([[
function quiet() end
function main() luapool.emit(dumpall(luapool.spawn(quiet):get())) end
]])
      assert.are.same({ "n=0" }, res.lines)
    end)

    it("re-raises a task's error with its name, id and message", function()
      local res = run_ok([[
function boom(x) error("kaboom number " .. x) end
function main()
  local f = luapool.spawn(boom, 7)
  local ok, err = pcall(f.get, f)
  luapool.emit(tostring(ok))
  luapool.emit(tostring(f:id()))
  luapool.emit(oneline(err))
end
]])
      assert.are.equal("false", res.lines[1], H.describe(res))
      local id, err = res.lines[2], res.lines[3] or ""
      assert.truthy(H.contains(err, "kaboom number 7"), err)
      assert.truthy(H.contains(err, "boom"), err)
      assert.truthy(err:find("%f[%d]" .. id .. "%f[%D]"), "id " .. id .. " missing from: " .. err)
    end)

    it("carries the original message up through several levels", function()
      local res = run_ok([[
function leaf() error("deep trouble at the leaf") end
function middle() return luapool.spawn(leaf):get() end
function top() return luapool.spawn(middle):get() end
function main()
  local ok, err = pcall(function() return luapool.spawn(top):get() end)
  luapool.emit(tostring(ok) .. " " .. oneline(err))
end
]])
      assert.truthy(res.lines[1]:find("^false "), res.lines[1])
      assert.truthy(H.contains(res.lines[1], "deep trouble at the leaf"), res.lines[1])
    end)

    it("with a timeout on a slow task raises a timeout error, then still gets the value", function()
      -- ASSUMED (see top): a timed-out get raises; it does not return.
      local res = run_ok([[
function slow() luapool.sleep(1.5) return "finally" end
function main()
  local f = luapool.spawn(slow)
  local ok, err = pcall(f.get, f, 0.2)
  luapool.emit(tostring(ok))
  luapool.emit(oneline(err))
  luapool.emit(tostring(f:done()))
  luapool.emit(f:get())
end
]])
      assert.are.equal("false", res.lines[1], H.describe(res))
      assert.truthy(res.lines[2]:lower():find("timed? ?out"), res.lines[2])
      assert.are.equal("false", res.lines[3])
      assert.are.equal("finally", res.lines[4])
    end)

    it("with a timeout long enough returns the values", function()
      local res = run_ok([[
function quick(x) luapool.sleep(0.05) return x, x + 1 end
function main() luapool.emit(dumpall(luapool.spawn(quick, 1):get(30))) end
]])
      assert.are.same({ "n=2 i:1 i:2" }, res.lines)
    end)
  end)

  describe("done and ok", function()
    it("report an unfinished, a finished and a failed task", function()
      local res = run_ok([[
function slow() luapool.sleep(1) return 1 end
function fast() return 2 end
function bad() error("no good") end
function main()
  local s, f, b = luapool.spawn(slow), luapool.spawn(fast), luapool.spawn(bad)
  f:get()
  pcall(b.get, b)
  luapool.emit(string.format("slow %s %s", s:done(), s:ok()))
  luapool.emit(string.format("fast %s %s", f:done(), f:ok()))
  luapool.emit(string.format("bad %s %s", b:done(), b:ok()))
  s:get()
  luapool.emit(string.format("slow %s %s", s:done(), s:ok()))
end
]])
      assert.are.same({ "slow false false", "fast true true", "bad true false", "slow true true" },
        res.lines)
    end)
  end)

  describe("id", function()
    it("is an integer, distinct per task, equal to self().id in the task", function()
      local res = run_ok([[
function whoami() return luapool.self().id end
function main()
  local fs, seen, distinct = {}, {}, true
  for i = 1, 20 do fs[i] = luapool.spawn(whoami) end
  for i = 1, 20 do
    local id = fs[i]:id()
    if seen[id] then distinct = false end
    seen[id] = true
    luapool.emit(string.format("%s %s", math.type(id), tostring(id == fs[i]:get())))
  end
  luapool.emit("distinct " .. tostring(distinct))
  luapool.emit("not main " .. tostring(not seen[luapool.self().id]))
end
]])
      assert.are.equal(22, #res.lines, H.describe(res))
      for i = 1, 20 do assert.are.equal("integer true", res.lines[i]) end
      assert.are.equal("distinct true", res.lines[21])
      assert.are.equal("not main true", res.lines[22])
    end)
  end)

  describe("cancel", function()
    it("cancels a sleeping task; get then raises a cancellation error", function()
      local res = run_ok([[
function sleeper() luapool.sleep(5) luapool.counter("woke"):add(1) return "woke" end
function main()
  local f = luapool.spawn(sleeper)
  luapool.sleep(0.2)
  luapool.emit("cancel " .. tostring(f:cancel()))
  local ok, err = pcall(f.get, f)
  luapool.emit(tostring(ok))
  luapool.emit(oneline(err))
  luapool.emit(string.format("%s %s", f:done(), f:ok()))
end
]], nil, { workers = 2, timeout = 30 })
      assert.are.equal("cancel true", res.lines[1], H.describe(res))
      assert.are.equal("false", res.lines[2])
      assert.truthy(res.lines[3]:lower():find("cancel"), res.lines[3])
      assert.are.equal("true false", res.lines[4])
      -- the run did not wait for the 5 s sleep
      assert.is_true(res.elapsed < 4, H.describe(res))
    end)

    it("returns false for a finished task and leaves its values", function()
      local res = run_ok([[
function fast() return "kept" end
function main()
  local f = luapool.spawn(fast)
  f:get()
  luapool.emit("cancel " .. tostring(f:cancel()))
  luapool.emit(f:get())
  luapool.emit(tostring(f:ok()))
end
]])
      assert.are.same({ "cancel false", "kept", "true" }, res.lines)
    end)

    it("cancels the whole subtree of the task", function()
      local res = run_ok([[
function leaf() luapool.sleep(1.2) luapool.counter("leaves"):add(1) end
function branch()
  for i = 1, 3 do luapool.spawn(leaf) end
  luapool.sleep(1.2)
  luapool.counter("branches"):add(1)
end
function root()
  for i = 1, 3 do luapool.spawn(branch) end
  luapool.join()
  luapool.counter("roots"):add(1)
end
function main()
  local f = luapool.spawn(root)
  luapool.sleep(0.3)          -- by now every branch and leaf is asleep
  luapool.emit("cancel " .. tostring(f:cancel()))
  luapool.sleep(1.8)          -- well past the moment they would have woken
  for _, name in ipairs({ "roots", "branches", "leaves" }) do
    luapool.emit(name .. " " .. luapool.counter(name):get())
  end
end
]], nil, { workers = 2, timeout = 30 })
      assert.are.same({ "cancel true", "roots 0", "branches 0", "leaves 0" }, res.lines)
    end)
  end)

  it("an awaited failure does not fail the run", function()
    local res = H.run(H.PRELUDE .. [[
function bad() error("handled elsewhere") end
function main()
  local f = luapool.spawn(bad)
  luapool.emit(tostring((pcall(f.get, f))))
end
]], nil, { workers = 2 })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same({ "false" }, res.lines)
  end)
end)

describe("future:done after cancel", function()
  -- done() is true as soon as cancel() succeeds: for a task suspended in a
  -- sleep and for one that has not started (the only worker is busy).
  for _, mode in ipairs({ { "--workers", "1" }, { "--processes", "1" } }) do
    it(mode[1] .. " 1", function()
      local res = H.run(H.PRELUDE .. [[
function nap() luapool.sleep(30) end
function busy() local t = os.clock() while os.clock() - t < 0.2 do end end
function main(mode)
  local s = luapool.spawn(nap)
  luapool.sleep(0.1)                      -- nap is suspended now
  luapool.emit(tostring(s:cancel()) .. " " .. tostring(s:done()))
  local b, q = luapool.spawn(busy), luapool.spawn(busy)
  luapool.emit(tostring(q:cancel()) .. " " .. tostring(q:done()))
  luapool.emit(tostring(pcall(q.get, q)))
  luapool.emit(tostring(s:done()) .. " " .. tostring(s:ok()))
end
]], { mode[1]:sub(3) }, { flags = mode })
      assert.are.equal(0, res.code, H.describe(res))
      local want = { "true true", "true true", "false", "true false" }
      assert.are.same(want, res.lines)
    end)
  end
end)
