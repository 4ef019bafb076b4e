-- luapool.sequencer and luapool.channel (SPEC §2, §5 on --workers 0).
--
-- Semantics these specs pin down (engine/sync.c):
--  * seq:run(ticket, fn, ...) returns fn's results; an error in fn still
--    moves the sequence on, then is raised again unchanged.
--  * A ticket below `first`, one that has had its section, or one already
--    held by another task raises an error naming the ticket.
--  * ch:pop() returns the value; nil, "closed" once closed and drained;
--    nil, "timeout" when its timeout passes. A pushed nil pops as one nil.
--  * ch:close() returns true, or false if it was already closed; it wakes
--    every waiter: poppers get nil, "closed", blocked pushers raise.
--  * A later call with a different explicit capacity / first raises; a call
--    without one accepts the object as it is.
--  * --workers 0: a wait nothing could end raises a deadlock error; a pop
--    with a timeout sleeps the timeout out.

local H = require "helpers"

local function run(body, opts)
  return H.run(H.PRELUDE .. body, nil, opts or { workers = 2, timeout = 60 })
end

local function run_ok(body, opts)
  local res = run(body, opts)
  assert.are.equal(0, res.code, H.describe(res))
  return res
end

local function numbers(from, to)
  local t = {}
  for i = from, to do t[#t + 1] = i end
  return table.concat(t, " ")
end

for _, workers in ipairs({ 1, 2, 4 }) do
  local opts = { workers = workers, timeout = 60 }

  describe("sequencer with --workers " .. workers, function()
    it("runs sections in ticket order whatever order tasks reach them", function()
      local res = run_ok([[
function section(ticket, seed)
  math.randomseed(seed)
  luapool.sleep(math.random() * 0.05)
  local seen = luapool.sequencer("ordered"):run(ticket, function(t)
    luapool.channel("order"):push(t)
    return luapool.counter("done"):add(1)
  end, ticket)
  if seen ~= ticket then error("section " .. ticket .. " ran as number " .. seen) end
end
function main()
  local order = {}
  for i = 1, 40 do order[i] = i end
  math.randomseed(7)
  for i = 40, 2, -1 do local j = math.random(i) order[i], order[j] = order[j], order[i] end
  for i = 1, 40 do luapool.spawn(section, order[i], i) end
  luapool.join()
  local got, ch = {}, luapool.channel("order")
  for i = 1, 40 do got[i] = ch:pop(0) end
  luapool.emit(table.concat(got, " "))
end
]], opts)
      assert.are.same({ numbers(1, 40) }, res.lines)
    end)

    it("starts at `first` and keeps order when sections yield", function()
      local res = run_ok([[
function section(ticket)
  luapool.sleep(0.005 * (ticket % 7))
  return luapool.sequencer("from ten", 10):run(ticket, function(t)
    luapool.sleep(0.01)            -- the section itself waits
    luapool.channel("log"):push(t)
    return t, nil, "x" .. t
  end, ticket)
end
function main()
  local fs = {}
  for t = 19, 10, -1 do fs[#fs + 1] = luapool.spawn(section, t) end
  local rets = {}
  for _, f in ipairs(fs) do rets[#rets + 1] = dumpall(f:get()) end
  local got, ch = {}, luapool.channel("log")
  for i = 1, 10 do got[i] = ch:pop() end
  luapool.emit(table.concat(got, " "))
  luapool.emit(rets[1])
end
]], opts)
      assert.are.same({ numbers(10, 19), 'n=3 i:19 nil "x19"' }, res.lines)
    end)

    it("an error in a section moves the sequence on and is raised unchanged", function()
      local res = run_ok([[
local marker = {}
function section(ticket)
  local seq = luapool.sequencer("failing")
  local ok, err = pcall(seq.run, seq, ticket, function()
    luapool.channel("ran"):push(ticket)
    if ticket == 2 then error("boom at two", 0) end
    if ticket == 4 then error(marker) end
    return "fine"
  end)
  if ticket == 4 then return tostring(ok) .. " " .. tostring(err == marker) end
  return tostring(ok) .. " " .. tostring(err)
end
function main()
  local fs = {}
  for t = 5, 1, -1 do fs[t] = luapool.spawn(section, t) end
  for t = 1, 5 do luapool.emit(fs[t]:get()) end
  local got, ch = {}, luapool.channel("ran")
  for i = 1, 5 do got[i] = ch:pop() end
  luapool.emit(table.concat(got, " "))
end
]], opts)
      assert.are.same({ "true fine", "false boom at two", "true fine", "false true", "true fine",
                        "1 2 3 4 5" }, res.lines)
    end)
  end)

  describe("channel with --workers " .. workers, function()
    it("carries every item between many producers and consumers, exactly once", function()
      local res = run_ok([[
function producer(p, n)
  local ch = luapool.channel("work", 4)
  for i = 1, n do
    ch:push({ p = p, i = i, v = p * 1000 + i })
    if i % 17 == 0 then luapool.yield() end
  end
end
function consumer()
  local ch, count, sum = luapool.channel("work"), 0, 0
  while true do
    local item, why = ch:pop()
    if item == nil then assert(why == "closed", why) break end
    count, sum = count + 1, sum + item.v
  end
  return count, sum
end
function main()
  local cs, ps = {}, {}
  for i = 1, 6 do cs[i] = luapool.spawn(consumer) end
  for p = 1, 8 do ps[p] = luapool.spawn(producer, p, 250) end
  for _, f in ipairs(ps) do f:get() end
  assert(luapool.channel("work"):close() == true)
  local count, sum = 0, 0
  for _, f in ipairs(cs) do local c, s = f:get() count, sum = count + c, sum + s end
  luapool.emit(count .. " " .. sum)
end
]], opts)
      local sum = 0
      for p = 1, 8 do for i = 1, 250 do sum = sum + p * 1000 + i end end
      assert.are.same({ "2000 " .. sum }, res.lines)
    end)

    it("keeps FIFO order for a single producer", function()
      local res = run_ok([[
function producer() local ch = luapool.channel("fifo") for i = 1, 500 do ch:push(i) end ch:close() end
function main()
  local ch = luapool.channel("fifo")
  luapool.spawn(producer)
  local got = {}
  while true do local v = ch:pop() if v == nil then break end got[#got + 1] = v end
  luapool.emit(#got)
  for i = 1, #got do if got[i] ~= i then error("item " .. i .. " was " .. got[i]) end end
end
]], opts)
      assert.are.same({ "500" }, res.lines)
    end)

    it("with capacity 1, a producer waits until the consumer pops", function()
      local res = run_ok([[
function producer()
  local ch, pushed = luapool.channel("one", 1), luapool.counter("pushed")
  for i = 1, 3 do ch:push(i) pushed:add(1) end
end
function main()
  local ch, pushed = luapool.channel("one", 1), luapool.counter("pushed")
  local p = luapool.spawn(producer)
  luapool.sleep(0.3)
  local seen = { pushed:get() }               -- 1: the second push waits
  local t0 = os.clock()
  for i = 1, 3 do
    seen[#seen + 1] = ch:pop()
    luapool.sleep(0.1)
    seen[#seen + 1] = pushed:get()
  end
  p:get()
  luapool.emit(table.concat(seen, " "))
end
]], opts)
      assert.are.same({ "1 1 2 2 3 3 3" }, res.lines)
    end)

    it("pop with a timeout returns nil, 'timeout'", function()
      local res = run_ok([[
function main()
  local ch = luapool.channel("quiet")
  local t0 = os.time()
  luapool.emit(dumpall(ch:pop(0.2)))
  luapool.emit(dumpall(ch:pop(0)))
  ch:push(false)
  luapool.emit(dumpall(ch:pop(5)))
end
]], opts)
      assert.are.same({ 'n=2 nil "timeout"', 'n=2 nil "timeout"', "n=1 false" }, res.lines)
      assert.is_true(res.elapsed >= 0.2, H.describe(res))
    end)

    it("close wakes every waiter: poppers drain then see 'closed', pushers raise", function()
      local res = run_ok([[
function popper()
  local ch, got = luapool.channel("shut"), {}
  while true do
    local v, why = ch:pop()
    if v == nil then got[#got + 1] = why break end
    got[#got + 1] = v
  end
  return table.concat(got, ",")
end
function pusher() luapool.channel("full", 1):push("second") return "pushed" end
function main()
  local ps = {}
  for i = 1, 3 do ps[i] = luapool.spawn(popper) end
  luapool.sleep(0.2)                       -- all three wait on the empty channel
  luapool.channel("shut"):push("a")
  luapool.sleep(0.1)
  local ch = luapool.channel("shut")
  luapool.emit(tostring(ch:close()) .. " " .. tostring(ch:close()))
  local got = {}
  for i = 1, 3 do got[i] = ps[i]:get() end
  table.sort(got)
  luapool.emit(table.concat(got, " "))
  -- items pushed before close are still popped, in order
  local d = luapool.channel("drain")
  for i = 1, 3 do d:push(i) end
  d:close()
  luapool.emit(dumpall(d:pop()) .. " | " .. dumpall(d:pop()) .. " | " .. dumpall(d:pop()) ..
               " | " .. dumpall(d:pop()) .. " | " .. dumpall(d:pop(1)))
  -- a pusher blocked on a full channel raises when it is closed
  local full = luapool.channel("full", 1)
  full:push("first")
  local p = luapool.spawn(pusher)
  luapool.sleep(0.2)
  full:close()
  local ok, err = pcall(p.get, p)
  luapool.emit(tostring(ok) .. " " .. tostring(err:find("channel 'full' is closed", 1, true) ~= nil))
  luapool.emit(dumpall(full:pop()) .. " | " .. dumpall(full:pop()))
end
]], opts)
      assert.are.same({
        "true false",
        "a,closed closed closed",
        'n=1 i:1 | n=1 i:2 | n=1 i:3 | n=2 nil "closed" | n=2 nil "closed"',
        "false true",
        'n=1 "first" | n=2 nil "closed"',
      }, res.lines)
    end)
  end)
end

describe("sequencer", function()
  it("refuses bad tickets, naming them", function()
    local res = run_ok([[
function holder() return luapool.sequencer("busy"):run(3, function() return "three" end) end
function main()
  local seq = luapool.sequencer("strict", 5)
  local function try(...) local ok, err = pcall(seq.run, seq, ...) return oneline(ok and "ok" or H(err)) end
  function H(e) return (tostring(e):gsub("^[^:]*:%d+: ", "")) end
  luapool.emit(try(4, function() end))
  luapool.emit(try(5, function() return "five" end))
  luapool.emit(try(5, function() end))
  luapool.emit(try(1.5, function() end))
  luapool.emit(try("6", function() end))
  luapool.emit(try(6, "not a function"))
  -- a second task with the same ticket
  local busy = luapool.sequencer("busy")
  local h = luapool.spawn(holder)
  luapool.sleep(0.1)                          -- holder waits for tickets 1 and 2
  local ok, err = pcall(busy.run, busy, 3, function() end)
  luapool.emit(H(err))
  busy:run(1, function() end)
  busy:run(2, function() end)
  luapool.emit(h:get())
  -- a section cannot wait for a later ticket of its own sequencer
  local own = luapool.sequencer("own")
  ok, err = pcall(own.run, own, 1, function() return own:run(2, function() end) end)
  luapool.emit(H(err))
  luapool.emit(own:run(2, function() return "two after all" end))
end
]])
    local l = res.lines
    assert.truthy(l[1]:find("ticket 4 of sequencer 'strict' is below", 1, true), l[1])
    assert.are.equal("ok", l[2])
    assert.truthy(l[3]:find("ticket 5 of sequencer 'strict' has already had its section", 1, true), l[3])
    assert.truthy(l[4]:find("ticket must be an integer, not number 1.5", 1, true), l[4])
    assert.truthy(l[5]:find("ticket must be an integer, not string 6", 1, true), l[5])
    assert.truthy(l[6]:find("argument 2 must be a function, not string", 1, true), l[6])
    assert.truthy(l[7]:find("ticket 3 of sequencer 'busy' is taken", 1, true), l[7])
    assert.are.equal("three", l[8])
    assert.truthy(l[9]:find("ticket 2 of sequencer 'own' cannot be waited for", 1, true), l[9])
    assert.are.equal("two after all", l[10])
  end)

  it("agrees on `first` across calls", function()
    local res = run_ok([[
function main()
  local function msg(f) local ok, e = pcall(f) return ok and "ok" or tostring(e):gsub("^[^:]*:%d+: ", "") end
  luapool.emit(msg(function() luapool.sequencer("a", 3) luapool.sequencer("a", 3) luapool.sequencer("a") end))
  luapool.emit(msg(function() luapool.sequencer("a", 4) end))
  -- made without `first`, untouched: the first explicit one is taken
  luapool.sequencer("b")
  luapool.emit(msg(function() luapool.sequencer("b", 0):run(0, function() end) end))
  luapool.emit(msg(function() luapool.sequencer("c", "x") end))
  luapool.emit(msg(function() luapool.sequencer() end))
  -- naming the same first again later changes nothing
  luapool.sequencer("d"):run(1, function() end)
  luapool.emit(msg(function() luapool.sequencer("d", 1):run(2, function() end) end))
  luapool.emit(msg(function() luapool.sequencer("d", 1):run(1, function() end) end))
  luapool.emit(msg(function() luapool.sequencer("d", 3) end))
end
]])
    assert.are.equal("ok", res.lines[1])
    assert.truthy(res.lines[2]:find("sequencer 'a' starts at ticket 3, not 4", 1, true), res.lines[2])
    assert.are.equal("ok", res.lines[3])
    assert.truthy(res.lines[4]:find("first must be an integer", 1, true), res.lines[4])
    assert.truthy(res.lines[5]:find("bad argument #1", 1, true), res.lines[5])
    assert.are.equal("ok", res.lines[6])
    assert.truthy(res.lines[7]:find("ticket 1 of sequencer 'd' has already had its section", 1, true),
      res.lines[7])
    assert.truthy(res.lines[8]:find("sequencer 'd' starts at ticket 1, not 3", 1, true), res.lines[8])
  end)

  it("orders thousands of sections reached in random order on 4 workers", function()
    local res = run_ok([[
function section(t)
  if t % 3 == 0 then luapool.yield() end
  return luapool.sequencer("many", 0):run(t, function()
    if t % 97 == 0 then luapool.sleep(0.001) end
    return luapool.counter("many") :add(1) - 1 == t
  end)
end
function main()
  local order = {}
  for i = 0, 2999 do order[#order + 1] = i end
  math.randomseed(11)
  for i = #order, 2, -1 do local j = math.random(i) order[i], order[j] = order[j], order[i] end
  local fs = {}
  for i, t in ipairs(order) do fs[i] = luapool.spawn(section, t) end
  local good = 0
  for _, f in ipairs(fs) do if f:get() then good = good + 1 end end
  luapool.emit(good)
end
]], { workers = 4, timeout = 60 })
    assert.are.same({ "3000" }, res.lines)
  end)

  it("skips the ticket of a task cancelled while it waited", function()
    local res = run_ok([[
function section(t) return luapool.sequencer("skip"):run(t, function() return "ran " .. t end) end
function main()
  local f2 = luapool.spawn(section, 2)
  local f3 = luapool.spawn(section, 3)
  luapool.sleep(0.1)
  luapool.emit(tostring(f2:cancel()))
  luapool.sleep(0.1)
  luapool.emit(luapool.sequencer("skip"):run(1, function() return "ran 1" end))
  luapool.emit(f3:get())
  local ok, err = pcall(f2.get, f2)
  luapool.emit(tostring(ok))
end
]])
    assert.are.same({ "true", "ran 1", "ran 3", "false" }, res.lines)
  end)

  it("with --workers 0 runs sections whose turn has come, and reports a deadlock otherwise", function()
    local res = run_ok([[
function section(t) return luapool.sequencer("inline"):run(t, function() return t end) end
function main()
  local s = 0
  for t = 1, 5 do s = s + luapool.spawn(section, t):get() end
  luapool.emit(s)
end
]], { workers = 0, timeout = 20 })
    assert.are.same({ "15" }, res.lines)
    res = run([[
function main() luapool.sequencer("never"):run(2, function() end) end
]], { workers = 0, timeout = 20 })
    assert.is_false(res.timed_out, H.describe(res))
    assert.are.equal(1, res.code, H.describe(res))
    assert.truthy(res.err:lower():find("deadlock", 1, true), H.describe(res))
  end)
end)

describe("channel", function()
  it("refuses a value it cannot send, naming the path", function()
    local res = run_ok([[
function main()
  local ch = luapool.channel("bad")
  local ok, err = pcall(ch.push, ch, { x = function() end })
  luapool.emit(oneline(err))
  ok, err = pcall(ch.push, ch, { list = { 1, coroutine.create(print) } })
  luapool.emit(oneline(err))
  luapool.emit(dumpall(ch:pop(0)))            -- nothing was queued
end
]])
    assert.truthy(res.lines[1]:find("luapool.channel:push: argument 1 (at .x): cannot send a function",
      1, true), res.lines[1])
    assert.truthy(res.lines[2]:find("luapool.channel:push: argument 1 (at .list[2])", 1, true)
      or res.lines[2]:find("luapool.channel:push: argument 1 (at .list.2)", 1, true), res.lines[2])
    assert.are.equal('n=2 nil "timeout"', res.lines[3])
  end)

  it("copies values: nil, booleans, numbers, binary strings, shared and cyclic tables, task functions", function()
    local res = run_ok([[
function double(x) return 2 * x end
function main()
  local ch = luapool.channel("values")
  local shared = { 1, 2 }
  local t = { a = shared, b = shared, s = "a\0b", f = 1.5, i = 3 }
  t.self = t
  ch:push(nil) ch:push(true) ch:push(t) ch:push(double)
  luapool.emit(dumpall(ch:pop()))
  luapool.emit(dumpall(ch:pop()))
  luapool.emit(dump(ch:pop()))
  luapool.emit(ch:pop()(21))
  local ok, err = pcall(ch.push, ch)
  luapool.emit(tostring(ok))
end
]])
    assert.are.same({
      "n=1 nil", "n=1 true",
      '#1{["a"]=#2{[i:1]=i:1,[i:2]=i:2},["b"]=@2,["f"]=f:1.5,["i"]=i:3,["s"]="a\\000b",["self"]=@1}',
      "42", "false",
    }, res.lines)
  end)

  it("checks capacities and rejects a push after close", function()
    local res = run_ok([[
function main()
  local function msg(f) local ok, e = pcall(f) return ok and "ok" or tostring(e):gsub("^[^:]*:%d+: ", "") end
  for _, c in ipairs({ 0, -1, 1.5, "3" }) do luapool.emit(msg(function() luapool.channel("c", c) end)) end
  luapool.emit(msg(function() luapool.channel("d", 2) luapool.channel("d", 2) luapool.channel("d") end))
  luapool.emit(msg(function() luapool.channel("d", 3) end))
  luapool.emit(msg(function() local ch = luapool.channel("e") ch:close() ch:push(1) end))
  luapool.emit(msg(function() local ch = luapool.channel("e") ch.pop() end))
  luapool.emit(tostring(luapool.channel("d")))
end
]])
    local l = res.lines
    assert.truthy(l[1]:find("luapool.channel: capacity must be positive, not 0", 1, true), l[1])
    assert.truthy(l[2]:find("luapool.channel: capacity must be positive, not -1", 1, true), l[2])
    assert.truthy(l[3]:find("luapool.channel: capacity must be an integer, not number 1.5", 1, true), l[3])
    assert.truthy(l[4]:find("luapool.channel: capacity must be an integer, not string 3", 1, true), l[4])
    assert.are.equal("ok", l[5])
    assert.truthy(l[6]:find("channel 'd' has capacity 2, not 3", 1, true), l[6])
    assert.truthy(l[7]:find("luapool.channel:push: channel 'e' is closed", 1, true), l[7])
    assert.truthy(l[8]:find("luapool.channel:pop: expected a channel", 1, true), l[8])
    assert.are.equal("luapool.channel 'd' (0 items)", l[9])
  end)

  it("lets a cancelled popper go without losing an item", function()
    local res = run_ok([[
function popper() return luapool.channel("c"):pop() end
function main()
  local f = luapool.spawn(popper)
  luapool.sleep(0.1)
  luapool.emit(tostring(f:cancel()))
  luapool.emit(tostring(pcall(f.get, f)))
  local ch = luapool.channel("c")
  ch:push("kept")
  luapool.emit(ch:pop(1))
end
]])
    assert.are.same({ "true", "false", "kept" }, res.lines)
  end)

  it("with --workers 0 reports a wait nothing can end as a deadlock", function()
    for _, body in ipairs({
      'function main() luapool.channel("never filled"):pop() end',
      'function main() local ch = luapool.channel("tiny", 1) ch:push(1) ch:push(2) end',
    }) do
      local res = run(body .. "\n", { workers = 0, timeout = 20 })
      assert.is_false(res.timed_out, H.describe(res))
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(res.err:lower():find("deadlock", 1, true), H.describe(res))
    end
  end)

  it("with --workers 0 sleeps a pop timeout out, and passes items in tree order", function()
    local res = run_ok([[
function producer(n) local ch = luapool.channel("p") for i = 1, n do ch:push(i) end end
function main()
  luapool.emit(dumpall(luapool.channel("empty"):pop(0.2)))
  luapool.spawn(producer, 3)
  local ch, got = luapool.channel("p"), {}
  for i = 1, 3 do got[i] = ch:pop() end
  luapool.emit(table.concat(got, " "))
end
]], { workers = 0, timeout = 20 })
    assert.are.same({ 'n=2 nil "timeout"', "1 2 3" }, res.lines)
    assert.is_true(res.elapsed >= 0.2, H.describe(res))
  end)
end)
