-- Fault injection (stress label): a 10,000-task run in worker processes
-- while a worker is killed with SIGKILL every 200 ms, 50 times. With
-- --retries 3 every task's result is reported exactly once, in tree order,
-- and the run exits 0 (with one retry, a task of a few milliseconds hit by
-- two of the 50 kills is a real chance per run). Tasks are sized so that
-- the run outlasts the kills.
package.path = "spec/?.lua;" .. package.path
local helpers = require "helpers"

describe("worker processes under repeated SIGKILL", function()
  it("report all 10,000 results exactly once through 50 kills", function()
    local text, rc, kills, status = helpers.run_killing_workers([[
      local luapool = require "luapool"
      function work(i)
        local x = 0
        for k = 1, 500000 do x = x + k % 7 end
        luapool.emit(i)
        return x
      end
      function main(n) for i = 1, tonumber(n) do luapool.spawn(work, i) end end
    ]], { "10000", "--processes", "2", "--retries", "3" }, 50)
    assert.are.equal("0", rc, status .. "\n" .. helpers.not_numbers(text))
    local lines = helpers.split_lines(text)
    assert.are.equal(10000, #lines)
    for i, line in ipairs(lines) do
      if line ~= tostring(i) then assert.are.equal(tostring(i), line, "line " .. i) end
    end
    print(string.format("\n  %s kills during the run", kills))
    assert.is_true(kills >= 50, "the run ended after " .. kills .. " kills")
  end)
end)
