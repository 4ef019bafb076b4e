-- Ordered sections: tasks run in parallel and finish in any order, but each
-- one's "report" step must happen in ticket order (1, 2, 3, ...). A named
-- sequencer lets task i run its section only after sections 1..i-1 have
-- run; a task that reaches its section early is suspended, not spinning.
--
--   luapool run examples/ordered_sections.lua --order completion
local luapool = require "luapool"

function work(i)
  -- the work itself takes a different time in every task
  luapool.sleep(((i * 7919) % 10) / 100)
  local value = i * i
  luapool.sequencer("report"):run(i, function()
    print(string.format("task %d reports %d", i, value))
  end)
end

function main(n)
  for i = 1, tonumber(n or 10) do luapool.spawn(work, i) end
end
