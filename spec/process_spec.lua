-- Worker processes (--processes N [--threads T]): the same script, the same
-- results and the same report order as threads; a task that crashes,
-- exits, hangs or eats memory fails alone and the run goes on.
local helpers = require "helpers"

local function lines_of(res) return res.lines end

local tree = helpers.RANDOM_TREE

describe("worker processes", function()
  it("run the tasks in other processes and give the results back", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function sq(i) return i * i, luapool.self().pid end
      function main()
        local fs = {}
        for i = 1, 50 do fs[i] = luapool.spawn(sq, i) end
        local sum, pids = 0, {}
        for i = 1, 50 do
          local v, pid = fs[i]:get()
          sum = sum + v
          pids[pid] = true
        end
        pids[luapool.self().pid] = nil
        local n = 0
        for _ in pairs(pids) do n = n + 1 end
        luapool.emit(sum)
        luapool.emit(n >= 1 and n <= 2 and "other processes" or ("pids: " .. n))
      end
    ]], {}, { flags = { "--processes", "2" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ "42925", "other processes" }, res.lines)
  end)

  for _, seed in ipairs({ 1, 2, 3 }) do
    it("report in tree order exactly as a sequential run (seed " .. seed .. ")", function()
      local ref = helpers.run(tree, { seed }, { workers = 0 })
      assert.are.equal(0, ref.code, helpers.describe(ref))
      assert.is_true(#ref.lines > 3)
      for _, flags in ipairs({ { "--processes", "1" }, { "--processes", "2" },
                               { "--processes", "2", "--threads", "3" } }) do
        local res = helpers.run(tree, { seed }, { flags = flags })
        assert.are.equal(0, res.code, helpers.describe(res))
        assert.are.same(lines_of(ref), lines_of(res), table.concat(flags, " "))
      end
    end)
  end

  it("report in priority and completion order", function()
    local ref = helpers.run(tree, { 7 }, { workers = 0, order = "priority" })
    local res = helpers.run(tree, { 7 }, { order = "priority", flags = { "--processes", "2" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same(ref.lines, res.lines)
    local done = helpers.run(tree, { 7 }, { order = "completion", flags = { "--processes", "2" } })
    assert.are.equal(0, done.code, helpers.describe(done))
    assert.are.same(helpers.sorted(ref.lines), helpers.sorted(done.lines))
  end)

  it("write records as JSON with the ids of tasks run in processes", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function leaf(i) luapool.emit({ i = i }) end
      function main() for i = 1, 3 do luapool.spawn(leaf, i) end end
    ]], {}, { format = "json", flags = { "--processes", "2" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.equal(3, #res.lines)
    for i, line in ipairs(res.lines) do
      assert.truthy(line:find('"name":"leaf"', 1, true), line)
      assert.truthy(line:find('"value":{"i":' .. i .. '}', 1, true), line)
    end
  end)

  describe("contain a task that", function()
    local script = [[
      local luapool = require "luapool"
      function exiter() os.exit(3) end
      function segv() os.execute("kill -SEGV " .. luapool.self().pid); luapool.sleep(5) end
      function spin() while true do pcall(function() while true do end end) end end
      function hog() local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 1 << 20) .. i end end
      function fine(i) luapool.sleep(0.01) return i end
      function main(name)
        local f = luapool.spawn({ timeout = name == "spin" and 0.5 or nil }, name)
        local fs = {}
        for i = 1, 20 do fs[i] = luapool.spawn(fine, i) end
        local ok, err = pcall(f.get, f)
        luapool.emit(tostring(ok))
        luapool.emit((tostring(err):gsub("\n.*", "")))
        local sum = 0
        for i = 1, 20 do sum = sum + fs[i]:get() end
        luapool.emit(sum)
      end
    ]]
    local cases = {
      { "exiter", "failed: worker process %d+ exited with status 3 while running it" },
      { "segv", "failed: worker process %d+ was killed by signal 11 %(SIGSEGV%) while running it" },
      { "spin", "timed out after 0.5 s" },
      { "hog", "failed: not enough memory" },
    }
    for _, case in ipairs(cases) do
      it(case[1] == "exiter" and "calls os.exit" or case[1] == "segv" and "kills its process (SIGSEGV)"
         or case[1] == "spin" and "loops forever inside pcall" or "allocates without bound", function()
        -- Under a sanitizer the SIGSEGV must kill the process as it would
        -- without one, not become the sanitizer's report and exit.
        local env = {}
        for _, v in ipairs({ "ASAN_OPTIONS", "TSAN_OPTIONS", "UBSAN_OPTIONS" }) do
          local cur = os.getenv(v)
          env[v] = (cur and cur ~= "" and cur .. ":" or "") .. "handle_segv=0"
        end
        local res = helpers.run(script, { case[1] },
          { flags = { "--processes", "2", "--memory-limit", "16m" }, timeout = 120, env = env })
        assert.are.equal(0, res.code, helpers.describe(res))
        assert.are.equal("false", res.lines[1], helpers.describe(res))
        assert.truthy(res.lines[2]:find("task '" .. case[1] .. "' %(id %d+%) " .. "") , res.lines[2])
        assert.truthy(res.lines[2]:find(case[2]), res.lines[2])
        assert.are.equal("210", res.lines[3])
      end)
    end
  end)

  it("kill the process of a task stuck past its time limit outside Lua, and go on", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function stuck() os.execute("sleep 20") end
      function fine(i) return i end
      function main()
        local f = luapool.spawn({ timeout = 0.5 }, stuck)
        local ok, err = pcall(f.get, f)
        luapool.emit((tostring(err):gsub("\n.*", "")))
        luapool.emit(luapool.spawn(fine, 7):get())
      end
    ]], {}, { flags = { "--processes", "1" }, timeout = 30 })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.truthy(res.lines[1]:find("task 'stuck' %(id %d+%) failed: timed out after 0.5 s %(worker " ..
      "process %d+ was killed by signal 9 %(SIGKILL%)%)"), res.lines[1])
    assert.are.equal("7", res.lines[2])
  end)

  it("run a task again after its process died, with --retries, reporting its records once", function()
    local marker = helpers.tmpname(".marker")
    local res = helpers.run([[
      local luapool = require "luapool"
      function flaky(path)
        luapool.emit("before")
        local f = io.open(path)
        if not f then
          io.open(path, "w"):close()
          luapool.sleep(0.05) -- let the record leave the process first
          os.exit(9)
        end
        f:close()
        luapool.emit("after")
        return "ok"
      end
      function main(path) luapool.emit(luapool.spawn(flaky, path):get()) end
    ]], { marker }, { flags = { "--processes", "2", "--retries", "1" } })
    os.remove(marker)
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ "before", "after", "ok" }, res.lines)
  end)

  -- A worker process that is killed while it loads the script (a kill from
  -- outside can land at any moment) is replaced like one killed later.
  it("replace a process that dies while it loads the script", function()
    local dir = helpers.tmpname(".d")
    os.execute("mkdir " .. dir)
    local res = helpers.run([[
      local luapool = require "luapool"
      local dir = os.getenv("LP_TEST_DIR")
      -- In a replacement process, once: die before being ready.
      local f = io.open(dir .. "/crashed")
      if f then
        f:close()
        if not io.open(dir .. "/died-loading") then
          io.open(dir .. "/died-loading", "w"):close()
          os.exit(7)
        end
      end
      function crash(d) io.open(d .. "/crashed", "w"):close() os.exit(9) end
      function work(i) return i * i end
      function main(d)
        local c = luapool.spawn(crash, d)
        local ok = pcall(c.get, c)
        local sum = 0
        for i = 1, 10 do sum = sum + luapool.spawn(work, i):get() end
        luapool.emit(tostring(ok) .. " " .. sum)
      end
    ]], { dir }, { flags = { "--processes", "1" }, timeout = 30, env = { LP_TEST_DIR = dir } })
    local loaded = io.open(dir .. "/died-loading")
    os.execute("rm -rf " .. dir)
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.truthy(loaded, "no process died while loading")
    assert.are.same({ "false 385" }, res.lines)
  end)

  it("fail the tasks of a pool whose processes can no longer start, and exit 1", function()
    local dir = helpers.tmpname(".d")
    os.execute("mkdir " .. dir)
    local res = helpers.run([[
      local luapool = require "luapool"
      local dir = os.getenv("LP_TEST_DIR")
      local f = io.open(dir .. "/crashed")
      if f then f:close() os.exit(7) end -- every replacement dies loading
      function crash(d) io.open(d .. "/crashed", "w"):close() os.exit(9) end
      function work(i) return i end
      function main(d)
        local c = luapool.spawn(crash, d)
        pcall(c.get, c)
        local w = luapool.spawn(work, 1)
        local ok, err = pcall(w.get, w)
        luapool.emit((tostring(err):gsub("\n.*", "")))
        for i = 2, 30 do luapool.spawn(work, i) end
      end
    ]], { dir }, { flags = { "--processes", "1" }, timeout = 30, env = { LP_TEST_DIR = dir } })
    os.execute("rm -rf " .. dir)
    assert.are.equal(1, res.code, helpers.describe(res))
    assert.truthy(res.lines[1]:find("task 'work' %(id %d+%) failed: no worker process is left in " ..
      "pool 'main' %(the last: worker process %d+ exited with status 7 before it was ready%)"),
      helpers.describe(res))
    assert.truthy(res.err:find('arguments: (30)', 1, true), res.err)
    -- 29 unawaited failures: the first ten in full, then a count.
    local _, shown = res.err:gsub("failed and nothing waited for it\n", "")
    assert.are.equal(10, shown, res.err)
    assert.truthy(res.err:find("luapool: 19 more tasks failed and nothing waited for them", 1, true),
      res.err)
  end)

  it("apply --retries to the subtasks made inside a process too", function()
    local marker = helpers.tmpname(".marker")
    local res = helpers.run([[
      local luapool = require "luapool"
      function flaky(path)
        local f = io.open(path)
        if not f then io.open(path, "w"):close() error("first attempt fails") end
        f:close()
        return "second attempt"
      end
      function outer(path)
        local f = luapool.spawn(flaky, path)
        local ok, v = pcall(f.get, f)
        return ok and v or "the subtask was not run again"
      end
      function main(path) luapool.emit(luapool.spawn(outer, path):get()) end
    ]], { marker }, { flags = { "--processes", "1", "--retries", "1" } })
    os.remove(marker)
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ "second attempt" }, res.lines)
  end)

  it("fail an unawaited crash with the exit status and exit 1", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function boom() os.exit(5) end
      function main() luapool.spawn(boom, 1, "two", { 3 }, 4.5) luapool.emit("main done") end
    ]], {}, { flags = { "--processes", "1" } })
    assert.are.equal(1, res.code, helpers.describe(res))
    assert.are.same({ "main done" }, res.lines)
    assert.truthy(res.err:find("task 'boom' %(id %d+%) failed: worker process %d+ exited with status 5"),
      res.err)
    assert.truthy(res.err:find('arguments: (1, "two", table, 4.5)', 1, true), res.err)
  end)

  it("summarize the arguments of an unawaited failure as threads do, floats included", function()
    -- A process that dies: the engine summarizes the arguments it sent;
    -- a task that fails on a thread: its worker does. Both read the same.
    local script = [[
      local luapool = require "luapool"
      function boom(...) if CRASH then os.exit(5) end error("no") end
      function main() luapool.spawn(boom, 2.0, 3, -0.5, "x", nil, true) end
    ]]
    local dead = helpers.run("CRASH = true\n" .. script, {}, { flags = { "--processes", "1" } })
    local failed = helpers.run(script, {}, { flags = { "--workers", "2" } })
    for _, res in ipairs({ dead, failed }) do
      assert.are.equal(1, res.code, helpers.describe(res))
      assert.truthy(res.err:find('arguments: (2.0, 3, -0.5, "x", nil, true)', 1, true), res.err)
    end
  end)

  it("report a failure nobody awaited inside a process, and exit 1", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function sub(n) error("sub fails with " .. n) end
      function outer() luapool.spawn(sub, 5) luapool.sleep(0.05) return 1 end
      function main() luapool.emit(luapool.spawn(outer):get()) end
    ]], {}, { flags = { "--processes", "1" } })
    assert.are.equal(1, res.code, helpers.describe(res))
    assert.are.same({ "1" }, res.lines)
    assert.truthy(res.err:find("task 'sub' %(id %d+%) failed and nothing waited for it"), res.err)
    assert.truthy(res.err:find("sub fails with 5", 1, true), res.err)
    assert.truthy(res.err:find("arguments: (5)", 1, true), res.err)
  end)

  for _, mode in ipairs({ { "--processes", "2" }, { "--workers", "2" } }) do
    it("cancel the run at the first failure nobody waits for with --fail-fast (" .. mode[1] .. ")",
      function()
      local res = helpers.run([[
        local luapool = require "luapool"
        function boom() error("first failure") end
        function slow(i) luapool.sleep(0.2) luapool.emit(i) end
        function main()
          luapool.spawn(boom)
          for i = 1, 200 do luapool.spawn(slow, i) end
        end
      ]], {}, { flags = { mode[1], mode[2], "--fail-fast" }, timeout = 30 })
      assert.are.equal(1, res.code, helpers.describe(res))
      assert.truthy(res.err:find("first failure", 1, true), res.err)
      assert.is_true(#res.lines < 200, "the run went on: " .. #res.lines .. " records")
      local plain = helpers.run([[
        local luapool = require "luapool"
        function boom() error("first failure") end
        function slow(i) luapool.sleep(0.01) luapool.emit(i) end
        function main()
          luapool.spawn(boom)
          for i = 1, 20 do luapool.spawn(slow, i) end
        end
      ]], {}, { flags = { mode[1], mode[2] }, timeout = 30 })
      assert.are.equal(1, plain.code, helpers.describe(plain))
      assert.are.equal(20, #plain.lines, "without --fail-fast the run goes on")
    end)
  end

  it("share counters with every task of the run, in every process", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function bump(n)
        local c = luapool.counter("hits")
        local last
        for _ = 1, n do last = c:add() end
        return last
      end
      function main()
        local fs = {}
        for i = 1, 20 do fs[i] = luapool.spawn(bump, 50) end
        local seen = {}
        for i = 1, 20 do seen[#seen + 1] = fs[i]:get() end
        table.sort(seen)
        luapool.emit(luapool.counter("hits"):get())
        luapool.emit(seen[20])
        luapool.emit(luapool.counter("hits"):add(-1000))
      end
    ]], {}, { flags = { "--processes", "2", "--threads", "2" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ "1000", "1000", "0" }, res.lines)
  end)

  it("refuse channels and sequencers, which could not be shared across processes", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function try(what) return pcall(luapool[what], "x") end
      function main()
        for _, what in ipairs({ "channel", "sequencer" }) do
          local ok, err = luapool.spawn(try, what):get()
          luapool.emit(tostring(ok) .. " " .. err:gsub("^[^:]*:%d+: ", ""):match("^[^:]*"))
        end
      end
    ]], {}, { flags = { "--processes", "1" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ "false luapool.channel is not available in a worker process",
                      "false luapool.sequencer is not available in a worker process" }, res.lines)
  end)

  it("refuse --threads without --processes", function()
    local res = helpers.run("function main() end\n", {}, { flags = { "--threads", "2" } })
    assert.are.equal(2, res.code)
    assert.truthy(res.err:find("--threads needs --processes", 1, true), res.err)
  end)

  for _, sig in ipairs({ { "INT", "130" }, { "TERM", "143" } }) do
    it("stop on SIG" .. sig[1] .. " with the ordered output so far, leaving no worker process behind",
      function()
      local text, status = helpers.run_while([[
        local luapool = require "luapool"
        -- CPU, not a sleep: sleeping tasks do not hold a process, and
        -- 100,000 of them would be over before the signal.
        function leaf(i) local x = 0 for k = 1, 20000 do x = x + k end luapool.emit(i) end
        function main() for i = 1, 100000 do luapool.spawn(leaf, i) end end
      ]], { "--processes", "2" },
        "sleep 1; kids=$(pgrep -P $pid -f __worker | tr '\\n' ' '); kill -" .. sig[1] .. " $pid",
        "sleep 0.5; alive=0; for k in $kids; do kill -0 $k 2>/dev/null && alive=$((alive+1)); done; " ..
        "echo \"$rc $alive $kids\"")
      local lines = helpers.split_lines(text)
      local rc, alive, kids = status:match("^(%d+) (%d+) (.*)")
      assert.are.equal(sig[2], rc, status)
      assert.are.equal("0", alive, "worker processes left: " .. status)
      assert.truthy(kids:find("%d"), "no worker processes seen: " .. status)
      assert.is_true(#lines > 0 and #lines < 100000, #lines .. " lines")
      -- In tree order, as far as it got: tasks not begun when the signal
      -- came are cancelled, so later ones may have records and they not.
      local last = 0
      for _, line in ipairs(lines) do
        local v = tonumber(line)
        assert.is_true(v ~= nil and v > last, "out of order: " .. line .. " after " .. last)
        last = v
      end
    end)
  end
end)

