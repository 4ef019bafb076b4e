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

-- One signal stops a run whose task spins in pure Lua, never waiting: the
-- engine stops it through the count hook. The old binary needed a second
-- signal; `timeout` ends it here if the first is not enough.
local function spinning(signal, words)
  local marker = helpers.tmpname(".started")
  os.remove(marker)
  local args = { marker }
  for _, w in ipairs(words) do args[#args + 1] = w end
  local text, status = helpers.run_while([[
local luapool = require "luapool"
function spin(marker)
  print("spinning")
  io.open(marker, "w"):close()
  while true do end
end
function main(marker)
  print("first")
  local f = luapool.spawn(spin, marker)
  print("main waits")
  f:get()
  print("never")
end
]], args,
    "for i in $(seq 300); do [ -e " .. helpers.quote(marker) .. " ] && break; sleep 0.1; done; " ..
    "sleep 0.2; t0=$(date +%s%N); kill -" .. signal .. " $pid; " ..
    "( sleep 20; kill -9 $pid ) >/dev/null 2>&1 & guard=$!",
    "t1=$(date +%s%N); kill $guard 2>/dev/null; echo \"$rc $(( (t1 - t0) / 1000000 ))\"")
  os.remove(marker)
  local rc, ms = status:match("(%d+) (%d+)")
  return tonumber(rc), tonumber(ms), helpers.split_lines(text)
end

describe("one signal", function()
  for _, words in ipairs({ { "--workers", "2" }, { "--processes", "2" },
                           { "--processes", "1", "--threads", "2" } }) do
    local mode = table.concat(words, " ")
    it("stops a task spinning in pure Lua, " .. mode, function()
      local code, ms, lines = spinning("INT", words)
      assert.are.equal(130, code)
      assert.is_true(ms < 3000, "exited " .. ms .. " ms after the signal")
      assert.are.same({ "first", "spinning", "main waits" }, lines)
    end)
  end
  it("SIGTERM too, with 143", function()
    local code, ms, lines = spinning("TERM", { "--workers", "2" })
    assert.are.equal(143, code)
    assert.is_true(ms < 3000, "exited " .. ms .. " ms after the signal")
    assert.are.same({ "first", "spinning", "main waits" }, lines)
  end)
end)
