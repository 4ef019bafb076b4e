-- luapool.spawn: naming a task, options, and the values that travel (SPEC §1, §2, §4).
--
-- Assumptions where the SPEC is open (also listed in the spec report):
--  * Argument and return lists keep their length, trailing nils included.
--  * One spawn copies its arguments together: a table passed twice (or
--    reachable from two arguments) arrives as one table.
--  * Tables may be keys; a shared table key stays shared in the copy.
--  * A task function travels by value even when it lives in a global table
--    (util.parse), and inside a table argument.
--  * The "cannot send" error may carry a leading "file:line: " position; the
--    text after it is exactly the one in SPEC §4.
--  * Spawning a function not reachable from the globals raises at the spawn.
--  * A task returning a value that cannot be sent fails its future; get
--    re-raises an error that says "cannot send".

local H = require "helpers"

local function run_ok(body, args, opts)
  local res = H.run(H.PRELUDE .. body, args, opts or { workers = 2 })
  assert.are.equal(0, res.code, H.describe(res))
  return res
end

describe("spawn", function()
  it("runs a task by name and by function value", function()
    local res = run_ok([[
function square(x) return x * x end
function main()
  luapool.emit(luapool.spawn("square", 7):get())
  luapool.emit(luapool.spawn(square, 8):get())
end
]])
    assert.are.same({ "49", "64" }, res.lines)
  end)

  it("reaches dotted names into global tables", function()
    local res = run_ok([[
util = { deep = {} }
function util.parse(s) return tonumber(s) * 2 end
function util.deep.twice(s) return s .. s end
function main()
  luapool.emit(luapool.spawn("util.parse", "21"):get())
  luapool.emit(luapool.spawn("util.deep.twice", "ab"):get())
  luapool.emit(luapool.spawn(util.parse, "50"):get())
end
]])
    assert.are.same({ "42", "abab", "100" }, res.lines)
  end)

  it("accepts an options table first", function()
    local res = run_ok([[
function echo(...) return ... end
function main()
  luapool.emit(dumpall(luapool.spawn({ priority = 3 }, echo, 1, "two"):get()))
  luapool.emit(dumpall(luapool.spawn({ timeout = 30 }, "echo", 3.5):get()))
  luapool.emit(dumpall(luapool.spawn({ retries = 2, priority = -1, timeout = 10 }, echo):get()))
end
]])
    assert.are.same({ 'n=2 i:1 "two"', "n=1 f:3.5", "n=0" }, res.lines)
  end)

  it("retries a failing task as many times as asked", function()
    local res = run_ok([[
function flaky()
  local n = luapool.counter("attempts"):add(1)
  if n < 3 then error("attempt " .. n .. " failed") end
  return "succeeded on " .. n
end
function main()
  luapool.emit(luapool.spawn({ retries = 2 }, flaky):get())
  luapool.emit(luapool.counter("attempts"):get())
end
]])
    assert.are.same({ "succeeded on 3", "3" }, res.lines)
  end)

  it("stops a task over its timeout with a timeout error", function()
    local res = run_ok([[
function spin() local x = 0 while true do x = x + 1 end end
function main()
  local ok, err = pcall(function() return luapool.spawn({ timeout = 0.3 }, spin):get() end)
  luapool.emit(tostring(ok))
  luapool.emit(oneline(err))
end
]], nil, { workers = 2, timeout = 20 })
    assert.are.equal("false", res.lines[1])
    assert.truthy(res.lines[2]:lower():find("timed? ?out"), H.describe(res))
  end)

  describe("copies values", function()
    -- Each case: main dumps the value, sends it through `echo` in another task
    -- and dumps what came back; the two lines must be identical.
    local function roundtrip(build)
      local res = run_ok([[
function echo(...) return ... end
function main()
]] .. build .. [[

  luapool.emit(dumpall(table.unpack(v, 1, v.n)))
  luapool.emit(dumpall(luapool.spawn(echo, table.unpack(v, 1, v.n)):get()))
end
]])
      assert.are.equal(2, #res.lines, H.describe(res))
      assert.are.equal(res.lines[1], res.lines[2])
      return res.lines[1]
    end

    it("nil, booleans, integers, floats and strings, in order", function()
      local d = roundtrip([[local v = table.pack(nil, true, false, 0, -7, 3.25, "text", "")]])
      assert.are.equal('n=8 nil true false i:0 i:-7 f:3.25 "text" ""', d)
    end)

    it("keeps integers and floats apart, at the edges too", function()
      local d = roundtrip([[local v = table.pack(3, 3.0, math.maxinteger, math.mininteger,
        2^53, -0.0, 1/0, -1/0, 0/0, 1e-300)]])
      assert.truthy(d:find("i:3 f:3 ", 1, true), d)
      assert.truthy(d:find("i:" .. math.maxinteger, 1, true), d)
      assert.truthy(d:find("i:" .. math.mininteger, 1, true), d)
      assert.truthy(d:find("f:-0 f:inf f:-inf f:nan", 1, true), d)
    end)

    it("keeps nils inside and at the end of the list", function()
      local d = roundtrip([[local v = table.pack(nil, 1, nil, nil)]])
      assert.are.equal("n=4 nil i:1 nil nil", d)
    end)

    it("strings are binary-safe", function()
      local d = roundtrip([[
local bytes = {}
for i = 0, 255 do bytes[#bytes + 1] = string.char(i) end
local v = table.pack(table.concat(bytes), "a\0b", "\r\n\0")]])
      assert.truthy(d:find('"a\\000b"', 1, true), d)
    end)

    it("long binary strings arrive whole", function()
      local res = run_ok([[
function echo(...) return ... end
function main()
  local bytes = {}
  for i = 0, 255 do bytes[#bytes + 1] = string.char(255 - i) end
  local big = table.concat(bytes):rep(4096)            -- 1 MiB, every byte value
  local back = luapool.spawn(echo, big):get()
  luapool.emit(#back .. " " .. tostring(back == big))
end
]])
      assert.are.same({ "1048576 true" }, res.lines)
    end)

    it("nested tables with mixed keys", function()
      local d = roundtrip([[local v = table.pack({ 1, 2, { 3, { 4, { x = "deep" } } },
        name = "n", [1.5] = "float key", [true] = "bool key", [-1] = "neg" })]])
      assert.truthy(d:find('"deep"', 1, true), d)
    end)

    it("shared sub-tables and cycles are preserved", function()
      local d = roundtrip([[
local shared = { "shared" }
local t = { a = shared, b = shared, list = { shared, shared } }
t.self = t
t.list.parent = t
local v = table.pack(t, shared, t)]])
      -- the same table twice in the argument list is still one table
      assert.truthy(d:match("^n=3 #1{.*} @%d+ @1$"), d)
    end)

    it("tables as keys", function()
      roundtrip([[
local k = { "key" }
local v = table.pack({ [k] = "by table", ref = k })]])
    end)
  end)

  it("keeps identity of shared sub-tables and cycles, both ways", function()
    local res = run_ok([[
function inspect(t, other)
  local ring = { name = "ring" }
  ring.next = { name = "second", next = ring }
  return t.self == t, t.a == t.b, t.a == other, #t.a, ring, ring.next
end
function main()
  local shared = { 1, 2, 3 }
  local t = { a = shared, b = shared }
  t.self = t
  local r = table.pack(luapool.spawn(inspect, t, shared):get())
  local a, b = r[5], r[6]
  r[5], r[6] = a.next == b and b.next == a and a.next.next.next == b, nil
  luapool.emit(dumpall(table.unpack(r, 1, 5)))
end
]])
    assert.are.same({ "n=5 true true true i:3 true" }, res.lines)
  end)

  it("passes task functions by value, also inside tables", function()
    local res = run_ok([[
function square(x) return x * x end
util = {}
function util.cube(x) return x * x * x end
function apply(fn, x) return fn(x) end
function apply_all(t, x) return t.first(x), t.second(x) end
function main()
  luapool.emit(luapool.spawn(apply, square, 7):get())
  luapool.emit(table.concat({ luapool.spawn(apply_all, { first = square, second = util.cube }, 3):get() }, " "))
end
]])
    assert.are.same({ "49", "9 27" }, res.lines)
  end)

  describe("refuses", function()
    local function errors_of(calls)
      local res = run_ok([[
function echo(...) return ... end
function main()
  local fn = function() end
  local co = coroutine.create(fn)
  for _, call in ipairs({ ]] .. calls .. [[ }) do
    local ok, err = pcall(call)
    luapool.emit(ok and "no error" or oneline(err))
  end
end
]])
      return res.lines
    end

    it("a function nested in an argument, naming argument and path", function()
      local lines = errors_of([[
        function() luapool.spawn(echo, { cfg = { cb = fn } }) end,
        function() luapool.spawn({ priority = 1 }, echo, { cfg = { cb = fn } }) end,
        function() luapool.spawn("echo", 1, { cfg = { cb = fn } }) end,
      ]])
      assert.are.equal(3, #lines)
      assert.are.equal("luapool.spawn: argument 2 (at .cfg.cb): cannot send a function",
        H.strip_position(lines[1]))
      assert.are.equal("luapool.spawn: argument 3 (at .cfg.cb): cannot send a function",
        H.strip_position(lines[2]))
      assert.are.equal("luapool.spawn: argument 3 (at .cfg.cb): cannot send a function",
        H.strip_position(lines[3]))
    end)

    it("a top-level function, coroutine or userdata argument", function()
      local lines = errors_of([[
        function() luapool.spawn(echo, fn) end,
        function() luapool.spawn(echo, 1, co) end,
        function() luapool.spawn(echo, io.stdout) end,
        function() luapool.spawn(echo, { 1, 2, { co } }) end,
      ]])
      assert.are.equal(4, #lines)
      assert.truthy(H.contains(lines[1], "argument 2"), lines[1])
      assert.truthy(H.contains(lines[1], "cannot send a function"), lines[1])
      assert.truthy(H.contains(lines[2], "argument 3"), lines[2])
      assert.truthy(H.contains(lines[2], "cannot send"), lines[2])
      assert.truthy(H.contains(lines[3], "argument 2"), lines[3])
      assert.truthy(H.contains(lines[3], "cannot send"), lines[3])
      assert.truthy(H.contains(lines[4], "argument 2"), lines[4])
      assert.truthy(H.contains(lines[4], "cannot send"), lines[4])
    end)

    it("an anonymous function as the task", function()
      local lines = errors_of([[ function() luapool.spawn(fn) end, ]])
      assert.are_not.equal("no error", lines[1])
    end)

    it("an unsendable return value, failing the future", function()
      local res = run_ok([[
function bad() return coroutine.create(print) end
function main()
  local ok, err = pcall(function() return luapool.spawn(bad):get() end)
  luapool.emit(tostring(ok))
  luapool.emit(oneline(err))
end
]])
      assert.are.equal("false", res.lines[1])
      assert.truthy(H.contains(res.lines[2] or "", "cannot send"), H.describe(res))
    end)
  end)

  describe("an unknown task name", function()
    it("raises in the spawning task, naming the missing task", function()
      local res = run_ok([[
util = {}
function main()
  for _, name in ipairs({ "no_such_task", "util.missing", "nowhere.deep.name" }) do
    local ok, err = pcall(luapool.spawn, name, 1)
    luapool.emit(tostring(ok) .. " " .. oneline(err))
  end
end
]])
      assert.are.equal(3, #res.lines, H.describe(res))
      assert.truthy(res.lines[1]:find("^false .*no_such_task"), res.lines[1])
      assert.truthy(res.lines[2]:find("^false .*util%.missing"), res.lines[2])
      assert.truthy(res.lines[3]:find("^false .*nowhere%.deep%.name"), res.lines[3])
    end)

    it("fails the run with exit 1 when not caught", function()
      local res = H.run(H.PRELUDE .. [[
function main() luapool.spawn("ghost_task"):get() end
]], nil, { workers = 2 })
      assert.are.equal(1, res.code, H.describe(res))
      assert.truthy(H.contains(res.err, "ghost_task"), H.describe(res))
    end)
  end)
end)

describe("spawn misuse", function()
  local function failure(body)
    local res = H.run(H.PRELUDE .. body, {}, { workers = 2 })
    assert.are.equal(1, res.code, H.describe(res))
    return res.err:match("failed: ([^\n]*)") or res.err
  end

  it("names the nil variable passed as the task function", function()
    assert.matches("^[^:]+%.lua:%d+: luapool%.spawn: argument 1: task function expected %(a name or a function%), got nil %(global 'fecth' is not defined%)$",
      failure("function main() luapool.spawn(fecth, 1) end\n"))
    assert.matches("luapool%.spawn: argument 2: task function expected %(a name or a function%), got nil %(global 'fecth' is not defined%)$",
      failure("function main() luapool.spawn({ priority = 1 }, fecth, 1) end\n"))
    assert.matches("luapool%.spawn: argument 1: .*got nil %(local 'job' is nil%)$",
      failure("function main() local job; luapool.spawn(job) end\n"))
    assert.matches("luapool%.spawn: argument 1: .*got nil %(upvalue 'job' is nil%)$",
      failure("local job\nfunction main() luapool.spawn(job) end\n"))
    -- Through a local alias; and a field that is nil: no guess at a name.
    assert.matches("luapool%.spawn: argument 1: .*got nil %(global 'fecth' is not defined%)$",
      failure("local sp = luapool.spawn\nfunction main() sp(fecth) end\n"))
    assert.matches("luapool%.spawn: argument 1: task function expected %(a name or a function%), got nil$",
      failure("local t = {}\nfunction main() luapool.spawn(t.fetch) end\n"))
  end)
end)
