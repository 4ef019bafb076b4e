-- A run whose tasks all wait for what no task can give any more fails,
-- naming the waiting tasks and what each waits on, instead of hanging
-- (threads and processes; --workers 0 raises in the waiting task). Waits
-- that a timer ends, or a task still running in a worker process may end,
-- are not deadlocks.
local helpers = require "helpers"

local CASES = {
  {
    name = "a channel pop with no one to push",
    script = [[
local luapool = require "luapool"
function waiter() luapool.emit("before"); luapool.emit(luapool.channel("c"):pop()) end
function main() luapool.spawn(waiter) end
]],
    lines = { "before" },
    waits = { "task 'waiter' %(id %d+%) waits in pop%(%) at [^\n]*:2" },
  },
  {
    name = "a sequencer ticket that never comes",
    script = [[
local luapool = require "luapool"
function second()
  luapool.emit("before")
  luapool.sequencer("s"):run(2, function() luapool.emit("never") end)
end
function main() luapool.spawn(second) end
]],
    lines = { "before" },
    waits = { "task 'second' %(id %d+%) waits in run%(%) at [^\n]*:4" },
  },
  {
    name = "a get on a task that waits on its waiter",
    script = [[
local luapool = require "luapool"
function b() luapool.emit("b waits"); luapool.sequencer("s"):run(2, function() end) end
function a()
  luapool.spawn(b):get()
  luapool.sequencer("s"):run(1, function() end) -- what b waits for
end
function main() luapool.emit("main"); luapool.spawn(a):get() end
]],
    lines = { "main", "b waits" },
    waits = { "task 'b' %(id %d+%) waits in run%(%) at [^\n]*:2" },
    names = { "'a'", "'main'" },
  },
}

describe("a deadlock", function()
  for _, case in ipairs(CASES) do
    for _, workers in ipairs({ "2", "1" }) do
      it("is reported, not hung: " .. case.name .. ", --workers " .. workers, function()
        local res = helpers.run(case.script, {}, { workers = workers, timeout = 20 })
        assert.is_false(res.timed_out, "the run hung")
        assert.are.equal(1, res.code, helpers.describe(res))
        assert.are.same(case.lines, res.lines)
        assert.truthy(res.err:find("deadlock", 1, true), res.err)
        for _, w in ipairs(case.waits) do
          assert.truthy(res.err:find(w), "expected '" .. w .. "' in: " .. res.err)
        end
        for _, n in ipairs(case.names or {}) do
          assert.truthy(res.err:find(n, 1, true), res.err)
        end
      end)
    end
  end

  it("is not a wait that a timer ends, nor one another task ends later", function()
    local res = helpers.run([[
local luapool = require "luapool"
function late() luapool.sleep(0.3); luapool.channel("c"):push("pushed late") end
function waiter() luapool.emit(luapool.channel("c"):pop()) end
function timed() luapool.emit(tostring(luapool.channel("d"):pop(0.4))) end
function slow() luapool.sleep(0.5) return "slow done" end
function ticket() luapool.sleep(0.3); luapool.sequencer("s"):run(1, function() end) end
function second() luapool.sequencer("s"):run(2, function() luapool.emit("second ran") end) end
function main()
  luapool.spawn(waiter); luapool.spawn(late); luapool.spawn(timed)
  luapool.spawn(second); luapool.spawn(ticket)
  local ok = pcall(function() return luapool.spawn(slow):get(0.2) end)
  luapool.emit(ok and "no" or "get timed out")
end
]], {}, { workers = 1, timeout = 20 })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ "pushed late", "nil", "second ran", "get timed out" }, res.lines)
  end)

  -- With worker processes the engine's own tasks (main) can wait on a
  -- channel or a sequencer; tasks in processes cannot reach either, so the
  -- run is stuck once nothing is left with the processes -- not before.
  for _, flags in ipairs({ { "--processes", "2" }, { "--processes", "1", "--threads", "2" } }) do
    local how = table.concat(flags, " ")
    it("is reported, not hung, with worker processes: main's pop after its children ended, " .. how,
       function()
      local res = helpers.run([[
local luapool = require "luapool"
function nap(i) luapool.sleep(0.3) return i end
function main()
  local fs = {}
  for i = 1, 4 do fs[i] = luapool.spawn(nap, i) end
  luapool.emit("spawned")
  luapool.emit(tostring(luapool.channel("c"):pop()))
end
]], {}, { flags = flags, timeout = 20 })
      assert.is_false(res.timed_out, "the run hung")
      assert.are.equal(1, res.code, helpers.describe(res))
      assert.are.same({ "spawned" }, res.lines)
      assert.truthy(res.err:find("deadlock", 1, true), res.err)
      assert.truthy(res.err:find("task 'main' %(id 1%) waits in pop%(%) at [^\n]*:7"), res.err)
    end)

    it("is reported with worker processes: a sequencer ticket that never comes, " .. how, function()
      local res = helpers.run([[
local luapool = require "luapool"
function main() luapool.sequencer("s"):run(2, function() end) end
]], {}, { flags = flags, timeout = 20 })
      assert.is_false(res.timed_out, "the run hung")
      assert.are.equal(1, res.code, helpers.describe(res))
      assert.truthy(res.err:find("task 'main' %(id 1%) waits in run%(%)"), res.err)
    end)

    it("is not a wait that a task in a process ends later, " .. how, function()
      local res = helpers.run([[
local luapool = require "luapool"
function slow(i) luapool.sleep(0.4) return i * 10 end
function main()
  local f = luapool.spawn(slow, 4)
  luapool.emit(tostring(luapool.channel("c"):pop(0.2)))  -- times out: a timer
  luapool.emit(f:get())                                   -- waits on the process
end
]], {}, { flags = flags, timeout = 20 })
      assert.are.equal(0, res.code, helpers.describe(res))
      assert.are.same({ "nil", "40" }, res.lines)
    end)
  end
end)
