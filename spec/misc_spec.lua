-- sleep, yield, counter, channel, sequencer, self, emit/print, lpeg (SPEC §1-§3).
--
-- Assumptions where the SPEC is open (also listed in the spec report):
--  * --format text is the default. A table is written as compact JSON; the
--    specs compare it with all spaces removed.
--  * --format json: "value" holds the emitted value as JSON itself (a table
--    becomes a JSON object or array), not a string containing JSON text.
--  * print inside a task makes one record: its arguments through tostring,
--    joined by tabs, as Lua's print does.
--  * A new counter starts at 0; add returns the value after adding.
--  * self(): the root task is named "main", has depth 0 and priority 0 and
--    runs in pool "main"; a child's depth is its parent's + 1; a task spawned
--    by a dotted name is named by that name; `worker` and `pid` are integers,
--    and thread workers of one run share one pid.
--  * channel:pop(timeout) on an empty channel returns nil when time runs out.

local H = require "helpers"

local function run_ok(body, args, opts)
  local res = H.run(H.PRELUDE .. body, args, opts or { workers = 2 })
  assert.are.equal(0, res.code, H.describe(res))
  return res
end

describe("sleep", function()
  it("does not occupy the worker: 20 tasks of 0.5 s on 2 workers take well under 2 s", function()
    local res = run_ok([[
function nap() luapool.sleep(0.5) return 1 end
function main()
  local fs = {}
  for i = 1, 20 do fs[i] = luapool.spawn(nap) end
  local n = 0
  for _, f in ipairs(fs) do n = n + f:get() end
  luapool.emit("slept " .. n)
end
]], nil, { workers = 2, timeout = 30 })
    assert.are.same({ "slept 20" }, res.lines)
    assert.is_true(res.elapsed >= 0.5, H.describe(res))
    -- done one after another on two workers this would take 5 s
    assert.is_true(res.elapsed < 2.0, H.describe(res))
  end)
end)

describe("yield", function()
  it("lets another ready task run on the only worker", function()
    local res = run_ok([[
function waiter()
  local spins = 0
  while luapool.counter("flag"):get() == 0 do
    luapool.yield()
    spins = spins + 1
  end
  return "saw the flag"
end
function setter() luapool.counter("flag"):add(1) end
function main()
  local w = luapool.spawn(waiter)
  local s = luapool.spawn(setter)
  luapool.emit(w:get())
  s:get()
end
]], nil, { workers = 1, timeout = 20 })
    assert.are.same({ "saw the flag" }, res.lines)
  end)

  it("returns normally in a task with nothing else to run", function()
    local res = run_ok([[
function main() for i = 1, 10 do luapool.yield() end luapool.emit("after yields") end
]])
    assert.are.same({ "after yields" }, res.lines)
  end)
end)

describe("counter", function()
  it("add returns the new value and get reads it", function()
    local res = run_ok([[
function main()
  local c = luapool.counter("solo")
  luapool.emit(table.concat({ c:get(), c:add(5), c:add(-2), c:add(0), c:get() }, " "))
end
]])
    assert.are.same({ "0 5 3 3 3" }, res.lines)
  end)

  it("gives an exact total across many concurrent tasks", function()
    local res = run_ok([[
function bump(n)
  local c = luapool.counter("total")
  for i = 1, n do
    c:add(1)
    if i % 25 == 0 then luapool.yield() end
  end
end
function main()
  for i = 1, 100 do luapool.spawn(bump, 100) end
  luapool.join()
  luapool.emit(luapool.counter("total"):get())
end
]], nil, { workers = 2, timeout = 60 })
    assert.are.same({ "10000" }, res.lines)
  end)

  it("hands out every value exactly once", function()
    local res = run_ok([[
function take() return luapool.counter("tickets"):add(1) end
function main()
  local fs, got = {}, {}
  for i = 1, 50 do fs[i] = luapool.spawn(take) end
  for i = 1, 50 do got[i] = fs[i]:get() end
  table.sort(got)
  luapool.emit(table.concat(got, " "))
end
]])
    local want = {}
    for i = 1, 50 do want[i] = i end
    assert.are.same({ table.concat(want, " ") }, res.lines)
  end)
end)

describe("channel and sequencer", function()
  it("a bounded channel carries every item, in order, between tasks", function()
    local res = run_ok([[
function producer() local ch = luapool.channel("pipe", 2) for i = 1, 20 do ch:push({ i = i }) end end
function consumer()
  local ch, got = luapool.channel("pipe", 2), {}
  for i = 1, 20 do got[i] = ch:pop().i end
  return table.concat(got, " ")
end
function main()
  local c = luapool.spawn(consumer)
  luapool.spawn(producer)
  luapool.emit(c:get())
  luapool.emit(tostring(luapool.channel("empty"):pop(0.1)))
end
]], nil, { workers = 2, timeout = 30 })
    local want = {}
    for i = 1, 20 do want[i] = i end
    assert.are.same({ table.concat(want, " "), "nil" }, res.lines)
  end)

  it("a sequencer runs sections in ticket order whatever the task order", function()
    local res = run_ok([[
function section(ticket)
  luapool.sleep(0.02 * (6 - ticket))
  luapool.sequencer("steps"):run(ticket, function() luapool.channel("order"):push(ticket) end)
end
function main()
  for t = 5, 1, -1 do luapool.spawn(section, t) end
  luapool.join()
  local got, ch = {}, luapool.channel("order")
  for i = 1, 5 do got[i] = ch:pop() end
  luapool.emit(table.concat(got, " "))
end
]], nil, { workers = 2, timeout = 30 })
    assert.are.same({ "1 2 3 4 5" }, res.lines)
  end)
end)

