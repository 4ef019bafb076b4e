-- The Lua host module (engine/luamod.c, luapool.so) driven from the lua5.4
-- that runs busted: `require "luapool"` here is the host side, while the
-- task scripts' own `require "luapool"` gives them the task-side module.
local helpers = require "helpers"

local cpath = os.getenv("LUAPOOL_CPATH") or (helpers.root .. "/build/lua/?.so")
-- A sanitizer build whose runtimes could not be preloaded into lua5.4.
local sanitized = os.getenv("LUAPOOL_NO_MODULE") == "1"

local lp
if not sanitized then
  package.cpath = cpath .. ";" .. package.cpath
  lp = require "luapool"
end

local tmpdir = os.tmpname()
os.remove(tmpdir)
os.execute("mkdir -p " .. helpers.quote(tmpdir))

local function script(name, text)
  local path = tmpdir .. "/" .. name
  helpers.write_file(path, text)
  return path
end

local TASKS = script("tasks.lua", [[
local luapool = require "luapool"
function square(x) return x * x end
function echo(...) return ... end
function kinds(...)
  local r = {}
  for i = 1, select("#", ...) do local v = select(i, ...) r[i] = math.type(v) or type(v) end
  return table.concat(r, " ")
end
function cyclic(t) return t.self == t, t.a == t.b end
function boom(msg) error(msg or "boom") end
function nap(s) luapool.sleep(s) return s end
function late(i) luapool.sleep((5 - i) * 0.02) return i * 10 end
function leaf(i) luapool.emit(i) print("leaf", i) end
function branch(n)
  luapool.emit("branch " .. n)
  for i = 1, n do luapool.spawn(leaf, n * 10 + i) end
  luapool.emit("branch " .. n .. " end")
end
function tree() for n = 1, 3 do luapool.spawn(branch, n) end end
function ranked(p) luapool.emit({rank = p}, p) end
function fanout(n) local fs = {} for i = 1, n do fs[i] = luapool.spawn(square, i) end
  local s = 0 for _, f in ipairs(fs) do s = s + f:get() end return s end
function spin(s) local t = os.clock() + s while os.clock() < t do end return s end
function dozing(s) luapool.emit("asleep") luapool.sleep(s) return s end
function whereami() local me = luapool.self() return me.pool, me.priority end
function flaky(name, n) if luapool.counter(name):add() <= n then error("flaky") end return "ok" end
]])

