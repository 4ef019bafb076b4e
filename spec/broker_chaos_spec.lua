-- Runs through a broker under chaos: workers killed and frozen, the broker
-- restarted (with and without its data), connections cut, the submitter
-- killed, a malformed entry in a run's stream, a full broker. Whatever
-- happens, a run that ends well prints what a sequential run prints, every
-- record exactly once and the count exact; a run that cannot end well says
-- why and exits 1, never hangs.
--
-- Each case has a redis-server and workers of its own. Every run is bounded
-- (a hang fails the case, not the suite); nothing here asserts a duration:
-- the waits and naps only make sure the chaos meets a run still going.

local H = require "helpers"
local redis = require "support.redis"
local workers = require "support.workers"

local TREE = H.root .. "/spec/broker/waits_tree.lua"
local LIMIT = 120 -- seconds any run may take before it counts as a hang

local function sleep(s) os.execute("sleep " .. s) end

-- Seconds since boot, for the messages of a failed case (never asserted).
local function now() return tonumber(H.read_file("/proc/uptime"):match("^[%d.]+")) end

-- Waits up to `seconds` for fn() to be true; what fn returned last.
local function wait_for(seconds, fn)
  for _ = 1, math.ceil(seconds / 0.05) do
    local v = fn()
    if v then return v end
    sleep(0.05)
  end
  return fn()
end

-- The output of the tree run sequentially, here (its lines do not depend
-- on the nap: the nap only stretches a run so that chaos meets it).
local reference = {}
local function sequential(n)
  if not reference[n] then
    local ref = H.run(TREE, { tostring(n), "0" }, { workers = 0, timeout = LIMIT })
    assert(ref.code == 0, H.describe(ref))
    reference[n] = ref.out
  end
  return reference[n]
end

-- ---- a submitter in the background ----

local Submitter = {}
Submitter.__index = Submitter
local submitters = {}

