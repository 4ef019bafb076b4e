-- SIGINT and SIGTERM: the run stops, what has not started is cancelled, suspended tasks
-- are cancelled where they wait, the records known so far come out in tree
-- order, and the exit code is 130.
local helpers = require "helpers"

local function interrupted(signal)
  local text, status = helpers.run_while([[
local luapool = require "luapool"
function slow(i)
  print("start " .. i)
  luapool.sleep(30)
  print("never " .. i)
end
function main()
  for i = 1, 4 do luapool.spawn(slow, i) end
  print("main done")
end
]], { "--workers", "2" },
    "sleep 0.5; kill -" .. signal .. " $pid", "echo $rc", { merge = true })
  return tonumber(status:match("%d+")), helpers.split_lines(text)
end

describe("SIGTERM", function()
  it("stops the run like SIGINT and exits 143", function()
    local code, lines = interrupted("TERM")
    assert.are.equal(143, code)
    assert.are.same({ "start 1", "start 2", "start 3", "start 4", "main done" }, lines)
  end)
end)

describe("SIGINT", function()
  it("delivers the ordered output known so far and exits 130", function()
    local t0 = os.time()
    local code, lines = interrupted("INT")
    assert.are.equal(130, code)
    assert.is_true(os.time() - t0 < 10, "the sleeping tasks were cancelled, not waited for")
    assert.are.same({ "start 1", "start 2", "start 3", "start 4", "main done" }, lines)
  end)
end)