describe("named pools (--pool)", function()
  local script = [[
    local luapool = require "luapool"
    function where(tag, depth)
      local me = luapool.self()
      local below = depth > 0 and luapool.spawn(where, tag, depth - 1):get() or ""
      print(tag .. " " .. depth .. " in " .. me.pool)
      return me.pid .. " " .. below
    end
    function main()
      local mine = luapool.self().pid
      for _, pool in ipairs({ "main", "io", "cpu" }) do
        local pids = luapool.spawn({ pool = pool }, where, pool, 2):get()
        local same = 0
        for pid in pids:gmatch("%d+") do if tonumber(pid) == mine then same = same + 1 end end
        luapool.emit(pool .. " ran here: " .. same .. " of 3")
      end
      local ok, err = pcall(luapool.spawn, { pool = "nope" }, where, "x", 0)
      luapool.emit(err)
    end
  ]]

  it("run each task in its pool, with its subtasks, and report in tree order", function()
    local res = helpers.run(script, {}, { flags = { "--workers", "2", "--pool", "io=threads:2",
                                                   "--pool", "cpu=processes:2x2" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({
      "cpu 0 in cpu", "cpu 1 in cpu", "cpu 2 in cpu",
    }, { res.lines[9], res.lines[10], res.lines[11] })
    assert.are.equal("main ran here: 3 of 3", res.lines[4])
    assert.are.equal("io ran here: 3 of 3", res.lines[8])
    assert.are.equal("cpu ran here: 0 of 3", res.lines[12])
    assert.are.equal("luapool.spawn: no pool named 'nope' (pools: main, io, cpu)", res.lines[13])
    -- The sequential reference knows no pools but the names: the order is the same.
    local strip = function(lines)
      local out = {}
      for i, l in ipairs(lines) do out[i] = l:gsub("ran here: %d of 3", "") end
      return out
    end
    local ref2 = helpers.run(script, {}, { workers = 0, flags = { "--pool", "io=threads:2",
                                                                 "--pool", "cpu=processes:2x2" } })
    assert.are.equal(0, ref2.code, helpers.describe(ref2))
    assert.are.same(strip(ref2.lines), strip(res.lines))
  end)

  it("with the main pool made of processes", function()
    local res = helpers.run(script, {}, { flags = { "--processes", "2", "--pool", "io=threads:1",
                                                   "--pool", "cpu=processes:1" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.equal("main ran here: 0 of 3", res.lines[4])
    assert.are.equal("io ran here: 3 of 3", res.lines[8])
    assert.are.equal("cpu ran here: 0 of 3", res.lines[12])
  end)

  it("refuse a pool a worker process cannot reach, naming its own", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function inner() return pcall(luapool.spawn, { pool = "main" }, inner) end
      function main()
        local ok, err = luapool.spawn({ pool = "cpu" }, inner):get()
        luapool.emit(tostring(ok) .. " " .. err)
      end
    ]], {}, { flags = { "--pool", "cpu=processes:1" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.truthy(res.lines[1]:find("false luapool.spawn: no pool named 'main' (a task in a worker " ..
      "process spawns into its own pool: cpu)", 1, true), res.lines[1])
  end)

  it("refuse a bad --pool with exit 2", function()
    for _, bad in ipairs({ "io", "io=threads", "io=threads:0", "io=procs:2", "main=threads:2",
                           "=threads:2", "io=processes:2x" }) do
      local res = helpers.run("function main() end\n", {}, { flags = { "--pool", bad } })
      assert.are.equal(2, res.code, bad .. ": " .. helpers.describe(res))
      assert.truthy(res.err:find("--pool", 1, true), res.err)
    end
  end)
end)

describe("bad messages between the engine and its workers", function()
  local function python(code)
    local path = helpers.tmpname(".py")
    helpers.write_file(path, code)
    return path
  end
  local frame_reader = [[
import socket, struct, sys, time
s = socket.socket(fileno=3)
def frame():
    hdr = b""
    while len(hdr) < 4:
        got = s.recv(4 - len(hdr))
        if not got: sys.exit(0)
        hdr += got
    n = struct.unpack("<I", hdr)[0]
    body = b""
    while len(body) < n:
        got = s.recv(n - len(body))
        if not got: sys.exit(0)
        body += got
    return body
]]
  local sq = [[
    local luapool = require "luapool"
    function sq(i) return i * i end
    function main()
      local fs = {}
      for i = 1, 3 do fs[i] = luapool.spawn(sq, i) end
      for i = 1, 3 do
        local ok, err = pcall(fs[i].get, fs[i])
        luapool.emit(ok and err or (tostring(err):gsub("\n.*", "")))
      end
    end
  ]]

  it("fail the tasks of a worker that sends a malformed frame, and replace it", function()
    local py = python(frame_reader .. [[
frame()                                      # INIT
s.sendall(struct.pack("<IBQ", 9, 5, 4))      # READY, room for 4 tasks
frame()                                      # the first EXEC
s.sendall(struct.pack("<IB", 1, 200))        # a frame of no known type
while True: frame()
]])
    local sh = helpers.tmpname(".sh")
    helpers.write_file(sh, "#!/bin/sh\nexec python3 " .. py .. "\n")
    os.execute("chmod +x " .. sh)
    local res = helpers.run(sq, {}, { flags = { "--processes", "1" }, timeout = 30,
                                      env = { LUAPOOL_WORKER_EXE = sh } })
    os.remove(py)
    os.remove(sh)
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.equal(3, #res.lines)
    for _, line in ipairs(res.lines) do
      assert.truthy(line:find("task 'sq' %(id %d+%) failed: worker process %d+ sent a malformed " ..
        "message while running it"), line)
    end
  end)

  it("stop with exit 2 when no worker process can start", function()
    local res = helpers.run(sq, {}, { flags = { "--processes", "2" },
                                      env = { LUAPOOL_WORKER_EXE = "/nonexistent/luapool" } })
    assert.are.equal(2, res.code, helpers.describe(res))
    assert.truthy(res.err:find("cannot start worker process /nonexistent/luapool", 1, true), res.err)
    local garbage = helpers.tmpname(".sh")
    helpers.write_file(garbage, "#!/bin/sh\nprintf 'garbage!' >&3\nsleep 5\n")
    os.execute("chmod +x " .. garbage)
    res = helpers.run(sq, {}, { flags = { "--processes", "2" }, env = { LUAPOOL_WORKER_EXE = garbage } })
    os.remove(garbage)
    assert.are.equal(2, res.code, helpers.describe(res))
    assert.truthy(res.err:find("could not start: worker process %d+ sent a malformed message " ..
      "before it was ready"), res.err)
  end)

  it("end a worker whose engine sends a malformed frame, with a message", function()
    -- The worker reads fd 3: give it a socket there whose first frame is garbage.
    local cmd = "python3 -c " .. helpers.quote([[
import os, socket, subprocess, sys
a, b = socket.socketpair()
a.sendall(b"\x05\x00\x00\x00\xc8junk")
bfd = b.fileno()
p = subprocess.Popen([sys.argv[1], "__worker"], pass_fds=[bfd], stderr=subprocess.PIPE,
                     preexec_fn=lambda: os.dup2(bfd, 3))
err = p.communicate(timeout=20)[1].decode()
print(p.returncode)
print(err.strip())
]]) .. " " .. helpers.quote(helpers.bin)
    local p = io.popen(cmd)
    local out = p:read("a")
    p:close()
    local code, msg = out:match("^(%d+)\n(.*)")
    assert.are.equal("2", code, out)
    assert.truthy(msg:find("no valid start message", 1, true), out)
  end)
end)

describe("os.exit in a thread worker", function()
  it("fails the task instead of ending the run", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function quit() os.exit(0) end
      function main()
        local f = luapool.spawn(quit)
        local ok, err = pcall(f.get, f)
        luapool.emit(tostring(ok))
        luapool.emit((tostring(err):match("os.exit is not available[^(]*")))
      end
    ]], {}, { workers = 2 })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.equal("false", res.lines[1])
    assert.are.equal("os.exit is not available in a task running on a worker thread ", res.lines[2])
  end)
end)

-- One task's subtree in a process pool: the tasks that wait in a busy
-- process are handed over to an idle one (HUNGRY, EXPORT), and what
-- happens to them is relayed back to their place in the tree.
describe("work shared between worker processes", function()
  local TREE = [[
    local luapool = require "luapool"
    local function spin(n) local x = 0 for k = 1, n do x = x + k % 7 end return x end
    -- A deep, uneven tree with records at every level; `mode` "pids" emits
    -- the process of every leaf instead.
    function node(depth, path, mode)
      if mode ~= "pids" then print(path .. " start") end
      if depth == 0 then
        spin(mode == "slow" and 300000 or 20000)
        if mode == "pids" then luapool.emit(luapool.self().pid) else luapool.emit(path) end
        return 1
      end
      local fs = {}
      for i = 1, 2 + depth % 2 do fs[i] = luapool.spawn(node, depth - 1, path .. "." .. i, mode) end
      local sum = 0
      for i = 1, #fs do sum = sum + fs[i]:get() end
      if mode ~= "pids" then luapool.emit({ path = path, leaves = sum }) end
      return sum
    end
    function main(mode) luapool.emit("leaves " .. luapool.spawn(node, 7, "r", mode):get()) end
  ]]

  -- Runs TREE in "pids" mode: every leaf's record comes back, whichever
  -- process ran it. Whether a hand-over happens at all depends on timing
  -- (a slow machine may finish in one process before the other asks), so
  -- a run in one process is repeated, up to five times, until one shares.
  local function pids_run(flags, order)
    local shared = 0
    for _ = 1, 5 do
      local res = helpers.run(TREE, { "pids" }, { order = order, flags = flags, timeout = 120 })
      assert.are.equal(0, res.code, helpers.describe(res))
      assert.are.equal(649, #res.lines, helpers.describe(res))
      assert.are.equal("leaves 648", res.lines[#res.lines])
      local pids = {}
      for i = 1, #res.lines - 1 do pids[res.lines[i]] = true end
      shared = helpers.count_keys(pids)
      if shared == 2 then break end
    end
    assert.are.equal(2, shared, "the leaves ran in both processes in one of five runs")
  end

  it("spreads one task's subtree over the processes, in tree order as a sequential run", function()
    local seq = helpers.run(TREE, { "tree" }, { workers = 0 })
    assert.are.equal(0, seq.code, helpers.describe(seq))
    assert.are.equal("leaves 648", seq.lines[#seq.lines])
    for _, flags in ipairs({ { "--processes", "2" }, { "--processes", "4" },
                             { "--processes", "2", "--threads", "2" } }) do
      local res = helpers.run(TREE, { "tree" }, { flags = flags, timeout = 120 })
      assert.are.equal(0, res.code, helpers.describe(res))
      assert.are.same(seq.lines, res.lines, table.concat(flags, " "))
    end
    -- The leaves ran in more than one process.
    pids_run({ "--processes", "2" })
  end)

  -- The one task sent goes to one process: every leaf the other process
  -- ran was handed over, and its record came back through the relay.
  it("keeps the records of the tasks handed over in completion order", function()
    pids_run({ "--processes", "2" }, "completion")
    local seq = helpers.run(TREE, { "tree" }, { workers = 0 })
    res = helpers.run(TREE, { "tree" }, { order = "completion", timeout = 120,
                                          flags = { "--processes", "2", "--threads", "2" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same(helpers.sorted(seq.lines), helpers.sorted(res.lines))
  end)

  it("cancels a task handed over to another process where it runs", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      local function spin(n) local x = 0 for k = 1, n do x = x + k % 7 end return x end
      function child(i)
        spin(3000000)
        luapool.emit(luapool.self().pid)
        luapool.sleep(20)
        return i
      end
      function parent()
        local fs = {}
        for i = 1, 10 do fs[i] = luapool.spawn(child, i) end
        luapool.sleep(1)
        for i = 1, 10 do fs[i]:cancel() end
        local n = 0
        for i = 1, 10 do
          local ok, err = pcall(fs[i].get, fs[i])
          if not ok and tostring(err):find("cancelled", 1, true) then n = n + 1 end
        end
        return n
      end
      function main() luapool.emit("cancelled " .. luapool.spawn(parent):get()) end
    ]], {}, { flags = { "--processes", "2" }, timeout = 60 })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.equal("cancelled 10", res.lines[#res.lines])
    local pids = {}
    for i = 1, #res.lines - 1 do pids[res.lines[i]] = true end
    assert.are.equal(2, helpers.count_keys(pids), "the children ran in both processes: " ..
      helpers.describe(res))
    assert.is_true(res.elapsed < 15, "cancelled where they sleep, not after 20 s: " .. res.elapsed)
  end)

  it("keeps every record exactly once when a process is killed while work is shared", function()
    local expected = helpers.run(TREE, { "slow" }, { workers = 0, timeout = 120 })
    -- Three runs in which the kill landed; a run the killer missed (the
    -- machine too slow to find a worker in time) must be right all the same.
    local landed = 0
    for _ = 1, 8 do
      local text, rc, kills, status = helpers.run_killing_workers(TREE, { "slow", "--processes",
        "2", "--retries", "3", "--no-progress" }, 1)
      assert.are.equal("0", rc, status .. "\n" .. text:gsub("[^\n]*start\n", ""):sub(1, 3000))
      assert.are.same(expected.lines, helpers.split_lines(text))
      landed = landed + kills
      if landed == 3 then break end
    end
    assert.are.equal(3, landed, "kills that landed in 8 runs")
  end)
end)

describe("worker processes, while tasks wait", function()
  -- Every sleeper counts itself in, sleeps, then reads the count: when a
  -- waiting task does not hold its process, all of them are in before the
  -- first wakes (min = n); one process slot per task gives min = 1.
  local SLEEPERS = [[
    local luapool = require "luapool"
    function sleeper(s)
      luapool.counter("in"):add(1)
      luapool.sleep(s)
      return luapool.counter("in"):get()
    end
    function main(n, s)
      local fs = {}
      for i = 1, tonumber(n) do fs[i] = luapool.spawn(sleeper, tonumber(s)) end
      local min = math.huge
      for i = 1, #fs do min = math.min(min, fs[i]:get()) end
      luapool.emit(min)
    end
  ]]
  for _, flags in ipairs({ { "--processes", "1" }, { "--processes", "2" },
                           { "--processes", "2", "--threads", "2" } }) do
    it("take more work while their tasks sleep (" .. table.concat(flags, " ") .. ")", function()
      local res = helpers.run(SLEEPERS, { "8", "1.0" }, { flags = flags, timeout = 60 })
      assert.are.equal(0, res.code, helpers.describe(res))
      assert.are.same({ "8" }, res.lines, helpers.describe(res))
    end)
  end

  it("take more jobs while a job waits on its subtasks (--processes 1)", function()
    local res = helpers.run([[
      local luapool = require "luapool"
      function sub(s) luapool.sleep(s) return 1 end
      function job(s)
        luapool.counter("jobs"):add(1)
        local fs = {}
        for i = 1, 3 do fs[i] = luapool.spawn(sub, s) end
        for i = 1, 3 do fs[i]:get() end
        return luapool.counter("jobs"):get()
      end
      function main()
        local fs = {}
        for i = 1, 6 do fs[i] = luapool.spawn(job, 0.5) end
        local min = math.huge
        for i = 1, 6 do min = math.min(min, fs[i]:get()) end
        luapool.emit(min)
      end
    ]], {}, { flags = { "--processes", "1" }, timeout = 60 })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ "6" }, res.lines, helpers.describe(res))
  end)

  it("run examples/process_threads.lua 8 5 on one process with every job under way at once",
     function()
    -- Each job has a subtask that does not sleep and one that sleeps 0.2 s:
    -- jobs that run together print their first subtask lines before any
    -- job is done; one job per process slot prints one job's lines first.
    local procs = helpers.run("examples/process_threads.lua", { "8", "5" },
      { order = "completion", flags = { "--processes", "1" }, timeout = 60 })
    assert.are.equal(0, procs.code, helpers.describe(procs))
    assert.are.equal(8 * 5 + 8 + 1, #procs.lines, helpers.describe(procs))
    assert.are.equal("all jobs done: total 1920", procs.lines[#procs.lines])
    local jobs = {}
    for _, line in ipairs(procs.lines) do
      if line:find("done: total") then break end
      jobs[line:match("^job (%d+), thread task")] = true
    end
    assert.is_true(helpers.count_keys(jobs) >= 4, helpers.describe(procs))
  end)

  it("never reuse a task's slot while its start is still to be reported (link paused)", function()
    -- The pause widens the moment between the link's takes of what its
    -- threads handed over; tiny tasks begin and end inside it.
    local res = helpers.run([[
      local luapool = require "luapool"
      function leaf(i) return i end
      function main(n)
        local fs = {}
        for i = 1, tonumber(n) do fs[i] = luapool.spawn(leaf, i) end
        local sum = 0
        for i = 1, #fs do sum = sum + fs[i]:get() end
        luapool.emit(sum)
      end
    ]], { "3000" }, { flags = { "--processes", "2" }, timeout = 120,
                      env = { LUAPOOL_TEST_LINK_PAUSE = "300" } })
    assert.are.equal(0, res.code, helpers.describe(res))
    assert.are.same({ tostring(3000 * 3001 // 2) }, res.lines)
  end)
end)

describe("worker processes under SIGKILL", function()
  it("report every result exactly once with --retries 1 while a worker is killed every 200 ms",
    function()
    local text, rc, kills, status = helpers.run_killing_workers([[
      local luapool = require "luapool"
      function work(i)
        local x = 0
        for k = 1, 60000 do x = x + k % 7 end
        luapool.emit(i)
        return i
      end
      function main(n) for i = 1, tonumber(n) do luapool.spawn(work, i) end end
    ]], { "10000", "--processes", "2", "--retries", "1" })
    assert.are.equal("0", rc, status .. "\n" .. helpers.not_numbers(text))
    local lines = helpers.split_lines(text)
    assert.are.equal(10000, #lines)
    for i, line in ipairs(lines) do
      if line ~= tostring(i) then
        assert.are.equal(tostring(i), line, "line " .. i)
      end
    end
    assert.is_true(kills >= 1, "no worker was killed: " .. status)
  end)
end)