-- `luapool run PATH ARGS... --workers 0 --broker URL FLAGS...` in the
-- background: s.pid is luapool's own pid (a kill reaches it, not a shell).
local function submit(path, args, url, flags)
  local self = setmetatable({ outf = H.tmpname(".out"), errf = H.tmpname(".err"),
    rcf = H.tmpname(".rc"), pidf = H.tmpname(".pid"), started = now() }, Submitter)
  local words = { H.quote(H.bin), "run", H.quote(path) }
  for _, a in ipairs(args or {}) do words[#words + 1] = H.quote(a) end
  for _, f in ipairs { "--workers", "0", "--broker", url } do words[#words + 1] = H.quote(f) end
  for _, f in ipairs(flags or {}) do words[#words + 1] = H.quote(f) end
  os.execute("(" .. table.concat(words, " ") .. " >" .. H.quote(self.outf) .. " 2>" ..
    H.quote(self.errf) .. " </dev/null & echo $! >" .. H.quote(self.pidf) ..
    "; wait $!; echo $? >" .. H.quote(self.rcf .. ".part") .. "; mv " ..
    H.quote(self.rcf .. ".part") .. " " .. H.quote(self.rcf) .. ") >/dev/null 2>&1 </dev/null &")
  self.pid = wait_for(10, function()
    local p = H.read_file(self.pidf)
    return p and tonumber(p:match("%d+"))
  end)
  assert(self.pid, "the submitter did not start")
  submitters[#submitters + 1] = self
  return self
end

function Submitter:done() return H.read_file(self.rcf) ~= nil end

function Submitter:kill() os.execute("kill -KILL " .. self.pid .. " 2>/dev/null") end

-- Waits for its end (killing it past `limit` seconds): { out, err, code,
-- lines, timed_out }, as H.run gives.
function Submitter:wait(limit)
  local timed_out = not wait_for(limit or LIMIT, function() return self:done() end)
  if timed_out then
    self:kill()
    wait_for(10, function() return self:done() end)
  end
  local res = { out = H.read_file(self.outf) or "", err = H.read_file(self.errf) or "",
    code = tonumber((H.read_file(self.rcf) or ""):match("%d+")), timed_out = timed_out,
    elapsed = now() - self.started }
  if timed_out then res.code = 124 end
  res.lines = H.split_lines(res.out)
  return res
end

function Submitter:clean()
  if not self:done() then self:wait(0) end
  for _, f in ipairs { self.outf, self.errf, self.rcf, self.pidf } do os.remove(f) end
end

-- ---- what the broker holds ----

local function lines(text)
  local t = {}
  for l in (text .. "\n"):gmatch("([^\n]*)\n") do if l ~= "" then t[#t + 1] = l end end
  return t
end

-- The id of the run started last (once it is listed).
local function current_run(r)
  return wait_for(20, function() return lines(r:cli("ZRANGE", "lp:runs", "-1", "-1"))[1] end)
end

-- The pid of the worker holding the run's root (main), and how many
-- deliveries its entry has had; nil while nobody holds it.
local function root_holder(r, run)
  local q = "lp:{" .. run .. "}:q"
  local p = lines(r:cli("XPENDING", q, "w", "-", "+", "100000"))
  for i = 1, #p - 3, 4 do
    local e = lines(r:cli("XRANGE", q, p[i], p[i]))
    -- id, "k", the key, ...: a root's key is "r" and its id at the submitter.
    if e[2] == "k" and e[3] and e[3]:match("^r%d+$") then
      return tonumber(p[i + 1]:match("^.*:(%d+):%x+$")), tonumber(p[i + 3])
    end
  end
end

-- Waits for the run's root to be held by a worker: the run is under way.
local function under_way(r, run)
  return assert(wait_for(30, function() return root_holder(r, run) end), "nobody took main")
end

local function worker_of(pid, list)
  for i, w in ipairs(list) do if w.pid == pid then return w, i end end
end

describe("a run through a broker, under chaos", function()
  after_each(function()
    for _, s in ipairs(submitters) do s:clean() end
    submitters = {}
    workers.stop_all()
    redis.stop_all()
  end)

  it("20 workers killed (SIGKILL) during a run of 20,000 tasks: every record once", function()
    local r = redis.start()
    local ws = {}
    for i = 1, 3 do ws[i] = workers.start(r.url, { "--workers", "2" }) end
    -- Naps of 0.5 s at each of the tree's 8 levels: 4 s at least between a
    -- kill of main's holder and the run's end, for the 20 kills.
    local s = submit(TREE, { "20000", "0.5" }, r.url, { "--lease", "1" })
    local run = current_run(r)
    under_way(r, run)
    local kills = 0
    while kills < 20 and not s:done() do
      -- The first kill takes main's holder (main runs again elsewhere,
      -- after the lease); then anyone, each replaced.
      local victim, i
      if kills == 0 then victim, i = worker_of(root_holder(r, run), ws) end
      if not victim then
        i = math.random(#ws)
        victim = ws[i]
      end
      victim:kill()
      kills = kills + 1
      ws[i] = workers.start(r.url, { "--workers", "2" })
      sleep(0.1)
    end
    local got = s:wait()
    assert.are.equal(20, kills, "the run ended before the 20 kills")
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.equal(sequential(20000), got.out)
    assert.are.equal("", got.err)
  end)

  it("a worker frozen (SIGSTOP) past its lease, then back (SIGCONT): its late commit is refused", function()
    local r = redis.start()
    -- The tree, its main counting its attempts: the frozen worker's
    -- attempt is the first, the attempt that took over the second.
    local path = H.write_script(H.read_file(TREE) .. [[
local tree = main
function main(...)
  local attempt = lp.counter("main attempts"):add(1)
  tree(...)
  print("attempt " .. attempt)
end
]])
    finally(function() os.remove(path) end)
    local frozen = workers.start(r.url, { "--workers", "2" })
    local s = submit(path, { "20000", "0.3" }, r.url, { "--lease", "1" })
    local run = current_run(r)
    under_way(r, run)
    -- Its attempt has begun (it counted itself) before it freezes.
    assert(wait_for(30, function()
      return r:cli("HGET", "lp:{" .. run .. "}:ctr", "main attempts") == "1"
    end), "main did not begin")
    local others = { workers.start(r.url, { "--workers", "2" }), workers.start(r.url, { "--workers", "2" }) }
    sleep(0.5) -- subtrees handed over to the others meanwhile
    frozen:signal("STOP")
    -- Back once another worker holds main (it claimed it: one more delivery).
    local taken = wait_for(30, function()
      local pid, deliveries = root_holder(r, run)
      return pid and pid ~= frozen.pid and deliveries >= 2
    end)
    frozen:signal("CONT")
    local got = s:wait()
    assert.is_truthy(taken, "nobody took main over")
    assert.are.equal(0, got.code, H.describe(got))
    -- The records of the attempt that took over, once: the frozen attempt
    -- ran its whole tree too, but committed nothing.
    assert.are.equal(sequential(20000) .. "attempt 2\n", got.out)
    assert.are.equal("", got.err)
    assert.is_true(frozen:alive())
    assert.is_true(others[1]:alive() and others[2]:alive())
  end)

  it("Redis restarted with its data (AOF) in mid-run, twice: every record once", function()
    local r = redis.start { aof = true }
    workers.start(r.url, { "--workers", "2" })
    workers.start(r.url, { "--workers", "2" })
    local s = submit(TREE, { "20000", "0.4" }, r.url, { "--lease", "1" })
    under_way(r, current_run(r))
    local restarts = 0
    for _ = 1, 2 do
      sleep(0.5)
      if s:done() then break end
      r:restart()
      restarts = restarts + 1
    end
    local got = s:wait()
    assert.are.equal(2, restarts, "the run ended before the restarts")
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.equal(sequential(20000), got.out)
    -- The same workers serve the next run.
    local next = H.run(TREE, { "2000", "0" }, { workers = 0, flags = { "--broker", r.url }, timeout = LIMIT })
    assert.are.equal(0, next.code, H.describe(next))
    assert.are.equal(sequential(2000), next.out)
  end)

  it("client connections killed (CLIENT KILL TYPE normal) again and again: every record once", function()
    local r = redis.start()
    workers.start(r.url, { "--workers", "2" })
    workers.start(r.url, { "--workers", "2" })
    local s = submit(TREE, { "20000", "0.3" }, r.url, { "--lease", "1" })
    under_way(r, current_run(r))
    local cuts = 0
    for _ = 1, 5 do
      sleep(0.3)
      if s:done() then break end
      local said = r:cli("CLIENT", "KILL", "TYPE", "normal")
      assert.is_truthy(said:match("^%d+$"), said)
      cuts = cuts + 1
    end
    local got = s:wait()
    assert.are.equal(5, cuts, "the run ended before the cuts")
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.equal(sequential(20000), got.out)
    local next = H.run(TREE, { "2000", "0" }, { workers = 0, flags = { "--broker", r.url }, timeout = LIMIT })
    assert.are.equal(0, next.code, H.describe(next))
    assert.are.equal(sequential(2000), next.out)
  end)

  it("the submitter killed (SIGKILL) in mid-run: luapool attach prints the whole output once, twice", function()
    local r = redis.start()
    workers.start(r.url, { "--workers", "2" })
    workers.start(r.url, { "--workers", "2" })
    local s = submit(TREE, { "20000", "0.3" }, r.url, { "--lease", "1" })
    local run = current_run(r)
    under_way(r, run)
    sleep(0.5)
    assert.is_false(s:done(), "the run ended before its submitter was killed")
    s:kill()
    local killed = s:wait()
    assert.are.equal(137, killed.code, H.describe(killed))
    assert.are.equal("", killed.out) -- it died before main's end came
    -- The run goes on without it; attach waits for its end.
    local first = H.exec({ "attach", run, "--broker", r.url }, { timeout = LIMIT })
    assert.are.equal(0, first.code, H.describe(first))
    assert.are.equal(sequential(20000), first.out)
    assert.are.equal("", first.err)
    -- After the end: the same again.
    local second = H.exec({ "attach", run, "--broker", r.url }, { timeout = LIMIT })
    assert.are.equal(0, second.code, H.describe(second))
    assert.are.equal(sequential(20000), second.out)
    assert.is_truthy(r:cli("HGET", "lp:{" .. run .. "}:meta", "state"):find("done", 1, true))
  end)

  it("Redis restarted without its data in mid-run: exit 1, saying so; the next run works", function()
    local r = redis.start()
    workers.start(r.url, { "--workers", "2" })
    workers.start(r.url, { "--workers", "2" })
    local s = submit(TREE, { "20000", "0.3" }, r.url, { "--lease", "1" })
    under_way(r, current_run(r))
    sleep(0.5)
    assert.is_false(s:done(), "the run ended before the restart")
    r:restart()
    local got = s:wait(60)
    assert.are.equal(1, got.code, H.describe(got))
    assert.is_truthy(got.err:find("no longer has this run", 1, true), H.describe(got))
    assert.is_falsy(got.out:find("tasks", 1, true), H.describe(got)) -- no wrong result
    local next = H.run(TREE, { "2000", "0" }, { workers = 0, flags = { "--broker", r.url }, timeout = LIMIT })
    assert.are.equal(0, next.code, H.describe(next))
    assert.are.equal(sequential(2000), next.out)
  end)

  it("malformed entries written by hand into a run's stream fail alone", function()
    local r = redis.start()
    local ws = { workers.start(r.url, { "--workers", "2" }), workers.start(r.url, { "--workers", "2" }) }
    local s = submit(TREE, { "20000", "0.3" }, r.url, { "--lease", "1" })
    local run = current_run(r)
    under_way(r, run)
    local q = "lp:{" .. run .. "}:q"
    -- Not a task; no fields a task has.
    assert.is_truthy(r:cli("XADD", q, "*", "k", "bad", "x", "garbage", "o", "nobody"):match("^%d+%-%d+$"))
    assert.is_truthy(r:cli("XADD", q, "*", "junk", "junk"):match("^%d+%-%d+$"))
    local got = s:wait()
    -- Neither is a task of the run (nothing of the run awaits them, and
    -- they are nobody's failure): the run ends as if they were not there.
    assert.are.equal(0, got.code, H.describe(got))
    assert.are.equal(sequential(20000), got.out)
    assert.are.equal("", got.err)
    -- Each was taken once and failed: nothing of them is left to run.
    assert.are.equal("0", r:cli("XLEN", q))
    assert.is_truthy(r:cli("HGET", "lp:{" .. run .. "}:res", "bad"):find("malformed", 1, true))
    -- No worker crashed: both serve the next run.
    assert.is_true(ws[1]:alive() and ws[2]:alive())
    local next = H.run(TREE, { "2000", "0" }, { workers = 0, flags = { "--broker", r.url }, timeout = LIMIT })
    assert.are.equal(0, next.code, H.describe(next))
    assert.are.equal(sequential(2000), next.out)
    assert.is_true(ws[1]:alive() and ws[2]:alive())
    for _, w in ipairs(ws) do assert.are.equal("", w:log()) end
  end)

  -- 6 MB of records through a broker of 2 MB: in 400 outcomes of 16 kB
  -- (the broker fills up), or in one (the broker refuses it).
  local FULL = {
    { "many tasks", [[
      local lp = require "luapool"
      function chunk(i)
        lp.sleep(0.01)
        for j = 1, 16 do print(string.format("%03d %02d ", i, j) .. string.rep("x", 1000)) end
      end
      function main()
        local fs = {}
        for i = 1, 400 do fs[i] = lp.spawn(chunk, i) end
        for i = 1, 400 do fs[i]:get() end
        print("all done")
      end
    ]] },
    { "one task", [[
      function main()
        for i = 1, 6400 do print(string.format("%04d ", i) .. string.rep("x", 1000)) end
        print("all done")
      end
    ]] },
  }
  for _, case in ipairs(FULL) do
    local what, script = case[1], case[2]
    it("a full Redis (maxmemory), lots of output from " .. what .. ": exit 1, saying so", function()
      local r = redis.start { maxmemory = "2mb" }
      workers.start(r.url, { "--workers", "2" })
      workers.start(r.url, { "--workers", "2" })
      local got = H.run(script, nil, { workers = 0, flags = { "--broker", r.url }, timeout = 60 })
      assert.are.equal(1, got.code, H.describe(got))
      assert.is_truthy(got.err:find("maxmemory", 1, true), H.describe(got))
      assert.is_falsy(got.out:find("all done", 1, true), H.describe(got))
    end)
  end
end)
