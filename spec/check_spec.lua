-- luapool check SCRIPT (SPEC §7): loads without running any task, lists the
-- task functions, reports syntax errors and a missing main (exit 2), and
-- warns of globals the script reads but never defines (exit 1).
local H = require "helpers"

describe("luapool check", function()
  it("lists the task functions of a clean script, exit 0", function()
    local res = H.check(H.root .. "/examples/nested_loops.lua")
    assert.are.equal(0, res.code, H.describe(res))
    assert.truthy(res.out:find("4 task functions: main task1 task2 task3", 1, true),
                  H.describe(res))
    assert.falsy(res.out:find("warning", 1, true), H.describe(res))
  end)

  it("warns of globals read and never defined, with their lines, exit 1", function()
    local res = H.check([[
local luapool = require "luapool"
local n = SIZE or 10
function leaf(i)
  return mth.floor(i) + string.len("x")
end
function main()
  results = {}
  for i = 1, n do results[i] = luapool.spawn(leaf, i) end
  print(#results, undefined_thing, results)
end
]])
    assert.are.equal(1, res.code, H.describe(res))
    local warnings = {}
    for line in res.out:gmatch("[^\n]*warning[^\n]*") do
      warnings[#warnings + 1] = line:match(":(%d+): warning: global '([%w_]+)'") and
        (line:match(":(%d+):") .. " " .. line:match("global '([%w_]+)'"))
    end
    -- `results` is assigned (inside main), `string` is a standard library,
    -- `luapool` is a local: none of them is reported.
    assert.are.same({ "2 SIZE", "4 mth", "9 undefined_thing" }, warnings)
    assert.truthy(res.out:find("2 task functions: leaf main", 1, true), H.describe(res))
  end)

  it("does not run main or any task", function()
    local marker = H.tmpname(".marker")
    local res = H.check(string.format([[
function main() io.open(%q, "w"):close() end
]], marker))
    local f = io.open(marker)
    if f then f:close() end
    os.remove(marker)
    assert.are.equal(0, res.code, H.describe(res))
    assert.is_nil(f)
  end)

  it("reports a syntax error with file:line, exit 2", function()
    local res = H.check("function main()\n  local x = = 1\nend\n")
    assert.are.equal(2, res.code, H.describe(res))
    assert.truthy(res.err:find("%.lua:2:"), H.describe(res))
  end)

  it("reports a missing main, exit 2, and still checks the globals", function()
    local res = H.check("function helper() return nope end\n")
    assert.are.equal(2, res.code, H.describe(res))
    assert.truthy(res.err:find("no global function 'main'", 1, true), H.describe(res))
    assert.truthy(res.out:find(":1: warning: global 'nope'", 1, true), H.describe(res))
  end)

  it("passes every example", function()
    local p = io.popen("ls " .. H.quote(H.root .. "/examples") .. "/*.lua")
    local n = 0
    for path in p:lines() do
      local res = H.check(path)
      assert.are.equal(0, res.code, path .. "\n" .. H.describe(res))
      n = n + 1
    end
    p:close()
    assert.is_true(n >= 5)
  end)
end)
