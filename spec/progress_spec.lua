-- --progress, --no-progress and --stats (SPEC §7): the bar is drawn on
-- stderr only when stderr is a terminal (here a pseudo-terminal made by
-- spec/support/pty_run.py, with stdout on a pipe), never on stdout; the
-- summary lists the run's figures.
local H = require "helpers"

-- 24 tasks that each wait 0.1 s six times: about 0.6 s or more, so the
-- bar (every 0.1 s) is drawn several times.
local SLOW = [[
local luapool = require "luapool"
function leaf(i)
  for _ = 1, 6 do luapool.sleep(0.1) end
  luapool.emit("leaf " .. i)
end
function main()
  for i = 1, 24 do luapool.spawn(leaf, i) end
end
]]

local function expected_lines()
  local t = {}
  for i = 1, 24 do t[i] = "leaf " .. i end
  return t
end

-- Runs the script with stderr on a pseudo-terminal; returns exit code,
-- stdout and what the terminal received.
local function on_pty(script, flags)
  local path = H.write_script(script)
  local out, tty = H.tmpname(".out"), H.tmpname(".tty")
  local words = { "python3", H.root .. "/spec/support/pty_run.py", out, tty, H.bin, "run", path,
                  "--workers", "2" }
  for _, f in ipairs(flags) do words[#words + 1] = f end
  for i, w in ipairs(words) do words[i] = H.quote(w) end
  local ok, _, code = os.execute("timeout -k 5 120 " .. table.concat(words, " "))
  local res = { code = ok and 0 or code, out = H.read_file(out) or "", tty = H.read_file(tty) or "" }
  os.remove(path)
  os.remove(out)
  os.remove(tty)
  return res
end

local function show(res)
  return string.format("exit %s\n--- stdout\n%s--- terminal\n%q", tostring(res.code), res.out,
                       res.tty)
end

describe("--progress", function()
  it("draws a bar on a terminal stderr, and erases it at the end", function()
    local res = on_pty(SLOW, { "--progress" })
    assert.are.equal(0, res.code, show(res))
    assert.are.same(expected_lines(), H.split_lines(res.out), show(res))
    -- The bar: a line rewritten in place, with done/known tasks.
    assert.truthy(res.tty:find("\r[", 1, true), show(res))
    assert.truthy(res.tty:find("/25 tasks", 1, true), show(res))
    assert.truthy(res.tty:find("running", 1, true), show(res))
    assert.truthy(res.tty:find("/s", 1, true), show(res))
    -- Erased last: the terminal ends with carriage return and erase-line.
    assert.are.equal("\r\27[K", res.tty:sub(-4), show(res))
    -- stdout never sees it.
    assert.falsy(res.out:find("[\r\27]"), show(res))
  end)

  it("is the default on a terminal, and --no-progress turns it off", function()
    local on = on_pty(SLOW, {})
    assert.are.equal(0, on.code, show(on))
    assert.truthy(on.tty:find("tasks", 1, true), show(on))
    local off = on_pty(SLOW, { "--no-progress" })
    assert.are.equal(0, off.code, show(off))
    assert.are.equal("", off.tty, show(off))
    assert.are.same(expected_lines(), H.split_lines(off.out), show(off))
  end)

  it("shows the failures so far, in fields that keep their place as numbers grow", function()
    -- 12 tasks fail one after another over 1.2 s (done goes from one digit
    -- to two, waiting from two to one), 12 others sleep 1.5 s; failures are
    -- collected with ok(), so stderr holds only the bar.
    local res = on_pty([[
local luapool = require "luapool"
function bad(i) luapool.sleep(0.1 * i) error("bad " .. i, 0) end
function good() for _ = 1, 15 do luapool.sleep(0.1) end end
function main()
  local fs = {}
  for i = 1, 12 do fs[#fs + 1] = luapool.spawn(bad, i) end
  for _ = 1, 12 do fs[#fs + 1] = luapool.spawn(good) end
  luapool.wait(fs)
  for _, f in ipairs(fs) do f:ok() end
end
]], { "--progress" })
    assert.are.equal(0, res.code, show(res))
    local frames = {}
    for f in res.tty:gmatch("\r(%[[^\r]*)\27%[K") do frames[#frames + 1] = f end
    assert.is_true(#frames >= 4, show(res))
    local most = 0
    for _, f in ipairs(frames) do
      local failed = tonumber(f:match("(%d+) failed"))
      assert.truthy(failed, f)
      most = math.max(most, failed)
    end
    assert.is_true(most >= 3, show(res))
    -- The same bar width, and every field at the same column, in every frame.
    local first = frames[1]
    local function layout(f)
      local t = { #f:match("^%[([#.]*)%]") }
      for _, label in ipairs({ " tasks", " running", " waiting", " failed", "/s" }) do
        t[#t + 1] = f:find(label, 1, true)
      end
      return table.concat(t, " ")
    end
    for _, f in ipairs(frames) do
      assert.are.equal(layout(first), layout(f), show(res))
    end
    -- The numbers did grow past a digit while the bar was shown.
    local lo, hi = math.huge, 0
    for _, f in ipairs(frames) do
      local done = tonumber(f:match("(%d+)/%d+ tasks"))
      lo, hi = math.min(lo, done), math.max(hi, done)
    end
    assert.is_true(lo < 10 and hi >= 10, show(res))
  end)

  it("is never drawn when stderr is a pipe", function()
    local res = H.run(SLOW, {}, { workers = 2, flags = { "--progress" } })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.equal("", res.err, H.describe(res))
    assert.are.same(expected_lines(), res.lines)
  end)
end)

describe("--stats", function()
  it("summarises the run on stderr", function()
    local res = H.run(H.root .. "/examples/nested_loops.lua", {},
                      { workers = 2, flags = { "--stats", "--order", "completion" } })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.equal(50, #res.lines)
    local err = res.err
    assert.truthy(err:find("tasks run +51 %(failed 0, retried 0%)"), H.describe(res))
    assert.truthy(err:find("deepest level +3\n"), H.describe(res))
    assert.truthy(err:find("peak queued +%d+\n"), H.describe(res))
    -- 30 leaves sleep together for a second: the host's samples see them.
    local peak = tonumber(err:match("peak suspended +(%d+)"))
    assert.is_true(peak >= 1 and peak <= 50, H.describe(res))
    local wall = tonumber(err:match("wall time +([%d.]+) s"))
    assert.is_true(wall > 0, H.describe(res))
    assert.truthy(err:match("CPU time +[%d.]+ [m\194\181]*s\n"), H.describe(res))
    assert.truthy(err:match("tasks per second +[%d.]+"), H.describe(res))
    local busy = err:match("worker busy +([^\n]*)")
    assert.truthy(busy and busy:match("^1: *%d+%% 2: *%d+%%$"), H.describe(res))
  end)

  it("counts the levels of children run inline by a waiting parent", function()
    -- fib(n) spawns fib(n-1) and calls fib(n-2): a chain of n-1 levels under
    -- main, most of them run inside get() on the parent's coroutine.
    local res = H.run(H.root .. "/scripts/bench/fib.lua", { "16" },
                      { workers = 2, flags = { "--stats" } })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same({ "987" }, res.lines)
    assert.truthy(res.err:find("deepest level +15\n"), H.describe(res))
  end)

  it("counts failures and retries", function()
    local res = H.run([[
local luapool = require "luapool"
function bad() error("no") end
function main()
  local f = luapool.spawn({ retries = 2 }, bad)
  luapool.wait({ f })
  assert(not f:ok())
end
]], {}, { workers = 2, flags = { "--stats" } })
    assert.are.equal(0, res.code, H.describe(res))
    -- main, and bad three times (the first run and two retries).
    assert.truthy(res.err:find("tasks run +4 %(failed 1, retried 2%)"), H.describe(res))
  end)

  it("counts the tasks run inside worker processes, their failures and retries", function()
    local res = H.run(H.root .. "/examples/nested_loops.lua", {},
                      { flags = { "--processes", "2", "--threads", "2", "--stats", "--order",
                                  "completion" } })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.equal(50, #res.lines)
    assert.truthy(res.err:find("tasks run +51 %(failed 0, retried 0%)"), H.describe(res))
    assert.truthy(res.err:find("deepest level +3\n"), H.describe(res))
    local busy = res.err:match("worker busy +([^\n]*)")
    assert.truthy(busy and busy:match("^1: *%d+%% p1%.1: *%d+%% p1%.2: *%d+%% p2%.1: *%d+%% " ..
                                      "p2%.2: *%d+%%$"), H.describe(res))
    -- The five task1 bodies sleep 1 s each in the processes: their threads
    -- were busy for some of it, the engine's own thread for almost none.
    local shares = {}
    for p in busy:gmatch("p%d%.%d: *(%d+)%%") do shares[#shares + 1] = tonumber(p) end
    assert.are.equal(4, #shares)

    local failing = H.run([[
local luapool = require "luapool"
function bad() error("no") end
function leaf() end
function sub(n) for i = 1, n do luapool.spawn(leaf) end end
function outer()
  local f = luapool.spawn({ retries = 2 }, bad)
  luapool.wait({ f })
  luapool.spawn(sub, 5)
  return f:ok()
end
function main()
  local o = luapool.spawn({ retries = 1 }, outer)
  local b = luapool.spawn({ retries = 1 }, bad)
  luapool.wait({ b })
  luapool.emit(tostring(o:get()) .. " " .. tostring(b:ok()))
end
]], {}, { flags = { "--processes", "2", "--stats" } })
    assert.are.equal(0, failing.code, H.describe(failing))
    assert.are.same({ "false false" }, failing.lines)
    -- main; outer; bad three times inside outer's process; sub and its five
    -- leaves; the engine's bad twice (the engine ran it again).
    assert.truthy(failing.err:find("tasks run +13 %(failed 2, retried 3%)"), H.describe(failing))
  end)

  it("keeps every busy share within 100% and gives a short run's time a unit", function()
    -- A run of next to nothing: the workers' time is measured over the same
    -- span as the wall time it is divided by (before, shares of 150% and
    -- more, and a wall time of 0.000 s).
    for _ = 1, 10 do
      local res = H.run("function main() end\n", {}, { workers = 2, flags = { "--stats" } })
      assert.are.equal(0, res.code, H.describe(res))
      local busy = res.err:match("worker busy +([^\n]*)")
      assert.truthy(busy, H.describe(res))
      for share in busy:gmatch(": *(%d+)%%") do
        assert.is_true(tonumber(share) <= 100, H.describe(res))
      end
      for _, what in ipairs({ "wall time", "CPU time" }) do
        local num, unit = res.err:match(what .. " +([%d.]+) ([^\n]+)\n")
        assert.truthy(unit == "s" or unit == "ms" or unit == "\194\181s", H.describe(res))
        if what == "wall time" then
          assert.is_true(tonumber(num) > 0, H.describe(res))
          assert.are_not.equal("s", unit, H.describe(res)) -- far below a second
        end
      end
    end
  end)

  it("works in a sequential run", function()
    local res = H.run([[
local luapool = require "luapool"
function b(i, j) print(i .. "." .. j) end
function a(i) for j = 1, 2 do luapool.spawn(b, i, j) end end
function main() for i = 1, 3 do luapool.spawn(a, i) end end
]], {}, { workers = 0, flags = { "--stats" } })
    assert.are.equal(0, res.code, H.describe(res))
    assert.are.same({ "1.1", "1.2", "2.1", "2.2", "3.1", "3.2" }, res.lines)
    assert.truthy(res.err:find("tasks run +10 "), H.describe(res))
    assert.truthy(res.err:find("deepest level +2\n"), H.describe(res))
    assert.truthy(res.err:match("worker busy +1: *%d+%%\n"), H.describe(res))
  end)
end)
