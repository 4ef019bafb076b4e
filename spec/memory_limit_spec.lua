-- A worker state over its memory limit gets Lua's memory error in the task
-- (or, at load, a load error): never a crash of the engine, whatever the
-- limit. Small limits are the hard case: the engine's own work between
-- tasks (coroutines, failure messages, the names of task functions) must
-- not be where the error strikes.
local helpers = require "helpers"

local script = [[
local luapool = require "luapool"
function leaf(i)
  local t = {}
  for j = 1, i * 10 do t[j] = tostring(j) end
  luapool.emit(#t)
  return t
end
function main()
  local fs = {}
  for i = 1, 200 do fs[i] = luapool.spawn(leaf, i) end
  for i = 1, 200 do pcall(fs[i].get, fs[i]) end
end
]]

describe("a memory limit of any size", function()
  local path = helpers.write_script(script)
  teardown(function() os.remove(path) end)
  local limits = { "1", "1k", "10k", "20k", "30k", "40k", "45k", "50k", "55k", "60k", "70k",
    "80k", "100k", "150k", "200k", "300k", "500k", "1m", "4m" }
  for _, w in ipairs({ 0, 2 }) do
    it("ends in an exit code and a message, never a crash (--workers " .. w .. ")", function()
      for _, limit in ipairs(limits) do
        local r = helpers.run(path, {}, { workers = w, flags = { "--memory-limit", limit } })
        local what = "--memory-limit " .. limit .. ": " .. helpers.describe(r)
        assert.is_true(r.code == 0 or r.code == 1 or r.code == 2, what)
        if r.code ~= 0 then
          assert.is_truthy(r.err:match("^luapool: %S"), what)
        end
        assert.is_falsy(r.err:find("Sanitizer", 1, true), what)
      end
    end)
  end
  it("lets a task that fits run to its end", function()
    local r = helpers.run(path, {}, { workers = 2, flags = { "--memory-limit", "64m" } })
    assert.are.equal(0, r.code, helpers.describe(r))
    assert.are.equal(200, #r.lines)
  end)
end)
