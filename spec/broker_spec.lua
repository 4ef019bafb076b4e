-- Runs through a broker: the submitter and `luapool worker` processes on a
-- redis-server of the spec's own. Whatever runs where, the output is the
-- output of a sequential run (--workers 0), every record once.

local H = require "helpers"
local redis = require "support.redis"
local workers = require "support.workers"

local function example(name) return H.root .. "/examples/" .. name end
local function script(name) return H.root .. "/spec/broker/" .. name end

local function strip_pids(text) return (text:gsub("process %d+", "process P")) end

-- The random tree's size (smaller under ThreadSanitizer: thread_broker).
local TREE = tonumber(os.getenv("LUAPOOL_BROKER_TREE")) or 100000

describe("a run through a broker", function()
  local r
  setup(function()
    r = redis.start()
    workers.start(r.url, { "--workers", "2" })
    workers.start(r.url, { "--workers", "2" })
  end)
  teardown(function()
    workers.stop_all()
    redis.stop_all()
  end)

  local function both(path, args, opts)
    opts = opts or {}
    local ref = H.run(path, args, { workers = 0, flags = opts.flags, timeout = 300 })
    assert(ref.code == 0 or ref.code == 1, "the sequential reference: " .. H.describe(ref))
    local flags = { "--broker", r.url }
    for _, f in ipairs(opts.flags or {}) do flags[#flags + 1] = f end
    local got = H.run(path, args, { workers = opts.workers or 0, flags = flags, timeout = 300 })
    return ref, got
  end

  for _, name in ipairs { "collate.lua", "nested_loops.lua", "parallel_for.lua", "sorted_results.lua" } do
    it(name .. " prints what a sequential run prints, byte for byte", function()
      local ref, got = both(example(name))
      assert.are.equal(0, ref.code, H.describe(ref))
      assert.are.equal(0, got.code, H.describe(got))
      assert.are.equal(ref.out, got.out)
      assert.are.equal(ref.err, got.err)
    end)
  end

  it("process_threads.lua: the same lines (process ids aside)", function()
    local ref, got = both(example("process_threads.lua"))
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.equal(strip_pids(ref.out), strip_pids(got.out))
  end)

  it("pool_api.lua: the same lines (imap_unordered's in any order)", function()
    local ref, got = both(example("pool_api.lua"))
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.same(H.sorted(ref.lines), H.sorted(got.lines))
  end)

  it("a random tree of " .. TREE .. " tasks, byte for byte", function()
    local ref, got = both(script("random_tree.lua"), { tostring(TREE), "11" })
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.equal(TREE + 1, #got.lines)
    assert.are.equal(ref.out, got.out)
  end)

  it("with the submitter's own workers too", function()
    local ref, got = both(script("random_tree.lua"), { "20000", "5" }, { workers = 2 })
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.equal(ref.out, got.out)
  end)

  for _, order in ipairs { "priority", "completion" } do
    it("in " .. order .. " order: every record once", function()
      local ref, got = both(script("random_tree.lua"), { "5000", "3" }, { flags = { "--order", order } })
      assert.are.equal(0, got.code, H.describe(got))
      if order == "priority" then
        assert.are.equal(ref.out, got.out)
      else
        assert.are.same(H.sorted(ref.lines), H.sorted(got.lines))
      end
    end)
  end

  it("--format json", function()
    local ref, got = both(script("random_tree.lua"), { "2000", "3" }, { flags = { "--format", "json" } })
    assert.are.equal(0, got.code, H.describe(got))
    -- Task ids are where each task was made: compare the rest.
    local strip = function(t) return (t:gsub('"task":%d+', '"task":N')) end
    assert.are.equal(strip(ref.out), strip(got.out))
  end)

  it("an error is re-raised in the waiter with its task's name and traceback", function()
    local got = H.run([[
      local lp = require "luapool"
      function bad(x) error("no good: " .. x) end
      function main()
        local ok, err = pcall(function() return lp.spawn(bad, 42):get() end)
        print(ok, err)
        lp.spawn(bad, 7):get()
      end
    ]], nil, { workers = 0, flags = { "--broker", r.url } })
    assert.are.equal(1, got.code, H.describe(got))
    assert.is_truthy(got.out:find("false", 1, true), H.describe(got))
    assert.is_truthy(got.out:find("no good: 42", 1, true), H.describe(got))
    assert.is_truthy(got.err:find("task 'bad'", 1, true), H.describe(got))
    assert.is_truthy(got.err:find("no good: 7", 1, true), H.describe(got))
  end)

  it("--retries runs a failed task again, its failed attempts' records gone", function()
    local got = H.run([[
      local lp = require "luapool"
      function flaky(k)
        local n = lp.counter("tries-" .. k):add(1)
        print("attempt", k, n)
        if n < 3 then error("not yet") end
        return n
      end
      function main()
        for k = 1, 3 do print("got", lp.spawn(flaky, k):get()) end
      end
    ]], nil, { workers = 0, flags = { "--broker", r.url, "--retries", "2" } })
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.same({ "attempt\t1\t3", "got\t3", "attempt\t2\t3", "got\t3", "attempt\t3\t3", "got\t3" },
      got.lines)
  end)

  it("counters are shared by every worker of the run", function()
    local got = H.run([[
      local lp = require "luapool"
      function bump(n) for _ = 1, n do lp.counter("hits"):add(1) end end
      function main()
        local fs = {}
        for i = 1, 40 do fs[i] = lp.spawn(bump, 25) end
        for i = 1, 40 do fs[i]:get() end
        print(lp.counter("hits"):get())
      end
    ]], nil, { workers = 0, flags = { "--broker", r.url } })
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.same({ "1000" }, got.lines)
  end)

  it("a failure nobody waited for is reported, and the run exits 1", function()
    local got = H.run([[
      local lp = require "luapool"
      function bad() error("left alone") end
      function main() lp.spawn(bad) end
    ]], nil, { workers = 0, flags = { "--broker", r.url } })
    assert.are.equal(1, got.code, H.describe(got))
    assert.is_truthy(got.err:find("left alone", 1, true), H.describe(got))
  end)
end)

describe("a broker that cannot be had", function()
  teardown(function() redis.stop_all() end)

  it("a URL that is not one: exit 2, and what a URL looks like", function()
    local got = H.run("function main() end\n", nil, { workers = 0, flags = { "--broker", "http://x" } })
    assert.are.equal(2, got.code, H.describe(got))
    assert.is_truthy(got.err:find("redis://", 1, true), H.describe(got))
  end)

  it("a Redis that is down: exit 1, naming the broker", function()
    local port = redis.free_port()
    local got = H.run("function main() end\n", nil,
      { workers = 0, flags = { "--broker", "redis://127.0.0.1:" .. port } })
    assert.are.equal(1, got.code, H.describe(got))
    assert.is_truthy(got.err:find("127.0.0.1:" .. port, 1, true), H.describe(got))
  end)

  it("a wrong password: exit 1, AUTH refused", function()
    local s = redis.start { password = "right" }
    local got = H.run("function main() end\n", nil,
      { workers = 0, flags = { "--broker", "redis://:wrong@127.0.0.1:" .. s.port } })
    assert.are.equal(1, got.code, H.describe(got))
    assert.is_truthy(got.err:find("AUTH", 1, true), H.describe(got))
    s:stop()
  end)

  it("luapool worker: bad usage exits 2 saying why; a broker that is down exits 1", function()
    local cases = {
      { { "worker" }, "needs --broker" },
      { { "worker", "--bogus", "x" }, "unknown option '--bogus'" },
      { { "worker", "--broker" }, "--broker: expected a value" },
      { { "worker", "--broker", "redis://127.0.0.1:1", "--workers", "0" }, "--workers: expected 1 to 1024" },
      { { "worker", "--broker", "redis://127.0.0.1:1", "--threads", "2" }, "--threads needs --processes" },
      { { "worker", "--broker", "mysql://x" }, "redis://" },
    }
    for _, c in ipairs(cases) do
      local got = H.exec(c[1])
      assert.are.equal(2, got.code, H.describe(got))
      assert.is_truthy(got.err:find(c[2], 1, true), H.describe(got))
    end
    local port = redis.free_port()
    local got = H.exec({ "worker", "--broker", "redis://127.0.0.1:" .. port })
    assert.are.equal(1, got.code, H.describe(got))
    assert.is_truthy(got.err:find("127.0.0.1:" .. port, 1, true), H.describe(got))
    local help = H.exec({ "worker", "--help" })
    assert.are.equal(0, help.code)
    assert.is_truthy(help.out:find("--processes N", 1, true))
  end)

  it("luapool attach: a bad id exits 2, a run that is not there exits 2", function()
    local s = redis.start()
    local bad = H.exec({ "attach", "xyz", "--broker", s.url })
    assert.are.equal(2, bad.code, H.describe(bad))
    assert.is_truthy(bad.err:find("not a run id", 1, true), H.describe(bad))
    local none = H.exec({ "attach", "0123456789abcdef", "--broker", s.url })
    assert.are.equal(2, none.code, H.describe(none))
    assert.is_truthy(none.err:find("no run 0123456789abcdef", 1, true), H.describe(none))
    s:stop()
  end)

  it("a user and password (ACL): the run goes through", function()
    local s = redis.start { user = "alice", password = "s3cret" }
    local w = workers.start(s.url, { "--workers", "1" })
    local got = H.run("function main() print('hello') end\n", nil,
      { workers = 0, flags = { "--broker", s.url } })
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.same({ "hello" }, got.lines, H.describe(got))
    w:stop()
    s:stop()
  end)
end)
