-- A nested for-loop run as one tree of tasks: 5 tasks, each issuing 3
-- subtasks, each issuing 2 sub-subtasks (50 tasks in all). A parent does not
-- wait for its children: the run ends when the whole tree has finished,
-- however many tasks it turned out to have. Every task sleeps 1 s, and
-- luapool.sleep frees the worker meanwhile, so the three levels take about
-- 3 s on 2 workers where the plain loop would take 50 s. With the default
-- --order tree the lines come out exactly as the sequential loop prints them.
--
--   luapool run examples/nested_loops.lua --workers 2
local luapool = require "luapool"

function task3(i)
  print("\t\t>>>task3 " .. i)
  luapool.sleep(1)
end

function task2(i)
  print("\t>>task2 " .. i)
  luapool.sleep(1)
  for j = 0, 1 do luapool.spawn(task3, j) end
end

function task1(i)
  print(">task1 " .. i)
  luapool.sleep(1)
  for j = 0, 2 do luapool.spawn(task2, j) end
end

function main()
  for i = 0, 4 do luapool.spawn(task1, i) end
end
