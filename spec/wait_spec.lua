-- Waiting: luapool.wait, luapool.join, luapool.as_completed (SPEC §2).
--
-- Assumptions where the SPEC is open (also listed in the spec report):
--  * wait() does not raise when a waited task failed; it only waits. The
--    failure is still there for get() to re-raise.
--  * wait({}) and join() with nothing spawned return true at once.
--  * as_completed(futures) is a generic-for iterator whose first value is the
--    future (`for f in luapool.as_completed(fs)`); a failed future is yielded
--    like any other, and get() on it re-raises.
--  * join() in a task waits for that task's own subtree only, not for its
--    siblings.

local H = require "helpers"

local function run_ok(body, args, opts)
  local res = H.run(H.PRELUDE .. body, args, opts or { workers = 2 })
  assert.are.equal(0, res.code, H.describe(res))
  return res
end

describe("wait", function()
  it("waits for every future and returns true", function()
    local res = run_ok([[
function nap(s) luapool.sleep(s) return s end
function main()
  local fs = {}
  for i, s in ipairs({ 0.3, 0.1, 0.2, 0 }) do fs[i] = luapool.spawn(nap, s) end
  luapool.emit(tostring(luapool.wait(fs)))
  local all = true
  for _, f in ipairs(fs) do all = all and f:done() and f:ok() end
  luapool.emit(tostring(all))
end
]])
    assert.are.same({ "true", "true" }, res.lines)
  end)

  it("returns false on timeout and leaves the tasks running", function()
    local res = run_ok([[
function nap(s) luapool.sleep(s) return s end
function main()
  local fast, slow = luapool.spawn(nap, 0), luapool.spawn(nap, 1.5)
  luapool.emit(tostring(luapool.wait({ fast, slow }, 0.2)))
  luapool.emit(tostring(slow:done()))
  luapool.emit(tostring(luapool.wait({ fast, slow }, 30)))
  luapool.emit(tostring(slow:get()))
end
]])
    assert.are.same({ "false", "false", "true", "1.5" }, res.lines)
  end)

  it("returns true for an empty list", function()
    local res = run_ok([[
function main()
  luapool.emit(tostring(luapool.wait({})))
  luapool.emit(tostring(luapool.wait({}, 0.1)))
end
]])
    assert.are.same({ "true", "true" }, res.lines)
  end)

  it("does not raise for a failed task", function()
    local res = run_ok([[
function bad() error("expected failure") end
function main()
  local f = luapool.spawn(bad)
  luapool.emit(tostring(luapool.wait({ f })))
  luapool.emit(tostring(f:ok()))
  luapool.emit(tostring((pcall(f.get, f))))
end
]])
    assert.are.same({ "true", "false", "false" }, res.lines)
  end)
end)

describe("join", function()
  it("waits for grandchildren at any depth that nobody holds a future of", function()
    local res = run_ok([[
function node(depth)
  luapool.sleep(0.01 * (depth % 3))
  if depth > 0 then
    luapool.spawn(node, depth - 1)   -- fire and forget
    luapool.spawn(node, depth - 1)
  end
  luapool.counter("nodes"):add(1)
end
function main()
  luapool.spawn(node, 7)
  luapool.emit(tostring(luapool.join()))
  luapool.emit(luapool.counter("nodes"):get())
end
]], nil, { workers = 2, timeout = 60 })
    assert.are.same({ "true", tostring(2 ^ 8 - 1 | 0) }, res.lines)
  end)

  it("returns true at once when nothing was spawned", function()
    local res = run_ok([[
function main() luapool.emit(tostring(luapool.join())) luapool.emit(tostring(luapool.join(0.1))) end
]])
    assert.are.same({ "true", "true" }, res.lines)
  end)

  it("returns false on timeout, true once the subtree is done", function()
    local res = run_ok([[
function deep(n)
  if n > 0 then luapool.spawn(deep, n - 1) else luapool.sleep(1) luapool.counter("bottom"):add(1) end
end
function main()
  luapool.spawn(deep, 4)
  luapool.emit(tostring(luapool.join(0.2)))
  luapool.emit(luapool.counter("bottom"):get())
  luapool.emit(tostring(luapool.join(30)))
  luapool.emit(luapool.counter("bottom"):get())
end
]])
    assert.are.same({ "false", "0", "true", "1" }, res.lines)
  end)

  it("in a task waits for that task's subtree, not for its siblings", function()
    local res = run_ok([[
function grandchild() luapool.sleep(0.1) luapool.counter("g"):add(1) end
function sub()
  for i = 1, 3 do luapool.spawn(grandchild) end
  luapool.join()
  return luapool.counter("g"):get()
end
function sibling() luapool.sleep(2) end
function main()
  local s = luapool.spawn(sibling)
  local f = luapool.spawn(sub)
  luapool.emit(f:get())
  luapool.emit(tostring(s:done()))
end
]])
    assert.are.same({ "3", "false" }, res.lines)
  end)
end)