describe("self", function()
  it("describes the running task", function()
    local res = run_ok([[
util = {}
local function show(s)
  return string.format("name=%s depth=%s priority=%s pool=%s worker=%s pid=%s id=%s",
    s.name, s.depth, s.priority, s.pool, math.type(s.worker), math.type(s.pid), math.type(s.id))
end
function grand() return luapool.self() end
function child() return luapool.self(), luapool.spawn(grand):get() end
function util.who() return luapool.self() end
function main()
  local me = luapool.self()
  luapool.emit(show(me))
  local c, g = luapool.spawn({ priority = 7 }, child):get()
  luapool.emit(show(c))
  luapool.emit(show(g))
  local u = luapool.spawn("util.who"):get()
  luapool.emit(show(u))
  luapool.emit("same pid " .. tostring(me.pid == c.pid and c.pid == g.pid))
  luapool.emit("distinct ids " .. tostring(me.id ~= c.id and c.id ~= g.id and g.id ~= u.id))
end
]])
    assert.are.same({
      "name=main depth=0 priority=0 pool=main worker=integer pid=integer id=integer",
      "name=child depth=1 priority=7 pool=main worker=integer pid=integer id=integer",
      "name=grand depth=2 priority=7 pool=main worker=integer pid=integer id=integer",
      "name=util.who depth=1 priority=0 pool=main worker=integer pid=integer id=integer",
      "same pid true",
      "distinct ids true",
    }, res.lines)
  end)
end)

describe("output", function()
  it("emit writes one line per record: strings as-is, values via tostring, tables as JSON", function()
    local res = run_ok([[
function main()
  luapool.emit("hello world")
  luapool.emit(42)
  luapool.emit(1.5)
  luapool.emit(true)
  luapool.emit({ 1, 2, 3 })
  luapool.emit({ answer = 42 })
  luapool.emit("with priority", 5)
end
]])
    assert.are.equal(7, #res.lines, H.describe(res))
    assert.are.same({ "hello world", "42", "1.5", "true" }, { table.unpack(res.lines, 1, 4) })
    assert.are.equal("[1,2,3]", res.lines[5]:gsub("%s", ""))
    assert.are.equal('{"answer":42}', res.lines[6]:gsub("%s", ""))
    assert.are.equal("with priority", res.lines[7])
  end)

  it("print in a task writes a line like Lua's print", function()
    local res = run_ok([[
function talk(i) print("child", i, nil, true) end
function main()
  print("from main")
  luapool.spawn(talk, 1):get()
  print("after child")
end
]])
    assert.are.same({ "from main", "child\t1\tnil\ttrue", "after child" }, res.lines)
  end)

  it("every task's records reach stdout", function()
    local res = run_ok([[
function talk(i) if i % 2 == 0 then print("print " .. i) else luapool.emit("emit " .. i) end end
function main() for i = 1, 30 do luapool.spawn(talk, i) end end
]], nil, { workers = 2, order = "completion" })
    local want = {}
    for i = 1, 30 do want[i] = (i % 2 == 0 and "print " or "emit ") .. i end
    assert.are.same(H.sorted(want), H.sorted(res.lines))
  end)

  it("prints nothing for return values nobody reads", function()
    local res = run_ok([[
function value() return "unseen" end
function main() luapool.spawn(value) return 42, "also unseen" end
]])
    assert.are.equal("", res.out)
  end)

  it("--format json writes one object per record", function()
    local res = run_ok([[
function main() luapool.emit("hi") luapool.emit({ k = 1 }, 3) end
]], nil, { workers = 2, format = "json" })
    assert.are.equal(2, #res.lines, H.describe(res))
    local a, b = res.lines[1]:gsub("%s", ""), res.lines[2]:gsub("%s", "")
    assert.truthy(a:find('"value":"hi"', 1, true), a)
    assert.truthy(a:find('"name":"main"', 1, true), a)
    assert.truthy(a:find('"task":%d+'), a)
    assert.truthy(a:find('"priority":0', 1, true), a)
    assert.truthy(b:find('"value":{"k":1}', 1, true), b)
    assert.truthy(b:find('"priority":3', 1, true), b)
  end)
end)

describe("lpeg", function()
  it("is available in every worker", function()
    local res = run_ok([[
function digits(s)
  local lpeg = require "lpeg"
  return lpeg.match(lpeg.C(lpeg.R("09") ^ 1), s)
end
function main()
  local lpeg = require "lpeg"
  luapool.emit(type(lpeg.match))
  local fs = {}
  for i = 1, 4 do fs[i] = luapool.spawn(digits, i .. "2345abc") end
  for i = 1, 4 do luapool.emit(fs[i]:get()) end
end
]])
    assert.are.same({ "function", "12345", "22345", "32345", "42345" }, res.lines)
  end)
end)
