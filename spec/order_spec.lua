-- Completion order and the seed-004 examples: ordered sections and results
-- sorted by a value computed in each task.
local helpers = require "helpers"

describe("tree order", function()
  it("prints the nested loop's 50 lines exactly as the sequential loop, in about 3 s", function()
    local want = helpers.nested_loop_lines()
    local r = helpers.run(helpers.root .. "/examples/nested_loops.lua", {}, { workers = 2 })
    assert.are.equal(0, r.code, r.err)
    assert.are.same(want, r.lines)
    assert.is_true(r.elapsed < 4.5, "took " .. r.elapsed .. " s; the three levels sleep 1 s each")
  end)
end)

describe("completion order", function()
  it("delivers the nested loop level by level", function()
    local r = helpers.run(helpers.root .. "/examples/nested_loops.lua", {},
      { workers = 2, order = "completion" })
    assert.are.equal(0, r.code, r.err)
    assert.are.equal(50, #r.lines)
    local levels = {}
    for _, l in ipairs(r.lines) do levels[#levels + 1] = #l:match("^\t*") end
    for i = 1, 5 do assert.are.equal(0, levels[i]) end
    for i = 6, 20 do assert.are.equal(1, levels[i]) end
    for i = 21, 50 do assert.are.equal(2, levels[i]) end
  end)

  it("is one order across workers: a record made after another, elsewhere, comes after it", function()
    local r = helpers.run([[
local luapool = require "luapool"
function ping(n)
  for i = 1, n do
    luapool.emit("ping " .. i)
    luapool.channel("ball"):push(i)
    luapool.channel("back"):pop()
  end
end
function pong(n)
  for i = 1, n do
    luapool.channel("ball"):pop()
    luapool.emit("pong " .. i)
    luapool.channel("back"):push(i)
  end
end
function main() luapool.spawn(ping, 50) luapool.spawn(pong, 50) end
]], {}, { workers = 2, order = "completion" })
    assert.are.equal(0, r.code, r.err)
    local want = {}
    for i = 1, 50 do want[#want + 1] = "ping " .. i; want[#want + 1] = "pong " .. i end
    assert.are.same(want, r.lines)
  end)
end)

describe("the ordering examples", function()
  it("ordered sections report in ticket order whatever order the tasks finish in", function()
    for _, workers in ipairs({ 1, 2, 4 }) do
      local r = helpers.run(helpers.root .. "/examples/ordered_sections.lua", { 20 },
        { workers = workers, order = "completion" })
      assert.are.equal(0, r.code, r.err)
      local want = {}
      for i = 1, 20 do want[i] = string.format("task %d reports %d", i, i * i) end
      assert.are.same(want, r.lines)
    end
  end)

  it("--order priority sorts results by the value computed in each task", function()
    local r = helpers.run(helpers.root .. "/examples/sorted_results.lua", {},
      { workers = 2, order = "priority" })
    assert.are.equal(0, r.code, r.err)
    local scores = {}
    for _, l in ipairs(r.lines) do scores[#scores + 1] = tonumber(l:match("(%d+)$")) end
    assert.are.equal(7, #scores)
    for i = 2, #scores do assert.is_true(scores[i - 1] <= scores[i], table.concat(r.lines, "\n")) end
  end)
end)

describe("--workers 0", function()
  it("waits out a timed wait on the spot, as the sequential program would", function()
    local r = helpers.run([[
local luapool = require "luapool"
function w() return luapool.channel("c"):pop(0.2) end
function main()
  local f = luapool.spawn(w)     -- runs to its end here: the pop times out
  luapool.channel("c"):push("hello")
  print(f:get())
  print(luapool.channel("c"):pop(0))
end
]], {}, { workers = 0 })
    assert.are.equal(0, r.code, r.err)
    assert.are.same({ "nil\ttimeout", "hello" }, r.lines)
  end)
end)
