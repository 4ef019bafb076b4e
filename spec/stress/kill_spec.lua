-- Fault injection (stress label): a 10,000-task run in worker processes
-- while a worker is killed with SIGKILL every 200 ms, 50 times. With
-- --retries 1 every task's result is reported exactly once, in tree order,
-- and the run exits 0. Tasks are sized so that the run outlasts the kills.
package.path = "spec/?.lua;" .. package.path
local helpers = require "helpers"

describe("worker processes under repeated SIGKILL", function()
  it("report all 10,000 results exactly once through 50 kills", function()
    local script = helpers.write_script([[
      local luapool = require "luapool"
      function work(i)
        local x = 0
        for k = 1, 250000 do x = x + k % 7 end
        luapool.emit(i)
        return x
      end
      function main(n) for i = 1, tonumber(n) do luapool.spawn(work, i) end end
    ]])
    local out = helpers.tmpname(".out")
    local cmd = table.concat({
      helpers.quote(helpers.bin), "run", helpers.quote(script), "10000 --processes 2 --retries 1 >",
      helpers.quote(out), "2>&1 & pid=$!; kills=0;",
      "while [ $kills -lt 50 ] && kill -0 $pid 2>/dev/null; do sleep 0.2;",
      "  k=$(pgrep -P $pid | shuf -n 1); [ -n \"$k\" ] && kill -9 $k 2>/dev/null && kills=$((kills+1));",
      "done; wait $pid; echo \"$? $kills\"" }, " ")
    local p = io.popen(cmd)
    local status = p:read("a")
    p:close()
    local text = helpers.read_file(out) or ""
    os.remove(out)
    os.remove(script)
    local rc, kills = status:match("^(%d+) (%d+)")
    assert.are.equal("0", rc, status .. "\n" .. text:sub(1, 2000))
    local lines = helpers.split_lines(text)
    assert.are.equal(10000, #lines)
    for i, line in ipairs(lines) do
      if line ~= tostring(i) then assert.are.equal(tostring(i), line, "line " .. i) end
    end
    print(string.format("\n  %s kills during the run", kills))
    assert.is_true(tonumber(kills) >= 50, "the run ended after " .. kills .. " kills")
  end)
end)