describe("as_completed", function()
  it("yields futures in completion order", function()
    local res = run_ok([[
function nap(name, s) luapool.sleep(s) return name end
function main()
  local fs = {
    luapool.spawn(nap, "slow", 0.6),
    luapool.spawn(nap, "fast", 0.2),
    luapool.spawn(nap, "middle", 0.4),
  }
  for f in luapool.as_completed(fs) do luapool.emit(f:get()) end
end
]])
    assert.are.same({ "fast", "middle", "slow" }, res.lines)
  end)

  it("yields the futures themselves, each exactly once", function()
    local res = run_ok([[
function nap(i) luapool.sleep(0.05 * (i % 4)) return i end
function main()
  local fs, index = {}, {}
  for i = 1, 12 do local f = luapool.spawn(nap, i) fs[i] = f index[f] = i end
  local seen, n = {}, 0
  for f in luapool.as_completed(fs) do
    n = n + 1
    local i = index[f]
    if i and not seen[i] and f:done() and f:get() == i then seen[i] = true end
  end
  local count = 0
  for _ in pairs(seen) do count = count + 1 end
  luapool.emit(n .. " " .. count)
end
]])
    assert.are.same({ "12 12" }, res.lines)
  end)

  it("includes failed futures, whose get re-raises", function()
    local res = run_ok([[
function nap(s) luapool.sleep(s) return "fine" end
function bad() luapool.sleep(0.1) error("broken") end
function main()
  for f in luapool.as_completed({ luapool.spawn(nap, 0.4), luapool.spawn(bad) }) do
    local ok, v = pcall(f.get, f)
    luapool.emit(tostring(ok) .. " " .. oneline(v))
  end
end
]])
    assert.are.equal(2, #res.lines, H.describe(res))
    assert.truthy(res.lines[1]:find("^false .*broken"), res.lines[1])
    assert.are.equal("true fine", res.lines[2])
  end)

  it("yields nothing for an empty list", function()
    local res = run_ok([[
function main()
  local n = 0
  for _ in luapool.as_completed({}) do n = n + 1 end
  luapool.emit("count " .. n)
end
]])
    assert.are.same({ "count 0" }, res.lines)
  end)
end)

describe("as_completed with a timeout", function()
  -- The timeout counts from the call for the whole loop; past it the
  -- iterator raises, saying how many futures are not done.
  for _, mode in ipairs({ { "--workers", "2" }, { "--processes", "2" } }) do
    it(mode[1], function()
      local res = run_ok([[
function nap(s) luapool.sleep(s) return s end
function main()
  local fs = { luapool.spawn(nap, 0.05), luapool.spawn(nap, 30), luapool.spawn(nap, 0.1) }
  local got = {}
  local ok, err = pcall(function()
    for f in luapool.as_completed(fs, 1.5) do got[#got + 1] = f:get() end
  end)
  luapool.emit(table.concat(got, " "))
  luapool.emit(tostring(ok) .. " " .. oneline(err))
  fs[2]:cancel()
  local n = 0
  for f in luapool.as_completed({ fs[1], fs[3] }, 5) do n = n + 1 end
  luapool.emit(n)
end
]], nil, { flags = mode })
      assert.are.equal(3, #res.lines, H.describe(res))
      assert.are.equal("0.05 0.1", res.lines[1])
      assert.matches("^false [^ ]+%.lua:%d+: luapool%.as_completed: timed out after 1%.5 s: 1 of 3 futures not done$",
        res.lines[2])
      assert.are.equal("2", res.lines[3])
    end)
  end
end)

describe("a wait where the task cannot be suspended", function()
  -- Inside a table.sort comparator, a gsub callback or a metamethod called
  -- from C (__tostring through tostring) the task
  -- cannot yield: every call that would wait raises, saying so.
  local calls = {
    sleep = "luapool.sleep(0.01)",
    ["sleep(0)"] = "luapool.sleep(0)",
    yield = "luapool.yield()",
    get = "luapool.spawn(nap):get()",
    wait = "luapool.wait({ luapool.spawn(nap) })",
    join = "luapool.spawn(nap); luapool.join()",
    as_completed = "for _ in luapool.as_completed({ luapool.spawn(nap) }) do end",
    imap = "for _ in luapool.imap(nap, { 1 }) do end",
  }
  local names = {}
  for name in pairs(calls) do names[#names + 1] = name end
  table.sort(names)
  for _, mode in ipairs({ { "--workers", "2" }, { "--processes", "2" } }) do
    for _, name in ipairs(names) do
      it(name .. " (" .. mode[1] .. ")", function()
        local res = run_ok([[
function nap() luapool.sleep(0.05) return 1 end
function main()
  local function call() ]] .. calls[name] .. [[ end
  local places = {
    function() table.sort({ 3, 2, 1 }, function(a, b) call() return a < b end) end,
    function() ("ab"):gsub(".", function() call() end) end,
    function() return tostring(setmetatable({}, { __tostring = function() call() return "" end })) end,
  }
  for _, place in ipairs(places) do
    local ok, err = pcall(place)
    luapool.emit(tostring(ok) .. " " .. oneline(err))
  end
end
]], nil, { flags = mode })
        assert.are.equal(3, #res.lines, H.describe(res))
        for _, line in ipairs(res.lines) do
          assert.matches("^false [^ ]+%.lua:%d+: [%w.:_]+: cannot wait here", line)
        end
      end)
    end
  end
end)
