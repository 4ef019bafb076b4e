-- The README documents every name the task-side module exports.
local helpers = require "helpers"

describe("the README", function()
  it("names every function of the luapool module", function()
    local res = helpers.run([[
local luapool = require "luapool"
function main()
  local names = {}
  for k, v in pairs(luapool) do
    if type(v) == "function" and k:sub(1, 1) ~= "_" then names[#names + 1] = k end
  end
  table.sort(names)
  for _, k in ipairs(names) do print(k) end
end
]], {})
    assert.are.equal(0, res.code, res.err)
    assert.is_true(#res.lines >= 15, "the module exports its API")
    local readme = helpers.read_file(helpers.root .. "/README.md")
    local missing = {}
    for _, name in ipairs(res.lines) do
      if not readme:find("luapool." .. name, 1, true) then missing[#missing + 1] = name end
    end
    assert.are.same({}, missing)
  end)
end)
