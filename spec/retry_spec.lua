-- Retries report each record once: a failed attempt's records, and those of
-- everything it spawned, are dropped in every mode and every order; a failure
-- that used up its retries says how many attempts it took. And `main` is the
-- run: --task-timeout and --retries apply to what it spawns, not to it.
local helpers = require "helpers"

local FLAKY = [[
local luapool = require "luapool"
function flaky(tag)
  local n = luapool.counter("attempts " .. tag):add(1)
  luapool.emit(tag .. " attempt " .. n)
  luapool.spawn(child, tag .. n):get()
  luapool.spawn(late, tag .. n)   -- still running when the attempt fails
  if n < 3 then error("fail " .. n) end
  return n
end
function child(s) luapool.emit("child of " .. s) end
function late(s) luapool.sleep(0.05); luapool.emit("late of " .. s) end
function nested(tag)               -- a retried task spawned inside a worker process
  luapool.emit("nested " .. tag)
  return luapool.spawn({retries = 2}, flaky, tag):get()
end
function always() luapool.emit("always"); error("boom") end
function main()
  luapool.emit("start")
  luapool.emit("got " .. luapool.spawn(flaky, "a"):get())
  luapool.emit("got " .. luapool.spawn(nested, "b"):get())
  local ok, err = pcall(function() return luapool.spawn(always):get() end)
  local head = tostring(err):match("^[^\n]*"):gsub("%(id %d+%)", "(id N)")
  luapool.emit((head:gsub(": [^:]*:%d+: ", ": ")))
end
]]

local EXPECTED = {
  "start",
  "a attempt 3", "child of a3", "late of a3", "got 3",
  "nested b", "b attempt 3", "child of b3", "late of b3", "got 3",
  "always",
  "task 'always' (id N) failed (after 3 attempts): boom",
}

local MODES = {
  { "--workers", "0" }, { "--workers", "1" }, { "--workers", "2" },
  { "--processes", "2" }, { "--processes", "2", "--threads", "2" },
}

describe("--retries", function()
  local path = helpers.write_script(FLAKY)
  for _, order in ipairs({ "tree", "priority", "completion" }) do
    for _, mode in ipairs(MODES) do
      local name = table.concat(mode, " ")
      it("reports each record once, " .. name .. ", --order " .. order, function()
        local flags = { "--retries", "2", "--order", order }
        for _, w in ipairs(mode) do flags[#flags + 1] = w end
        local res = helpers.run(path, {}, { flags = flags, timeout = 60 })
        assert.are.equal(0, res.code, helpers.describe(res))
        if order == "completion" then -- made concurrently: the same records, in some order
          assert.are.same(helpers.sorted(EXPECTED), helpers.sorted(res.lines))
        else
          assert.are.same(EXPECTED, res.lines)
        end
      end)
    end
  end
  teardown(function() os.remove(path) end)

  it("says how many attempts an unawaited failure took", function()
    for _, mode in ipairs({ { "--workers", "2" }, { "--processes", "2" } }) do
      local res = helpers.run([[
local luapool = require "luapool"
function always() error("boom") end
function main() luapool.spawn(always) end
]], {}, { flags = { "--retries", "2", mode[1], mode[2] } })
      assert.are.equal(1, res.code, helpers.describe(res))
      assert.truthy(res.err:find("task 'always' (id ", 1, true), res.err)
      assert.truthy(res.err:find(") failed (after 3 attempts): ", 1, true), res.err)
    end
  end)
end)

describe("main", function()
  -- Children of 0.2 s, awaited one after another: 1.6 s in all, under a
  -- limit of 1 s per task.
  local SCRIPT = [[
local luapool = require "luapool"
function child(i) luapool.sleep(0.2) return i end
function main()
  local s = 0
  for i = 1, 8 do s = s + luapool.spawn(child, i):get() end
  luapool.emit("sum " .. s)
  local ok = pcall(function() return luapool.spawn({timeout = 0.1}, child, 9):get() end)
  luapool.emit(ok and "no timeout" or "timed out")
end
]]
  for _, mode in ipairs({ { "--workers", "2" }, { "--processes", "2" } }) do
    it("is the run: --task-timeout does not apply to it, " .. table.concat(mode, " "), function()
      local res = helpers.run(SCRIPT, {}, { flags = { "--task-timeout", "1", mode[1], mode[2] } })
      assert.are.equal(0, res.code, helpers.describe(res))
      -- the spawn option still applies where given
      assert.are.same({ "sum 36", "timed out" }, res.lines)
    end)
  end
end)
