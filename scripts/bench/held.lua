-- Records that wait: `tasks` tasks emit n records in all, behind a first
-- task that sleeps `sleep` seconds (its turn comes first in tree order);
-- with prio = 1 each record gets a pseudo-random priority.
local luapool = require "luapool"
function producer(first, n, prio)
  for i = first, first + n - 1 do
    if prio then
      luapool.emit(i, (i * 7919) % 1000003)
    else
      luapool.emit(i)
    end
  end
end
function sleeper(s)
  luapool.sleep(s)
  luapool.emit("slept " .. s)
end
function main(n, tasks, sleep, prio)
  n, tasks, sleep = tonumber(n), tonumber(tasks), tonumber(sleep or 0)
  prio = prio == "1"
  if sleep > 0 then luapool.spawn(sleeper, sleep) end
  local per = n // tasks
  for t = 0, tasks - 1 do luapool.spawn(producer, t * per + 1, per, prio) end
end
