-- Tree order: the records of a parallel run come out exactly as a
-- sequential run (--workers 0) prints them, whatever the number of workers
-- and however the tasks interleave; and they stream, rather than arriving
-- at the end.
local helpers = require "helpers"

-- Random trees (helpers.RANDOM_TREE): tasks print, emit, sleep and spawn at
-- random, some children awaited and some not.
local script = helpers.RANDOM_TREE

describe("tree order", function()
  for _, seed in ipairs({ 1, 2, 3, 4, 5 }) do
    it("is byte-identical at 0, 1, 2 and 8 workers and across runs (seed " .. seed .. ")", function()
      local ref = helpers.run(script, { seed }, { workers = 0 })
      assert.are.equal(0, ref.code, ref.err)
      assert.is_true(#ref.lines > 5, "a tree with some records")
      for _, workers in ipairs({ 1, 2, 8, 2 }) do
        local r = helpers.run(script, { seed }, { workers = workers })
        assert.are.equal(0, r.code, r.err)
        assert.are.equal(ref.out, r.out)
      end
    end)
  end

  it("streams: the first line arrives long before the run ends", function()
    local path = helpers.write_script([[
local luapool = require "luapool"
function late() luapool.sleep(2) print("last") end
function main()
  print("first")
  luapool.spawn(late)
end
]])
    -- Timestamp each line as it arrives on the pipe.
    local cmd = string.format([[%s run %s --workers 2 | while IFS= read -r line; do echo "$(date +%%s%%N) $line"; done]],
      helpers.quote(helpers.bin), helpers.quote(path))
    local t0 = tonumber(io.popen("date +%s%N"):read("l"))
    local p = io.popen(cmd)
    local lines = {}
    for l in p:lines() do lines[#lines + 1] = l end
    p:close()
    os.remove(path)
    assert.are.equal(2, #lines)
    local t1, first = lines[1]:match("^(%d+) (.*)$")
    local t2, last = lines[2]:match("^(%d+) (.*)$")
    assert.are.equal("first", first)
    assert.are.equal("last", last)
    assert.is_true((tonumber(t1) - t0) / 1e9 < 1.0, "the first line came at once")
    assert.is_true((tonumber(t2) - tonumber(t1)) / 1e9 > 1.5, "the last line came two seconds later")
  end)
end)
