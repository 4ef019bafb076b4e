-- The README documents every name the task-side module exports, every
-- method of the objects it returns, every flag and command of the binary
-- and every exit code (the lists are taken from the built binary, so a new
-- name that the README does not mention fails here).
local helpers = require "helpers"

local readme = helpers.read_file(helpers.root .. "/README.md")

-- Lines printed by a script that walks the module and its objects.
local function exported()
  local res = helpers.run([[
local luapool = require "luapool"
function noop() end
function main()
  local names = {}
  for k, v in pairs(luapool) do
    if type(v) == "function" and k:sub(1, 1) ~= "_" then names[#names + 1] = "luapool." .. k end
  end
  local objects = {
    future = luapool.spawn(noop), counter = luapool.counter("c"),
    channel = luapool.channel("ch"), seq = luapool.sequencer("s"),
  }
  for what, obj in pairs(objects) do
    local index = getmetatable(obj).__index
    for k, v in pairs(index) do
      if type(v) == "function" and k:sub(1, 1) ~= "_" then names[#names + 1] = what .. ":" .. k end
    end
  end
  table.sort(names)
  for _, k in ipairs(names) do print(k) end
end
]], {})
  assert.are.equal(0, res.code, res.err)
  return res.lines
end

describe("the README", function()
  it("names every function of the luapool module", function()
    local lines = exported()
    local missing, n = {}, 0
    for _, name in ipairs(lines) do
      local fn = name:match("^luapool%.(.*)")
      if fn then
        n = n + 1
        if not readme:find("`luapool." .. fn, 1, true) then missing[#missing + 1] = name end
      end
    end
    assert.is_true(n >= 15, "the module exports its API")
    assert.are.same({}, missing)
  end)

  it("names every method of futures, counters, channels and sequencers", function()
    local missing, n = {}, 0
    for _, name in ipairs(exported()) do
      local obj, method = name:match("^(%w+):(.*)")
      if obj then
        n = n + 1
        -- Written as `future:get(`, `counter:add(`, `:push(` (channels) or
        -- `seq:run(`.
        if not readme:find(":" .. method .. "(", 1, true) then missing[#missing + 1] = name end
      end
    end
    assert.is_true(n >= 11, "futures, counters, channels and sequencers have methods")
    assert.are.same({}, missing)
  end)

  it("names every flag and command of the binary, in backquotes", function()
    local res = helpers.exec({ "--help" })
    assert.are.equal(0, res.code)
    local flags, missing = {}, {}
    for flag in res.out:gmatch("%-%-[%a][%w-]*") do flags[flag] = true end
    flags["--"] = true
    for _, cmd in ipairs({ "luapool run", "luapool check" }) do flags[cmd] = true end
    local n = 0
    for flag in pairs(flags) do
      n = n + 1
      if not (readme:find("`" .. flag, 1, true) or readme:find("`luapool " .. flag, 1, true)) then
        missing[#missing + 1] = flag
      end
    end
    table.sort(missing)
    assert.is_true(n >= 14, "--help lists the flags")
    assert.are.same({}, missing)
  end)

  it("has a row for every exit code the binary names", function()
    local res = helpers.exec({ "--help" })
    local status = res.out:match("exit status:(.*)$")
    assert.truthy(status, res.out)
    local missing, n = {}, 0
    for code in status:gmatch("(%d+) ") do
      n = n + 1
      if not readme:find("\n| " .. code .. " |", 1, true) then missing[#missing + 1] = code end
    end
    assert.is_true(n >= 5)
    assert.are.same({}, missing)
  end)
end)