-- Every record the pool has delivered so far, as {kind, text} pairs.
local function drain(pool)
  local out = {}
  for rec in pool:records() do out[#out + 1] = rec end
  return out
end

local function texts(recs)
  local out = {}
  for i, r in ipairs(recs) do out[i] = r.text end
  return out
end

-- The sequential order of tree()'s records.
local TREE = {}
for n = 1, 3 do
  TREE[#TREE + 1] = "branch " .. n
  for i = 1, n do
    TREE[#TREE + 1] = tostring(n * 10 + i)
    TREE[#TREE + 1] = "leaf\t" .. (n * 10 + i)
  end
  TREE[#TREE + 1] = "branch " .. n .. " end"
end

describe("the Lua host module", function()
  if sanitized then
    pending("luapool.so built with a sanitizer whose runtime cannot be preloaded into lua5.4")
    return
  end

  teardown(function() os.execute("rm -rf " .. helpers.quote(tmpdir)) end)

  for _, workers in ipairs({ 2, 0 }) do
    describe("with " .. workers .. " workers", function()
      local pool
      before_each(function() pool = assert(lp.open { workers = workers, script = TASKS }) end)
      after_each(function() pool:close() end)

      it("spawn(...):get() returns every value of the task", function()
        assert.are.equal(49, pool:spawn("square", 7):get())
        local a, b, c, d = pool:spawn("echo", 1, nil, "x", { k = { 1, 2 } }):get()
        assert.are.equal(1, a)
        assert.is_nil(b)
        assert.are.equal("x", c)
        assert.are.same({ k = { 1, 2 } }, d)
        assert.are.equal("integer float string boolean table nil",
          pool:spawn("kinds", 3, 3.0, "s", false, {}, nil):get())
      end)

      it("keeps shared tables and cycles in arguments", function()
        local t, s = {}, {}
        t.self, t.a, t.b = t, s, s
        local same, shared = pool:spawn("cyclic", t):get()
        assert.is_true(same)
        assert.is_true(shared)
      end)

      it("re-raises a task's error in get()", function()
        local f = pool:spawn("boom", "kaboom")
        local ok, err = pcall(f.get, f)
        assert.is_false(ok)
        assert.matches("task 'boom' %(id %d+%) failed: .*kaboom", err)
        assert.is_true(f:done())
        assert.is_false(f:ok())
        assert.is_true(pool:wait()) -- awaited: not reported again
        local g = pool:spawn("boom", "checked")
        while not g:done() do pool:wait(0.01) end
        assert.is_false(g:ok()) -- ok() handles the failure too
        local h = pool:spawn("square", 3)
        h:get()
        assert.is_true(h:ok())
        assert.is_true(pool:wait())
      end)

      it("refuses unknown task names and values that cannot be sent", function()
        assert.has_error(function() pool:spawn("nope") end,
          "pool:spawn: no task function named 'nope' in the script")
        local ok, err = pcall(pool.spawn, pool, "echo", 1, { cb = print })
        assert.is_false(ok)
        assert.matches("argument 3 %(at %.cb%): cannot send a function", err)
        assert.has_error(function() pool:spawn(42 < 1) end)
      end)

      it("map returns the results in list order", function()
        assert.are.same({ 10, 20, 30, 40 }, pool:map("late", { 1, 2, 3, 4 }))
        local list = {}
        for i = 1, 500 do list[i] = i end
        local squares = pool:map("square", list)
        assert.are.equal(500, #squares)
        for i = 1, 500 do assert.are.equal(i * i, squares[i]) end
        assert.are.same({}, pool:map("square", {}))
        local ok, err = pcall(pool.map, pool, "boom", { "first", "second" })
        assert.is_false(ok)
        assert.matches("first", err)
        assert.is_true(pool:wait()) -- the second failure was seen by map
      end)

      it("tasks spawned by a host task run on the pool", function()
        assert.are.equal(385, pool:spawn("fanout", 10):get())
      end)

      it("records() gives the records in tree order, with their fields", function()
        pool:spawn("tree")
        assert.is_true(pool:wait())
        local recs = drain(pool)
        assert.are.same(TREE, texts(recs))
        assert.are.equal("emit", recs[1].kind)
        assert.are.equal("branch 1", recs[1].value)
        assert.are.equal("branch", recs[1].name)
        assert.are.equal("print", recs[3].kind)
        assert.are.equal("leaf", recs[3].name)
        assert.are.equal(11, recs[2].value)
        assert.is_true(math.type(recs[2].task) == "integer")
        assert.are.equal(0, recs[1].priority)
        assert.are.same({}, drain(pool)) -- drained
      end)

      it("wait reports a failure that nobody awaited", function()
        pool:spawn("boom", "unseen")
        local ok, msg = pool:wait()
        assert.is_nil(ok)
        assert.matches("task 'boom' %(id %d+%) failed and nothing waited for it", msg)
        assert.matches("unseen", msg)
        assert.is_true(pool:wait())
      end)

      it("as_completed gives every future once, done", function()
        local fs = { pool:spawn("late", 1), pool:spawn("late", 4), pool:spawn("square", 3) }
        local got = {}
        for f in lp.as_completed(fs) do
          assert.is_true(f:done())
          got[#got + 1] = f:get()
        end
        table.sort(got)
        assert.are.same({ 9, 10, 40 }, got)
        for _ in lp.as_completed({}) do error("an empty list gives nothing") end
      end)

      it("stats counts the tasks run", function()
        pool:map("square", { 1, 2, 3 })
        local st = pool:stats()
        assert.is_true(st.tasks_run >= 3)
        assert.are.equal(0, st.tasks_failed)
      end)
    end)
  end

  describe("with worker threads", function()
    local pool
    before_each(function() pool = assert(lp.open { workers = 2, script = TASKS }) end)
    after_each(function() pool:close() end)

    it("get and wait take a timeout; cancel stops a task", function()
      local f = pool:spawn("nap", 5)
      assert.is_false(f:done())
      local ok, err = pcall(f.get, f, 0.01)
      assert.is_false(ok)
      assert.matches("timed out", err)
      local done, why = pool:wait(0.01)
      assert.is_false(done)
      assert.are.equal("timeout", why)
      assert.is_true(f:cancel())
      assert.has_error(function() f:get() end)
      assert.is_true(f:done())
      assert.is_false(f:cancel())
      assert.is_true(pool:wait())
      assert.is_true(math.type(f:id()) == "integer")
    end)

    it("cancel makes a future done at once, queued or suspended", function()
      local one <close> = assert(lp.open { workers = 1, script = TASKS })
      local busy = one:spawn("spin", 0.3)
      local queued = one:spawn("square", 4) -- behind busy on the only worker
      assert.is_true(queued:cancel())
      assert.is_true(queued:done())
      assert.is_false(busy:done())
      assert.is_false(queued:ok())
      assert.has_error(function() queued:get() end, "task 'square' (id " .. queued:id() .. ") was cancelled")
      assert.is_false(busy:done()) -- get did not wait for the worker
      assert.is_false(queued:cancel())
      assert.are.equal(0.3, busy:get())
      local sleeper = one:spawn("dozing", 30)
      while #drain(one) == 0 do one:wait(0.01) end -- it has emitted: it is asleep
      assert.is_false(sleeper:done())
      assert.is_true(sleeper:cancel())
      assert.is_true(sleeper:done())
      assert.has_error(function() sleeper:get() end, "task 'dozing' (id " .. sleeper:id() .. ") was cancelled")
      assert.is_true(one:wait())
    end)

    it("as_completed yields in finishing order and honours its timeout", function()
      local slow, quick = pool:spawn("nap", 0.6), pool:spawn("nap", 0.02)
      local order = {}
      for f in lp.as_completed({ slow, quick }) do order[#order + 1] = f:get() end
      assert.are.same({ 0.02, 0.6 }, order)
      local never = pool:spawn("nap", 30)
      local fs = { pool:spawn("nap", 0.02), never, pool:spawn("square", 5) }
      local seen = 0
      local ok, err = pcall(function()
        for f in lp.as_completed(fs, 0.5) do
          assert.is_true(f:done())
          seen = seen + 1
        end
      end)
      assert.is_false(ok)
      assert.are.equal(2, seen)
      assert.matches("embed_spec.lua:%d+: as_completed: timed out after 0.5 s: 1 of 3 futures not done$", err)
      assert.is_false(never:done())
      -- a timeout of 0 gives what is done already, then raises
      local it = lp.as_completed({ never }, 0)
      assert.has_error(it, "as_completed: timed out after 0 s: 1 of 1 futures not done")
      assert.is_true(never:cancel())
      assert.has_error(function() lp.as_completed(fs, -1) end,
        "lp.as_completed: argument 2: timeout (seconds >= 0) expected, got -1")
      assert.has_error(function() lp.as_completed("fs") end,
        "lp.as_completed: argument 1: list of futures expected, got string")
      assert.has_error(function() lp.as_completed({ never, 42 }) end,
        "lp.as_completed: item 2 of the list is not a future of pool:spawn (got number)")
      local other <close> = assert(lp.open { workers = 1, script = TASKS })
      assert.has_error(function() lp.as_completed({ never, other:spawn("square", 1) }) end,
        "lp.as_completed: the futures belong to different pools")
    end)

    it("honours the spawn options timeout, retries, priority and pool", function()
      local t0 = os.time()
      local f = pool:spawn({ timeout = 0.2 }, "nap", 5)
      local ok, err = pcall(f.get, f)
      assert.is_false(ok)
      assert.matches("task 'nap' %(id %d+%) failed: .*timed out after 0.2 s", err)
      assert.is_true(os.time() - t0 < 4) -- not the 5 s of its sleep
      assert.are.equal("ok", pool:spawn({ retries = 2 }, "flaky", "a", 2):get())
      ok, err = pcall(function() return pool:spawn({ retries = 1 }, "flaky", "b", 2):get() end)
      assert.is_false(ok)
      assert.matches("flaky", err)
      local where, prio = pool:spawn({ priority = 3 }, "whereami"):get()
      assert.are.equal("main", where)
      assert.are.equal(3, prio)
      assert.are.same({ 1, 4 }, pool:map("square", { 1, 2 }, { retries = 1, timeout = 10, priority = 2 }))
      assert.has_error(function() pool:spawn({ pool = "io" }, "whereami") end,
        "pool:spawn: no pool named 'io' (pools: main)")
      assert.is_true(pool:wait())
    end)

    it("names the call, the argument and what it wanted on misuse", function()
      assert.has_error(function() pool:spawn(print, 1) end,
        "pool:spawn: argument 1: task name (string) expected, got function (a host function " ..
        "cannot run in a worker: pass the name of a function of the script)")
      assert.has_error(function() pool:spawn({ priority = 1 }) end,
        "pool:spawn: argument 2: task name (string) expected, got no value")
      assert.has_error(function() pool:spawn(42) end,
        "pool:spawn: argument 1: task name (string) expected, got number")
      assert.has_error(function() pool.spawn("square", 2) end,
        "pool:spawn: called without a pool (write pool:spawn(...), with a colon); got string")
      assert.has_error(function() pool:spawn({ timout = 1 }, "square", 2) end,
        "pool:spawn: unknown option 'timout' (known: priority, pool, timeout, retries)")
      assert.has_error(function() pool:spawn({ timeout = "1" }, "square", 2) end,
        "pool:spawn: option 'timeout' must be a number, not string")
      assert.has_error(function() pool:spawn({ timeout = -1 }, "square", 2) end,
        "pool:spawn: option 'timeout' must not be negative")
      assert.has_error(function() pool:spawn({ retries = 1.5 }, "square", 2) end,
        "pool:spawn: option 'retries' must be a whole number >= 0")
      assert.has_error(function() pool:spawn({ pool = 1 }, "square", 2) end,
        "pool:spawn: option 'pool' must be the name of a pool, not number")
      assert.has_error(function() pool:map(print, { 1 }) end,
        "pool:map: argument 1: task name (string) expected, got function (a host function " ..
        "cannot run in a worker: pass the name of a function of the script)")
      assert.has_error(function() pool:map("square", nil) end,
        "pool:map: argument 2: list (table) expected, got nil")
      assert.has_error(function() pool:map("square", { 1 }, 5) end,
        "pool:map: argument 3: options (table) expected, got number")
      assert.has_error(function() pool:map("square", { 1 }, { chunksize = 2 }) end,
        "pool:map: unknown option 'chunksize' (known: priority, pool, timeout, retries)")
      assert.has_error(function() pool:wait("soon") end,
        "pool:wait: argument 1: timeout (seconds, a number) expected, got string")
      assert.has_error(function() pool.records() end,
        "pool:records: called without a pool (write pool:records(...), with a colon); got no value")
      local f = pool:spawn("square", 2)
      assert.has_error(function() f:get(-1) end, "future:get: argument 1: the timeout must be >= 0, got -1")
      assert.has_error(function() f.get() end,
        "future:get: called without a future (write future:get(...), with a colon); got no value")
      assert.has_error(function() f.done(pool) end,
        "future:done: called without a future (write future:done(...), with a colon); got userdata")
      assert.are.equal(4, f:get())
    end)

    it("close cancels what still runs; futures keep their outcome", function()
      local quick = pool:spawn("square", 9)
      assert.are.equal(81, quick:get())
      local slow = pool:spawn("nap", 30)
      pool:close()
      assert.are.equal(81, quick:get())
      assert.is_true(slow:done())
      assert.has_error(function() slow:get() end)
      pool:close() -- again: harmless
      assert.has_error(function() pool:spawn("square", 1) end, "luapool: the pool is closed")
      assert.has_error(function() pool:wait() end, "luapool: the pool is closed")
    end)
  end)

  describe("with worker processes", function()
    if not os.getenv("LUAPOOL_WORKER_EXE") then
      pending("LUAPOOL_WORKER_EXE names no luapool binary for the worker processes")
      return
    end

    it("runs the same tasks, records and failures", function()
      local pool <close> = assert(lp.open { processes = 2, threads = 2, script = TASKS })
      assert.are.equal(49, pool:spawn("square", 7):get())
      assert.are.equal(385, pool:spawn("fanout", 10):get())
      assert.are.same({ 10, 20, 30, 40 }, pool:map("late", { 1, 2, 3, 4 }))
      pool:spawn("tree")
      assert.is_true(pool:wait())
      assert.are.same(TREE, texts(drain(pool)))
      local f = pool:spawn("boom", "in a process")
      local ok, err = pcall(f.get, f)
      assert.is_false(ok)
      assert.matches("in a process", err)
    end)

    it("sends a host spawn to the pool it names, with its options", function()
      local pool <close> = assert(lp.open { processes = 1, script = TASKS, pools = { cpu = "processes:1" } })
      local where, prio = pool:spawn({ pool = "cpu", priority = 2 }, "whereami"):get()
      assert.are.equal("cpu", where)
      assert.are.equal(2, prio)
      assert.are.same({ 1, 4, 9 }, pool:map("square", { 1, 2, 3 }, { pool = "cpu" }))
      local f = pool:spawn({ pool = "cpu", timeout = 0.2 }, "nap", 5)
      local ok, err = pcall(f.get, f)
      assert.is_false(ok)
      assert.matches("timed out after 0.2 s", err)
      local sleeper = pool:spawn({ pool = "cpu" }, "dozing", 30)
      while #drain(pool) == 0 do pool:wait(0.01) end
      assert.is_true(sleeper:cancel())
      assert.is_true(sleeper:done())
      assert.is_true(pool:wait())
    end)
  end)

  it("makes the named pools of its pools option", function()
    local src = [[
      local luapool = require "luapool"
      function where() return luapool.self().pool end
      function via(name) return luapool.spawn({ pool = name }, where):get() end
    ]]
    local pool <close> = assert(lp.open { workers = 1, source = src, pools = { io = "threads:2" } })
    assert.are.equal("main", pool:spawn("where"):get())
    assert.are.equal("io", pool:spawn("via", "io"):get())
    assert.are.equal("io", pool:spawn({ pool = "io" }, "where"):get())
    assert.are.equal("main", pool:spawn({ pool = "main" }, "where"):get())
    assert.are.same({ "io", "io" }, pool:map("where", { 1, 2 }, { pool = "io" }))
    assert.has_error(function() pool:spawn({ pool = "cpu" }, "where") end,
      "pool:spawn: no pool named 'cpu' (pools: main, io)")
    assert.has_error(function() lp.open { workers = 1, source = src, pools = { io = "fibers:2" } } end)
    assert.has_error(function() lp.open { workers = 1, source = src, pools = { main = "threads:1" } } end)
  end)

  it("orders records by priority with order = 'priority'", function()
    local pool <close> = assert(lp.open { workers = 2, script = TASKS, order = "priority" })
    for _, p in ipairs({ 5, 1, 4, 2, 3 }) do pool:spawn("ranked", p) end
    assert.is_true(pool:wait())
    local got = {}
    for rec in pool:records() do got[#got + 1] = rec.value.rank end
    assert.are.same({ 1, 2, 3, 4, 5 }, got)
  end)

  it("a pool in a <close> variable closes at the end of its scope", function()
    local outer
    do
      local pool <close> = assert(lp.open { workers = 1, script = TASKS })
      outer = pool
      pool:spawn("tree")
    end
    assert.matches("closed", tostring(outer))
    -- close delivered what the cancelled run had made; the queue is still readable
    for rec in outer:records() do assert.is_string(rec.text) end
  end)

  it("a pool that is only collected closes too", function()
    local f
    do
      local pool = assert(lp.open { workers = 2, script = TASKS })
      f = pool:spawn("square", 12)
    end
    assert.are.equal(144, f:get()) -- the future keeps its pool alive
    f = nil
    collectgarbage()
    collectgarbage()
  end)

  it("loads tasks from a string, and reports a bad script", function()
    local pool <close> = assert(lp.open { workers = 1, source = "function twice(x) return 2 * x end" })
    assert.are.equal(42, pool:spawn("twice", 21):get())
    local bad = script("bad.lua", "function main(\n")
    local p, err = lp.open { workers = 1, script = bad }
    assert.is_nil(p)
    assert.matches("bad.lua:2:", err)
    p, err = lp.open { workers = 1, script = tmpdir .. "/missing.lua" }
    assert.is_nil(p)
    assert.matches("cannot open", err)
  end)

  it("refuses bad options", function()
    assert.has_error(function() lp.open() end)
    assert.has_error(function() lp.open { workers = 1 } end)
    assert.has_error(function() lp.open { workers = 1, script = TASKS, source = "x = 1" } end)
    assert.has_error(function() lp.open { workers = -1, script = TASKS } end)
    assert.has_error(function() lp.open { workers = "many", script = TASKS } end)
    assert.has_error(function() lp.open { workers = 1, script = TASKS, order = "random" } end)
    assert.has_error(function() lp.open { workers = 0 / 0, script = TASKS } end)
    assert.has_error(function() lp.open { workers = 1, script = TASKS, memory_limit = -1 } end)
    assert.has_error(function() lp.open { workers = 1, script = TASKS, task_timeout = -1 } end)
    assert.has_error(function() lp.open { workers = 1, script = TASKS, timout = 1 } end,
      "luapool.open: unknown option 'timout' (known: script, source, workers, processes, threads, " ..
      "pools, order, memory_limit, task_timeout, retries, hold, broker, lease)")
    assert.has_error(function() lp.open("tasks.lua") end,
      "luapool.open: argument 1: options table expected, got string")
  end)

  it("is documented in the README", function()
    local readme = helpers.read_file(helpers.root .. "/README.md")
    local section = readme:match("\n## Embedding\n(.-)\n## ") or ""
    local missing = {}
    for name in pairs(lp) do
      if type(lp[name]) == "function" and not section:find("lp." .. name, 1, true) then
        missing[#missing + 1] = "lp." .. name
      end
    end
    local reg = debug.getregistry()
    for mt, prefix in pairs({ ["luapool.host.pool"] = "pool:", ["luapool.host.future"] = "future:" }) do
      for name in pairs(reg[mt]) do
        if name:sub(1, 2) ~= "__" and not section:find(prefix .. name, 1, true) then
          missing[#missing + 1] = prefix .. name
        end
      end
    end
    table.sort(missing)
    assert.are.same({}, missing)
  end)
end)
